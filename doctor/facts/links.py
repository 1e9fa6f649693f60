"""Network interfaces, normalised: kind, master, lower device, state, MAC, addresses, bridge
port state, bridge STP settings, bond mode and slaves, macvtap mode.

Links come from netlink (pyroute2 dumps of "links" and "addresses", in the source's network
namespace) when the source can answer it; otherwise from the files the kernel keeps under
/sys/class/net (a tree under --root, a snapshot that recorded them). Bonds are completed from
/proc/net/bonding/<bond>, the only place that shows the LACP partner per aggregator and the
slaves' speed. `Links.origin` says which way the answer came.

Everything here only reads: netlink dumps and file reads. The parsers (`links_from_netlink`,
`links_from_sysfs`, `parse_proc_bonding`) never learn where their input came from.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, field, replace
from typing import Any, Optional

from doctor.facts import FactContext, FactUnavailable, fact
from doctor.record import record
from doctor.sources.base import NotFound, SourceError, Unavailable

SYSFS = "/sys/class/net"
PROC_BONDING = "/proc/net/bonding"

# include/uapi/linux/if_bridge.h BR_STATE_*
PORT_STATES = {0: "disabled", 1: "listening", 2: "learning", 3: "forwarding", 4: "blocking"}
# include/uapi/linux/if_bonding.h BOND_MODE_*, named as `ip -d link` and sysfs name them.
BOND_MODES = {
    0: "balance-rr",
    1: "active-backup",
    2: "balance-xor",
    3: "broadcast",
    4: "802.3ad",
    5: "balance-tlb",
    6: "balance-alb",
}
# What /proc/net/bonding prints for each mode (drivers/net/bonding/bond_main.c bond_mode_name).
PROC_BOND_MODES = {
    "load balancing (round-robin)": "balance-rr",
    "fault-tolerance (active-backup)": "active-backup",
    "load balancing (xor)": "balance-xor",
    "fault-tolerance (broadcast)": "broadcast",
    "IEEE 802.3ad Dynamic link aggregation": "802.3ad",
    "transmit load balancing": "balance-tlb",
    "adaptive load balancing": "balance-alb",
}
BOND_SLAVE_STATES = {0: "active", 1: "backup"}
# BOND_LINK_UP, BOND_LINK_FAIL, BOND_LINK_DOWN, BOND_LINK_BACK (include/net/bonding.h)
MII_STATES = {0: "up", 1: "going down", 2: "down", 3: "going back"}
# include/uapi/linux/if_link.h MACVLAN_MODE_*
MACVLAN_MODES = {1: "private", 2: "vepa", 4: "bridge", 8: "passthru", 16: "source"}
IFF_UP = 0x1
ARPHRD_LOOPBACK = "772"  # /sys/class/net/NAME/type (include/uapi/linux/if_arp.h)
IFF_TAP = 0x0002  # tun_flags in sysfs
ZERO_MAC = "00:00:00:00:00:00"


@record
class BridgePort:
    """A bridge port's state and flags (IFLA_BRPORT_* or /sys/class/net/PORT/brport/)."""

    state: Optional[str]  # disabled, listening, learning, forwarding, blocking
    state_number: Optional[int] = None
    priority: Optional[int] = None
    cost: Optional[int] = None
    flags: dict[str, bool] = field(default_factory=dict)  # learning, flood, hairpin, isolated


@record
class BridgeInfo:
    """A Linux bridge's STP settings (IFLA_BR_* or /sys/class/net/BR/bridge/)."""

    stp_state: Optional[int]  # 0 off, 1 kernel STP, 2 user-space STP
    forward_delay: Optional[float]  # seconds
    nf_call_iptables: Optional[bool] = None  # the bridge's own nf_call_iptables option
    nf_call_ip6tables: Optional[bool] = None
    vlan_filtering: Optional[bool] = None

    @property
    def stp(self) -> Optional[bool]:
        return None if self.stp_state is None else self.stp_state != 0


@record
class LacpPeer:
    """One side of an LACP exchange as /proc/net/bonding shows it per slave."""

    system_mac: Optional[str]
    key: Optional[int]
    port_state: Optional[int]


