"""The verdict: pure. A path, its predictions and what the active probe observed go in; PRB
findings come out. Nothing here touches the host, so every verdict is tested without packets.

For each direction the hops are walked in the order the packet crosses them: the drop lies
between the last hop that saw the probe and the first that did not. The kernel's drop
reasons (joined with the device the packet was last seen on), the counter deltas and the
static predictions for those two hops narrow the cause; the confidence says how many of them
agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, field
from typing import Any, Optional

from doctor.model import Finding
from doctor.probe.path import Counters, Hop, Path
from doctor.probe.predict import CAUSES, REASON_CAUSES, Prediction, needs_translation
from doctor.record import record

REQUEST, REPLY = "request", "reply"
# Drops that happen on a device after a capture socket there has seen the frame: in its queue.
PROBE_PROTOCOLS = {"0x0800", "0x0806", None}  # IPv4, ARP; None: not recorded
AFTER_CAPTURE = {"FULL_RING", "QDISC_DROP", "TAP_TXFILTER", "DEV_READY", "TC_EGRESS"}


@record
class DropEvent:
    """Packets the kernel freed with a reason, during the probe (skb:kfree_skb)."""

    reason: str
    location: str  # the kernel function
    device: Optional[str]  # where the packet was last seen (netif_receive_skb / net_dev_queue)
    protocol: Optional[str] = None  # "0x0800"
    count: int = 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@record
class Observations:
    """What the active probe saw. `seen[hop][direction]` counts marked packets captured on each
    hop; `sources[hop]` the source addresses the requests had there (NAT shows as a change)."""

    proto: str
    sent: int
    seen: dict[str, dict[str, int]]
    sources: dict[str, list[str]] = field(default_factory=dict)
    counters: dict[str, Counters] = field(default_factory=dict)  # deltas over the probe
    baseline: dict[str, Counters] = field(default_factory=dict)  # deltas over an idle window
    drops: tuple[DropEvent, ...] = ()
    icmp_errors: tuple[dict[str, Any], ...] = ()  # ICMP errors the guest received
    tracing: Optional[str] = None  # why kernel drop reasons are missing, or None when read
    duration: float = 0.0  # the whole observation, set-up and clean-up included
    since_first_packet: float = 0.0  # from the first packet to everything collected
    problems: tuple[str, ...] = ()  # captures that could not be opened or ended early

    def saw(self, hop: str, direction: str) -> bool:
        return self.seen.get(hop, {}).get(direction, 0) > 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "proto": self.proto,
            "sent": self.sent,
            "seen": self.seen,
            "sources": self.sources,
            "counters": {k: v.as_dict() for k, v in self.counters.items()},
            "baseline": {k: v.as_dict() for k, v in self.baseline.items()},
            "drops": [d.as_dict() for d in self.drops],
            "icmp_errors": list(self.icmp_errors),
            "tracing": self.tracing,
            "duration_s": round(self.duration, 3),
            "since_first_packet_s": round(self.since_first_packet, 3),
            "problems": list(self.problems),
        }


@record
class Stop:
    """Where one direction stopped."""

    direction: str
    last_seen: Optional[str]  # None: not even the first hop saw it
    first_missing: Optional[str]  # None: it crossed every hop we watch
    cause: str
    confidence: str  # high, medium, low
    reason: Optional[str] = None
    location: Optional[str] = None
    device: Optional[str] = None
    prediction: Optional[Prediction] = None
    counters: dict[str, Any] = field(default_factory=dict)

    @property
    def playbook(self) -> Optional[str]:
        return CAUSES.get(self.cause, (None, None))[1]


# --- PRB001: predictions --------------------------------------------------------------------


def subject(path: Path, hop: str) -> str:
    if hop == "forward":
        fwd = path.forwarding
        return f"iface:{fwd.iif}" if fwd else f"guest:{path.guest.name}"
    return f"iface:{hop}"


def predicted(path: Path, predictions: Sequence[Prediction]) -> list[Finding]:
    """PRB001: one finding per prediction, or a pass naming the hops examined."""
    base = {"guest": path.guest.as_dict(), "target": path.target, "hops": _hop_names(path)}
    base.update(_network(path))
    out = []
    for item in predictions:
        evidence = {**base, **item.as_dict()}
        if item.playbook:
            evidence["playbook"] = item.playbook
        out.append(
            Finding(
                item.status,  # type: ignore[arg-type]
                f"{item.hop} ({item.direction}): {item.message}",
                subject=subject(path, item.hop),
                evidence=evidence,
            )
        )
    if not any(f.status in ("warn", "fail") for f in out):
        out.append(
            Finding(
                "pass",
                f"nothing on the path {' -> '.join(_hop_names(path))} predicts a drop on the way "
                f"to {path.target}",
                subject=f"guest:{path.guest.name}",
                evidence={**base, "path": path.as_dict()},
            )
        )
    for problem in path.problems:
        out.append(
            Finding("info", problem, subject=f"guest:{path.guest.name}", evidence=dict(base))
        )
    return out


def _hop_names(path: Path) -> list[str]:
    return [h.name for h in path.hops]


# --- PRB002/PRB003: the active probe --------------------------------------------------------


def order(path: Path, direction: str) -> list[Hop]:
    """The hops a packet crosses in this direction."""
    # Lower devices (a VLAN's bond, a macvtap's NIC) are judged statically only: captures
    # there would see tagged or foreign traffic, and no test lab here has them.
    hops = [h for h in path.hops if h.role != "lower"]
    if path.target_on_bridge:
        # Frames the bridge forwards between two ports never pass its own device.
        hops = [h for h in hops if h.role != "bridge"]
    return hops if direction == REQUEST else list(reversed(hops))


def locate(path: Path, predictions: Sequence[Prediction], obs: Observations) -> list[Stop]:
    """Where each direction stopped; empty when the reply reached the guest."""
    guest_nic = path.hops[0].name if path.hops else None
    if guest_nic is not None and obs.saw(guest_nic, REPLY):
        return []
    stops = []
    request = _walk(path, obs, REQUEST)
    if request is None:
        # Seen on every hop, yet dropped after the capture on the last one (a capture on a
        # tap or veth sees frames before its queue).
        final = order(path, REQUEST)[-1] if path.hops else None
        late = [
            d
            for d in obs.drops
            if final
            and d.device in final.devices
            and d.reason in AFTER_CAPTURE
            and d.protocol in PROBE_PROTOCOLS
        ]
        if final is not None and late:
            stops.append(_explain(path, predictions, obs, REQUEST, final.name, None))
            return stops
    if request is None and path.uplink is None and not path.target_on_bridge and path.hops:
        # Seen on every hop there is, and the host has no way on: it died in forwarding.
        request = (path.hops[-1].name, "forward")
    if request is not None:
        stops.append(_explain(path, predictions, obs, REQUEST, *request))
        return stops
    reply = _walk(path, obs, REPLY)
    last, missing = reply if reply is not None else (None, None)
    stops.append(_explain(path, predictions, obs, REPLY, last, missing))
    return stops


def _walk(path: Path, obs: Observations, direction: str) -> Optional[tuple[Optional[str], str]]:
    """(last hop that saw it, first that did not), or None when every hop saw it."""
    last: Optional[str] = None
    for hop in order(path, direction):
        if not obs.saw(hop.name, direction):
            return last, hop.name
        last = hop.name
    return None


def _between(path: Path, last: Optional[str], missing: Optional[str]) -> set[str]:
    names = {n for n in (last, missing) if n}
    bridge, uplink = path.bridge, path.uplink
    if path.target_on_bridge and bridge is not None:
        names.add(bridge.name)
    if path.forwarding is not None and (
        (bridge is not None and bridge.name in names)
        or (uplink is not None and uplink.name in names)
    ):
        names.add("forward")
    return names


def _explain(
    path: Path,
    predictions: Sequence[Prediction],
    obs: Observations,
    direction: str,
    last: Optional[str],
    missing: Optional[str],
) -> Stop:
    spot = _between(path, last, missing)
    near = [p for p in predictions if p.hop in spot and p.direction in (direction, "both")]
    spot |= {d for h in path.hops if h.name in spot for d in h.devices}
    # Only drops where it stopped count, and only of IPv4 and ARP (what the probe sends, and
    # what resolving its next hop sends): links carry IPv6 router solicitations, 802.2 frames
    # and the like of their own.
    drops = [d for d in obs.drops if d.device in spot and d.protocol in PROBE_PROTOCOLS]
    drops.sort(key=lambda d: -d.count)
    drop = drops[0] if drops else None
    counters = {
        name: delta.as_dict()
        for name, delta in obs.counters.items()
        if name in spot and (delta.tx_dropped or delta.rx_dropped)
    }
    prediction: Optional[Prediction] = None
    cause = "unknown"
    confidence = "low"
    if drop is not None:
        matching = [p for p in near if p.cause in REASON_CAUSES.get(drop.reason, ())]
        if matching:
            prediction, cause, confidence = matching[0], matching[0].cause, "high"
        elif REASON_CAUSES.get(drop.reason):
            cause = REASON_CAUSES[drop.reason][0]
            if drop.reason == "NETFILTER_DROP":
                cause = "bridge-netfilter-drop" if path.target_on_bridge else "forward-drop"
            confidence = "medium"
        else:
            cause = f"kernel: {drop.reason}"
            confidence = "medium"
    elif near:
        prediction, cause = near[0], near[0].cause
        confidence = "high" if counters else "medium"
    elif direction == REPLY and missing == (path.uplink.name if path.uplink else None):
        untranslated = untranslated_source(path, obs)
        if untranslated:
            cause, confidence = "nat-missing", "high"
            prediction = next((p for p in predictions if p.cause == "nat-missing"), None)
        else:
            cause = "no-reply-from-target"
            confidence = "medium"
    elif counters:
        cause, confidence = "counters", "medium"
    return Stop(
        direction=direction,
        last_seen=last,
        first_missing=missing,
        cause=cause,
        confidence=confidence,
        reason=drop.reason if drop else None,
        location=drop.location if drop else None,
        device=drop.device if drop else None,
        prediction=prediction,
        counters=counters,
    )


def untranslated_source(path: Path, obs: Observations) -> Optional[str]:
    """The guest's own address, when requests left the uplink with it."""
    uplink, guest_ip = path.uplink, path.guest.ip
    if uplink is None or guest_ip is None:
        return None
    return guest_ip if guest_ip in obs.sources.get(uplink.name, []) else None


