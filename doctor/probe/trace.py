"""Kernel drop reasons from a private tracefs instance: skb:kfree_skb, joined by skbaddr with
the latest net:netif_receive_skb / net:net_dev_queue event to name the device where the packet
was last seen. Observation only; the instance is made (and removed) by the Lab.

Reason numbers differ between kernels: the names come from the event's format file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from typing import Optional

from doctor.probe.verdict import DropEvent
from doctor.record import record

# Reasons that are not drops, or say nothing.
QUIET = {"NOT_DROPPED_YET", "CONSUMED", "NOT_SPECIFIED"}
_SYMBOL = re.compile(r"\{\s*(\d+)\s*,\s*\"([A-Z0-9_]+)\"\s*\}")
_LINE = re.compile(r"\s(?P<event>kfree_skb|netif_receive_skb|net_dev_queue):\s(?P<rest>.*)$")
_FIELD = re.compile(r"(\w+)[=:]\s?(\S+)")


def parse_reasons(format_text: str) -> dict[int, str]:
    """{number: NAME} from events/skb/kfree_skb/format's __print_symbolic(REC->reason, ...)."""
    fmt = format_text.split("print fmt:", 1)[-1]
    return {int(num): name for num, name in _SYMBOL.findall(fmt)}


@record
class Event:
    event: str
    skbaddr: str
    device: Optional[str] = None
    reason: Optional[str] = None
    location: Optional[str] = None
    protocol: Optional[str] = None


def parse_line(line: str) -> Optional[Event]:
    """One line of a trace buffer, or None when it is not one of the probe's events."""
    match = _LINE.search(line)
    if match is None:
        return None
    fields = dict(_FIELD.findall(match.group("rest")))
    skb = fields.get("skbaddr")
    if skb is None:
        return None
    if match.group("event") == "kfree_skb":
        reason = fields.get("reason")
        location = fields.get("location")
        proto = fields.get("protocol")
        return Event(
            "kfree_skb",
            skb,
            reason=reason,
            location=location.split("+", 1)[0] if location else None,
            protocol=f"0x{int(proto):04x}" if proto and proto.isdigit() else proto,
        )
    return Event(match.group("event"), skb, device=fields.get("dev"))


def drops(lines: Iterable[str], devices: Sequence[str]) -> list[DropEvent]:
    """The kfree_skb events with a real reason whose packet was last seen on one of `devices`,
    counted by (reason, location, device)."""
    last_dev: dict[str, str] = {}
    counts: dict[tuple[str, str, str, Optional[str]], int] = {}
    wanted = set(devices)
    for line in lines:
        event = parse_line(line)
        if event is None:
            continue
        if event.event != "kfree_skb":
            if event.device:
                last_dev[event.skbaddr] = event.device
            continue
        if not event.reason or event.reason in QUIET:
            continue
        device = last_dev.get(event.skbaddr)
        if device not in wanted:
            continue
        key = (event.reason, event.location or "?", device, event.protocol)
        counts[key] = counts.get(key, 0) + 1
    return [DropEvent(r, loc, dev, proto, n) for (r, loc, dev, proto), n in counts.items()]


class Tracer:
    """The probe's events enabled in a trace instance made by the Lab."""

    def __init__(self, instance: str, devices: Sequence[str]) -> None:
        self.instance = instance
        self.devices = list(devices)
        self.reasons: dict[int, str] = {}

    def start(self) -> None:
        with open(
            os.path.join(self.instance, "events/skb/kfree_skb/format"), encoding="ascii"
        ) as f:
            self.reasons = parse_reasons(f.read())
        _write(os.path.join(self.instance, "buffer_size_kb"), "2048")
        quiet = [n for n, name in self.reasons.items() if name in QUIET]
        if quiet:
            _write(
                os.path.join(self.instance, "events/skb/kfree_skb/filter"),
                " && ".join(f"reason != {n}" for n in quiet),
            )
        names = " || ".join(f'name == "{d}"' for d in self.devices)
        for event in ("net/netif_receive_skb", "net/net_dev_queue"):
            if names:
                _write(os.path.join(self.instance, f"events/{event}/filter"), names)
            _write(os.path.join(self.instance, f"events/{event}/enable"), "1")
        _write(os.path.join(self.instance, "events/skb/kfree_skb/enable"), "1")
        _write(os.path.join(self.instance, "tracing_on"), "1")

    def stop(self) -> list[DropEvent]:
        """The drops recorded; raises OSError when the instance cannot be read any more."""
        _write(os.path.join(self.instance, "tracing_on"), "0")
        fd = os.open(os.path.join(self.instance, "trace"), os.O_RDONLY | os.O_NONBLOCK)
        with open(fd, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
        return drops(lines, self.devices)


def _write(path: str, value: str) -> None:
    with open(path, "w", encoding="ascii") as handle:
        handle.write(value)
