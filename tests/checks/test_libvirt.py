"""LIB001-LIB007: a passing and a failing case each, on the lab host's recorded snapshot and
hosts derived from it (daemon stopped or missing, modular daemons, other URIs, real domain XML
from tests/fixtures/realdata/domains)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kdhosts import (
    LIBVIRT,
    QEMUD_SOCK,
    REFUSED,
    RHEL_DOMAIN,
    daemon_stopped,
    image_under,
    socket_left_behind,
    stale_virtqemud_socket,
    with_domains,
)
from kdsnap import one, realdata, run_checks
from kdtest import HOST_SNAPSHOT


@pytest.fixture(scope="module")
def host() -> dict[str, list[Any]]:
    return run_checks(HOST_SNAPSHOT)


# --- LIB001 libvirt-socket-missing ---------------------------------------------------------


def test_lib001_passes_where_libvirtd_listens(host: dict[str, list[Any]]) -> None:
    finding = one(host, "LIB001")
    assert finding.status == "pass"
    assert finding.subject == "socket:/run/libvirt/libvirt-sock"
    assert finding.evidence["daemons"]["model"] == "monolithic"


def test_lib001_names_the_daemon_and_how_to_start_it_when_it_is_down(edit_snapshot: Any) -> None:
    finding = one(run_checks(daemon_stopped(edit_snapshot()).save()), "LIB001")
    assert finding.status == "fail"
    assert "/run/libvirt/libvirt-sock does not exist: libvirtd is not running" in finding.message
    assert "libvirtd -d" in finding.message  # no systemd on the lab host


def test_lib001_fails_a_socket_left_behind_by_a_daemon_that_is_gone(edit_snapshot: Any) -> None:
    findings = run_checks(socket_left_behind(edit_snapshot()).save())
    finding = one(findings, "LIB001")
    assert finding.status == "fail"
    assert finding.subject == "socket:/run/libvirt/libvirt-sock"
    assert "exists but nothing listens on it (connection refused)" in finding.message
    assert "libvirtd is not running and left its socket behind" in finding.message
    assert "libvirtd -d" in finding.message
    assert "Connection refused" in finding.evidence["connection"]["error"]
    assert one(findings, "LIB002").evidence["error_kind"] == "daemon-not-running"


def test_lib001_tells_a_refusing_socket_apart_from_a_daemon_that_runs(edit_snapshot: Any) -> None:
    snap = edit_snapshot().set_error("libvirt", REFUSED, request="connect", **LIBVIRT)
    finding = one(run_checks(snap.save()), "LIB001")
    assert finding.status == "fail"
    assert "refuses connections although libvirtd runs (pid" in finding.message
    assert "does not listen on it" in finding.message


def test_lib001_blames_only_the_socket_that_refused(edit_snapshot: Any) -> None:
    """A refusal on another socket (here virtproxyd's) says nothing about the one LIB001
    chose; LIB002 reports it."""
    other = {**REFUSED, "message": REFUSED["message"].replace("libvirt-sock", "virtproxyd-sock")}
    snap = socket_left_behind(edit_snapshot()).set_error(
        "libvirt", other, request="connect", **LIBVIRT
    )
    findings = run_checks(snap.save())
    assert one(findings, "LIB001").status == "pass"
    assert "virtproxyd-sock': Connection refused" in one(findings, "LIB002").message


def test_lib001_leaves_a_refused_session_socket_to_lib002(edit_snapshot: Any) -> None:
    """The client starts a session daemon again when its socket refuses: no stale-socket advice
    (which would be about the system's daemons) for qemu:///session."""
    session_sock = "/run/user/0/libvirt/libvirt-sock"
    refused = {
        **REFUSED,
        "message": REFUSED["message"].replace("/var/run/libvirt/libvirt-sock", session_sock),
    }
    snap = socket_left_behind(edit_snapshot()).set_stat(session_sock, type="socket", mode=0o700)
    snap.set_error("libvirt", refused, request="connect", uri="qemu:///session", params={})
    findings = run_checks(snap.save(), uri="qemu:///session")
    lib001 = one(findings, "LIB001")
    assert lib001.evidence["socket"] == {**lib001.evidence["socket"], "path": session_sock}
    assert lib001.evidence["socket"]["exists"] is True
    assert lib001.status == "pass", lib001.message
    assert one(findings, "LIB002").status == "fail"


def test_lib001_advises_removing_a_virtqemud_socket_left_on_a_libvirtd_host(
    edit_snapshot: Any,
) -> None:
    """Not "start virtqemud": this host runs libvirtd; the stale file makes the client pick
    virtqemud-sock for qemu:///system, so only its removal (or a switch) helps."""
    from doctor import playbooks, rules

    findings = run_checks(stale_virtqemud_socket(edit_snapshot()).save(), uri="qemu:///system")
    finding = one(findings, "LIB001")
    assert finding.status == "fail"
    assert finding.subject == f"socket:{QEMUD_SOCK}"
    assert finding.message.startswith(
        f"{QEMUD_SOCK} is a socket file left behind by virtqemud (the connection to it is "
        "refused), but this host is served by the monolithic libvirtd (pid"
    )
    assert f"rm -f {QEMUD_SOCK}" in finding.message
    assert "virtqemud -d" not in finding.message
    stale = finding.evidence["stale_modular_socket"]
    assert stale["served_by"] == "libvirtd"
    assert stale["confirmed_by"] == "the connection to it was refused"
    assert finding.evidence["daemons"]["model"] == "monolithic"  # the running daemon decides

    flat = [f for fs in findings.values() for f in fs]
    diagnoses, marked = rules.diagnose(flat, playbooks.shipped())
    first = diagnoses[0]
    assert first.playbook.id == "libvirt-stale-modular-socket"
    assert "modular-daemon-not-running" not in [d.playbook.id for d in diagnoses]
    step = first.fix[0]
    assert (step.action, step.safety, step.params["argv"]) == (
        "command",
        "safe",
        ["rm", "-f", "--", QEMUD_SOCK],
    )
    assert [s.safety for s in first.fix] == ["safe", "safe", "disruptive"]
    lib002 = next(f for f in marked if f.code == "LIB002")
    assert lib002.explained_by == ("libvirt-stale-modular-socket",)


def test_lib001_sees_the_stale_socket_also_without_a_uri(edit_snapshot: Any) -> None:
    """Without a URI libvirt's probe uses libvirt-sock and connects, but virt-manager and
    `virsh -c qemu:///system` are refused: no virtqemud process serves the file."""
    findings = run_checks(stale_virtqemud_socket(edit_snapshot(), named_uri=False).save())
    finding = one(findings, "LIB001")
    assert finding.status == "fail"
    assert "(no virtqemud process exists)" in finding.message
    assert one(findings, "LIB002").status == "pass"


def test_lib001_passes_the_virtqemud_socket_while_virtqemud_runs(edit_snapshot: Any) -> None:
    snap = stale_virtqemud_socket(edit_snapshot(), named_uri=False)
    rows = json.loads((snap.path / "processes.json").read_text())
    daemon = next(r for r in rows if r["name"] == "libvirtd")
    snap.set_processes([*rows, {**daemon, "pid": 4242, "name": "virtqemud"}])
    finding = one(run_checks(snap.save()), "LIB001")
    assert finding.status == "pass"
    assert finding.message.startswith(f"{QEMUD_SOCK} exists (virtqemud, modular daemons")
    assert "stale_modular_socket" not in finding.evidence


def test_lib001_says_to_start_libvirtd_too_when_it_is_stopped_as_well(
    edit_snapshot: Any,
) -> None:
    snap = stale_virtqemud_socket(daemon_stopped(edit_snapshot()))
    finding = one(run_checks(snap.save(), uri="qemu:///system"), "LIB001")
    assert finding.status == "fail"
    assert "only the monolithic libvirtd is installed here (virtqemud is not)" in finding.message
    assert "and start libvirtd: libvirtd -d" in finding.message


def test_lib001_says_when_no_daemon_is_installed_at_all(edit_snapshot: Any) -> None:
    snap = daemon_stopped(edit_snapshot()).missing("stat", path="/usr/sbin/libvirtd")
    finding = one(run_checks(snap.save()), "LIB001")
    assert finding.status == "fail"
    assert "no libvirt daemon is installed" in finding.message
    assert "apt-get install libvirt-daemon-system" in finding.message


def test_lib001_on_a_modular_host_checks_the_network_daemon_too(edit_snapshot: Any) -> None:
    snap = daemon_stopped(edit_snapshot())
    binary = {"type": "file", "mode": 0o755, "uid": 0, "gid": 0, "rdev": None, "acl": []}
    for name in ("virtqemud", "virtnetworkd", "virtstoraged"):
        snap.set_value("stat", {"path": f"/usr/sbin/{name}", **binary}, path=f"/usr/sbin/{name}")
    for name in ("virtqemud", "virtstoraged"):
        path = f"/run/libvirt/{name}-sock"
        snap.set_value("stat", {"path": path, **binary, "type": "socket"}, path=path)
    findings = run_checks(snap.save())
    assert one(findings, "LIB001", "socket:/run/libvirt/virtqemud-sock").status == "pass"
    network = one(findings, "LIB001", "socket:/run/libvirt/virtnetworkd-sock")
    assert network.status == "fail"
    assert "virtnetworkd -d" in network.message


def test_lib001_does_not_apply_to_a_remote_uri(host_snapshot: Path) -> None:
    finding = one(run_checks(host_snapshot, uri="qemu+ssh://kvm1.example/system"), "LIB001")
    assert finding.status == "pass"
    assert "does not use a local daemon socket" in finding.message


# --- LIB002 libvirt-connection-failed ------------------------------------------------------


def test_lib002_passes_with_the_versions_it_connected_to(host: dict[str, list[Any]]) -> None:
    finding = one(host, "LIB002")
    assert finding.status == "pass"
    assert "libvirt 9.0.0" in finding.message


def test_lib002_keeps_libvirts_code_and_classifies_the_failure(edit_snapshot: Any) -> None:
    finding = one(run_checks(daemon_stopped(edit_snapshot()).save()), "LIB002")
    assert finding.status == "fail"
    assert finding.evidence["details"]["code_name"] == "VIR_ERR_SYSTEM_ERROR"
    assert finding.evidence["error_kind"] == "daemon-not-running"
    assert "(see LIB001)" in finding.message


@pytest.mark.parametrize(
    ("what", "opened", "said"),
    [
        ("connect to qemu:///system", False, "cannot connect to qemu:///system"),
        ("connect on qemu:///system", True, "connected to qemu:///system, but a request"),
    ],
)
def test_lib002_tells_a_hung_open_from_a_request_that_hung_after_it(
    edit_snapshot: Any, what: str, opened: bool, said: str
) -> None:
    """A daemon that never completes the connection, and one that opens it and then stops
    answering (the source names the step: `connect to URI` is the open itself)."""
    hang = {"type": "timeout", "what": what, "message": "libvirt did not answer within 10 s"}
    snap = edit_snapshot().set_error("libvirt", hang, request="connect", **LIBVIRT)
    finding = one(run_checks(snap.save()), "LIB002")
    assert finding.status == "fail"
    assert finding.message.startswith(said)
    assert finding.evidence["opened"] is opened
    assert finding.evidence["error_kind"] == "timeout"  # the libvirt-daemon-hung playbook


def test_lib002_recognises_a_polkit_refusal(edit_snapshot: Any) -> None:
    # virsh as an unprivileged user without a polkit agent (libvirt's wording).
    refusal = {
        "type": "libvirt-error",
        "what": "connect",
        "message": "authentication unavailable: no polkit agent available to authenticate action "
        "'org.libvirt.unix.manage'",
        "details": {
            "code": 49,
            "code_name": "VIR_ERR_AUTH_UNAVAILABLE",
            "domain": 46,
            "domain_name": "VIR_FROM_POLKIT",
            "level": 2,
        },
    }
    snap = edit_snapshot().set_error("libvirt", refusal, request="connect", **LIBVIRT)
    finding = one(run_checks(snap.save()), "LIB002")
    assert finding.evidence["error_kind"] == "auth"
    assert "`libvirt` group" in finding.message


# --- LIB003 virtlogd-unavailable -----------------------------------------------------------


def test_lib003_passes_with_virtlogds_socket(host: dict[str, list[Any]]) -> None:
    assert one(host, "LIB003").status == "pass"


def test_lib003_fails_without_virtlogd(edit_snapshot: Any) -> None:
    snap = edit_snapshot().missing("stat", path="/run/libvirt/virtlogd-sock")
    finding = one(run_checks(snap.save()), "LIB003")
    assert finding.status == "fail"
    assert "Failed to connect socket to '/run/libvirt/virtlogd-sock'" in finding.message
    assert "virtlogd -d" in finding.message


def test_lib003_does_not_need_virtlogd_when_qemu_logs_to_files(edit_snapshot: Any) -> None:
    snap = edit_snapshot().missing("stat", path="/run/libvirt/virtlogd-sock")
    conf = (snap.path / "files/etc/libvirt/qemu.conf").read_text()
    snap.set_file("/etc/libvirt/qemu.conf", conf + '\nstdio_handler = "file"\n')
    assert one(run_checks(snap.save()), "LIB003").status == "pass"


# --- LIB004 qemu-emulator-missing ----------------------------------------------------------


def test_lib004_passes_for_the_emulators_in_the_capabilities(host: dict[str, list[Any]]) -> None:
    subjects = {f.subject: f.status for f in host["LIB004"]}
    assert subjects["emulator:/usr/bin/qemu-system-x86_64"] == "pass"


def test_lib004_cannot_judge_an_emulator_the_snapshot_did_not_record(edit_snapshot: Any) -> None:
    snap = with_domains(edit_snapshot(), realdata(RHEL_DOMAIN))
    finding = one(run_checks(snap.save()), "LIB004", "emulator:/usr/bin/qemu-kvm")
    assert finding.status == "skip"


def test_lib004_fails_for_a_rhel_domain_on_a_debian_host(edit_snapshot: Any) -> None:
    snap = with_domains(edit_snapshot(), realdata(RHEL_DOMAIN))
    snap.missing("stat", path="/usr/bin/qemu-kvm")  # the RHEL 7 domain names /usr/bin/qemu-kvm
    finding = one(run_checks(snap.save()), "LIB004", "emulator:/usr/bin/qemu-kvm")
    assert finding.status == "fail"
    assert "domain:rhel7.4" in finding.message


# --- LIB005 uri-implies-tls ----------------------------------------------------------------


def test_lib005_passes_for_the_local_system_uri(host: dict[str, list[Any]]) -> None:
    assert one(host, "LIB005").status == "pass"


def test_lib005_warns_about_a_host_without_transport(host_snapshot: Path) -> None:
    finding = one(run_checks(host_snapshot, uri="qemu://kvm1.example/system"), "LIB005")
    assert finding.status == "warn"
    assert "qemu+ssh://kvm1.example/system" in finding.message
    assert finding.evidence["uri"]["origin"] == "--uri"


# --- LIB006 network-firewall-tools-missing -------------------------------------------------


def test_lib006_passes_with_iptables_and_ebtables(host: dict[str, list[Any]]) -> None:
    finding = one(host, "LIB006")
    assert finding.status == "pass"
    assert finding.evidence["backend"] == "iptables"


def test_lib006_fails_without_ebtables(edit_snapshot: Any) -> None:
    snap = edit_snapshot()
    for directory in (
        "/usr/sbin",
        "/sbin",
        "/usr/bin",
        "/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
    ):
        snap.missing("stat", path=f"{directory}/ebtables")
    finding = one(run_checks(snap.save()), "LIB006")
    assert finding.status == "fail"
    assert "needs ebtables" in finding.message


def test_lib006_follows_network_conf_to_the_nftables_backend(edit_snapshot: Any) -> None:
    snap = edit_snapshot().set_file("/etc/libvirt/network.conf", 'firewall_backend = "nftables"\n')
    for directory in (
        "/usr/sbin",
        "/sbin",
        "/usr/bin",
        "/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
    ):
        snap.missing("stat", path=f"{directory}/ebtables")
    finding = one(run_checks(snap.save()), "LIB006")
    assert finding.status == "pass"  # nft is there; ebtables is not needed
    assert finding.evidence["backend"] == "nftables"


# --- LIB007 qemu-cannot-access-images ------------------------------------------------------


def test_lib007_passes_when_the_directories_let_qemu_through(edit_snapshot: Any) -> None:
    finding = one(run_checks(image_under(edit_snapshot(), 0o711).save()), "LIB007")
    assert finding.status == "pass"
    assert "dynamic_ownership" in finding.message  # the 0600 image is handed over at start


def test_lib007_fails_for_an_image_under_a_private_root_home(edit_snapshot: Any) -> None:
    finding = one(run_checks(image_under(edit_snapshot(), 0o700).save()), "LIB007")
    assert finding.status == "fail"
    assert "libvirt-qemu cannot reach /root/images/rhel.qcow2" in finding.message
    assert "no search (x) permission on /root" in finding.message


def test_lib007_fails_for_a_missing_image(edit_snapshot: Any) -> None:
    snap = image_under(edit_snapshot(), 0o711).missing("stat", path="/root/images/rhel.qcow2")
    finding = one(run_checks(snap.save()), "LIB007")
    assert finding.status == "fail"
    assert "Cannot access storage file '/root/images/rhel.qcow2'" in finding.message
