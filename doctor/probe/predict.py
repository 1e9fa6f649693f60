"""Static predictions: what the path's state says about where traffic will die, before any
packet is sent. Pure functions of a Path.

Each prediction names the hop it concerns, the direction, a cause (one of CAUSES), the kernel
drop reason that cause gives when a packet meets it (as seen on the lab kernel, shared/LAB.md),
and the playbook that fixes it when one exists.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, field
from typing import Any, Optional

from doctor.probe.path import Hop, Path
from doctor.record import record

# cause -> (kernel drop reason it produces, playbook that fixes it)
CAUSES: dict[str, tuple[Optional[str], Optional[str]]] = {
    "guest-no-route": (None, None),
    "link-down": ("QDISC_DROP", None),
    "no-carrier": ("OTHERHOST", None),
    "port-not-forwarding": ("BRIDGE_INGRESS_STP_STATE", "bridge-port-not-forwarding"),
    "bridge-netfilter-drop": ("NETFILTER_DROP", "bridge-netfilter-drops-guests"),
    "forward-drop": ("NETFILTER_DROP", None),
    "ip-forward-off": ("IP_INADDRERRORS", "ip-forward-disabled"),
    "no-route": ("IP_INNOROUTES", None),
    "rp-filter": ("IP_RPFILTER", None),
    "route-error": (None, None),
    "nat-missing": (None, "nat-masquerade-missing"),
    "neighbour-failed": ("NEIGH_FAILED", None),
    "mtu-mismatch": ("PKT_TOO_BIG", None),
    "tap-stalled": ("FULL_RING", None),
    "bond-mode": (None, "bond-mode-unsuited-for-bridge"),
    "macvtap-host": (None, "macvtap-host-isolation"),
    # Open vSwitch (from OVSDB): the kernel's reasons for its datapath's drops are not
    # specified here (this lab's kernel has no OVS).
    "ovs-vlan-not-carried": (None, None),
    "ovs-interface-error": (None, None),
    "ovs-no-uplink": (None, None),
    "ovs-tunnel-exit": (None, None),
}
# Bond modes that confuse a bridge's learning and the switch (checks/network.py NET008).
UNSUITED_BOND_MODES = ("balance-rr", "balance-tlb", "balance-alb")
# The kernel's reasons, and the causes each may stand for.
REASON_CAUSES: dict[str, tuple[str, ...]] = {}
for _cause, (_reason, _playbook) in CAUSES.items():
    if _reason:
        REASON_CAUSES.setdefault(_reason, ())
        REASON_CAUSES[_reason] += (_cause,)

NOT_FORWARDING = ("disabled", "listening", "learning", "blocking")


@record
class Prediction:
    hop: str  # the hop's device name, or "forward" for the routing step
    direction: str  # request, reply or both
    cause: str  # a key of CAUSES
    message: str
    status: str = "fail"  # fail: traffic will die there; warn: it may
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def reason(self) -> Optional[str]:
        return CAUSES[self.cause][0]

    @property
    def playbook(self) -> Optional[str]:
        return CAUSES[self.cause][1]

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["reason"] = self.reason
        out["playbook"] = self.playbook
        return out


def _down(hop: Hop) -> Optional[str]:
    """Why a hop cannot carry traffic, or None."""
    if hop.admin_up is False:
        return "administratively down"
    if hop.kind == "openvswitch":
        # OVS's own devices (a bridge's internal port) report operstate DOWN while the
        # datapath switches through them; OVSDB's link_state is judged instead.
        return "has no carrier" if hop.carrier is False else None
    if hop.carrier is False or hop.operstate in ("down", "lowerlayerdown", "notpresent"):
        return f"has no carrier (operstate {hop.operstate})"
    return None


def predict(path: Path) -> list[Prediction]:
    """Every static prediction for the path, in path order."""
    found: list[Prediction] = []
    guest_route = path.guest.route
    if guest_route is not None and guest_route.error:
        found.append(
            Prediction(
                path.guest.iface,
                "request",
                "guest-no-route",
                f"the guest has no route to {path.target} ({guest_route.error}: "
                f"{guest_route.error_text})",
                evidence={"route": guest_route.as_dict()},
            )
        )
    for hop in path.hops:
        found.extend(_hop_predictions(path, hop))
    blocked = {p.evidence["hop"].get("master") for p in found if p.cause == "port-not-forwarding"}
    # A bridge has no carrier while none of its ports forwards: the port is the cause.
    found = [p for p in found if not (p.cause == "link-down" and p.hop in blocked)]
    found.extend(_mtu(path))
    found.extend(_ovs(path))
    if path.forwarding is not None:
        found.extend(_forwarding(path))
    return found


def _hop_predictions(path: Path, hop: Hop) -> list[Prediction]:
    out = []
    down = _down(hop)
    if down is not None:
        if hop.kind == "tap":
            # The guest's own tap drops what comes back to it; the target's, what goes there.
            out.append(
                Prediction(
                    hop.name,
                    "reply" if hop.role == "tap" else "request",
                    "no-carrier",
                    f"tap {hop.name} {down}: no process (QEMU) reads it, frames towards the "
                    "guest are dropped",
                    evidence={"hop": hop.as_dict()},
                )
            )
        else:
            direction = "request" if hop.role == "uplink" else "both"
            out.append(
                Prediction(
                    hop.name,
                    direction,
                    "link-down",
                    f"{hop.role} {hop.name} {down}",
                    evidence={"hop": hop.as_dict()},
                )
            )
    if hop.bond_mode in UNSUITED_BOND_MODES and (path.bridge is not None or hop.master):
        out.append(
            Prediction(
                hop.name,
                "both",
                "bond-mode",
                f"bond {hop.name} runs {hop.bond_mode} under a bridge's traffic: the switch and "
                "the bridge see the guests' MACs move between links and drop or flood frames",
                status="warn",
                evidence={"hop": hop.as_dict()},
            )
        )
    if hop.macvlan_mode is not None and hop.role == "tap":
        lower = next((h for h in path.hops if h.role == "lower"), None)
        own = {a.split("/")[0] for a in lower.addresses} if lower else set()
        if path.target in own and hop.macvlan_mode != "passthru":
            out.append(
                Prediction(
                    hop.name,
                    "request",
                    "macvtap-host",
                    f"{path.target} is the host's own address on {lower.name if lower else '?'}, "
                    f"the lower device of the guest's macvtap {hop.name} ({hop.macvlan_mode}): "
                    "a macvtap guest cannot reach its host through that device",
                    evidence={"hop": hop.as_dict()},
                )
            )
    if hop.port_state in NOT_FORWARDING and down is None:
        out.append(
            Prediction(
                hop.name,
                "both",
                "port-not-forwarding",
                f"bridge port {hop.name} is {hop.port_state} on {hop.master}: the bridge drops "
                "the frames it receives there",
                evidence={"hop": hop.as_dict()},
            )
        )
    return out


def _vlans(port: dict[str, Any]) -> str:
    mode = port.get("vlan_mode")
    if mode == "access":
        return f"access port of VLAN {port.get('tag')}"
    trunks = port.get("trunks") or []
    which = ", ".join(str(t) for t in trunks) if trunks else "all VLANs"
    native = f", native VLAN {port.get('tag')}" if mode != "trunk" else ""
    return f"{mode} port ({which}{native})"


def _ovs(path: Path) -> list[Prediction]:
    """What OVSDB says about the Open vSwitch part of the path: an interface that failed or
    is down, the guest's VLAN not carried by the uplinks of its bridge, no way out."""
    from doctor.facts.ovs import carries

    out: list[Prediction] = []
    for hop in path.hops:
        if hop.ovs is None or hop.role == "ovs-bridge":
            continue
        for iface in hop.ovs.get("interfaces", ()):
            port, ovs_bridge = hop.ovs.get("port"), hop.ovs.get("bridge")
            where = f"{iface['name']} (port {port} of OVS bridge {ovs_bridge})"
            if iface.get("error"):
                out.append(
                    Prediction(
                        hop.name,
                        "both",
                        "ovs-interface-error",
                        f"{where}: ovs-vswitchd could not set it up: {iface['error']}",
                        evidence={"hop": hop.as_dict()},
                    )
                )
            elif iface.get("link_state") == "down" and _down(hop) is None:
                direction = "reply" if hop.role == "tap" else "request"
                if hop.role == "tunnel":
                    direction = "both"
                out.append(
                    Prediction(
                        hop.name,
                        direction,
                        "link-down",
                        f"{where}: OVSDB reports link_state down",
                        evidence={"hop": hop.as_dict()},
                    )
                )
    bridge = path.ovs_bridge
    tap = path.hops[0] if path.hops else None
    if bridge is None or bridge.ovs is None or tap is None or tap.ovs is None:
        return out
    own = bridge.ovs["bridge"]
    guest_port = tap.ovs
    direct = [h for h in path.hops if h.role == "uplink" and h.ovs and h.ovs["bridge"] == own]
    vlan = guest_port.get("tag") if guest_port.get("vlan_mode") == "access" else None
    if vlan is not None and direct:
        carrying = [
            h
            for h in direct
            if h.ovs is not None
            and carries(h.ovs["vlan_mode"], h.ovs.get("tag"), h.ovs.get("trunks") or (), vlan)
        ]
        if not carrying:
            first = direct[0]
            assert first.ovs is not None
            out.append(
                Prediction(
                    first.name,
                    "both",
                    "ovs-vlan-not-carried",
                    f"the guest's port {guest_port.get('port')} is an access port of VLAN {vlan} "
                    f"on OVS bridge {own}, and its uplink {first.name} ({_vlans(first.ovs)}) "
                    f"does not carry VLAN {vlan}: the guest's frames never leave the bridge "
                    "(with the bridge's default NORMAL switching)",
                    evidence={"guest_port": guest_port, "uplinks": [h.as_dict() for h in direct]},
                )
            )
    if not direct:
        ways = [
            f"patch port {p['port']} to {p['peer']}"
            for p in bridge.ovs.get("patches", ())
            if p["bridge"] == own
        ] + [
            f"{t['type']} tunnel {t['port']}"
            + (f" to {t['remote_ip']}" if t.get("remote_ip") else "")
            for t in bridge.ovs.get("tunnels", ())
        ]
        if ways:
            beyond = [h.name for h in path.hops if h.role == "uplink"]
            tail = (
                f"; physical uplinks beyond the patch ports: {', '.join(beyond)}" if beyond else ""
            )
            out.append(
                Prediction(
                    own,
                    "both",
                    "ovs-tunnel-exit",
                    f"OVS bridge {own} has no physical uplink of its own: the guest's traffic "
                    f"leaves through {', '.join(ways)}{tail}; kvmdoctor does not follow it "
                    "beyond this host",
                    status="info",
                    evidence={"ovs": bridge.ovs},
                )
            )
        else:
            out.append(
                Prediction(
                    own,
                    "request",
                    "ovs-no-uplink",
                    f"OVS bridge {own} has no uplink, patch or tunnel port: the guest reaches "
                    "only the bridge's other ports and the host's internal port",
                    status="warn",
                    evidence={"ovs": bridge.ovs},
                )
            )
    return out


