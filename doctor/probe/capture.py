"""Capture sockets on every hop: scapy L2 listen sockets, each opened inside its hop's network
namespace (pyroute2 pushns/popns; the socket stays bound there), never promiscuous, all open
before the first packet is sent. Observation only: they change nothing on the host.

Only the probe's own packets count: ICMP echo with the run's payload token (the ICMP id may
be rewritten by NAT, the payload is not). A capture on a tap or veth sees frames before its
queue: "seen on vnetX" does not prove delivery.
"""

from __future__ import annotations

import contextlib
import re
import select
import time
from collections.abc import Sequence
from typing import Any, Optional

from doctor.probe.verdict import REPLY, REQUEST

ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST = 0, 8
ICMP_ERRORS = {3: "destination unreachable", 11: "time exceeded", 12: "parameter problem"}


ETH_P_ARP = b"\x08\x06"
_SEQ = re.compile(rb":(\d+)")


def classify(
    frame: bytes, token: bytes, arp: Optional[tuple[str, str]] = None
) -> Optional[dict[str, Any]]:
    """What a captured frame is to the probe: {direction, seq, src, dst} for its echo request
    or reply, {error, ...} for an ICMP error quoting it, None for anything else. With `arp`
    (the guest's MAC, the target): the guest's ARP requests for the target carrying the token
    after the ARP payload, and the target's replies to the guest's MAC (seq None: a reply
    carries no token)."""
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.l2 import ARP, Ether

    if arp is not None and frame[12:14] == ETH_P_ARP:
        guest_mac, target = arp
        packet = Ether(frame)
        answer = packet.getlayer(ARP)
        if answer is None:
            return None
        if int(answer.op) == 1 and answer.hwsrc == guest_mac and answer.pdst == target:
            at = frame.find(token)
            if at < 0:
                return None
            found = _SEQ.match(frame, at + len(token))
            seq = int(found.group(1)) if found else 0
            return {"direction": REQUEST, "seq": seq, "src": answer.psrc, "dst": target}
        if int(answer.op) == 2 and answer.psrc == target and answer.hwdst == guest_mac:
            return {"direction": REPLY, "seq": None, "src": target, "dst": answer.pdst}
        return None
    if token not in frame:
        return None
    packet = Ether(frame)
    ip = packet.getlayer(IP)
    icmp = packet.getlayer(ICMP)
    if ip is None or icmp is None:
        return None
    kind = int(icmp.type)
    if kind in (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY) and ip.payload is icmp:
        direction = REQUEST if kind == ICMP_ECHO_REQUEST else REPLY
        return {"direction": direction, "seq": int(icmp.seq), "src": ip.src, "dst": ip.dst}
    if kind in ICMP_ERRORS:
        return {
            "error": ICMP_ERRORS[kind],
            "type": kind,
            "code": int(icmp.code),
            "from": ip.src,
        }
    return None


class Capture:
    def __init__(
        self,
        hops: Sequence[tuple[str, str, Optional[str]]],
        token: bytes,
        arp: Optional[tuple[str, str]] = None,
    ) -> None:
        self.hops = list(hops)  # (hop, device, namespace or None)
        self.token = token
        self.arp = arp  # (guest MAC, target) when the probe is ARP
        self.sockets: list[tuple[str, Any]] = []
        self.seen: dict[str, dict[str, set[int]]] = {}
        self.sources: dict[str, list[str]] = {}
        self.errors: list[dict[str, Any]] = []
        self.problems: list[str] = []

    def open(self) -> None:
        import scapy.layers.l2  # noqa: F401 - registers Ethernet, so sockets know their link type
        from pyroute2 import netns as namespaces
        from scapy.arch.linux import L2ListenSocket
        from scapy.interfaces import InterfaceProvider, NetworkInterface

        for name, device, ns in self.hops:
            if ns is not None:
                namespaces.pushns(ns)
            # The interface is handed over resolved: scapy would look the name up in its own
            # table of the machine's interfaces, and reload that global table when it is not
            # there (as a name inside another namespace is not).
            iface = NetworkInterface(
                InterfaceProvider(), {"name": device, "network_name": device, "description": device}
            )
            try:
                sock = L2ListenSocket(iface=iface, promisc=False, nofilter=1)
            except OSError as exc:
                self.problems.append(f"no capture on {device}: {exc}")
                continue
            finally:
                if ns is not None:
                    namespaces.popns()
            sock.ins.setblocking(False)
            self.sockets.append((name, sock))
            self.seen.setdefault(name, {REQUEST: set(), REPLY: set()})

    def poll(self, seconds: float) -> None:
        """Read what arrives for `seconds`."""
        deadline = time.monotonic() + seconds
        by_fd = {sock.ins.fileno(): (name, sock) for name, sock in self.sockets}
        # A hop watched on several devices (a bridge's ports) counts each packet once.
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not by_fd:
                return
            ready, _, _ = select.select(list(by_fd), [], [], left)
            for fd in ready:
                name, sock = by_fd[fd]
                if not self._drain(name, sock):  # its device went away: what it saw stands
                    del by_fd[fd]
                    self.sockets = [(n, x) for n, x in self.sockets if x is not sock]
                    with contextlib.suppress(OSError):
                        sock.close()

    def _drain(self, name: str, sock: Any) -> bool:
        """Read what is queued; False when the socket's device is gone (ENETDOWN)."""
        while True:
            try:
                frame = sock.ins.recv(65535)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as exc:
                self.problems.append(f"capture on {name} ended: {exc.strerror or exc}")
                return False
            found = classify(frame, self.token, self.arp)
            if found is None:
                continue
            if "error" in found:
                if found not in self.errors:
                    self.errors.append({**found, "hop": name})
                continue
            seen = self.seen[name][found["direction"]]
            # An ARP reply carries no token: each one the hop sees counts.
            seen.add(found["seq"] if found["seq"] is not None else -len(seen) - 1)
            if found["direction"] == REQUEST and found["src"] not in self.sources.setdefault(
                name, []
            ):
                self.sources[name].append(found["src"])

    def replies(self, name: str) -> int:
        return len(self.seen.get(name, {}).get(REPLY, ()))

    def counts(self) -> dict[str, dict[str, int]]:
        return {name: {d: len(s) for d, s in by.items()} for name, by in self.seen.items()}

    def close(self) -> None:
        for _, sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self.sockets.clear()
