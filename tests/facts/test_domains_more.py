"""What the DOM checks read from a domain (PCI slots, features, memory as written, boot orders,
console listen addresses) on real domain XML, and the `tcp_listeners` fact on real
/proc/net/tcp text and on this machine's own sockets, compared with what bind(2) says."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from contextlib import closing
from typing import Callable, Optional

import pytest

from doctor.facts import FactContext
from doctor.facts.domains import parse_domain
from doctor.facts.sockets import Listener, parse_proc_net_tcp
from doctor.sources.live import LiveSource

from kdtest import REALDATA

Q35 = (
    REALDATA
    / "domains/lkml-danmoulding__virsh-dumpxml__q35-running_fedora-virt-manager_libvirt-pcie-root-ports.xml"
)
I440FX = REALDATA / "domains/insights__etc-libvirt-qemu__i440fx_rhel7.4_virt-manager-persistent.xml"
PROC_NET = REALDATA / "proc-net"


def test_every_pci_address_of_the_real_q35_guest_is_read_with_its_device() -> None:
    dom = parse_domain(Q35.read_text(), active=True, persistent=True, origin="libvirt")
    placed = {d.where: d.label for d in dom.pci_devices}
    assert placed["01:00.0"] == "interface 52:54:00:01:a7:85"
    assert placed["02:00.0"] == "controller usb 0 (qemu-xhci)"
    assert placed["00:02.0"] == "controller pci 1 (pcie-root-port)"
    assert placed["00:03.5"] == "controller pci 14 (pcie-root-port)"
    assert placed["00:1f.2"] == "controller sata 0"
    assert placed["06:00.0"] == "rng virtio"
    # SCSI disks sit on drive addresses, the watchdog (itco) and serial on none: not PCI.
    assert not any(d.label.startswith(("disk", "watchdog", "serial")) for d in dom.pci_devices)
    assert len(dom.pci_devices) == 23
    assert all(d.addressed for d in dom.pci_devices)
    assert dom.features == {"acpi": "on", "apic": "on", "vmport": "off"}
    assert (dom.memory_value, dom.memory_unit) == (2097152, "KiB")


def test_the_real_i440fx_definition_gives_its_slots_and_its_os_boot() -> None:
    dom = parse_domain(I440FX.read_text(), active=False, persistent=True, origin="file")
    assert sorted({d.slot for d in dom.pci_devices}) == [2, 3, 4, 5, 6, 7, 8]
    assert dom.os_boot == ("hd",)
    assert dom.boot_orders == ()
    assert dom.graphics == ({"type": "spice", "autoport": "yes", "listen_type": "address"},)


def test_unaddressed_devices_are_kept_as_taking_a_slot_and_other_buses_are_not() -> None:
    dom = parse_domain(
        """<domain type='kvm'><name>kd-hand</name><memory unit='MiB'>4</memory>
        <features><acpi/><ioapic driver='qemu'/><smm state='off'/></features>
        <devices>
          <interface type='user'><model type='virtio'/><boot order='2'/></interface>
          <disk type='file' device='disk'><source file='/x.qcow2'/><target dev='vda' bus='virtio'/>
            <boot order='1'/></disk>
          <disk type='file' device='cdrom'><target dev='sda' bus='sata'/></disk>
          <controller type='pci' index='1' model='pcie-root-port'><target hotplug='off'/></controller>
          <hostdev mode='subsystem' type='pci'><source>
            <address domain='0x0000' bus='0x03' slot='0x00' function='0x1'/></source></hostdev>
          <input type='tablet' bus='usb'/>
          <graphics type='vnc' port='5901' autoport='no' passwd='kdsecret'>
            <listen type='address' address='192.0.2.7'/></graphics>
        </devices></domain>""",
        active=False,
        persistent=True,
        origin="file",
    )
    labels = [d.label for d in dom.pci_devices]
    assert labels == [
        "interface type=user",
        "disk vda",
        "controller pci 1 (pcie-root-port)",
        "hostdev 0000:03:00.1",
    ]
    assert not any(d.addressed for d in dom.pci_devices)
    assert [(b.device, b.order) for b in dom.boot_orders] == [
        ("interface type=user", 2),
        ("disk vda", 1),
    ]
    assert dom.features == {"acpi": "on", "ioapic": "qemu", "smm": "off"}
    assert (dom.memory_value, dom.memory_unit, dom.memory_kib) == (4, "MiB", 4096)
    assert dom.controllers[0]["target"] == {"hotplug": "off"}
    assert dom.graphics == (
        {
            "type": "vnc",
            "port": "5901",
            "autoport": "no",
            "listen_type": "address",
            "listen": "192.0.2.7",
        },
    )


# --- tcp_listeners -----------------------------------------------------------------------------


def test_listening_sockets_are_read_from_real_proc_net_tcp_and_tcp6() -> None:
    v4 = parse_proc_net_tcp((PROC_NET / "lab__proc-net-tcp__kd-listeners.txt").read_text(), "ipv4")
    v6 = parse_proc_net_tcp((PROC_NET / "lab__proc-net-tcp6__kd-listeners.txt").read_text(), "ipv6")
    assert [(s.address, s.port) for s in v4] == [
        ("127.0.0.1", 5977),
        ("0.0.0.0", 2024),
        ("0.0.0.0", 5999),
    ]  # the two ESTABLISHED lines are left out
    assert [(s.address, s.port) for s in v6] == [("::1", 5978), ("::", 5998)]
    assert v4[0].inode == 318893


def test_a_big_endian_kernels_words_are_read_in_its_order() -> None:
    """An s390x kernel prints 127.0.0.1 as 7F000001."""
    text = (
        "  sl  local_address rem_address   st\n   0: 7F000001:1759 00000000:0000 0A 0 0 0 0 0 7\n"
    )
    (found,) = parse_proc_net_tcp(text, "ipv4", big_endian=True)
    assert (found.address, found.port) == ("127.0.0.1", 5977)


@pytest.fixture
def listening() -> Iterator[Callable[..., socket.socket]]:
    """listen(family, address) opens a listening socket on a free port; all closed after."""
    opened: list[socket.socket] = []

    def listen(family: int, address: str, port: int = 0) -> socket.socket:
        sock = socket.socket(family)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        opened.append(sock)
        sock.bind((address, port))
        sock.listen()
        return sock

    yield listen
    for sock in opened:
        sock.close()


def _bind_fails(family: int, address: str, port: int) -> bool:
    with closing(socket.socket(family)) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as QEMU does
        try:
            probe.bind((address, port))
        except OSError as exc:
            assert exc.errno == errno.EADDRINUSE
            return True
    return False


def _live_listener(port: int) -> Optional[Listener]:
    listeners = FactContext(LiveSource()).get("tcp_listeners")
    return next(iter(listeners.on_port(port)), None)


@pytest.mark.parametrize(
    ("held", "wanted"),
    [
        ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET, "127.0.0.1")),
        ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET, "127.0.0.1")),
        ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET, "0.0.0.0")),
        ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET, "127.0.0.2")),
        ((socket.AF_INET6, "::"), (socket.AF_INET, "127.0.0.1")),
        ((socket.AF_INET6, "::1"), (socket.AF_INET, "127.0.0.1")),
        ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::1")),
    ],
    ids=lambda pair: pair[1],
)
def test_overlap_predicts_what_bind_says_on_this_machine(
    listening: Callable[..., socket.socket], held: tuple[int, str], wanted: tuple[int, str]
) -> None:
    sock = listening(*held)
    port = sock.getsockname()[1]
    found = _live_listener(port)
    assert found is not None and found.address == held[1]
    assert found.overlaps(wanted[1]) == _bind_fails(*wanted, port)