@record
class BondSlave:
    name: str
    mii_status: Optional[str]  # up, down, going down, going back
    state: Optional[str] = None  # active, backup
    speed: Optional[str] = None  # "1000 Mbps", "Unknown"
    duplex: Optional[str] = None
    link_failures: Optional[int] = None
    perm_mac: Optional[str] = None
    aggregator_id: Optional[int] = None
    actor: Optional[LacpPeer] = None
    partner: Optional[LacpPeer] = None


@record
class Aggregator:
    """The active 802.3ad aggregator: who the bond negotiated with."""

    id: Optional[int]
    ports: Optional[int]
    actor_key: Optional[int]
    partner_key: Optional[int]
    partner_mac: Optional[str]

    @property
    def partner_negotiated(self) -> Optional[bool]:
        if self.partner_mac is None:
            return None
        return self.partner_mac != ZERO_MAC


@record
class BondInfo:
    mode: Optional[str]  # balance-rr, active-backup, ..., 802.3ad
    slaves: tuple[BondSlave, ...] = ()
    mii_status: Optional[str] = None  # the bond's own
    active_slave: Optional[str] = None
    miimon: Optional[int] = None
    hash_policy: Optional[str] = None
    lacp_rate: Optional[str] = None
    aggregator: Optional[Aggregator] = None
    no_active_aggregator: bool = False  # "bond bond0 has no active aggregator"
    source: str = ""  # "/proc/net/bonding/bond0", "netlink" or "/sys/class/net/bond0/bonding"
    driver: Optional[str] = None


@record
class Link:
    name: str
    index: Optional[int]
    kind: Optional[str]  # bridge, bond, veth, tap, tun, macvtap, macvlan, vlan, openvswitch...
    master: Optional[str] = None
    slave_kind: Optional[str] = None  # what the master is: bridge, bond, openvswitch
    lower: Optional[str] = None  # IFLA_LINK: a macvtap's or VLAN's lower device
    operstate: Optional[str] = None  # up, down, unknown, lowerlayerdown, ...
    admin_up: Optional[bool] = None
    carrier: Optional[bool] = None
    mac: Optional[str] = None
    mtu: Optional[int] = None
    addresses: Optional[tuple[str, ...]] = None  # "192.0.2.1/24"; None: not known (sysfs)
    port: Optional[BridgePort] = None
    bridge: Optional[BridgeInfo] = None
    bond: Optional[BondInfo] = None
    bond_slave: Optional[BondSlave] = None
    macvlan_mode: Optional[str] = None  # private, vepa, bridge, passthru, source
    vlan_id: Optional[int] = None

    @property
    def is_bridge(self) -> bool:
        return self.kind == "bridge"

    @property
    def is_ovs(self) -> bool:
        """An Open vSwitch bridge (or the datapath device ovs-system)."""
        return self.kind == "openvswitch"

    @property
    def up(self) -> bool:
        return self.operstate in ("up", "unknown") and self.carrier is not False

    def host_addresses(self) -> list[str]:
        """Addresses the host itself uses on this link: not loopback, not IPv6 link-local."""
        found = []
        for text in self.addresses or ():
            try:
                addr = ipaddress.ip_interface(text).ip
            except ValueError:
                continue
            if addr.is_loopback or (addr.version == 6 and addr.is_link_local):
                continue
            found.append(text)
        return found

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, {}, ())}

    def summary(self) -> dict[str, Any]:
        """The fields a reader needs to verify a finding, without bond and STP details."""
        keep = ("name", "kind", "master", "slave_kind", "lower", "operstate", "carrier", "mac")
        out = {k: getattr(self, k) for k in keep if getattr(self, k) is not None}
        if self.addresses is not None:
            out["addresses"] = list(self.addresses)
        if self.port is not None:
            out["port_state"] = self.port.state
        if self.macvlan_mode is not None:
            out["macvlan_mode"] = self.macvlan_mode
        return out


@record
class Links:
    items: tuple[Link, ...]
    origin: str  # "netlink" or "/sys/class/net"
    netns: Optional[str] = None
    problems: tuple[str, ...] = ()
    _by_name: dict[str, Link] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name.update({link.name: link for link in self.items})

    def get(self, name: Optional[str]) -> Optional[Link]:
        return self._by_name.get(name) if name else None

    def ports(self, master: str) -> list[Link]:
        return [link for link in self.items if link.master == master]

    def by_kind(self, kind: str) -> list[Link]:
        return [link for link in self.items if link.kind == kind]

    def as_dict(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "netns": self.netns,
            "links": [link.summary() for link in self.items],
            "problems": list(self.problems),
        }


