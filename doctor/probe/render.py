"""The text view of a probe: the path as a row of hops, what each saw in each direction, where
it stopped, then the PRB findings. A view of the report and the probe run; pure."""

from __future__ import annotations

from typing import Any

from doctor.probe.verdict import REPLY, REQUEST, ProbeRun, locate, order

MARKS = {
    "pass": "ok",
    "info": "info",
    "warn": "WARN",
    "fail": "FAIL",
    "skip": "skip",
    "error": "ERROR",
}


def _paint(text: str, code: str, color: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if color else text


def ovs_line(ovs: dict[str, Any]) -> str:
    """One line for the Open vSwitch hop: the bridge, the guest's port and its VLAN, the ways
    out."""

    def port(p: dict[str, Any]) -> str:
        mode = p.get("vlan_mode")
        if mode == "access":
            vlan = f"tag {p.get('tag')}"
        else:
            trunks = ",".join(str(t) for t in p.get("trunks") or []) or "all"
            vlan = f"{mode} {trunks}"
        where = f" on {p['bridge']}" if p.get("bridge") not in (None, ovs["bridge"]) else ""
        return f"{p['port']} ({vlan}){where}"

    ways = [port(u) for u in ovs.get("uplinks", ())]
    ways += [f"{t['port']} ({t['type']})" for t in ovs.get("tunnels", ())]
    return (
        f"Open vSwitch bridge {ovs['bridge']}: guest port {port(ovs['guest_port'])}, "
        f"uplinks {', '.join(ways) or 'none'}"
    )


def text(report: dict[str, Any], run: ProbeRun, *, color: bool = False) -> str:
    path = run.path
    guest = path.guest
    lines = [
        f"probe: {guest.kind} {guest.name} ({guest.iface}, {guest.ip or 'address unknown'}) "
        f"-> {path.target}",
        "",
    ]
    names = [h.label for h in path.hops]
    width = max([len(n) for n in names] + [8]) + 2
    row = "".join(n.ljust(width) for n in names)
    lines.append(("           " + row).rstrip())
    ovs = path.ovs_bridge.ovs if path.ovs_bridge is not None else None
    if ovs is not None:
        lines.append("  " + ovs_line(ovs))
    if path.target_on_bridge and path.bridge is not None:
        note = f"  ({path.bridge.name} forwards between its ports: its own device sees none of it)"
        lines.append(note)
    obs = run.observations
    if obs is None:
        lines.append(f"  (nothing sent: {run.not_sent or '--static'})")
    else:
        stops = {s.direction: s for s in locate(path, run.predictions, obs)}
        for direction, hops in ((REQUEST, path.hops), (REPLY, tuple(reversed(path.hops)))):
            watched = {h.name for h in order(path, direction)}
            counts = {h.name: obs.seen.get(h.name, {}).get(direction, 0) for h in hops}
            cells = "".join(
                (str(counts[h.name]) if h.name in watched else "-").ljust(width) for h in path.hops
            )
            arrow = "->" if direction == REQUEST else "<-"
            note = ""
            stop = stops.get(direction)
            if stop is not None:
                where = stop.last_seen or "before the first hop"
                note = _paint(f"  stopped after {where}: {stop.cause}", "31", color)
                if stop.reason:
                    note += f" ({stop.reason})"
            elif direction == REPLY and not stops:
                note = _paint("  ok", "32", color)
            elif direction == REQUEST and REPLY in stops:
                note = "  ok"
            lines.append(f"  {direction:<7} {arrow} " + cells.rstrip() + note)
        lines.append(f"  sent {obs.sent} {obs.proto} packet(s) in {obs.duration:.1f} s")
        if obs.tracing:
            lines.append(f"  kernel drop reasons: {obs.tracing}")
    lines.append("")
    for check in report["checks"]:
        for finding in check["findings"]:
            mark = MARKS.get(finding["status"], finding["status"])
            if finding["status"] in ("fail", "error"):
                mark = _paint(mark, "31", color)
            elif finding["status"] == "warn":
                mark = _paint(mark, "33", color)
            lines.append(f"{mark:<5} {check['code']} {finding['subject']}: {finding['message']}")
            playbook = finding["evidence"].get("playbook")
            if playbook and finding["status"] in ("warn", "fail"):
                lines.append(f"      fix: kvmdoctor explain {playbook}")
    return "\n".join(lines) + "\n"
