"""`kvmdoctor explain`: pasted messages (with the prefixes tools add), check codes, playbook ids,
standard input, JSON, and a plain "no match" with exit code 1."""

from __future__ import annotations

import json
from typing import Any

from typer.testing import CliRunner

from doctor.cli import app


def runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
    except TypeError:
        return CliRunner()


def kvmdoctor(*args: str, **kw: Any) -> Any:
    return runner().invoke(app, list(args), **kw)


VIRSH_START = (
    "error: Failed to start domain 'web1'\n"
    "error: internal error: process exited while connecting to monitor: "
    "2026-11-26T07:27:52.311823Z qemu-system-x86_64: Could not access KVM kernel module: "
    "Permission denied\n"
    "qemu-system-x86_64: failed to initialize kvm: Permission denied"
)
VIRT_MANAGER = (
    "Error starting domain: Cannot access storage file '/root/vm.qcow2' (as uid:107, gid:107): "
    "Permission denied\n\n"
    "Traceback (most recent call last):\n"
    '  File "/usr/share/virt-manager/virtManager/asyncjob.py", line 72, in cb_wrapper\n'
    "libvirt.libvirtError: Cannot access storage file '/root/vm.qcow2' (as uid:107, gid:107): "
    "Permission denied"
)


def test_a_virsh_error_names_the_playbook_its_checks_cause_and_fix() -> None:
    result = kvmdoctor("explain", VIRSH_START)
    assert result.exit_code == 0
    out = result.stdout
    assert "kvm-device-not-accessible: A user or process that needs /dev/kvm cannot open it" in out
    assert "checks: KVM002; explains KVM006" in out
    assert "cause:" in out and "fix:" in out
    assert "[needs-relogin] add <user> to <device.group>" in out


def test_a_virt_manager_traceback_is_matched_through_its_prefixes() -> None:
    result = kvmdoctor("explain", VIRT_MANAGER, "--format", "json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    ids = [m["id"] for m in data["matches"]]
    assert ids[0] == "image-directory-not-searchable"
    assert "qemu-cannot-access-images" in ids
    first = data["matches"][0]
    assert first["codes"] == ["LIB007"]
    assert first["line"].startswith("Cannot access storage file '/root/vm.qcow2'")
    assert first["values"] == {"path": "/root/vm.qcow2"}
    assert {s["safety"] for s in first["fix"]} == {"safe"}


def test_named_groups_of_a_signature_fill_the_playbook() -> None:
    result = kvmdoctor(
        "explain",
        "error: Failed to connect socket to '/var/run/libvirt/virtnetworkd-sock': "
        "No such file or directory",
        "-f",
        "json",
    )
    match = json.loads(result.stdout)["matches"][0]
    assert match["id"] == "modular-daemon-not-running"
    assert (
        "virtnetworkd is not serving its socket /var/run/libvirt/virtnetworkd-sock"
        in (match["cause"])
    )
    assert match["fix"][0]["params"]["name"] == "virtnetworkd.socket"


def test_journal_lines_read_from_stdin() -> None:
    journal = (
        "2026-11-26T07:24:21+0000 kvm1 libvirtd[7722]: Cannot check QEMU binary "
        "/usr/libexec/qemu-kvm: No such file or directory\n"
        "2026-11-26T07:27:53+0000 kvm1 libvirtd[7722]: internal error: Failed to reserve port 5977\n"
    )
    result = kvmdoctor("explain", "-", "--format", "json", input=journal)
    assert result.exit_code == 0
    ids = [m["id"] for m in json.loads(result.stdout)["matches"]]
    assert ids[:2] == ["rhel-emulator-path-on-other-distribution", "qemu-emulator-missing"]
    assert "graphics-port-conflict" in ids


def test_a_check_code_prints_its_documentation_and_playbooks() -> None:
    result = kvmdoctor("explain", "KVM001")
    assert result.exit_code == 0
    out = result.stdout
    assert out.startswith("KVM001 kvm-device-missing: /dev/kvm is missing")
    assert "What it checks:" in out and "Playbooks:" in out
    for playbook in (
        "kvm-missing-firmware-disabled",
        "kvm-missing-nested-not-exposed",
        "kvm-missing-module-not-loaded",
    ):
        assert f"{playbook}:" in out


def test_a_check_name_and_a_playbook_id_are_explained_too() -> None:
    by_name = json.loads(kvmdoctor("explain", "virtlogd-unavailable", "-f", "json").stdout)
    assert by_name["check"]["code"] == "LIB003"
    # Its own playbook first, then those that explain it (a daemon that is down or missing).
    assert [p["id"] for p in by_name["playbooks"]][0] == "virtlogd-not-running"
    by_id = kvmdoctor("explain", "ip-forward-disabled")
    assert by_id.exit_code == 0
    assert "net.ipv4.ip_forward" in by_id.stdout or "forwarding" in by_id.stdout


def test_no_match_is_said_plainly_with_exit_1() -> None:
    result = kvmdoctor("explain", "Domain web1 started")
    assert result.exit_code == 1
    assert result.stdout.startswith("No known problem matches this text.")
    as_json = kvmdoctor("explain", "Domain web1 started", "-f", "json")
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout) == {"lines": 1, "matches": []}


def test_empty_input_is_a_usage_error() -> None:
    result = kvmdoctor("explain", "-", input="\n")
    assert result.exit_code == 2
    assert "nothing to explain" in result.stderr
