"""Capture sockets on every hop: scapy L2 listen sockets, each opened inside its hop's network
namespace (pyroute2 pushns/popns; the socket stays bound there), never promiscuous, all open
before the first packet is sent. Observation only: they change nothing on the host.

Only the probe's own packets count (`Marker`): ICMP echo and UDP with the run's payload token
(NAT may rewrite an ICMP id or a port, not the payload), TCP SYNs from the probe's port with
the run's sequence numbers and the answers that acknowledge them, ARP requests from the
guest's MAC with the token after the ARP payload and the target's answers to that MAC. A
capture on a tap or veth sees frames before its queue: "seen on vnetX" does not prove
delivery.
"""

from __future__ import annotations

import contextlib
import re
import select
import time
from collections.abc import Sequence
from typing import Any, Optional

from doctor.probe.verdict import REPLY, REQUEST
from doctor.record import record

ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST = 0, 8
ICMP_UNREACH, ICMP_PORT_UNREACH = 3, 3
ICMP_ERRORS = {3: "destination unreachable", 11: "time exceeded", 12: "parameter problem"}
ETH_P_ARP, ETH_P_IP = b"\x08\x06", b"\x08\x00"
PROBE_PORT = 0x6B64  # the source port of UDP and TCP probes (27492)
TCP_SPAN = 1000  # sequence numbers base .. base + TCP_SPAN belong to the run
_SEQ = re.compile(rb":(\d+)")


@record
class Marker:
    """What makes a packet the probe's: the run's token (ICMP and UDP payload, after an ARP
    payload), the fixed ICMP id or source port, a TCP sequence base drawn per run."""

    proto: str  # icmp, udp, tcp, arp
    token: bytes
    target: str
    port: Optional[int] = None
    guest_mac: Optional[str] = None
    tcp_base: int = 0


def _token_seq(frame: bytes, token: bytes) -> Optional[int]:
    at = frame.find(token)
    if at < 0:
        return None
    found = _SEQ.match(frame, at + len(token))
    return int(found.group(1)) if found else 0


def classify(frame: bytes, marker: Marker) -> Optional[dict[str, Any]]:
    """What a captured frame is to the probe: {direction, seq, src, dst} for one of its
    requests or the answers to them (seq None when an answer cannot say which request it
    answers: ARP and UDP replies), {error, ...} for an ICMP error about a request, None for
    anything else. The target's ICMP port unreachable answers a UDP request: the target
    replied."""
    if marker.proto == "arp":
        return _arp(frame, marker) if frame[12:14] == ETH_P_ARP else None
    if frame[12:14] != ETH_P_IP:
        return None
    from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror
    from scapy.layers.l2 import Ether

    packet = Ether(frame)
    ip = packet.getlayer(IP)
    if ip is None:
        return None
    icmp = ip.payload if isinstance(ip.payload, ICMP) else None
    if icmp is not None and int(icmp.type) in ICMP_ERRORS:
        quoted = icmp.getlayer(IPerror)
        if quoted is None or quoted.dst != marker.target:
            return None
        inner = quoted.payload
        ours = (
            (marker.proto == "tcp" and isinstance(inner, TCPerror) and inner.sport == PROBE_PORT)
            or (marker.proto == "udp" and isinstance(inner, UDPerror) and inner.sport == PROBE_PORT)
            or (marker.proto == "icmp" and marker.token in frame)
        )
        if not ours:
            return None
        kind, code = int(icmp.type), int(icmp.code)
        port_closed = (kind, code) == (ICMP_UNREACH, ICMP_PORT_UNREACH)
        if marker.proto == "udp" and port_closed and ip.src == marker.target:
            return {"direction": REPLY, "seq": None, "src": ip.src, "dst": ip.dst}
        return {"error": ICMP_ERRORS[kind], "type": kind, "code": code, "from": ip.src}
    if marker.proto == "icmp":
        if icmp is None or marker.token not in frame:
            return None
        kind = int(icmp.type)
        if kind not in (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY):
            return None
        direction = REQUEST if kind == ICMP_ECHO_REQUEST else REPLY
        return {"direction": direction, "seq": int(icmp.seq), "src": ip.src, "dst": ip.dst}
    if marker.proto == "udp" and isinstance(ip.payload, UDP):
        udp = ip.payload
        if udp.sport == PROBE_PORT and udp.dport == marker.port:
            seq = _token_seq(frame, marker.token)
            if seq is not None:
                return {"direction": REQUEST, "seq": seq, "src": ip.src, "dst": ip.dst}
        if udp.sport == marker.port and udp.dport == PROBE_PORT and ip.src == marker.target:
            return {"direction": REPLY, "seq": None, "src": ip.src, "dst": ip.dst}
        return None
    if marker.proto == "tcp" and isinstance(ip.payload, TCP):
        tcp = ip.payload
        flags = int(tcp.flags)
        syn, ack = bool(flags & 0x02), bool(flags & 0x10)
        first = marker.tcp_base
        outgoing = tcp.sport == PROBE_PORT and tcp.dport == marker.port and syn and not ack
        if outgoing and first <= tcp.seq < first + TCP_SPAN:
            return {"direction": REQUEST, "seq": tcp.seq - first, "src": ip.src, "dst": ip.dst}
        answer = tcp.sport == marker.port and tcp.dport == PROBE_PORT and ack
        # A SYN-ACK or an RST from the target, acknowledging one of the run's SYNs.
        if answer and ip.src == marker.target and first < tcp.ack <= first + TCP_SPAN:
            return {"direction": REPLY, "seq": tcp.ack - 1 - first, "src": ip.src, "dst": ip.dst}
    return None


def _arp(frame: bytes, marker: Marker) -> Optional[dict[str, Any]]:
    """The guest's ARP requests for the target carrying the token after the ARP payload, and
    the target's replies to the guest's MAC."""
    from scapy.layers.l2 import ARP, Ether

    answer = Ether(frame).getlayer(ARP)
    if answer is None or marker.guest_mac is None:
        return None
    op = int(answer.op)
    if op == 1 and answer.hwsrc == marker.guest_mac and answer.pdst == marker.target:
        seq = _token_seq(frame, marker.token)
        if seq is None:
            return None
        return {"direction": REQUEST, "seq": seq, "src": answer.psrc, "dst": marker.target}
    if op == 2 and answer.psrc == marker.target and answer.hwdst == marker.guest_mac:
        return {"direction": REPLY, "seq": None, "src": marker.target, "dst": answer.pdst}
    return None


class Capture:
    def __init__(
        self,
        hops: Sequence[tuple[str, str, Optional[str]]],
        marker: Marker,
    ) -> None:
        self.hops = list(hops)  # (hop, device, namespace or None)
        self.marker = marker
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
            found = classify(frame, self.marker)
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