# --- netlink ------------------------------------------------------------------------------


def _attrs(value: Any) -> dict[str, Any]:
    """The attribute dict of a plain netlink message or nested attribute."""
    if isinstance(value, Mapping):
        inner = value.get("attrs")
        if isinstance(inner, Mapping):
            return dict(inner)
    return {}


def _int(value: Any) -> Optional[int]:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def _named(value: Any, names: Mapping[int, str]) -> Optional[str]:
    """A value pyroute2 may give as a number or already as its name."""
    if isinstance(value, str) and not value.isdigit():
        return value
    number = _int(value)
    return names.get(number, str(number)) if number is not None else None


def _mac(value: Any) -> Optional[str]:
    return value.lower() if isinstance(value, str) and value else None


def _bridge_port(data: Mapping[str, Any]) -> BridgePort:
    number = _int(data.get("IFLA_BRPORT_STATE"))
    flags = {}
    for name, attr in (
        ("learning", "IFLA_BRPORT_LEARNING"),
        ("flood", "IFLA_BRPORT_UNICAST_FLOOD"),
        ("hairpin", "IFLA_BRPORT_MODE"),
        ("isolated", "IFLA_BRPORT_ISOLATED"),
    ):
        if attr in data:
            flags[name] = bool(_int(data[attr]))
    return BridgePort(
        state=PORT_STATES.get(number, str(number)) if number is not None else None,
        state_number=number,
        priority=_int(data.get("IFLA_BRPORT_PRIORITY")),
        cost=_int(data.get("IFLA_BRPORT_COST")),
        flags=flags,
    )


def _bridge_info(data: Mapping[str, Any]) -> BridgeInfo:
    delay = _int(data.get("IFLA_BR_FORWARD_DELAY"))  # clock_t: hundredths of a second

    def flag(attr: str) -> Optional[bool]:
        value = _int(data.get(attr))
        return None if value is None else bool(value)

    return BridgeInfo(
        stp_state=_int(data.get("IFLA_BR_STP_STATE")),
        forward_delay=delay / 100 if delay is not None else None,
        nf_call_iptables=flag("IFLA_BR_NF_CALL_IPTABLES"),
        nf_call_ip6tables=flag("IFLA_BR_NF_CALL_IP6TABLES"),
        vlan_filtering=flag("IFLA_BR_VLAN_FILTERING"),
    )


def _bond_info(data: Mapping[str, Any], names: Mapping[int, str]) -> BondInfo:
    ad = _attrs(data.get("IFLA_BOND_AD_INFO"))
    aggregator = None
    if ad:
        aggregator = Aggregator(
            id=_int(ad.get("IFLA_BOND_AD_INFO_AGGREGATOR")),
            ports=_int(ad.get("IFLA_BOND_AD_INFO_NUM_PORTS")),
            actor_key=_int(ad.get("IFLA_BOND_AD_INFO_ACTOR_KEY")),
            partner_key=_int(ad.get("IFLA_BOND_AD_INFO_PARTNER_KEY")),
            partner_mac=_mac(ad.get("IFLA_BOND_AD_INFO_PARTNER_MAC")),
        )
    active = _int(data.get("IFLA_BOND_ACTIVE_SLAVE"))
    return BondInfo(
        mode=_named(data.get("IFLA_BOND_MODE"), BOND_MODES),
        active_slave=names.get(active) if active else None,
        miimon=_int(data.get("IFLA_BOND_MIIMON")),
        aggregator=aggregator,
        source="netlink",
    )


def _bond_slave(name: str, data: Mapping[str, Any]) -> BondSlave:
    return BondSlave(
        name=name,
        mii_status=_named(data.get("IFLA_BOND_SLAVE_MII_STATUS"), MII_STATES),
        state=_named(data.get("IFLA_BOND_SLAVE_STATE"), BOND_SLAVE_STATES),
        link_failures=_int(data.get("IFLA_BOND_SLAVE_LINK_FAILURE_COUNT")),
        perm_mac=_mac(data.get("IFLA_BOND_SLAVE_PERM_HWADDR")),
        aggregator_id=_int(data.get("IFLA_BOND_SLAVE_AD_AGGREGATOR_ID")),
    )


