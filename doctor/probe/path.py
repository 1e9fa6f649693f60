"""The hops a guest's traffic crosses, from the facts and netlink, never from `ip`/`brctl` text.

    guest NIC -> veth peer or tap -> Linux bridge -> forwarding step (route get) -> uplink
    libvirt guest -> tap -> Open vSwitch bridge (OVSDB: the guest's port, its VLAN) -> uplink
        port(s) of that bridge, or of the bridges its patch ports join, and tunnel ports

A namespace stands in for a guest (`from_netns`), or a libvirt domain's interface is followed
from its tap (`from_domain`). The host side is the namespace kvmdoctor runs in. Each hop
carries what the probe and its predictions need: state, carrier, bridge port state, MTU, the
FDB entry for the guest's MAC, counters. The forwarding step holds the kernel's `route get`
answer for a packet arriving from the guest (input interface and source address), the
sysctls that decide forwarding and filtering, the FORWARD verdict of the firewall and the NAT
rules that cover the guest's subnet.

Building a path asks the source (netlink dumps, files) and, through `route_get`, the kernel;
everything else here is pure and takes plain data, so predictions and verdicts are tested on
paths written by hand.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Optional

from doctor.facts import FactContext, FactUnavailable
from doctor.facts.links import Link, Links, links_from_netlink
from doctor.record import record
from doctor.sources.base import SourceError

# include/uapi/linux/neighbour.h NUD_*
NUD_STATES = {
    0x01: "incomplete",
    0x02: "reachable",
    0x04: "stale",
    0x08: "delay",
    0x10: "probe",
    0x20: "failed",
    0x40: "noarp",
    0x80: "permanent",
}


class PathError(Exception):
    """The path cannot be discovered: no such namespace, domain or interface."""


@record
class Counters:
    rx_packets: Optional[int] = None
    tx_packets: Optional[int] = None
    rx_dropped: Optional[int] = None
    tx_dropped: Optional[int] = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@record
class Hop:
    """One device the traffic crosses. `role`: guest-nic, veth-peer, tap, bridge, uplink."""

    role: str
    name: str
    netns: Optional[str] = None  # None: the namespace kvmdoctor runs in
    index: Optional[int] = None
    kind: Optional[str] = None
    operstate: Optional[str] = None
    admin_up: Optional[bool] = None
    carrier: Optional[bool] = None
    mtu: Optional[int] = None
    mac: Optional[str] = None
    master: Optional[str] = None
    port_state: Optional[str] = None  # as a bridge port
    stp_state: Optional[int] = None  # as a bridge
    nf_call_iptables: Optional[bool] = None  # the bridge's own option
    fdb: Optional[dict[str, Any]] = None  # bridge: the entry for the guest's MAC
    addresses: tuple[str, ...] = ()
    counters: Counters = field(default_factory=Counters)
    # role "ports": the bridge's other ports, watched together when the target's own port is
    # not known (the host has no neighbour entry for it)
    members: tuple[str, ...] = ()
    bond_mode: Optional[str] = None  # a bond: its mode
    macvlan_mode: Optional[str] = None  # a macvtap: bridge, vepa, private, passthru
    # An Open vSwitch port (tap, uplink, tunnel: its bridge, VLAN tag/trunks/mode and its
    # interfaces' type, link state, error, ofport) or bridge (role "ovs-bridge": the guest's
    # port and the ways out), from OVSDB.
    ovs: Optional[dict[str, Any]] = None

    @property
    def devices(self) -> tuple[str, ...]:
        """The devices a capture watches for this hop."""
        return self.members or (self.name,)

    @property
    def label(self) -> str:
        return f"{self.name}@{self.netns}" if self.netns else self.name

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v not in (None, (), {})}
        out["addresses"] = list(self.addresses)
        if self.members:
            out["members"] = list(self.members)
        return out


@record
class RouteAnswer:
    """The kernel's answer to `route get DST [from SRC] [iif IIF]`."""

    dst: str
    src: Optional[str] = None
    iif: Optional[int] = None
    type: Optional[str] = None  # unicast, local, unreachable, ...
    oif: Optional[str] = None
    gateway: Optional[str] = None
    prefsrc: Optional[str] = None
    error: Optional[str] = None  # errno name: EHOSTUNREACH, ENETUNREACH, EINVAL, EXDEV
    error_text: Optional[str] = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@record
