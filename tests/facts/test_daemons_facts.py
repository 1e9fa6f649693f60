"""Daemon model, socket choice, connection classification and URI resolution."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from doctor.facts import FactContext, RunOptions
from doctor.facts.daemons import classify
from doctor.facts.libvirt import split_uri
from doctor.sources.base import LibvirtError, SourceError, TimedOut
from doctor.sources.snapshot import SnapshotSource

BINARY = {"type": "file", "mode": 0o755, "uid": 0, "gid": 0, "rdev": None, "acl": []}
SOCK = {**BINARY, "type": "socket", "mode": 0o777}


def ctx(path: Path, uri: Any = None) -> FactContext:
    return FactContext(SnapshotSource(str(path)), RunOptions(uri=uri))


def installed(snap: Any, *names: str) -> Any:
    for name in names:
        snap.set_value("stat", {"path": f"/usr/sbin/{name}", **BINARY}, path=f"/usr/sbin/{name}")
    return snap


def sockets(snap: Any, present: tuple[str, ...], absent: tuple[str, ...] = ()) -> Any:
    for path in present:
        snap.set_value("stat", {"path": path, **SOCK}, path=path)
    for path in absent:
        snap.missing("stat", path=path)
    return snap


def test_the_lab_host_is_monolithic_and_uses_libvirt_sock(host_snapshot: Path) -> None:
    c = ctx(host_snapshot)
    assert c.get("libvirt_daemons").model == "monolithic"
    choice = c.get("libvirt_socket")
    assert (choice.path, choice.mode, choice.daemon) == (
        "/run/libvirt/libvirt-sock",
        "legacy",
        "libvirtd",
    )


def test_the_modular_socket_wins_when_it_exists(edit_snapshot: Callable[[], Any]) -> None:
    snap = sockets(installed(edit_snapshot(), "virtqemud"), ("/run/libvirt/virtqemud-sock",))
    choice = ctx(snap.save()).get("libvirt_socket")
    assert (choice.path, choice.mode) == ("/run/libvirt/virtqemud-sock", "direct")
    assert choice.why == "/run/libvirt/virtqemud-sock exists"


@pytest.mark.parametrize(
    ("os_id", "binaries", "mode"),
    [
        ("debian", ("libvirtd", "virtqemud"), "legacy"),
        ("fedora", ("libvirtd", "virtqemud"), "direct"),
        ("debian", ("virtqemud",), "direct"),
    ],
)
def test_without_any_socket_the_build_default_decides(
    edit_snapshot: Callable[[], Any], os_id: str, binaries: tuple[str, ...], mode: str
) -> None:
    snap = installed(edit_snapshot(), *binaries)
    if "libvirtd" not in binaries:
        snap.missing("stat", path="/usr/sbin/libvirtd")
    sockets(snap, (), ("/run/libvirt/libvirt-sock", "/run/libvirt/virtqemud-sock"))
    release = (snap.path / "files/etc/os-release").read_text().replace("ID=debian", f"ID={os_id}")
    snap.set_file("/etc/os-release", release)
    choice = ctx(snap.save()).get("libvirt_socket")
    assert choice.mode == mode
    assert not choice.exists


def test_remote_mode_in_libvirt_conf_is_obeyed(edit_snapshot: Callable[[], Any]) -> None:
    snap = installed(edit_snapshot(), "virtqemud")
    snap.set_file("/etc/libvirt/libvirt.conf", 'remote_mode = "direct"\n')
    choice = ctx(snap.save()).get("libvirt_socket")
    assert (choice.path, choice.mode) == ("/run/libvirt/virtqemud-sock", "direct")
    assert "remote_mode" in choice.why


def test_a_uri_naming_its_socket_uses_that_socket(host_snapshot: Path) -> None:
    c = ctx(host_snapshot, uri="qemu+unix:///system?socket=/run/libvirt/libvirt-sock")
    choice = c.get("libvirt_socket")
    assert (choice.path, choice.mode, choice.exists) == (
        "/run/libvirt/libvirt-sock",
        "explicit",
        True,
    )


def test_uri_aliases_in_libvirt_conf_are_resolved(edit_snapshot: Callable[[], Any]) -> None:
    snap = edit_snapshot().set_file(
        "/etc/libvirt/libvirt.conf",
        'uri_aliases = [\n  "hail=qemu+ssh://root@hail.cloud.example.com/system",\n'
        '  "sleet=qemu+ssh://root@sleet.cloud.example.com/system",\n]\n',
    )
    uri = ctx(snap.save(), uri="sleet").get("uri")
    assert uri.uri == "qemu+ssh://root@sleet.cloud.example.com/system"
    assert uri.given == "sleet"
    assert "uri_aliases" in uri.origin


@pytest.mark.parametrize(
    ("text", "transport", "host", "local"),
    [
        ("qemu:///system", "unix", None, True),
        ("qemu://kvm1/system", "tls", "kvm1", False),
        ("qemu+ssh://root@kvm1:2222/system", "ssh", "kvm1", False),
        ("qemu+unix:///session", "unix", None, True),
        ("test:///default", "unix", None, False),
    ],
)
def test_uris_split_as_libvirt_splits_them(
    text: str, transport: str, host: Any, local: bool
) -> None:
    parts = split_uri(text)
    assert (parts.implied_transport, parts.host, parts.local_daemon) == (transport, host, local)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (
            LibvirtError(
                "connect",
                "Failed to connect socket to '/var/run/libvirt/libvirt-sock': "
                "No such file or directory",
                {"code_name": "VIR_ERR_SYSTEM_ERROR", "domain_name": "VIR_FROM_RPC"},
            ),
            "daemon-not-running",
        ),
        (
            LibvirtError(
                "connect",
                "Failed to connect socket to '/var/run/libvirt/libvirt-sock': Permission denied",
                {"code_name": "VIR_ERR_SYSTEM_ERROR", "domain_name": "VIR_FROM_RPC"},
            ),
            "permission",
        ),
        (
            LibvirtError(
                "connect",
                "authentication unavailable: no polkit agent available to "
                "authenticate action 'org.libvirt.unix.manage'",
                {"code_name": "VIR_ERR_AUTH_UNAVAILABLE", "domain_name": "VIR_FROM_POLKIT"},
            ),
            "auth",
        ),
        (
            LibvirtError(
                "connect",
                "Cannot read CA certificate '/etc/pki/CA/cacert.pem': No such file or directory",
                {"code_name": "VIR_ERR_SYSTEM_ERROR"},
            ),
            "tls",
        ),
        (TimedOut("connect", "libvirt did not answer within 2 s"), "timeout"),
        (SourceError("connect", "something odd"), "unknown"),
    ],
)
def test_connection_failures_are_classified(error: SourceError, kind: str) -> None:
    assert classify(error) == kind
