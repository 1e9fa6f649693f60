"""Domain XML parsing, and domains read from libvirt's own files when the daemon cannot be
asked (daemon down, --root), on real XML."""

from __future__ import annotations

import json
from pathlib import Path

from doctor.facts import FactContext
from doctor.facts.domains import parse_domain
from doctor.sources.live import LiveSource
from doctor.sources.snapshot import RecordingSource

from kdtest import FIXTURES, REALDATA

FILES = FIXTURES / "libvirt-files"
Q35 = (
    REALDATA
    / "domains/lkml-danmoulding__virsh-dumpxml__q35-running_fedora-virt-manager_libvirt-pcie-root-ports.xml"
)
I440FX = REALDATA / "domains/insights__etc-libvirt-qemu__i440fx_rhel7.4_virt-manager-persistent.xml"


def test_a_q35_guest_parses_with_its_disks_and_root_ports() -> None:
    dom = parse_domain(Q35.read_text(), active=True, persistent=True, origin="libvirt")
    assert (dom.type, dom.machine, dom.emulator) == (
        "kvm",
        "pc-q35-8.0",
        "/usr/bin/qemu-system-x86_64",
    )
    assert [d.bus for d in dom.disks] == ["scsi"] * 5
    assert sum(1 for c in dom.controllers if c.get("model") == "pcie-root-port") >= 1
    assert dom.memory_kib == 2 * 1024 * 1024


def test_an_i440fx_definition_parses() -> None:
    dom = parse_domain(I440FX.read_text(), active=False, persistent=True, origin="file")
    assert (dom.name, dom.machine, dom.vcpus) == ("rhel7.4", "pc-i440fx-2.10", 4)
    assert dom.disks[0].source == "/var/lib/libvirt/images/rhel-7.4-insights.qcow2"


def tree(tmp_path: Path, *, definition: bool, status: bool) -> Path:
    root = tmp_path / "tree"
    (root / "etc/libvirt/qemu").mkdir(parents=True)
    (root / "run/libvirt/qemu").mkdir(parents=True)
    if definition:
        (root / "etc/libvirt/qemu/kd-capture.xml").write_bytes(
            (FILES / "etc-libvirt-qemu__kd-capture.xml").read_bytes()
        )
    if status:
        (root / "run/libvirt/qemu/kd-capture.xml").write_bytes(
            (FILES / "run-libvirt-qemu__kd-capture.xml").read_bytes()
        )
    return root


def test_a_running_persistent_domain_is_read_from_its_files(tmp_path: Path) -> None:
    domains = FactContext(LiveSource(str(tree(tmp_path, definition=True, status=True)))).get(
        "domains"
    )
    (dom,) = domains.items
    assert (dom.name, dom.active, dom.persistent) == ("kd-capture", True, True)
    assert dom.origin == "/run/libvirt/qemu/kd-capture.xml"  # the live definition
    assert domains.origin == "definition and status files"
    assert dom.graphics[0]["port"] == "5900"
    assert "passwd" not in dom.graphics[0]


def test_a_status_file_alone_is_a_transient_domain(tmp_path: Path) -> None:
    (dom,) = (
        FactContext(LiveSource(str(tree(tmp_path, definition=False, status=True))))
        .get("domains")
        .items
    )
    assert (dom.active, dom.persistent) == (True, False)


def test_a_definition_alone_is_an_inactive_domain(tmp_path: Path) -> None:
    (dom,) = (
        FactContext(LiveSource(str(tree(tmp_path, definition=True, status=False))))
        .get("domains")
        .items
    )
    assert (dom.active, dom.persistent, dom.origin) == (
        False,
        True,
        "/etc/libvirt/qemu/kd-capture.xml",
    )


def test_graphics_passwords_in_libvirts_files_never_reach_a_snapshot(tmp_path: Path) -> None:
    recorder = RecordingSource(LiveSource(str(tree(tmp_path, definition=True, status=True))))
    FactContext(recorder).get("domains")
    snap = tmp_path / "snap"
    recorder.write(str(snap))
    written = b"".join(p.read_bytes() for p in snap.rglob("*") if p.is_file())
    assert b"kdsecret" not in written
    manifest = json.loads((snap / "manifest.json").read_text())
    status = next(
        a for a in manifest["answers"] if a.get("path") == "/run/libvirt/qemu/kd-capture.xml"
    )
    assert status["redacted"] == ["passwd"]