class Forwarding:
    """What the host does with the guest's packet beyond the bridge."""

    iif: str  # where the guest's packets enter the host's IP stack (bridge or veth peer)
    route: Optional[RouteAnswer]
    ip_forward: Optional[str] = None
    rp_filter: dict[str, Optional[str]] = field(default_factory=dict)  # all, IIF -> value
    bridge_nf_call_iptables: Optional[str] = None
    forward_verdict: Optional[dict[str, Any]] = None  # firewall: iif -> oif
    bridge_verdict: Optional[dict[str, Any]] = None  # firewall: bridge -> bridge (br_netfilter)
    nat_rules: tuple[dict[str, Any], ...] = ()  # MASQUERADE/SNAT covering the guest's source
    nat_known: bool = False  # the firewall could be read
    neighbour: Optional[dict[str, Any]] = None  # the next hop on the uplink: ip, mac, state
    reverse_route: Optional[RouteAnswer] = None  # the host's route back to the guest

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["nat_rules"] = list(self.nat_rules)
        return out


@record
class Guest:
    kind: str  # "netns" or "domain"
    name: str
    iface: str  # the NIC inside the namespace, or the domain's tap
    mac: Optional[str] = None
    addresses: tuple[str, ...] = ()  # "198.51.100.2/24"
    gateway: Optional[str] = None  # the guest's next hop towards the target, when known
    route: Optional[RouteAnswer] = None  # the guest's own route to the target (netns)
    address_source: Optional[str] = None  # where a libvirt guest's address was learned
    network: Optional[str] = None  # a libvirt guest's network (<source network=...>)
    # A libvirt guest: the MAC its frames to the target are addressed to (the target's on
    # the bridge, else the bridge's own as the guest's gateway), when the host knows it.
    next_hop_mac: Optional[str] = None

    @property
    def ip(self) -> Optional[str]:
        for text in self.addresses:
            addr = ipaddress.ip_interface(text)
            if addr.version == 4:
                return str(addr.ip)
        return None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["addresses"] = list(self.addresses)
        return out


@record
class Path:
    guest: Guest
    target: str
    hops: tuple[Hop, ...]
    forwarding: Optional[Forwarding] = None
    target_on_bridge: bool = False  # the target is reached across the bridge, not routed
    problems: tuple[str, ...] = ()

    def hop(self, role: str) -> Optional[Hop]:
        return next((h for h in self.hops if h.role == role), None)

    @property
    def bridge(self) -> Optional[Hop]:
        return self.hop("bridge")

    @property
    def uplink(self) -> Optional[Hop]:
        return self.hop("uplink")

    @property
    def ovs_bridge(self) -> Optional[Hop]:
        return self.hop("ovs-bridge")

    def as_dict(self) -> dict[str, Any]:
        return {
            "guest": self.guest.as_dict(),
            "target": self.target,
            "hops": [h.as_dict() for h in self.hops],
            "forwarding": self.forwarding.as_dict() if self.forwarding else None,
            "target_on_bridge": self.target_on_bridge,
            "problems": list(self.problems),
        }


RouteGet = Callable[..., RouteAnswer]


# --- plain netlink rows -> hop facts --------------------------------------------------------


def _attrs(row: Mapping[str, Any]) -> dict[str, Any]:
    inner = row.get("attrs")
    return dict(inner) if isinstance(inner, Mapping) else {}


def counters(row: Optional[Mapping[str, Any]]) -> Counters:
    """rx/tx packets and drops from a link row's IFLA_STATS64 (else IFLA_STATS)."""
    if row is None:
        return Counters()
    attrs = _attrs(row)
    stats = attrs.get("IFLA_STATS64") or attrs.get("IFLA_STATS") or {}
    if not isinstance(stats, Mapping):
        return Counters()

    def num(key: str) -> Optional[int]:
        value = stats.get(key)
        return value if isinstance(value, int) else None

    return Counters(num("rx_packets"), num("tx_packets"), num("rx_dropped"), num("tx_dropped"))


