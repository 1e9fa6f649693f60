"""The probe's packets, sent as the guest, only to the address the user named, at most 10 a
second, each marked (capture.Marker) so that it is never confused with other traffic.

From a namespace, through sockets opened inside it (so its own routing, ARP and MAC apply):
ICMP echo requests (id 0x6b64, the token in the payload) from a raw ICMP socket; UDP datagrams
from port 27492 with the token as payload; TCP SYNs from port 27492 with the run's sequence
numbers, built whole and sent from a raw socket; ARP requests from the namespace's NIC.

From a libvirt guest: ARP requests for the target with the guest's MAC and the token after the
ARP payload, written on the guest's tap and turned into its ingress by the Lab's mirred filter.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any, Optional

from doctor.probe.capture import PROBE_PORT, Marker

PROBE_ICMP_ID = 0x6B64  # "kd"
MAX_RATE = 10.0  # packets per second


def echo_request(seq: int, token: bytes) -> bytes:
    from scapy.layers.inet import ICMP
    from scapy.packet import Raw

    return bytes(ICMP(type=8, code=0, id=PROBE_ICMP_ID, seq=seq) / Raw(token + b":%d" % seq))


def tcp_syn(marker: Marker, source: str, seq: int) -> bytes:
    """A whole IPv4 packet: SYN from the probe's port, sequence number base + seq."""
    from scapy.layers.inet import IP, TCP

    packet = IP(src=source, dst=marker.target) / TCP(
        sport=PROBE_PORT, dport=marker.port, flags="S", seq=marker.tcp_base + seq, window=1024
    )
    return bytes(packet)


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


class NetnsSender:
    """Sockets inside the namespace standing in for the guest."""

    def __init__(
        self,
        netns: Optional[str],
        marker: Marker,
        *,
        iface: Optional[str] = None,
        source: Optional[str] = None,
    ) -> None:
        self.netns = netns
        self.marker = marker
        self.iface = iface  # the NIC, for ARP
        self.source = source  # the guest's address, for TCP (the checksum covers it)
        self.sock: Any = None

    def open(self) -> None:
        from pyroute2 import netns as namespaces

        proto = self.marker.proto
        if proto in ("tcp", "arp") and (self.source if proto == "tcp" else self.iface) is None:
            raise OSError(
                f"a {proto} probe needs the guest's {'address' if proto == 'tcp' else 'NIC'}"
            )
        if self.netns is not None:
            namespaces.pushns(self.netns)
        try:
            if proto == "icmp":
                self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            elif proto == "udp":
                self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                self.sock.bind(("", PROBE_PORT))
            elif proto == "tcp":
                self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
            else:
                self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
                self.sock.bind((self.iface, 0))
        finally:
            if self.netns is not None:
                namespaces.popns()

    def send(self, seq: int) -> Optional[str]:
        """Send one; the error the guest's kernel gave, if it refused (no route)."""
        marker = self.marker
        try:
            if marker.proto == "icmp":
                self.sock.sendto(echo_request(seq, marker.token), (marker.target, 0))
            elif marker.proto == "udp":
                self.sock.sendto(marker.token + b":%d" % seq, (marker.target, marker.port))
            elif marker.proto == "tcp":
                assert self.source is not None
                self.sock.sendto(tcp_syn(marker, self.source, seq), (marker.target, 0))
            else:
                assert marker.guest_mac is not None
                frame = arp_request(marker.guest_mac, self.source, marker.target, marker.token, seq)
                self.sock.send(frame)
        except OSError as exc:
            return exc.strerror or str(exc)
        return None

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None


class TapSender:
    """Frames written on the guest's tap by the host; the Lab's mirred filter turns them
    around into the tap's ingress, so they enter the bridge from the guest's own port with
    its own MAC. Only frames with the guest's source MAC are turned around."""

    def __init__(self, tap: str, marker: Marker, guest_ip: Optional[str]) -> None:
        self.tap = tap
        self.marker = marker
        self.guest_ip = guest_ip
        self.sock: Any = None

    def open(self) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        self.sock.bind((self.tap, 0))

    def send(self, seq: int) -> Optional[str]:
        marker = self.marker
        assert marker.guest_mac is not None
        frame = arp_request(marker.guest_mac, self.guest_ip, marker.target, marker.token, seq)
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