def _kind(info: Mapping[str, Any]) -> Optional[str]:
    kind = info.get("IFLA_INFO_KIND")
    if not isinstance(kind, str) or not kind:
        return None
    if kind == "tun":
        tun_type = _int(_attrs(info.get("IFLA_INFO_DATA")).get("IFLA_TUN_TYPE"))
        return "tap" if tun_type == 2 else "tun"
    return kind


def _addresses(rows: Iterable[Mapping[str, Any]]) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for row in rows:
        attrs = _attrs(row)
        addr = attrs.get("IFA_LOCAL") or attrs.get("IFA_ADDRESS")
        index = _int(row.get("index"))
        if not isinstance(addr, str) or index is None:
            continue
        found.setdefault(index, []).append(f"{addr}/{row.get('prefixlen', '')}".rstrip("/"))
    return found


def links_from_netlink(
    rows: Iterable[Mapping[str, Any]], address_rows: Optional[Iterable[Mapping[str, Any]]] = None
) -> list[Link]:
    """Links from pyroute2 dumps of RTM_GETLINK (and RTM_GETADDR) as plain dicts."""
    rows = list(rows)
    names = {
        idx: str(_attrs(r).get("IFLA_IFNAME"))
        for r in rows
        if (idx := _int(r.get("index"))) is not None
    }
    addresses = _addresses(address_rows) if address_rows is not None else None
    links = []
    for row in rows:
        attrs = _attrs(row)
        name = attrs.get("IFLA_IFNAME")
        if not isinstance(name, str):
            continue
        index = _int(row.get("index"))
        info = _attrs(attrs.get("IFLA_LINKINFO"))
        data = _attrs(info.get("IFLA_INFO_DATA"))
        slave_kind = info.get("IFLA_INFO_SLAVE_KIND")
        slave_data = _attrs(info.get("IFLA_INFO_SLAVE_DATA"))
        kind = _kind(info)
        lower_index = _int(attrs.get("IFLA_LINK"))
        lower = None
        if lower_index and lower_index != index:
            if attrs.get("IFLA_LINK_NETNSID") is not None:
                lower = f"if{lower_index} (netnsid {attrs['IFLA_LINK_NETNSID']})"
            else:
                lower = names.get(lower_index, f"if{lower_index}")
        master = _int(attrs.get("IFLA_MASTER"))
        flags = _int(row.get("flags"))
        carrier = _int(attrs.get("IFLA_CARRIER"))
        operstate = attrs.get("IFLA_OPERSTATE")
        macvlan_mode = None
        if kind in ("macvtap", "macvlan"):
            macvlan_mode = _named(
                data.get("IFLA_MACVTAP_MODE", data.get("IFLA_MACVLAN_MODE")), MACVLAN_MODES
            )
        links.append(
            Link(
                name=name,
                index=index,
                kind=kind,
                master=names.get(master, f"if{master}") if master else None,
                slave_kind=slave_kind if isinstance(slave_kind, str) else None,
                lower=lower,
                operstate=operstate.lower() if isinstance(operstate, str) else None,
                admin_up=bool(flags & IFF_UP) if flags is not None else None,
                carrier=bool(carrier) if carrier is not None else None,
                mac=_mac(attrs.get("IFLA_ADDRESS")),
                mtu=_int(attrs.get("IFLA_MTU")),
                addresses=tuple(addresses.get(index or -1, ())) if addresses is not None else None,
                port=_bridge_port(slave_data) if slave_kind == "bridge" else None,
                bridge=_bridge_info(data) if kind == "bridge" else None,
                bond=_bond_info(data, names) if kind == "bond" else None,
                bond_slave=_bond_slave(name, slave_data) if slave_kind == "bond" else None,
                macvlan_mode=macvlan_mode,
                vlan_id=_int(data.get("IFLA_VLAN_ID")) if kind == "vlan" else None,
            )
        )
    return _with_bond_slaves(links)


def _with_bond_slaves(links: list[Link]) -> list[Link]:
    """Give each bond the slaves that name it as their master (netlink keeps them apart)."""
    out = []
    for link in links:
        if link.bond is not None and not link.bond.slaves:
            slaves = tuple(
                other.bond_slave or BondSlave(other.name, None)
                for other in links
                if other.master == link.name and other.slave_kind in ("bond", None)
            )
            link = replace(link, bond=replace(link.bond, slaves=slaves))
        out.append(link)
    return out


# --- /sys/class/net -----------------------------------------------------------------------

_DEVTYPES = {"bridge", "bond", "vlan", "macvtap", "macvlan", "wlan", "openvswitch", "team"}


