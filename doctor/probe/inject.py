"""The probe's packets: ICMP echo requests with a fixed id and a per-run payload token, sent
as the guest: from a raw socket opened inside the guest's namespace, so the guest's own
routing, ARP and MAC apply. Only to the address the user named; at most 10 a second."""

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