def _where(stop: Stop) -> str:
    if stop.last_seen is None:
        return f"never left {stop.first_missing}"
    if stop.first_missing is None and stop.reason in AFTER_CAPTURE:
        return f"seen on {stop.last_seen}, then dropped in its queue"
    if stop.first_missing is None:
        return f"crossed every hop up to {stop.last_seen}"
    return f"seen on {stop.last_seen}, not on {stop.first_missing}"


def _network(path: Path) -> dict[str, Any]:
    """The libvirt network of the guest's interface, for playbooks that name it."""
    return {"network": path.guest.network} if path.guest.network else {}


def located(path: Path, predictions: Sequence[Prediction], obs: Observations) -> list[Finding]:
    """PRB002: where the probe's traffic died, per direction; a pass when it went both ways."""
    base: dict[str, Any] = {
        "guest": path.guest.as_dict(),
        "target": path.target,
        "hops": _hop_names(path),
        "observations": obs.as_dict(),
        **_network(path),
    }
    stops = locate(path, predictions, obs)
    if not stops:
        return [
            Finding(
                "pass",
                f"{obs.proto} to {path.target}: request and reply crossed every hop "
                f"({' -> '.join(_hop_names(path))})",
                subject=f"guest:{path.guest.name}",
                evidence=base,
            )
        ]
    out = []
    for stop in stops:
        hop = stop.last_seen or stop.first_missing or "forward"
        why = stop.prediction.message if stop.prediction else stop.cause
        kernel = f"; kernel: {stop.reason} at {stop.location}" if stop.reason else ""
        if stop.device and stop.reason:
            kernel += f" on {stop.device}"
        evidence = {
            **base,
            "direction": stop.direction,
            "last_seen": stop.last_seen,
            "first_missing": stop.first_missing,
            "hop": hop,
            "cause": stop.cause,
            "confidence": stop.confidence,
            "reason": stop.reason,
            "location": stop.location,
            "device": stop.device,
            "counters": stop.counters,
            "prediction": stop.prediction.as_dict() if stop.prediction else None,
        }
        if stop.playbook:
            evidence["playbook"] = stop.playbook
        out.append(
            Finding(
                "fail",
                f"{obs.proto} {stop.direction} to {path.target} {_where(stop)}: {why}{kernel} "
                f"(confidence {stop.confidence})",
                subject=subject(path, hop),
                evidence=evidence,
            )
        )
    return out