def _sys(read: Any, name: str, rel: str) -> Optional[str]:
    value = read(f"{SYSFS}/{name}/{rel}")
    return value.strip() if value is not None else None


def _sys_int(read: Any, name: str, rel: str) -> Optional[int]:
    return _int(_sys(read, name, rel))


def _sys_flag(read: Any, name: str, rel: str) -> Optional[bool]:
    value = _sys_int(read, name, rel)
    return None if value is None else bool(value)


def links_from_sysfs(
    names: Iterable[str],
    read: Any,
    read_link: Any,
    exists: Any,
) -> list[Link]:
    """Links from /sys/class/net. `read(path)` gives a file's text or None, `read_link(path)`
    a symlink's target or None, `exists(path)` whether a path is there."""
    names = sorted(names)
    by_index: dict[int, str] = {}
    for name in names:
        idx = _sys_int(read, name, "ifindex")
        if idx is not None:
            by_index[idx] = name
    links = []
    for name in names:
        base = f"{SYSFS}/{name}"
        uevent = dict(
            line.split("=", 1)
            for line in (_sys(read, name, "uevent") or "").splitlines()
            if "=" in line
        )
        devtype = uevent.get("DEVTYPE")
        tun_flags = _sys(read, name, "tun_flags")
        if exists(f"{base}/bridge"):
            kind: Optional[str] = "bridge"
        elif exists(f"{base}/bonding"):
            kind = "bond"
        elif tun_flags is not None:
            kind = "tap" if int(tun_flags, 16) & IFF_TAP else "tun"
        elif devtype in _DEVTYPES:
            kind = devtype
        elif exists(f"{base}/device"):
            kind = None  # a device with a bus behind it: physical
        elif _sys(read, name, "type") == ARPHRD_LOOPBACK or name == "lo":
            kind = None
        else:
            kind = "virtual"  # sysfs does not say which (veth, dummy, ...)
        master_target = read_link(f"{base}/master")
        master = master_target.rstrip("/").rsplit("/", 1)[-1] if master_target else None
        slave_kind = None
        port = None
        bond_slave = None
        if master is not None:
            if exists(f"{base}/brport"):
                slave_kind = "bridge"
                number = _sys_int(read, name, "brport/state")
                flags = {}
                for flag, rel in (
                    ("learning", "brport/learning"),
                    ("flood", "brport/unicast_flood"),
                    ("hairpin", "brport/hairpin_mode"),
                    ("isolated", "brport/isolated"),
                ):
                    value = _sys_flag(read, name, rel)
                    if value is not None:
                        flags[flag] = value
                port = BridgePort(
                    state=PORT_STATES.get(number, str(number)) if number is not None else None,
                    state_number=number,
                    priority=_sys_int(read, name, "brport/priority"),
                    cost=_sys_int(read, name, "brport/path_cost"),
                    flags=flags,
                )
            elif exists(f"{base}/bonding_slave"):
                slave_kind = "bond"
                bond_slave = BondSlave(
                    name=name,
                    mii_status=_sys(read, name, "bonding_slave/mii_status"),
                    state=_sys(read, name, "bonding_slave/state"),
                    link_failures=_sys_int(read, name, "bonding_slave/link_failure_count"),
                    perm_mac=_mac(_sys(read, name, "bonding_slave/perm_hwaddr")),
                    aggregator_id=_sys_int(read, name, "bonding_slave/ad_aggregator_id"),
                )
        bridge = None
        if kind == "bridge":
            delay = _sys_int(read, name, "bridge/forward_delay")
            bridge = BridgeInfo(
                stp_state=_sys_int(read, name, "bridge/stp_state"),
                forward_delay=delay / 100 if delay is not None else None,
                nf_call_iptables=_sys_flag(read, name, "bridge/nf_call_iptables"),
                nf_call_ip6tables=_sys_flag(read, name, "bridge/nf_call_ip6tables"),
                vlan_filtering=_sys_flag(read, name, "bridge/vlan_filtering"),
            )
        bond = None
        if kind == "bond":
            mode = (_sys(read, name, "bonding/mode") or "").split()
            slaves = (_sys(read, name, "bonding/slaves") or "").split()
            partner = _mac(_sys(read, name, "bonding/ad_partner_mac"))
            aggregator = None
            if mode and mode[0] == "802.3ad":
                aggregator = Aggregator(
                    id=_sys_int(read, name, "bonding/ad_aggregator"),
                    ports=_sys_int(read, name, "bonding/ad_num_ports"),
                    actor_key=_sys_int(read, name, "bonding/ad_actor_key"),
                    partner_key=_sys_int(read, name, "bonding/ad_partner_key"),
                    partner_mac=partner,
                )
            bond = BondInfo(
                mode=mode[0] if mode else None,
                slaves=tuple(BondSlave(s, None) for s in slaves),
                mii_status=_sys(read, name, "bonding/mii_status"),
                active_slave=_sys(read, name, "bonding/active_slave") or None,
                miimon=_sys_int(read, name, "bonding/miimon"),
                aggregator=aggregator,
                source=f"{base}/bonding",
            )
        index = _sys_int(read, name, "ifindex")
        iflink = _sys_int(read, name, "iflink")
        flags_text = _sys(read, name, "flags")
        carrier = _sys_int(read, name, "carrier")
        lower = None
        if iflink is not None and index is not None and iflink != index:
            lower = by_index.get(iflink, f"if{iflink}")
        links.append(
            Link(
                name=name,
                index=index,
                kind=kind,
                master=master,
                slave_kind=slave_kind,
                lower=lower,
                operstate=_sys(read, name, "operstate"),
                admin_up=bool(int(flags_text, 16) & IFF_UP) if flags_text else None,
                carrier=bool(carrier) if carrier is not None else None,
                mac=_mac(_sys(read, name, "address")),
                mtu=_sys_int(read, name, "mtu"),
                addresses=None,
                port=port,
                bridge=bridge,
                bond=bond,
                bond_slave=bond_slave,
            )
        )
    return _sysfs_bond_slaves(links)