def fdb_entry(
    rows: Sequence[Mapping[str, Any]],
    mac: str,
    bridge_index: Optional[int],
    names: Mapping[int, str],
) -> Optional[dict[str, Any]]:
    """The bridge's forwarding entry for `mac`: which port it was learned on, and its state."""
    for row in rows:
        attrs = _attrs(row)
        if str(attrs.get("NDA_LLADDR", "")).lower() != mac.lower():
            continue
        master = attrs.get("NDA_MASTER")
        if bridge_index is not None and master not in (None, bridge_index):
            continue
        port = row.get("ifindex")
        state = row.get("state")
        return {
            "mac": mac.lower(),
            "port": names.get(port, f"if{port}") if isinstance(port, int) else None,
            "state": NUD_STATES.get(state, str(state)) if isinstance(state, int) else None,
        }
    return None


def neighbour(
    rows: Sequence[Mapping[str, Any]], ip: str, names: Mapping[int, str]
) -> Optional[dict[str, Any]]:
    for row in rows:
        attrs = _attrs(row)
        if attrs.get("NDA_DST") != ip:
            continue
        state = row.get("state")
        port = row.get("ifindex")
        return {
            "ip": ip,
            "mac": attrs.get("NDA_LLADDR"),
            "dev": names.get(port) if isinstance(port, int) else None,
            "state": NUD_STATES.get(state, str(state)) if isinstance(state, int) else None,
        }
    return None


def neighbour_by_mac(rows: Sequence[Mapping[str, Any]], mac: str) -> Optional[str]:
    """An IPv4 address the host's neighbour table holds for `mac` (the guest's address)."""
    for row in rows:
        attrs = _attrs(row)
        dst = attrs.get("NDA_DST")
        same = str(attrs.get("NDA_LLADDR", "")).lower() == mac.lower()
        if same and isinstance(dst, str) and ipaddress.ip_address(dst).version == 4:
            return dst
    return None


def hop_from(
    role: str,
    link: Link,
    row: Optional[Mapping[str, Any]],
    netns: Optional[str] = None,
    **extra: Any,
) -> Hop:
    return Hop(
        role=role,
        name=link.name,
        netns=netns,
        index=link.index,
        kind=link.kind,
        operstate=link.operstate,
        admin_up=link.admin_up,
        carrier=link.carrier,
        mtu=link.mtu,
        mac=link.mac,
        master=link.master,
        port_state=link.port.state if link.port else None,
        stp_state=link.bridge.stp_state if link.bridge else None,
        nf_call_iptables=link.bridge.nf_call_iptables if link.bridge else None,
        addresses=tuple(link.addresses or ()),
        counters=counters(row),
        bond_mode=link.bond.mode if link.bond else None,
        macvlan_mode=link.macvlan_mode,
        **extra,
    )


# --- discovery ------------------------------------------------------------------------------


@dataclass
class _Side:
    """One namespace's links: parsed records and raw rows by name."""

    links: dict[str, Link]
    rows: Mapping[str, Mapping[str, Any]]
    names: dict[int, str]

    @classmethod
    def read(cls, facts: FactContext, netns: Optional[str]) -> _Side:
        source = facts.source
        try:
            rows = source.netlink("links", netns)
            addresses = source.netlink("addresses", netns)
        except SourceError as exc:
            where = f"namespace {netns}" if netns else "this namespace"
            raise PathError(f"cannot read the links of {where}: {exc.reason}") from None
        parsed = links_from_netlink(rows, addresses)
        if netns is None:  # the host's own links: the report draws them (host.network)
            facts.offer("links", Links(tuple(parsed), "netlink"))
        links = {link.name: link for link in parsed}
        by_name = {str(_attrs(r).get("IFLA_IFNAME")): r for r in rows}
        names = {
            int(r["index"]): name for name, r in by_name.items() if isinstance(r.get("index"), int)
        }
        return cls(links, by_name, names)

    def hop(self, role: str, name: str, netns: Optional[str] = None, **extra: Any) -> Hop:
        return hop_from(role, self.links[name], self.rows.get(name), netns, **extra)


def _dump(facts: FactContext, request: str, problems: list[str]) -> list[dict[str, Any]]:
    try:
        return facts.source.netlink(request)
    except SourceError as exc:
        problems.append(f"netlink {request}: {exc.reason}")
        return []


