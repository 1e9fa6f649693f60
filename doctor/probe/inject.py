"""The probe's packets, sent as the guest, only to the address the user named, at most 10 a
second, each marked (capture.Marker) so that it is never confused with other traffic.

From a namespace, through sockets opened inside it (so its own routing, ARP and MAC apply):
ICMP echo requests (id 0x6b64, the token in the payload) from a raw ICMP socket; UDP datagrams
from port 27492 with the token as payload; TCP SYNs from port 27492 with the run's sequence
numbers, built whole and sent from a raw socket; ARP requests from the namespace's NIC.

From a libvirt guest: the frames the guest would send, written on its tap and turned into the
tap's ingress by the Lab's mirred filter: ARP requests with the guest's MAC and the token after
the ARP payload, or whole Ethernet frames (guest MAC and address, to the target's MAC on the
bridge or to the bridge's own MAC as the guest's gateway) carrying the same ICMP, UDP and TCP
marks as from a namespace.
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


def guest_frame(marker: Marker, guest_mac: str, next_mac: str, source: str, seq: int) -> bytes:
    """The whole Ethernet frame the guest would send for probe `seq`: from its MAC and
    address to the next hop's MAC (the target's on the bridge, else its gateway's), with the
    same marks as the namespace path (ICMP id and token, UDP source port and token, TCP
    source port and sequence number)."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    ip: Any = IP(src=source, dst=marker.target, ttl=64)
    payload = marker.token + b":%d" % seq
    inner: Any
    if marker.proto == "icmp":
        inner = ICMP(type=8, code=0, id=PROBE_ICMP_ID, seq=seq) / Raw(payload)
    elif marker.proto == "udp":
        inner = UDP(sport=PROBE_PORT, dport=marker.port) / Raw(payload)
    elif marker.proto == "tcp":
        inner = TCP(
            sport=PROBE_PORT, dport=marker.port, flags="S", seq=marker.tcp_base + seq, window=1024
        )
    else:
        raise ValueError(f"no IP frame for {marker.proto}")
    return bytes(Ether(src=guest_mac, dst=next_mac) / ip / inner)


class TapSender:
    """Frames written on the guest's tap by the host; the Lab's mirred filter turns them
    around into the tap's ingress, so they enter the bridge from the guest's own port with
    its own MAC. Only frames with the guest's source MAC are turned around, and only this
    tap ever carries them.

    ARP requests for the target (the token after the ARP payload), or whole IPv4 frames as
    the guest builds them (guest_frame). For a target on the bridge whose MAC the host does
    not know, the guest's ARP request for it (marked too) is sent first and the answer read
    on the tap, as the guest would resolve it."""

    RESOLVE_WAIT = 1.0  # seconds for the target's ARP answer

    def __init__(
        self,
        tap: str,
        marker: Marker,
        guest_ip: Optional[str],
        next_mac: Optional[str] = None,
    ) -> None:
        self.tap = tap
        self.marker = marker
        self.guest_ip = guest_ip
        self.next_mac = next_mac
        self.sock: Any = None

    def open(self) -> None:
        if self.marker.proto != "arp" and self.guest_ip is None:
            raise OSError(f"an {self.marker.proto} probe needs the guest's IPv4 address")
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        self.sock.bind((self.tap, 0))

    def resolve(self) -> Optional[str]:
        """The target's MAC from its answer to the guest's ARP request (None: no answer)."""
        import select
        import time

        from scapy.layers.l2 import ARP, Ether

        marker = self.marker
        assert marker.guest_mac is not None
        # ETH_P_ALL: a socket for one protocol sees no frames the host sends (the answer
        # leaves through the tap towards the guest).
        listen = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        try:
            listen.bind((self.tap, 0))
            listen.setblocking(False)
            self.sock.send(
                arp_request(marker.guest_mac, self.guest_ip, marker.target, marker.token, 0)
            )
            deadline = time.monotonic() + self.RESOLVE_WAIT
            while (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select([listen], [], [], left)
                if not ready:
                    break
                with contextlib.suppress(BlockingIOError):
                    arp = Ether(listen.recv(65535)).getlayer(ARP)
                    if (
                        arp is not None
                        and int(arp.op) == 2
                        and arp.psrc == marker.target
                        and str(arp.hwdst).lower() == marker.guest_mac
                    ):
                        self.next_mac = str(arp.hwsrc).lower()
                        return self.next_mac
        finally:
            listen.close()
        return None

    def send(self, seq: int) -> Optional[str]:
        marker = self.marker
        assert marker.guest_mac is not None
        if marker.proto == "arp":
            frame = arp_request(marker.guest_mac, self.guest_ip, marker.target, marker.token, seq)
        elif self.next_mac is None or self.guest_ip is None:
            return f"the MAC of the next hop towards {marker.target} is unknown (no ARP answer)"
        else:
            frame = guest_frame(marker, marker.guest_mac, self.next_mac, self.guest_ip, seq)
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