def _sysfs_bond_slaves(links: list[Link]) -> list[Link]:
    slaves = {link.name: link.bond_slave for link in links if link.bond_slave is not None}
    out = []
    for link in links:
        if link.bond is not None:
            filled = tuple(slaves.get(s.name) or s for s in link.bond.slaves)
            link = replace(link, bond=replace(link.bond, slaves=filled))
        out.append(link)
    return out


# --- /proc/net/bonding --------------------------------------------------------------------

_KEY = re.compile(r"^\s*([^:]+?):\s?(.*)$")


def _peer(block: dict[str, str]) -> LacpPeer:
    return LacpPeer(
        system_mac=_mac(block.get("system mac address")),
        key=_int(block.get("port key", block.get("oper key"))),
        port_state=_int(block.get("port state")),
    )


def parse_proc_bonding(text: str, source: str = "") -> BondInfo:
    """/proc/net/bonding/<bond> (drivers/net/bonding/bond_procfs.c), old and new drivers."""
    head: dict[str, str] = {}
    aggregator: dict[str, str] = {}
    slaves: list[dict[str, Any]] = []
    section = "head"
    peer: Optional[str] = None
    no_active = False
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line.strip():
            peer = None
            continue
        if line.startswith("Slave Interface:"):
            slaves.append({"name": line.split(":", 1)[1].strip(), "fields": {}, "peers": {}})
            section, peer = "slave", None
            continue
        if line.strip() == "Active Aggregator Info:":
            section = "aggregator"
            continue
        if line.strip() in ("802.3ad info",):
            section = "head"
            continue
        if re.match(r"^bond \S+ has no active aggregator", line.strip()):
            no_active = True
            continue
        if line.startswith("details actor lacp pdu:"):
            peer = "actor"
            continue
        if line.startswith("details partner lacp pdu:"):
            peer = "partner"
            continue
        if line.startswith("Ethernet Channel Bonding Driver:"):
            head["driver"] = line.split(":", 1)[1].strip()
            continue
        match = _KEY.match(line)
        if match is None:
            continue
        key, value = match.group(1).strip(), match.group(2).strip()
        if section == "slave" and slaves:
            if peer is not None and raw[:1] in (" ", "\t"):
                slaves[-1]["peers"].setdefault(peer, {})[key.lower()] = value
            else:
                peer = None
                slaves[-1]["fields"][key] = value
        elif section == "aggregator" and raw[:1] == "\t":
            aggregator[key] = value
        else:
            section = "head"
            head[key] = value
    mode_text = head.get("Bonding Mode", "")
    hash_policy = head.get("Transmit Hash Policy")
    parsed_slaves = []
    for slave in slaves:
        fields = slave["fields"]
        peers = slave["peers"]
        agg = fields.get("Aggregator ID")
        parsed_slaves.append(
            BondSlave(
                name=slave["name"],
                mii_status=fields.get("MII Status"),
                speed=fields.get("Speed"),
                duplex=fields.get("Duplex"),
                link_failures=_int(fields.get("Link Failure Count")),
                perm_mac=_mac(fields.get("Permanent HW addr")),
                aggregator_id=_int(agg) if agg not in (None, "N/A") else None,
                actor=_peer(peers["actor"]) if "actor" in peers else None,
                partner=_peer(peers["partner"]) if "partner" in peers else None,
            )
        )
    agg_info = None
    if aggregator:
        agg_info = Aggregator(
            id=_int(aggregator.get("Aggregator ID")),
            ports=_int(aggregator.get("Number of ports")),
            actor_key=_int(aggregator.get("Actor Key")),
            partner_key=_int(aggregator.get("Partner Key")),
            partner_mac=_mac(aggregator.get("Partner Mac Address")),
        )
    active = head.get("Currently Active Slave")
    return BondInfo(
        mode=PROC_BOND_MODES.get(mode_text, mode_text or None),
        slaves=tuple(parsed_slaves),
        mii_status=head.get("MII Status"),
        active_slave=active if active not in (None, "None") else None,
        miimon=_int(head.get("MII Polling Interval (ms)")),
        hash_policy=hash_policy.split(" (")[0] if hash_policy else None,
        lacp_rate=head.get("LACP rate"),
        aggregator=agg_info,
        no_active_aggregator=no_active,
        source=source,
        driver=head.get("driver"),
    )