def from_netns(
    facts: FactContext,
    netns: str,
    target: str,
    *,
    iface: Optional[str] = None,
    route_get: RouteGet,
) -> Path:
    """The path from a network namespace standing in for a guest, through its veth peer in the
    namespace kvmdoctor runs in."""
    guest_side = _Side.read(facts, netns)
    candidates = [
        link
        for link in guest_side.links.values()
        if link.name != "lo" and (iface is None or link.name == iface)
    ]
    if iface is not None and not candidates:
        raise PathError(f"namespace {netns} has no interface {iface}")
    guest_route = route_get(target, netns=netns)
    if iface is None and guest_route.oif:
        candidates = [c for c in candidates if c.name == guest_route.oif] or candidates
    if not candidates:
        raise PathError(f"namespace {netns} has no interface but lo")
    nic = candidates[0]
    guest = Guest(
        kind="netns",
        name=netns,
        iface=nic.name,
        mac=nic.mac,
        addresses=tuple(nic.host_addresses()),
        gateway=guest_route.gateway,
        route=guest_route,
    )
    hops = [guest_side.hop("guest-nic", nic.name, netns)]
    host = _Side.read(facts, None)
    row = guest_side.rows.get(nic.name, {})
    peer_index = _attrs(row).get("IFLA_LINK")
    peer = None
    for name, host_row in host.rows.items():
        if host_row.get("index") == peer_index and _attrs(host_row).get("IFLA_LINK") == nic.index:
            peer = name
            break
    problems: list[str] = []
    if peer is None:
        problems.append(
            f"the peer of {nic.name} (ifindex {peer_index}) is not in the namespace kvmdoctor "
            "runs in: the host side of the path is unknown"
        )
        return Path(guest, target, tuple(hops), problems=tuple(problems))
    hops.append(host.hop("veth-peer", peer))
    return _host_side(facts, host, guest, target, hops, peer, problems, route_get)


def from_domain(
    facts: FactContext,
    domain: str,
    target: str,
    *,
    iface: Optional[str] = None,
    route_get: RouteGet,
) -> Path:
    """The path from a running libvirt domain's interface: its tap and what the tap is on."""
    try:
        domains = facts.get("domains")
    except FactUnavailable as exc:
        raise PathError(f"libvirt domains cannot be read: {exc.reason}") from None
    dom = next((d for d in domains.items if d.name == domain), None)
    if dom is None:
        raise PathError(f"no domain named {domain}")
    if not dom.active:
        raise PathError(f"domain {domain} is not running: it has no tap to probe")
    nics = [
        n
        for n in dom.interfaces
        if iface is None or n.target == iface or (n.mac or "").lower() == iface.lower()
    ]
    nics = [n for n in nics if n.target]
    if not nics:
        which = f" matching {iface}" if iface else ""
        raise PathError(f"domain {domain} has no interface{which} with a tap")
    nic = nics[0]
    assert nic.target is not None
    host = _Side.read(facts, None)
    problems: list[str] = []
    if nic.target not in host.links:
        raise PathError(f"{domain}'s tap {nic.target} is not in this namespace")
    guest_ip, origin = _guest_address(facts, domain, nic.mac, problems)
    guest = Guest(
        kind="domain",
        name=domain,
        iface=nic.target,
        mac=nic.mac,
        addresses=(f"{guest_ip}/32",) if guest_ip else (),
        address_source=origin,
        network=nic.source.get("network") if nic.type == "network" else None,
    )
    ovs = _on_ovs(host.links[nic.target])
    if nic.virtualport == "openvswitch" and not ovs:
        master = host.links[nic.target].master
        problems.append(
            f"{domain}'s interface asks for Open vSwitch (<virtualport type='openvswitch'>), "
            f"but its tap {nic.target} is not an OVS port (master: {master or 'none'})"
        )
    if guest_ip is None and not ovs:
        problems.append(
            f"the guest's IPv4 address is unknown (libvirt has no DHCP lease or ARP entry for "
            f"{nic.mac}, the host no neighbour entry); routing is judged without a source "
            "address"
        )
    kind = host.links[nic.target].kind
    role = "tap" if kind in ("tap", "tun", "macvtap", "macvlan") else "veth-peer"
    hops = [host.hop(role, nic.target)]
    return _host_side(facts, host, guest, target, hops, nic.target, problems, route_get)


def address_from_libvirt(answer: Any, mac: str) -> Optional[tuple[str, str]]:
    """(the IPv4 address, "libvirt lease" or "libvirt arp") for the interface with `mac` in
    libvirt's interface_addresses answer, leases first."""
    if not isinstance(answer, Mapping):
        return None
    for key in ("lease", "arp"):
        by_source = answer.get(key)
        if not isinstance(by_source, Mapping):
            continue
        for nic in by_source.get("interfaces") or []:
            if str(nic.get("hwaddr", "")).lower() != mac.lower():
                continue
            for addr in nic.get("addrs") or []:
                text = addr.get("addr")
                if isinstance(text, str) and ipaddress.ip_address(text).version == 4:
                    return text, f"libvirt {key}"
    return None


