"""The probe's packets, sent as the guest, only to the address the user named, at most 10 a
second. From a namespace: ICMP echo requests with a fixed id and a per-run payload token,
from a raw socket opened inside the namespace, so its own routing, ARP and MAC apply. From a
libvirt guest: ARP requests for the target with the guest's MAC and the token after the ARP
payload, written on the guest's tap and turned into its ingress by the Lab's mirred filter."""

from __future__ import annotations

import contextlib
import socket
from typing import Any, Optional

PROBE_ICMP_ID = 0x6B64  # "kd"
MAX_RATE = 10.0  # packets per second


def echo_request(seq: int, token: bytes) -> bytes:
    from scapy.layers.inet import ICMP
    from scapy.packet import Raw

    return bytes(ICMP(type=8, code=0, id=PROBE_ICMP_ID, seq=seq) / Raw(token + b":%d" % seq))


class NetnsSender:
    """A raw ICMP socket inside the namespace standing in for the guest."""

    def __init__(self, netns: Optional[str], target: str, token: bytes) -> None:
        self.netns = netns
        self.target = target
        self.token = token
        self.sock: Any = None

    def open(self) -> None:
        from pyroute2 import netns as namespaces

        if self.netns is not None:
            namespaces.pushns(self.netns)
        try:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        finally:
            if self.netns is not None:
                namespaces.popns()

    def send(self, seq: int) -> Optional[str]:
        """Send one; the error the guest's kernel gave, if it refused (no route)."""
        try:
            self.sock.sendto(echo_request(seq, self.token), (self.target, 0))
        except OSError as exc:
            return exc.strerror or str(exc)
        return None

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None


def arp_request(
    guest_mac: str, guest_ip: Optional[str], target: str, token: bytes, seq: int
) -> bytes:
    """The guest asking who has `target` (an ARP probe from 0.0.0.0 when its address is not
    known), the token after the ARP payload where Ethernet padding goes."""
    from scapy.layers.l2 import ARP, Ether
    from scapy.packet import Padding

    frame = (
        Ether(dst="ff:ff:ff:ff:ff:ff", src=guest_mac)
        / ARP(op=1, hwsrc=guest_mac, psrc=guest_ip or "0.0.0.0", pdst=target)
        / Padding(load=token + b":%d" % seq)
    )
    return bytes(frame)


class TapSender:
    """Frames written on the guest's tap by the host; the Lab's mirred filter turns them
    around into the tap's ingress, so they enter the bridge from the guest's own port with
    its own MAC. Only frames with the guest's source MAC are turned around."""

    def __init__(
        self, tap: str, guest_mac: str, guest_ip: Optional[str], target: str, token: bytes
    ) -> None:
        self.tap = tap
        self.guest_mac = guest_mac
        self.guest_ip = guest_ip
        self.target = target
        self.token = token
        self.sock: Any = None

    def open(self) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        self.sock.bind((self.tap, 0))

    def send(self, seq: int) -> Optional[str]:
        frame = arp_request(self.guest_mac, self.guest_ip, self.target, self.token, seq)
        try:
            self.sock.send(frame)
        except OSError as exc:
            return exc.strerror or str(exc)
        return None

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None