def _mtu(path: Path) -> list[Prediction]:
    guest = path.hops[0] if path.hops else None
    if guest is None or guest.mtu is None:
        return []
    out = []
    for hop in path.hops[1:]:
        if hop.mtu is not None and hop.mtu < guest.mtu:
            out.append(
                Prediction(
                    hop.name,
                    "request",
                    "mtu-mismatch",
                    f"{hop.name} has MTU {hop.mtu}, below the guest's {guest.mtu}: full-size "
                    "frames are dropped or need fragmentation",
                    status="warn",
                    evidence={"guest_mtu": guest.mtu, "hop_mtu": hop.mtu},
                )
            )
    return out


def _forwarding(path: Path) -> list[Prediction]:
    fwd = path.forwarding
    assert fwd is not None
    out: list[Prediction] = []
    route = fwd.route
    bridge = path.bridge
    evidence = {"forwarding": fwd.as_dict()}
    if path.target_on_bridge:
        nf_on = fwd.bridge_nf_call_iptables == "1" or (bridge and bridge.nf_call_iptables)
        if bridge is not None and nf_on and fwd.bridge_verdict is not None:
            out.append(
                Prediction(
                    bridge.name,
                    "both",
                    "bridge-netfilter-drop",
                    f"br_netfilter passes frames across {bridge.name} to FORWARD, and "
                    f"{fwd.bridge_verdict.get('view')} drops them ({fwd.bridge_verdict.get('by')})",
                    evidence=evidence,
                )
            )
        return out
    if route is not None and route.error:
        cause, why = {
            "EHOSTUNREACH": ("ip-forward-off", "forwarding is off (net.ipv4.ip_forward = "),
            "ENETUNREACH": ("no-route", "the host has no route to "),
            "EINVAL": ("rp-filter", "reverse-path filtering refuses the guest's source on "),
            "EXDEV": ("rp-filter", "reverse-path filtering refuses the guest's source on "),
        }.get(route.error, ("route-error", "the kernel refuses to route it: "))
        if cause == "ip-forward-off":
            why += f"{fwd.ip_forward})"
        elif cause == "no-route":
            why += path.target
        elif cause == "rp-filter":
            why += f"{fwd.iif} (rp_filter {fwd.rp_filter})"
        else:
            why += f"{route.error}"
        out.append(
            Prediction(
                "forward",
                "request",
                cause,
                f"route get {path.target} from {path.guest.ip} iif {fwd.iif}: {route.error}; {why}",
                evidence=evidence,
            )
        )
        return out
    if route is None or route.type != "unicast" or not route.oif:
        return out
    if fwd.ip_forward == "0":
        out.append(
            Prediction(
                "forward",
                "request",
                "ip-forward-off",
                "net.ipv4.ip_forward = 0: the host does not route the guest's packets",
                evidence=evidence,
            )
        )
    if fwd.forward_verdict is not None:
        out.append(
            Prediction(
                "forward",
                "request",
                "forward-drop",
                f"the FORWARD hook drops traffic from {fwd.iif} to {route.oif} "
                f"({fwd.forward_verdict.get('view')}: {fwd.forward_verdict.get('by')})",
                evidence=evidence,
            )
        )
    if fwd.nat_known and not fwd.nat_rules and path.guest.ip and needs_translation(path):
        out.append(
            Prediction(
                route.oif,
                "reply",
                "nat-missing",
                f"no MASQUERADE or SNAT rule covers the guest's {path.guest.ip} on its way out "
                f"of {route.oif}: replies to its private address do not come back",
                status="warn",
                evidence=evidence,
            )
        )
    neigh = fwd.neighbour
    if neigh is not None and neigh.get("state") == "failed":
        out.append(
            Prediction(
                route.oif,
                "request",
                "neighbour-failed",
                f"the next hop {neigh.get('ip')} on {route.oif} did not answer ARP "
                "(neighbour FAILED)",
                evidence=evidence,
            )
        )
    return out


def needs_translation(path: Path) -> bool:
    """Whether the guest's address lies outside the uplink's subnets: a source that must be
    translated on the way out."""
    uplink = path.uplink
    guest_ip = path.guest.ip
    if uplink is None or guest_ip is None:
        return False
    addr = ipaddress.ip_address(guest_ip)
    return all(addr not in ipaddress.ip_interface(text).network for text in uplink.addresses)