def _guest_address(
    facts: FactContext, domain: str, mac: Optional[str], problems: list[str]
) -> tuple[Optional[str], Optional[str]]:
    """The guest's IPv4 address without the guest's help: libvirt's DHCP leases and ARP
    view of it, then the host's neighbour table."""
    if not mac:
        return None, None
    try:
        answer = facts.source.libvirt(facts.options.uri, "interface_addresses", domain=domain)
    except SourceError as exc:
        problems.append(f"libvirt interface addresses of {domain}: {exc.reason}")
        answer = None
    found = address_from_libvirt(answer, mac)
    if found is not None:
        return found
    ip = neighbour_by_mac(_dump(facts, "neighbours", problems), mac)
    return (ip, "host neighbour table") if ip else (None, None)


def _host_side(
    facts: FactContext,
    host: _Side,
    guest: Guest,
    target: str,
    hops: list[Hop],
    port: str,
    problems: list[str],
    route_get: RouteGet,
) -> Path:
    link = host.links[port]
    iif = port
    if _on_ovs(link):
        # Open vSwitch switches the guest's frames in its datapath: the bridge, the guest's
        # port and the ways out come from OVSDB, not from the kernel's bridge.
        _ovs_hops(facts, host, guest, port, hops, problems)
        return Path(guest, target, tuple(hops), problems=tuple(problems))
    if link.kind in ("macvtap", "macvlan"):
        # The guest's frames leave through the lower device directly: no bridge, no routing
        # on this host. The lower device (and what it sits on) is the rest of the path.
        _lower_hops(host, link, hops)
        return Path(guest, target, tuple(hops), problems=tuple(problems))
    if link.master and link.slave_kind == "bridge" and link.master in host.links:
        bridge = link.master
        fdb = None
        if guest.mac:
            fdb_rows = _dump(facts, "fdb", problems)
            fdb = fdb_entry(fdb_rows, guest.mac, host.links[bridge].index, host.names)
        hops.append(host.hop("bridge", bridge, fdb=fdb))
        iif = bridge
    elif link.master:
        problems.append(f"{port} is enslaved to {link.master}, which is not a Linux bridge")
    iif_index = host.links[iif].index
    if guest.ip is not None:
        route = route_get(target, src=guest.ip, iif=iif_index)
    else:
        # An input interface needs a source address (the kernel answers EINVAL without one):
        # without the guest's address, the host's own route is the best guess.
        route = route_get(target)
    forwarding = _forwarding(facts, host, guest, target, iif, route, problems, route_get)
    target_on_bridge = route.error is None and route.oif == iif and route.type == "unicast"
    if target_on_bridge and iif != port:
        hops.append(_target_port(facts, host, target, iif, port, problems))
    if guest.kind == "domain" and iif != port:
        guest = _next_hop(facts, host, guest, target, iif, target_on_bridge, problems)
    out = route
    if route.error is not None:
        # Where the host itself would send it: the uplink the guest's packets should take.
        out = route_get(target)
    if out.oif and out.oif != iif and out.oif in host.links and out.type == "unicast":
        hops.append(host.hop("uplink", out.oif))
        _lower_hops(host, host.links[out.oif], hops)
    return Path(guest, target, tuple(hops), forwarding, target_on_bridge, tuple(problems))


def _on_ovs(link: Link) -> bool:
    """A port of Open vSwitch's datapath (a tap or NIC enslaved to ovs-system, or an OVS
    internal port)."""
    return (
        link.slave_kind == "openvswitch"
        or link.master == "ovs-system"
        or link.kind == "openvswitch"
    )


def _ovs_port(bridge: Any, port: Any) -> dict[str, Any]:
    """An OVS port's facts for a hop: its bridge, VLAN settings and interfaces' state."""
    return {
        "bridge": bridge.name,
        **port.summary(),
        "interfaces": [
            {
                "name": i.name,
                "type": i.type or "system",
                "link_state": i.link_state,
                "admin_state": i.admin_state,
                "error": i.error,
                "ofport": i.ofport,
                **({"options": dict(i.options)} if i.options else {}),
            }
            for i in port.interfaces
        ],
    }