def translation(path: Path, obs: Observations) -> list[Finding]:
    """PRB003: requests that left the uplink with the guest's private source address."""
    uplink = path.uplink
    if uplink is None or not obs.saw(uplink.name, REQUEST):
        return []
    guest_ip = untranslated_source(path, obs)
    evidence = {
        "guest": path.guest.as_dict(),
        "uplink": uplink.name,
        "sources_on_uplink": obs.sources.get(uplink.name, []),
        "nat_rules": list(path.forwarding.nat_rules) if path.forwarding else [],
        **_network(path),
    }
    if guest_ip is None:
        return [
            Finding(
                "pass",
                f"requests left {uplink.name} with the source "
                f"{', '.join(obs.sources.get(uplink.name, [])) or 'unknown'}",
                subject=f"iface:{uplink.name}",
                evidence=evidence,
            )
        ]
    # A private source is a fault only when it is not the uplink's own subnet (a routed
    # network's guests may keep their addresses).
    status = "fail" if needs_translation(path) else "info"
    evidence["playbook"] = "nat-masquerade-missing"
    return [
        Finding(
            status,  # type: ignore[arg-type]
            f"requests left {uplink.name} with the guest's own source {guest_ip}: nothing "
            "translated it, so replies cannot find their way back",
            subject=f"iface:{uplink.name}",
            evidence=evidence,
        )
    ]


@record
class ProbeRun:
    """Everything the PRB checks judge: the path, its predictions and, when packets were sent,
    what was observed (`not_sent` says why none were)."""

    path: Path
    predictions: tuple[Prediction, ...]
    observations: Optional[Observations] = None
    not_sent: Optional[str] = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path.as_dict(),
            "predictions": [p.as_dict() for p in self.predictions],
            "observations": self.observations.as_dict() if self.observations else None,
            "not_sent": self.not_sent,
        }
