"""The host's virtual network as inline SVG, drawn from the report alone.

Two drawings, each present when the report carries what it needs:

- the host (`host.network`, filled from the links, networks and domains the checks read):
  guests and their NICs, then taps, veths and macvtaps, then bridges (with the libvirt
  network they serve), then bonds and VLANs, then the uplinks; a line for every NIC -> tap,
  port -> master and VLAN/macvtap -> lower device;
- a probe's path (the PRB findings' `hops`): guest -> each hop -> target, every hop marked
  seen or not, and where the probe stopped (PRB002's last_seen/first_missing, else PRB001's
  predicted hop).

Every name is host text: escaped as XML text, control characters shown as \\xNN, and never
used as an element id (ids are numbers). A node about which the report has a problem finding
links to that finding (`anchors`: subject -> element id in the page).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Callable, Optional

W, H = 168, 40  # a node
GAP_X, GAP_Y, PAD = 56, 14, 16
MAX_LABEL = 22
COLUMNS = ("guests", "ports", "bridges", "bonds and VLANs", "uplinks")
_PORT_KINDS = {"tap", "tun", "veth", "macvtap", "macvlan", "vhost", "ipvlan"}
_BRIDGE_KINDS = {"bridge", "openvswitch"}
_MID_KINDS = {"bond", "team", "vlan"}
STYLE = """
svg.net{font:12px system-ui,sans-serif;max-width:100%;height:auto}
svg.net rect{fill:#fafafa;stroke:#666;stroke-width:1.2}
svg.net .guest rect{fill:#eef4fb}svg.net .bridge rect{fill:#f3f9ee}
svg.net .bond rect{fill:#fbf5ea}svg.net .absent rect{stroke-dasharray:4 3;fill:#fff}
svg.net .st-fail rect,svg.net .st-error rect{stroke:#c0392b;stroke-width:2.5}
svg.net .st-warn rect{stroke:#b9770e;stroke-width:2.5}
svg.net line,svg.net path{stroke:#888;stroke-width:1.4;fill:none}
svg.net .path rect{stroke:#1f618d;stroke-width:2.5}
svg.net .seen rect{fill:#e3f4e8;stroke:#1e8449}svg.net .missing rect{fill:#fbe9e7;stroke:#c0392b}
svg.net .stop line{stroke:#c0392b;stroke-width:3}svg.net .stop text{fill:#c0392b;font-weight:bold}
svg.net text.head{fill:#555;font-weight:bold}svg.net .sub{fill:#666;font-size:11px}
"""


def _short(text: str) -> str:
    return text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 1] + "…"


class _Canvas:
    def __init__(self, esc: Callable[[Any], str], anchors: Mapping[str, str]) -> None:
        self.esc = esc
        self.anchors = anchors
        self.status: dict[str, str] = {}
        self.parts: list[str] = []

    def node(
        self,
        x: float,
        y: float,
        label: str,
        sub: str,
        classes: str,
        subject: Optional[str],
        title: str,
        node_id: str,
        also: tuple[str, ...] = (),
    ) -> None:
        """A node; its status and link are its subject's, else the worst of `also` (the
        other subjects it stands for: a guest's NIC is `mac:ADDRESS` to NET010)."""
        subjects = [subject or ""] + list(also)
        rank = {"warn": 1, "fail": 2, "error": 3}
        found = [self.status[s] for s in subjects if s in self.status]
        status = max(found, key=lambda st: rank.get(st, 0)) if found else None
        cls = f"node {classes}" + (f" st-{status}" if status else "")
        body = (
            f'<g class="{cls}" id="{node_id}"><title>{self.esc(title)}</title>'
            f'<rect x="{x}" y="{y}" width="{W}" height="{H}" rx="5"/>'
            f'<text x="{x + 8}" y="{y + 16}">{self.esc(_short(label))}</text>'
            f'<text class="sub" x="{x + 8}" y="{y + 32}">{self.esc(_short(sub))}</text></g>'
        )
        target = next((self.anchors[s] for s in subjects if s in self.anchors), None)
        if target:
            body = f'<a href="#{target}">{body}</a>'
        self.parts.append(body)

    def line(self, a: tuple[float, float], b: tuple[float, float], dashed: bool = False) -> None:
        (x1, y1), (x2, y2) = a, b
        dash = ' stroke-dasharray="4 3"' if dashed else ""
        mid = (x1 + x2) / 2
        self.parts.insert(
            0, f'<path d="M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}"{dash}/>'
        )  # under the nodes

    def svg(self, width: float, height: float, svg_id: str, label: str) -> str:
        return (
            f'<svg class="net" id="{svg_id}" xmlns="http://www.w3.org/2000/svg" '
            f'width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" '
            f'role="img" aria-label="{self.esc(label)}">' + "".join(self.parts) + "</svg>"
        )


def _column(link: Mapping[str, Any], split: bool) -> int:
    """The link's column; with `split`, VLANs have a column of their own before the bonds
    (a VLAN on a bond is drawn left of it)."""
    kind = link.get("kind")
    if kind in _PORT_KINDS:
        return 1
    if kind in _BRIDGE_KINDS:
        return 2
    if kind in _MID_KINDS:
        return 3 + (1 if split and kind != "vlan" else 0)
    return 4 + (1 if split else 0)


def _worst(report: Mapping[str, Any]) -> dict[str, str]:
    rank = {"warn": 1, "fail": 2, "error": 3}
    worst: dict[str, str] = {}
    for chk in report.get("checks", []):
        for finding in chk.get("findings", []):
            status, subject = finding.get("status"), finding.get("subject", "")
            if finding.get("ignored") or status not in rank:
                continue
            if rank[status] > rank.get(worst.get(subject, ""), 0):
                worst[subject] = status
    return worst


def _probe_path(
    report: Mapping[str, Any],
) -> Optional[tuple[dict[str, Any], list[str], dict[str, Any]]]:
    """(the evidence that holds the report's probe path: PRB002's, else PRB001's; the names of
    its hops; the packets seen per hop), or None when the report holds no probe. Evidence is
    free-form in a saved report: what is not of the expected kind is left out."""
    found = _probe_findings(report)
    for code in ("PRB002", "PRB001"):
        for finding in found.get(code, []):
            evidence = finding["evidence"]
            if evidence.get("hops") and isinstance(evidence["hops"], list):
                observations = evidence.get("observations")
                seen = observations.get("seen") if isinstance(observations, dict) else None
                hops = [str(hop) for hop in evidence["hops"]]
                return evidence, hops, seen if isinstance(seen, dict) else {}
    return None


def _hop_counts(seen: Mapping[str, Any], hop: str) -> Optional[tuple[int, int]]:
    """(requests, replies) the probe saw at `hop`, or None where it did not look."""
    counts = seen.get(hop)
    if not isinstance(counts, dict):
        return None

    def count(value: Any) -> int:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return int(value) if ok and math.isfinite(value) else 0

    return count(counts.get("request")), count(counts.get("reply"))


def _guest_of(evidence: Mapping[str, Any]) -> dict[str, Any]:
    guest = evidence.get("guest")
    return guest if isinstance(guest, dict) else {}


def _probe_seen(report: Mapping[str, Any]) -> tuple[Optional[str], dict[str, str]]:
    """(the probed guest's name, hop name -> "seen"/"missing"/"") of the report's probe."""
    path = _probe_path(report)
    if path is None:
        return None, {}
    evidence, names, seen = path
    hops: dict[str, str] = {}
    for hop in names:
        counts = _hop_counts(seen, hop)
        hops[hop] = "" if counts is None else ("seen" if sum(counts) else "missing")
    guest = _guest_of(evidence)
    return (str(guest["name"]) if guest.get("name") else None), hops


def host_drawing(
    report: Mapping[str, Any],
    esc: Callable[[Any], str],
    anchors: Mapping[str, str],
    *,
    network: Optional[Mapping[str, Any]] = None,
    prefix: str = "",
    svg_id: str = "network-drawing",
) -> Optional[str]:
    """The host's virtual network, or None when the report carries no links.

    `network` and `prefix` draw one host of a fleet report: its own `host.network`, and the
    prefix of its findings' subjects ("host:NAME/"). A guest's NIC stands for `mac:ADDRESS`
    too (NET010's subject: the host's own, or the fleet's for a MAC on two hosts), so a shared
    MAC marks every guest and tap that carries it. The hops of the report's probe are marked
    on the links they name (seen or missing where the probe sent packets)."""
    if network is None:
        network = (report.get("host") or {}).get("network")
    if not network or not network.get("links"):
        return None
    links = [link for link in network["links"] if link.get("name") and link["name"] != "lo"]
    served = {n["bridge"]: n for n in network.get("networks", []) if n.get("bridge")}
    names = {link["name"] for link in links}
    kinds = {link["name"]: link.get("kind") for link in links}
    # A VLAN on a bond (or team) gets a column of its own, left of the bonds.
    split = any(
        link.get("kind") == "vlan" and kinds.get(link.get("lower") or "") in _MID_KINDS
        for link in links
    )
    columns = (*COLUMNS[:3], "VLANs", "bonds", COLUMNS[4]) if split else COLUMNS
    cols: list[list[dict[str, Any]]] = [[] for _ in columns]
    for guest in network.get("guests", []):
        cols[0].append({"what": "guest", **guest})
    for link in links:
        cols[_column(link, split)].append({"what": "link", **link})
    for net in network.get("networks", []):
        if not net.get("bridge") or net["bridge"] not in names:
            cols[2].append({"what": "network", **net})
    # Ports under their master, masters in name order: fewer crossing lines.
    order = {item["name"]: n for n, item in enumerate(sorted(cols[2], key=lambda i: i["name"]))}
    cols[1].sort(key=lambda i: (order.get(i.get("master") or "", len(order)), i["name"]))
    for n in range(2, len(columns)):
        cols[n].sort(key=lambda i: i["name"])
    # The MACs of the guests' NICs, by the tap each NIC is plugged into while it runs.
    tap_macs: dict[str, list[str]] = {}
    for guest in network.get("guests", []):
        for nic in guest.get("nics", []):
            if nic.get("target") and nic.get("mac"):
                tap_macs.setdefault(str(nic["target"]), []).append(str(nic["mac"]))

    def subjects(*mine: str, macs: tuple[str, ...] = ()) -> tuple[str, tuple[str, ...]]:
        """(the node's own subject, the others it stands for) as the report names them."""
        others = [f"{prefix}{m}" for m in mine[1:]]
        for mac in macs:
            others.append(f"{prefix}mac:{mac.lower()}")
            if prefix:
                others.append(f"mac:{mac.lower()}")  # the fleet's: a MAC on two hosts
        return f"{prefix}{mine[0]}", tuple(others)

    probed, hops = _probe_seen(report) if not prefix else (None, {})
    canvas = _Canvas(esc, anchors)
    canvas.status = _worst(report)
    ids = svg_id.replace("network-drawing", "net")
    where: dict[tuple[str, str], tuple[float, float]] = {}  # (what, name) -> left middle
    top = PAD + 22
    for c, items in enumerate(cols):
        x = PAD + c * (W + GAP_X)
        if items:
            canvas.parts.append(f'<text class="head" x="{x}" y="{PAD + 8}">{columns[c]}</text>')
        for r, item in enumerate(items):
            y = top + r * (H + GAP_Y)
            name = item["name"]
            if item["what"] == "guest":
                macs = [nic.get("mac") or "?" for nic in item.get("nics", [])]
                sub = ("running" if item.get("active") else "shut off") + (
                    f", {len(macs)} NIC" + ("s" if len(macs) != 1 else "") if macs else ""
                )
                title = f"domain {name}: " + (", ".join(macs) or "no NIC")
                mine, also = subjects(f"domain:{name}", macs=tuple(m for m in macs if m != "?"))
                classes = "guest" + (" path" if probed is not None and name == probed else "")
                canvas.node(x, y, name, sub, classes, mine, title, f"{ids}-g{r}", also)
            elif item["what"] == "network":
                sub = f"network {item['name']}, {'active' if item.get('active') else 'inactive'}"
                label = item.get("bridge") or f"network {name}"
                title = f"libvirt network {name} ({item.get('forward') or 'isolated'})"
                classes = "bridge" + ("" if item.get("active") else " absent")
                mine, also = subjects(f"network:{name}")
                canvas.node(x, y, label, sub, classes, mine, title, f"{ids}-n{r}", also)
                if item.get("bridge"):
                    where[("link", item["bridge"])] = (x, y + H / 2)
                where[("network", name)] = (x, y + H / 2)
                continue
            else:
                kind = item.get("kind") or "NIC"
                net = served.get(name)
                sub = kind + (f", network {net['name']}" if net else "")
                if item.get("port_state"):
                    sub += f", {item['port_state']}"
                elif item.get("operstate") and not net:
                    sub += f", {item['operstate']}"
                role = "bridge" if c == 2 else "bond" if kind in _MID_KINDS else "link"
                classes = role + (f" path {hops[name]}".rstrip() if name in hops else "")
                title = f"{kind} {name}" + (f" ({item['mac']})" if item.get("mac") else "")
                mine, also = subjects(
                    f"iface:{name}", *([f"network:{net['name']}"] if net else []),
                    macs=tuple(tap_macs.get(name, ())),
                )  # fmt: skip
                canvas.node(x, y, name, sub, classes, mine, title, f"{ids}-l{c}-{r}", also)
                if net:
                    where[("network", net["name"])] = (x, y + H / 2)
            where[(item["what"], name)] = (x, y + H / 2)

    def right(point: tuple[float, float]) -> tuple[float, float]:
        return point[0] + W, point[1]

    for link in links:
        me = where.get(("link", link["name"]))
        for other in (link.get("master"), link.get("lower")):
            them = where.get(("link", other)) if other else None
            if me and them:
                a, b = sorted((me, them))
                canvas.line(right(a), b)
    for guest in network.get("guests", []):
        me = where.get(("guest", guest["name"]))
        for nic in guest.get("nics", []):
            source = nic.get("source") or {}
            them = where.get(("link", nic.get("target") or "")) if nic.get("target") else None
            dashed = them is None  # not running: drawn to what it would join
            them = (
                them
                or where.get(("link", source.get("bridge", "")))
                or where.get(("network", source.get("network", "")))
                or where.get(("link", source.get("dev", "")))
            )
            if me and them:
                canvas.line(right(me), them, dashed)
    rows = max(len(items) for items in cols)
    width = PAD * 2 + len(columns) * W + (len(columns) - 1) * GAP_X
    height = top + rows * (H + GAP_Y) + PAD
    return canvas.svg(width, height, svg_id, "the host's virtual network")


def _probe_findings(report: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for chk in report.get("checks", []):
        if chk.get("code") in ("PRB001", "PRB002"):
            found[chk["code"]] = [
                f for f in chk.get("findings", []) if isinstance(f.get("evidence"), dict)
            ]
    return found


def probe_drawing(
    report: Mapping[str, Any], esc: Callable[[Any], str], anchors: Mapping[str, str]
) -> Optional[str]:
    """A probe's path with where it stopped, or None when the report holds no probe."""
    path = _probe_path(report)
    if path is None:
        return None
    evidence, hops, seen = path
    found = _probe_findings(report)
    guest = _guest_of(evidence)
    target = str(evidence.get("target", "?"))
    roles = {}
    for finding in found.get("PRB001", []):
        for hop in (finding["evidence"].get("path") or {}).get("hops", []):
            if isinstance(hop, dict) and hop.get("name"):
                roles[str(hop["name"])] = str(hop.get("role") or "")
    # Where it stopped: a located drop (PRB002), else a predicted one (PRB001).
    stop: Optional[tuple[Optional[str], Optional[str], str, str]] = None
    for code in ("PRB002", "PRB001"):
        for finding in found.get(code, []):
            ev = finding["evidence"]
            if finding.get("status") not in ("fail", "error", "warn"):
                continue
            if code == "PRB002":
                stop = (ev.get("last_seen"), ev.get("first_missing"), str(ev.get("direction")),
                        finding["subject"])  # fmt: skip
            else:
                hop = ev.get("hop")
                before = hop if hop in hops else (hops[-2] if hop == "forward" and len(hops) > 1
                                                  else None)  # fmt: skip
                after = hops[hops.index(before) + 1] if before in hops[:-1] else None
                stop = (before, after, f"{ev.get('direction', 'request')} (predicted)",
                        finding["subject"])  # fmt: skip
            break
        if stop:
            break
    canvas = _Canvas(esc, anchors)
    canvas.status = _worst(report)
    chain_nodes: list[tuple[str, str, str, Optional[str]]] = []
    guest_label = str(guest.get("name", "guest"))
    chain_nodes.append((guest_label, f"{guest.get('kind', 'guest')}", "guest",
                        f"guest:{guest_label}"))  # fmt: skip
    for hop in hops:
        counts = _hop_counts(seen, hop)
        if counts is not None:
            state = "seen" if sum(counts) else "missing"
            sub = f"req {counts[0]} / rep {counts[1]}"
        else:
            state, sub = "", "not observed"
        role = roles.get(hop)
        chain_nodes.append((hop, f"{role}: {sub}" if role else sub, f"hop {state}",
                            f"iface:{hop}"))  # fmt: skip
    chain_nodes.append((target, "target", "target", None))
    y = PAD + 22
    canvas.parts.append(
        f'<text class="head" x="{PAD}" y="{PAD + 8}">probe path to {esc(target)}</text>'
    )
    step = W + GAP_X
    points = []
    for n, (label, sub, classes, subject) in enumerate(chain_nodes):
        x = PAD + n * step
        canvas.node(x, y, label, sub, classes, subject, f"{label}: {sub}", f"probe-hop-{n}")
        points.append(x)
    for n in range(len(points) - 1):
        canvas.line((points[n] + W, y + H / 2), (points[n + 1], y + H / 2))
    if stop is not None:
        last, missing, direction, subject = stop
        names = [c[0] for c in chain_nodes]
        if last in hops:
            gap = names.index(last)  # the gap after the last hop that saw it
        elif missing in hops:
            gap = names.index(missing) - 1
        else:
            gap = len(names) - 2
        cx = PAD + gap * step + W + GAP_X / 2
        mark = (
            f'<g class="stop probe-stop" id="probe-stop"><title>stopped: {esc(direction)}'
            f"</title>"
            f'<line x1="{cx - 9}" y1="{y + H / 2 - 9}" x2="{cx + 9}" y2="{y + H / 2 + 9}"/>'
            f'<line x1="{cx - 9}" y1="{y + H / 2 + 9}" x2="{cx + 9}" y2="{y + H / 2 - 9}"/>'
            f'<text x="{cx - 30}" y="{y + H + 18}">stopped here</text>'
            f'<text class="sub" x="{cx - 30}" y="{y + H + 32}">{esc(_short(direction))}</text></g>'
        )
        target_id = anchors.get(subject)
        canvas.parts.append(f'<a href="#{target_id}">{mark}</a>' if target_id else mark)
    width = PAD * 2 + len(chain_nodes) * W + (len(chain_nodes) - 1) * GAP_X
    return canvas.svg(width, y + H + 44, "probe-drawing", f"the probe's path to {target}")