def _ovs_hops(
    facts: FactContext, host: _Side, guest: Guest, port: str, hops: list[Hop], problems: list[str]
) -> None:
    """The Open vSwitch part of the path: the bridge holding the guest's port, then its uplink
    ports (NICs, bonds, VLAN devices; other guests' taps are not ways out), following patch
    ports to the bridges they join, and its tunnel ports."""
    from doctor.facts.ovs import uplinks

    try:
        found = facts.get("ovs")
    except FactUnavailable as exc:
        problems.append(
            f"{port} is an Open vSwitch port, and OVSDB could not be read: {exc.reason}"
        )
        return
    where = found.find(port)
    if where is None:
        problems.append(
            f"{port} is enslaved to ovs-system, but no OVS bridge has an interface {port}"
        )
        return
    bridge, own, _ = where
    hops[-1] = replace(hops[-1], ovs=_ovs_port(bridge, own))
    ways = uplinks(found, bridge, skip=(own.name,))

    def way_out(iface: Any) -> bool:
        if iface.guest:
            return False
        link = host.links.get(iface.name)
        return link is None or link.kind not in ("tap", "tun", "veth", "macvtap")

    outs: list[tuple[Any, Any]] = []
    for br, p, iface in ways["system"]:
        if way_out(iface) and (br, p) not in outs:
            outs.append((br, p))
    summary = {
        "bridge": bridge.name,
        "fail_mode": bridge.fail_mode,
        "datapath_type": bridge.datapath_type,
        "guest_port": own.summary(),
        "uplinks": [{"bridge": br.name, **p.summary()} for br, p in outs],
        "patches": [
            {"bridge": br.name, "port": p.name, "peer": i.patch_peer} for br, p, i in ways["patch"]
        ],
        "tunnels": [
            {
                "bridge": br.name,
                "port": p.name,
                "type": i.type,
                "remote_ip": i.options.get("remote_ip"),
            }
            for br, p, i in ways["tunnel"]
        ],
    }
    if bridge.name in host.links:
        hops.append(host.hop("ovs-bridge", bridge.name, ovs=summary))
    else:
        hops.append(Hop(role="ovs-bridge", name=bridge.name, kind="openvswitch", ovs=summary))
    for br, p in outs:
        facts_of = _ovs_port(br, p)
        names = [i.name for i in p.interfaces]
        if len(names) == 1 and names[0] in host.links:
            hops.append(host.hop("uplink", names[0], ovs=facts_of))
            _lower_hops(host, host.links[names[0]], hops)
        else:  # an OVS bond (several interfaces), or a device netlink did not list
            hops.append(Hop(role="uplink", name=p.name, members=tuple(names), ovs=facts_of))
    for br, p, iface in ways["tunnel"]:
        hops.append(Hop(role="tunnel", name=p.name, kind=iface.type, ovs=_ovs_port(br, p)))


def _next_hop(
    facts: FactContext,
    host: _Side,
    guest: Guest,
    target: str,
    bridge: str,
    on_bridge: bool,
    problems: list[str],
) -> Guest:
    """Where a libvirt guest addresses its frames to the target: the target itself when it
    is on the guest's bridge (its MAC from the host's neighbour table, or learned by ARP when
    probing), else the host's address on the bridge as the guest's gateway (the bridge's own
    MAC)."""
    link = host.links[bridge]
    if on_bridge:
        neigh = neighbour(_dump(facts, "neighbours", problems), target, host.names)
        mac = (
            neigh.get("mac")
            if neigh and neigh.get("state") not in ("failed", "incomplete")
            else None
        )
        return replace(guest, next_hop_mac=mac if isinstance(mac, str) else None)
    own = [ipaddress.ip_interface(a) for a in link.addresses or ()]
    own4 = [a for a in own if a.version == 4]
    if str(ipaddress.ip_address(target)) in {str(a.ip) for a in own4}:
        return replace(guest, next_hop_mac=link.mac)  # the bridge's own address
    ip = guest.ip
    same = [a for a in own4 if ip is not None and ipaddress.ip_address(ip) in a.network]
    gateway = (same or own4)[0].ip if (same or own4) else None
    if gateway is None:
        problems.append(f"{bridge} has no IPv4 address: the guest has no gateway on it")
    return replace(guest, gateway=str(gateway) if gateway else None, next_hop_mac=link.mac)


