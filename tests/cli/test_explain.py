"""`kvmdoctor explain`: pasted messages (with the prefixes tools add, wrapped lines, other
quoting and socket paths), check codes, playbook ids, standard input, JSON, every candidate cause
of a message and which of them holds on a recorded host, the "probably" of a message no
signature matches, and exit code 1 for anything short of a match."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from doctor.cli import app

from kdtest import ROOT

SNAPSHOTS = ROOT / "tests" / "fixtures" / "snapshots"


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
    assert json.loads(as_json.stdout) == {"lines": 1, "matches": [], "probably": []}


def test_empty_input_is_a_usage_error() -> None:
    result = kvmdoctor("explain", "-", input="\n")
    assert result.exit_code == 2
    assert "nothing to explain" in result.stderr


# --- what pasting does --------------------------------------------------------------------

# A terminal wrapped this one in the middle of the message (from
# https://github.com/bilelmsekni/OpenStack-Grizzly-Install-Guide/issues/71).
WRAPPED = (
    "root@dahlia:~# virsh net-destroy default\n"
    "error: failed to connect to the hypervisor\n"
    "error: Failed to connect socket to '/var/run/libvirt/libvirt-sock': No such\n"
    "file or directory"
)


def ids_of(*args: str, **kw: Any) -> list[str]:
    result = kvmdoctor("explain", *args, "-f", "json", **kw)
    return [m["id"] for m in json.loads(result.stdout)["matches"]]


def test_a_message_the_terminal_wrapped_is_joined_again() -> None:
    assert ids_of(WRAPPED)[0] == "libvirtd-not-running"
    # ... also inside a path, where the wrap leaves no space (Ansible's output, kubeinit #142)
    path_wrapped = (
        '"msg": "Failed to connect socket to \'/var/run/libvirt/lib\n'
        "virt-sock': No such file or directory\"}"
    )
    assert "libvirtd-not-running" in ids_of(path_wrapped)


@pytest.mark.parametrize(
    "message",
    [
        # Go's net.Dial wording, under logrus (openshift-metal3/dev-scripts #1635)
        "level=error msg=Error: failed to dial libvirt: dial unix /var/run/libvirt/libvirt-sock: "
        "connect: no such file or directory",
        # other prefixes and a read-only socket (vagrant-libvirt #1193, Homebrew on macOS)
        "Call to virConnectOpenReadOnly failed: Failed to connect socket to "
        "'/usr/local/var/run/libvirt/libvirt-sock-ro': No such file or directory",
        # double quotes, as a CI tool printed it (openshift-metal3/dev-scripts #514)
        '02_configure_host.sh fails with "Failed to connect socket to '
        "'/var/run/libvirt/libvirt-sock': No such file or directory\"",
        # an escaped repr, as Ansible returns it (sonic-net/sonic-mgmt #10404)
        "(1, '\\n{\"msg\": \"Failed to connect socket to \\'/var/run/libvirt/libvirt-sock\\': "
        'No such file or directory", ',
        # a nova traceback line
        "2014-02-27 02:16:42.505 7854 TRACE nova.virt.libvirt.driver libvirtError: Failed to "
        "connect socket to '/var/run/libvirt/libvirt-sock': No such file or directory",
    ],
)
def test_a_missing_daemon_socket_is_recognised_however_it_was_pasted(message: str) -> None:
    ids = ids_of(message)
    assert "libvirtd-not-running" in ids, ids
    assert "modular-daemon-not-running" in ids, ids


def test_a_libvirt_sock_on_a_modular_host_names_virtproxyd() -> None:
    data = json.loads(
        kvmdoctor(
            "explain",
            "Error: failed to dial libvirt: dial unix /var/run/libvirt/libvirt-sock: connect: no "
            "such file or directory",
            "-f",
            "json",
        ).stdout
    )
    modular = next(m for m in data["matches"] if m["id"] == "modular-daemon-not-running")
    assert modular["fix"][0]["params"]["name"] == "virtproxyd.socket"
    assert modular["line"].startswith("failed to dial libvirt: Failed to connect socket to '/")


# --- one message, several causes ------------------------------------------------------------

CAPABILITIES = "error: invalid argument: could not find capabilities for domaintype=kvm"


def test_missing_kvm_capabilities_list_every_cause_the_outer_hypervisor_among_them() -> None:
    result = kvmdoctor("explain", CAPABILITIES)
    assert result.exit_code == 0
    ids = ids_of(CAPABILITIES)
    for cause in (
        "kvm-missing-module-not-loaded",
        "kvm-missing-firmware-disabled",
        "kvm-missing-nested-not-exposed",
        "nested-virt-not-exposed",
        "kvm-device-not-accessible",
        "qemu-emulator-missing",
    ):
        assert cause in ids
    lines = result.stdout.splitlines()
    assert lines[0] == (
        f"{len(ids)} possible causes (`--here`, `--snapshot PATH` or `--root DIR` tells which "
        "holds on a host):"
    )
    assert (
        "  nested-virt-not-exposed: The outer hypervisor does not pass VT-x/AMD-V through"
        in (lines[1 : len(ids) + 1])
    )


def test_on_a_recorded_host_explain_says_which_cause_holds() -> None:
    result = kvmdoctor(
        "explain",
        "Could not access KVM kernel module: Permission denied",
        "--snapshot",
        str(SNAPSHOTS / "kvm-root-only"),
        "-f",
        "json",
    )
    assert result.exit_code == 0
    host = json.loads(result.stdout)["host"]
    verdicts = {v["id"]: v["verdict"] for v in host["verdicts"]}
    assert verdicts["kvm-device-root-only"] == "holds"
    assert verdicts["kvm-device-not-accessible"] == "holds"
    assert verdicts["kvm-device-acl-denies"] == "does not hold"
    assert verdicts["kvm-access-denied-stale-group"] == "does not hold"
    assert host["verdicts"][0]["verdict"] == "holds"
    assert host["checks"] == ["KVM002", "KVM007"]
    assert host["diagnosed"] == ["kvm-device-root-only"]


def test_a_stopped_daemon_holds_and_the_modular_one_does_not() -> None:
    result = kvmdoctor(
        "explain",
        "error: Failed to connect socket to '/var/run/libvirt/libvirt-sock': No such file or "
        "directory",
        "--snapshot",
        str(SNAPSHOTS / "libvirtd-stopped"),
    )
    assert result.exit_code == 0
    out = result.stdout
    assert out.startswith("On snapshot ")
    assert "  holds         libvirtd-not-running [socket:/run/libvirt/libvirt-sock]" in out
    assert "  does not hold modular-daemon-not-running: its checks found LIB001 fail" in out


def test_on_a_guest_without_vt_x_the_outer_hypervisor_is_the_cause(
    edit_snapshot: Any, tmp_path: Path
) -> None:
    """A VMware guest whose CPU shows no vmx and has no /dev/kvm (real cpuinfo and DMI)."""
    from kdhosts import no_kvm_device
    from kdsnap import REALDATA_DMI, realdata

    snap = no_kvm_device(edit_snapshot())
    snap.set_file(
        "/proc/cpuinfo",
        realdata(
            "cpuinfo/virt-what__vmware-esx4.1-guest_core2-e8400_no-vmx_no-hypervisor-flag.txt"
        ),
    )
    values = json.loads(REALDATA_DMI.read_text())["vmware_esx4.1_guest"]
    for name in ("sys_vendor", "product_name", "bios_vendor", "board_vendor"):
        if values.get(name):
            snap.set_file(f"/sys/class/dmi/id/{name}", values[name] + "\n")
    path = snap.save()
    result = kvmdoctor("explain", CAPABILITIES, "--snapshot", str(path), "-f", "json")
    verdicts = {v["id"]: v["verdict"] for v in json.loads(result.stdout)["host"]["verdicts"]}
    assert verdicts["kvm-missing-nested-not-exposed"] == "holds"
    assert verdicts["nested-virt-not-exposed"] == "holds"
    assert verdicts["kvm-device-missing"] == "holds"  # the symptom: true, and not the cause
    assert verdicts["kvm-missing-module-not-loaded"] == "does not hold"
    assert verdicts["kvm-missing-firmware-disabled"] == "does not hold"
    assert verdicts["kvm-device-not-accessible"] != "holds"


def test_host_options_exclude_each_other() -> None:
    both = kvmdoctor(
        "explain", CAPABILITIES, "--here", "--snapshot", str(SNAPSHOTS / "kvm-root-only")
    )
    assert both.exit_code == 2
    assert "exclude each other" in both.stderr
    uri_alone = kvmdoctor("explain", CAPABILITIES, "--uri", "qemu:///system")
    assert uri_alone.exit_code == 2


# --- no signature: probably -----------------------------------------------------------------

UNMATCHED = (
    "qemu-system-x86_64: Failed to start VNC server on `127.0.0.1:5': Failed to bind socket: "
    "Cannot assign requested address"
)


def test_an_unmatched_message_gets_probable_causes_with_scores_and_exit_1() -> None:
    result = kvmdoctor("explain", UNMATCHED)
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0] == "No known problem matches this text."
    assert lines[1].startswith("Probably (nearest by their words, score 0-1")
    assert "graphics-port-conflict: A fixed VNC/SPICE port is taken" in lines[2]
    as_json = json.loads(kvmdoctor("explain", UNMATCHED, "-f", "json").stdout)
    assert as_json["matches"] == []
    best = as_json["probably"][0]
    assert best["id"] == "graphics-port-conflict" and 0 < best["score"] <= 1
    assert "vnc" in best["shared_words"]


def test_probable_causes_are_judged_on_a_host_too() -> None:
    result = kvmdoctor(
        "explain", UNMATCHED, "--snapshot", str(SNAPSHOTS / "host-kvm-pvm"), "-f", "json"
    )
    assert result.exit_code == 1  # a verdict on a guess does not make it a match
    verdicts = json.loads(result.stdout)["host"]["verdicts"]
    assert {v["id"] for v in verdicts} >= {"graphics-port-conflict"}


def test_on_a_tree_that_cannot_answer_every_cause_is_undecided(tmp_path: Path) -> None:
    result = kvmdoctor(
        "explain",
        "Could not access KVM kernel module: Permission denied",
        "--root",
        str(tmp_path),
        "-f",
        "json",
    )
    assert result.exit_code == 0
    host = json.loads(result.stdout)["host"]
    assert host["source"]["root"] == str(tmp_path)
    assert {v["verdict"] for v in host["verdicts"]} == {"undecided"}
    assert all("KVM002 skip" in v["reason"] for v in host["verdicts"])


def test_a_killed_daemon_refusing_connections_holds_on_its_recording() -> None:
    result = kvmdoctor(
        "explain",
        "dial unix /run/libvirt/libvirt-sock: connect: connection refused",
        "--snapshot",
        str(SNAPSHOTS / "libvirtd-killed"),
        "-f",
        "json",
    )
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert [m["id"] for m in data["matches"]] == ["libvirtd-not-running"]
    (verdict,) = data["host"]["verdicts"]
    assert verdict["verdict"] == "holds"
    assert "nothing listens on it" in verdict["reason"]


def test_a_message_repeated_in_a_paste_is_listed_once_with_its_count() -> None:
    line = "error: internal error: Failed to reserve port 5977"
    paste = f"{line}\nDomain web1 started\n{line}\n"
    data = json.loads(kvmdoctor("explain", "-", "-f", "json", input=paste).stdout)
    assert data["lines"] == 3
    (match,) = data["matches"]
    assert (match["id"], match["count"], match["first_line"], match["last_line"]) == (
        "graphics-port-conflict",
        2,
        1,
        3,
    )
    text = kvmdoctor("explain", "-", input=paste).stdout
    assert 'matched: "Failed to reserve port 5977" (2 lines, first 1, last 3)' in text
    once = kvmdoctor("explain", line).stdout
    assert 'matched: "Failed to reserve port 5977" (line 1)' in once


def test_a_wrapped_message_counts_once() -> None:
    """Found in lines 3 and 4 joined, and in lines 2 to 4 joined: one message, numbered by
    the first line of the first run of lines it was found in (the order `explain` lists
    causes in)."""
    data = json.loads(kvmdoctor("explain", WRAPPED, "-f", "json").stdout)
    first = data["matches"][0]
    assert first["id"] == "libvirtd-not-running"
    assert (first["count"], first["first_line"], first["last_line"]) == (1, 2, 2)