def _merge_bond(link: Link, proc: BondInfo) -> Link:
    """The /proc view of a bond, keeping the slave state (active/backup) netlink knows."""
    known = {s.name: s for s in (link.bond.slaves if link.bond else ())}
    slaves = tuple(
        replace(s, state=s.state or (known[s.name].state if s.name in known else None))
        for s in proc.slaves
    )
    return replace(link, bond=replace(proc, slaves=slaves))


# --- the fact -----------------------------------------------------------------------------


@fact("links")
def links(ctx: FactContext) -> Links:
    source = ctx.source
    netns = getattr(source, "netns", None)
    problems: list[str] = []
    try:
        rows = source.netlink("links")
    except NotFound as exc:
        raise FactUnavailable(f"netlink: {exc}") from None
    except SourceError as exc:
        problems.append(f"netlink: {exc.reason}")
        items = _from_sysfs(ctx, problems)
        origin = SYSFS
    else:
        try:
            addresses: Optional[list[dict[str, Any]]] = source.netlink("addresses")
        except SourceError as exc:
            problems.append(f"netlink addresses: {exc.reason}")
            addresses = None
        items = links_from_netlink(rows, addresses)
        origin = "netlink"
    items = [_with_proc_bonding(ctx, link, problems) for link in items]
    return Links(tuple(items), origin, netns, tuple(problems))


def _with_proc_bonding(ctx: FactContext, link: Link, problems: list[str]) -> Link:
    if link.kind != "bond":
        return link
    path = f"{PROC_BONDING}/{link.name}"
    try:
        text = ctx.source.read_file(path).decode("utf-8", "replace")
    except SourceError as exc:
        problems.append(f"{path}: {exc.reason}")
        return link
    return _merge_bond(link, parse_proc_bonding(text, path))


def _from_sysfs(ctx: FactContext, problems: list[str]) -> list[Link]:
    source = ctx.source
    try:
        names = [n for n in source.list_dir(SYSFS) if not n.startswith(".")]
    except SourceError as exc:
        raise FactUnavailable(
            f"neither netlink ({'; '.join(problems)}) nor {SYSFS} ({exc.reason}) answers"
        ) from None

    def read(path: str) -> Optional[str]:
        try:
            return source.read_file(path, max_bytes=65536).decode("utf-8", "replace")
        except SourceError:
            return None

    def read_link(path: str) -> Optional[str]:
        try:
            return source.read_link(path)
        except SourceError:
            return None

    def exists(path: str) -> bool:
        try:
            source.stat(path)
        except (NotFound, Unavailable):
            return False
        except SourceError:
            return True  # there, but not readable
        return True

    return links_from_sysfs(names, read, read_link, exists)