def _lower_hops(host: _Side, link: Link, hops: list[Hop]) -> None:
    """The devices under `link`: a VLAN's or macvtap's lower device, then (a bond) its slaves
    are not hops but its state; at most a few levels."""
    seen = {h.name for h in hops}
    current = link
    for _ in range(4):
        lower = current.lower
        if not lower or lower not in host.links or lower in seen:
            return
        hops.append(host.hop("lower", lower))
        seen.add(lower)
        current = host.links[lower]


def _target_port(
    facts: FactContext, host: _Side, target: str, bridge: str, port: str, problems: list[str]
) -> Hop:
    """The bridge port behind which the target sits (neighbour entry, then FDB), or all the
    bridge's other ports when the host does not know it."""
    neigh = neighbour(_dump(facts, "neighbours", problems), target, host.names)
    mac = neigh.get("mac") if neigh else None
    if isinstance(mac, str):
        entry = fdb_entry(_dump(facts, "fdb", problems), mac, host.links[bridge].index, host.names)
        found = entry.get("port") if entry else None
        if isinstance(found, str) and found in host.links and found != port:
            return host.hop("port", found, fdb=entry)
    others = tuple(
        sorted(
            link.name for link in host.links.values() if link.master == bridge and link.name != port
        )
    )
    if len(others) == 1:  # the only other port: the target can be nowhere else
        return host.hop("port", others[0])
    return Hop(role="ports", name=f"{bridge}:ports", master=bridge, members=others)


def _sysctl(facts: FactContext, name: str) -> Optional[str]:
    try:
        text = facts.source.read_file("/proc/sys/" + name.replace(".", "/"), max_bytes=4096)
    except SourceError:
        return None
    return text.decode().strip()


def _forwarding(
    facts: FactContext,
    host: _Side,
    guest: Guest,
    target: str,
    iif: str,
    route: RouteAnswer,
    problems: list[str],
    route_get: RouteGet,
) -> Forwarding:
    rp = {
        "all": _sysctl(facts, "net.ipv4.conf.all.rp_filter"),
        iif: _sysctl(facts, f"net.ipv4.conf.{iif}.rp_filter"),
    }
    oif = route.oif or ""
    forward_verdict = bridge_verdict = None
    nat: list[dict[str, Any]] = []
    nat_known = False
    try:
        firewall = facts.get("firewall")
    except FactUnavailable as exc:
        problems.append(f"firewall rules unknown: {exc.reason}")
        firewall = None
    if firewall is not None:
        nat_known = True
        for view in firewall.views:
            if view.tool.startswith("ip6"):
                continue
            fams = ("ip", "inet") if view.tool == "nft" else ("ip",)
            if oif and oif != iif and forward_verdict is None:
                found = view.verdict("forward", fams, iif, oif, saddr=guest.ip, daddr=target)
                if found is not None and found.verdict == "drop":
                    forward_verdict = {"view": view.tool, **found.as_dict()}
            if bridge_verdict is None:
                found = view.verdict("forward", fams, iif, iif, saddr=guest.ip, daddr=target)
                if found is not None and found.verdict == "drop":
                    bridge_verdict = {"view": view.tool, **found.as_dict()}
            if guest.ip:
                for rule in view.nat_rules(fams):
                    if rule.covers(f"{guest.ip}/32"):
                        nat.append({"view": view.tool, **rule.as_dict()})
    next_hop = route.gateway or (target if route.oif else None)
    neigh = None
    if next_hop and route.oif and route.oif != iif:
        rows = _dump(facts, "neighbours", problems)
        neigh = neighbour(rows, next_hop, host.names)
    reverse = None
    if guest.ip and route.error is None and route.oif and route.oif != iif:
        reverse = route_get(guest.ip, src=target, iif=host.links[route.oif].index)
    return Forwarding(
        iif=iif,
        route=route,
        ip_forward=_sysctl(facts, "net.ipv4.ip_forward"),
        rp_filter=rp,
        bridge_nf_call_iptables=_sysctl(facts, "net.bridge.bridge-nf-call-iptables"),
        forward_verdict=forward_verdict,
        bridge_verdict=bridge_verdict,
        nat_rules=tuple(nat),
        nat_known=nat_known,
        neighbour=neigh,
        reverse_route=reverse,
    )
