"""The active probe: open the trace instance and a capture socket on every hop, take a counter
baseline over an idle window as long as the sending, send the marked packets as the guest,
wait for the replies (or the timeout), and collect what each hop saw, the counter deltas and
the kernel's drop reasons. Every host change goes through the Lab and is undone on exit."""

from __future__ import annotations

import os
import secrets
import time
from typing import Any, Callable

from doctor.probe.lab import Busy
from doctor.probe.path import Counters, Path
from doctor.probe.verdict import REQUEST, DropEvent, Observations, order

__all__ = ["Busy", "Unsupported", "observe"]

ReadCounters = Callable[[], "dict[str, Counters]"]


class Unsupported(Exception):
    """This kind of path cannot be probed actively (yet)."""


def _delta(after: Counters, before: Counters) -> Counters:
    def sub(a: Any, b: Any) -> Any:
        return a - b if isinstance(a, int) and isinstance(b, int) else None

    return Counters(
        sub(after.rx_packets, before.rx_packets),
        sub(after.tx_packets, before.tx_packets),
        sub(after.rx_dropped, before.rx_dropped),
        sub(after.tx_dropped, before.tx_dropped),
    )


def _less(delta: Counters, baseline: Counters) -> Counters:
    """The probe window's deltas beyond what the idle window saw (never below zero)."""

    def sub(a: Any, b: Any) -> Any:
        if not isinstance(a, int):
            return None
        return max(0, a - (b if isinstance(b, int) else 0))

    return Counters(
        sub(delta.rx_packets, baseline.rx_packets),
        sub(delta.tx_packets, baseline.tx_packets),
        sub(delta.rx_dropped, baseline.rx_dropped),
        sub(delta.tx_dropped, baseline.tx_dropped),
    )


def _domain_can_send(path: Path, proto: str) -> None:
    """Refuse, with the reason, what cannot be sent as a libvirt guest from its tap."""
    guest = path.guest
    if guest.mac is None:
        raise Unsupported(f"the guest's interface {guest.iface} has no MAC in its XML")
    if path.bridge is None:
        raise Unsupported(
            f"the guest's tap {guest.iface} is not on a Linux bridge: frames are injected "
            "into a bridge from the guest's own port only (run with --static)"
        )
    if proto == "arp":
        if not path.target_on_bridge:
            raise Unsupported(
                f"ARP asks for an address on the guest's own bridge, and {path.target} is "
                "routed: use --proto icmp, udp:PORT or tcp:PORT"
            )
        return
    if guest.ip is None:
        raise Unsupported(
            f"the guest's IPv4 address is unknown (no DHCP lease, no ARP or neighbour entry "
            f"for {guest.mac}): a {proto} probe cannot be sent as the guest; --proto arp "
            "works without it"
        )
    if not path.target_on_bridge and guest.next_hop_mac is None:
        raise Unsupported(f"the bridge {path.bridge.name} has no MAC: no gateway to send to")


def observe(path: Path, request: Any, read_counters: ReadCounters) -> Observations:
    from doctor.probe.capture import Capture, Marker
    from doctor.probe.inject import MAX_RATE, NetnsSender, TapSender
    from doctor.probe.lab import Lab
    from doctor.probe.trace import Tracer

    domain = path.guest.kind == "domain"
    proto = request.proto
    if domain:
        _domain_can_send(path, proto)
    source = path.guest.ip or (path.guest.route.prefsrc if path.guest.route else None)
    if proto == "tcp" and source is None:
        raise Unsupported("a TCP probe needs the guest's address, and it has none")
    token = f"kvmdoctor-probe:{secrets.token_hex(8)}".encode()
    marker = Marker(
        proto,
        token,
        path.target,
        port=request.port,
        guest_mac=path.guest.mac.lower() if path.guest.mac else None,
        tcp_base=secrets.randbelow(2**31) << 1,
    )
    interval = 1.0 / MAX_RATE
    window = request.count * interval
    started = time.monotonic()
    with Lab() as lab:
        tracer = None
        note = None
        try:
            instance = lab.trace_instance(f"kd-probe-{os.getpid()}")
            tracer = Tracer(instance, [d for h in path.hops for d in h.devices])
            tracer.start()
        except OSError as exc:
            note = f"unavailable ({exc.strerror or exc})"
            tracer = None
        watched = order(path, REQUEST)  # the hops the verdict walks
        hops = [(h.name, d, h.netns) for h in watched for d in h.devices]
        sender: Any
        capture = Capture(hops, marker)
        if domain:
            assert marker.guest_mac is not None
            sender = TapSender(path.guest.iface, marker, path.guest.ip, path.guest.next_hop_mac)
            lab.mirred_ingress(path.guest.iface, marker.guest_mac)
        else:
            sender = NetnsSender(path.guest.name, marker, iface=path.guest.iface, source=source)
        try:
            capture.open()  # every socket before the first packet
            sender.open()
            # A target on the bridge the host has not talked to: the guest asks for it.
            if domain and proto != "arp" and sender.next_mac is None and sender.resolve() is None:
                capture.problems.append(
                    f"no ARP answer from {path.target} to the guest's request: its MAC is "
                    "unknown, nothing else was sent"
                )
            idle_before = read_counters()
            capture.poll(window)
            idle_after = read_counters()
            guest_nic = path.hops[0].name
            refused = []
            first_packet = time.monotonic()
            for seq in range(1, request.count + 1):
                error = sender.send(seq)
                if error:
                    refused.append(error)
                capture.poll(interval)
            deadline = time.monotonic() + request.timeout
            while time.monotonic() < deadline and capture.replies(guest_nic) < request.count:
                capture.poll(min(0.1, max(0.0, deadline - time.monotonic())))
            after = read_counters()
        finally:
            sender.close()
            capture.close()
        drops: tuple[DropEvent, ...] = ()
        if tracer is not None:
            try:
                drops = tuple(tracer.stop())
            except OSError as exc:
                note = f"the trace instance could not be read ({exc.strerror or exc})"
    verdict_ready = time.monotonic() - first_packet
    baseline = {n: _delta(idle_after[n], idle_before[n]) for n in idle_after if n in idle_before}
    deltas = {
        n: _less(_delta(after[n], idle_after[n]), baseline.get(n, Counters()))
        for n in after
        if n in idle_after
    }
    errors = list(capture.errors)
    if refused:
        errors.append({"error": "the guest's kernel refused to send", "detail": refused[0]})
    return Observations(
        proto=proto,
        sent=request.count - len(refused),
        seen=capture.counts(),
        sources=capture.sources,
        counters=deltas,
        baseline=baseline,
        drops=drops,
        icmp_errors=tuple(errors),
        tracing=note,
        duration=time.monotonic() - started,
        since_first_packet=verdict_ready,
        problems=tuple(capture.problems),
    )
