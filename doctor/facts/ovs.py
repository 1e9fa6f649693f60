"""Open vSwitch: its bridges, their ports (VLAN tag, trunks, mode) and the ports' interfaces
(type, options, link state, error, OpenFlow port number), from OVSDB.

Read with `ovs-vsctl --format=json --data=json --columns=... list TABLE` for the Bridge, Port
and Interface tables: OVSDB's own JSON notation (RFC 7047: `["uuid", ID]`, `["set", [...]]`,
`["map", [[K, V], ...]]`, a one-element set as its bare atom), through the source's command
primitive, so a snapshot records the three answers like any command. `ovs-vsctl show` is text
for people and is never parsed. A host without Open vSwitch (no ovs-vsctl, or no ovsdb-server
answering) makes the fact unavailable with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, field
from typing import Any, Optional

from doctor.facts import FactContext, FactUnavailable, fact
from doctor.record import record
from doctor.sources.base import SourceError

# The columns read from each table (ovs-vswitchd.conf.db(5)).
COLUMNS = {
    "Bridge": ("_uuid", "name", "ports", "fail_mode", "datapath_type"),
    "Port": ("_uuid", "name", "interfaces", "tag", "trunks", "vlan_mode", "bond_mode"),
    "Interface": (
        "_uuid",
        "name",
        "type",
        "options",
        "link_state",
        "admin_state",
        "error",
        "ofport",
        "mac_in_use",
        "external_ids",
    ),
}
TUNNEL_TYPES = ("vxlan", "gre", "geneve", "stt", "lisp", "erspan", "ip6erspan", "ip6gre", "gtpu")


def vlan_mode(column: Optional[str], tag: Optional[int]) -> str:
    """The VLAN mode in effect: the column's, else access with a tag and trunk without
    (ovs-vswitchd.conf.db(5), Port vlan_mode)."""
    if column:
        return column
    return "access" if tag is not None else "trunk"


def carries(mode: str, tag: Optional[int], trunks: Sequence[int], vlan: int) -> bool:
    """Whether a port in `mode` with `tag` and `trunks` carries VLAN `vlan`: an access port
    only its tag; a trunk the VLANs in trunks, every VLAN when trunks is empty; a native
    port its tag as well."""
    if mode == "access":
        return tag == vlan
    if mode in ("native-tagged", "native-untagged") and tag == vlan:
        return True
    return not trunks or vlan in trunks


def command(table: str) -> list[str]:
    """The ovs-vsctl command that lists `table` as OVSDB JSON."""
    return [
        "ovs-vsctl",
        "--timeout=5",
        "--format=json",
        "--data=json",
        "--columns=" + ",".join(COLUMNS[table]),
        "list",
        table,
    ]


@record
class OvsInterface:
    name: str
    type: str  # "" (a system device: NIC, tap), internal, patch, vxlan, gre, geneve, ...
    options: dict[str, str] = field(default_factory=dict)  # peer=, remote_ip=, ...
    link_state: Optional[str] = None  # up, down
    admin_state: Optional[str] = None
    error: Optional[str] = None  # why ovs-vswitchd could not set it up
    ofport: Optional[int] = None  # -1: it failed
    mac_in_use: Optional[str] = None
    external_ids: dict[str, str] = field(default_factory=dict)  # libvirt: attached-mac, vm-id

    @property
    def tunnel(self) -> bool:
        return self.type in TUNNEL_TYPES

    @property
    def patch_peer(self) -> Optional[str]:
        return self.options.get("peer") if self.type == "patch" else None

    @property
    def guest(self) -> bool:
        """A guest's port by its external ids (libvirt and OpenStack set them)."""
        return any(k in self.external_ids for k in ("attached-mac", "vm-id", "vm-uuid"))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@record
class OvsPort:
    name: str
    interfaces: tuple[OvsInterface, ...]
    tag: Optional[int] = None
    trunks: tuple[int, ...] = ()
    vlan_mode: Optional[str] = None  # access, trunk, native-tagged, native-untagged
    bond_mode: Optional[str] = None

    @property
    def mode(self) -> str:
        return vlan_mode(self.vlan_mode, self.tag)

    def carries(self, vlan: int) -> bool:
        return carries(self.mode, self.tag, self.trunks, vlan)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["interfaces"] = [i.as_dict() for i in self.interfaces]
        out["trunks"] = list(self.trunks)
        out["mode"] = self.mode
        return out

    def summary(self) -> dict[str, Any]:
        """The port without its interfaces' details: for a hop's evidence."""
        return {
            "port": self.name,
            "tag": self.tag,
            "trunks": list(self.trunks),
            "vlan_mode": self.mode,
            "interfaces": [i.name for i in self.interfaces],
        }


@record
class OvsBridge:
    name: str
    ports: tuple[OvsPort, ...]
    fail_mode: Optional[str] = None
    datapath_type: Optional[str] = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "fail_mode": self.fail_mode,
            "datapath_type": self.datapath_type,
            "ports": [p.as_dict() for p in self.ports],
        }


@record
class OpenVSwitch:
    bridges: tuple[OvsBridge, ...]
    origin: str = "ovs-vsctl"

    def interfaces(self) -> Iterator[tuple[OvsBridge, OvsPort, OvsInterface]]:
        for bridge in self.bridges:
            for port in bridge.ports:
                for iface in port.interfaces:
                    yield bridge, port, iface

    def find(self, name: str) -> Optional[tuple[OvsBridge, OvsPort, OvsInterface]]:
        """The bridge, port and interface of the interface named `name`."""
        return next((t for t in self.interfaces() if t[2].name == name), None)

    def bridge(self, name: str) -> Optional[OvsBridge]:
        return next((b for b in self.bridges if b.name == name), None)

    def as_dict(self) -> dict[str, Any]:
        return {"origin": self.origin, "bridges": [b.as_dict() for b in self.bridges]}


# --- OVSDB JSON -> records -------------------------------------------------------------------


class OvsdbFormatError(ValueError):
    """ovs-vsctl's JSON is not what it documents."""


def _atoms(value: Any) -> list[Any]:
    """The atoms of a column value: a set's members, or the one bare atom."""
    if isinstance(value, list) and len(value) == 2 and value[0] == "set":
        return [_atom(v) for v in value[1]]
    return [_atom(value)]


def _atom(value: Any) -> Any:
    if isinstance(value, list) and len(value) == 2 and value[0] in ("uuid", "named-uuid"):
        return str(value[1])
    if isinstance(value, list):
        raise OvsdbFormatError(f"not an OVSDB atom: {value!r}")
    return value


def _one(value: Any) -> Any:
    """An optional column (min 0, max 1): the atom or None."""
    atoms = _atoms(value)
    return atoms[0] if atoms else None


def _map(value: Any) -> dict[str, str]:
    if isinstance(value, list) and len(value) == 2 and value[0] == "map":
        return {str(_atom(k)): str(_atom(v)) for k, v in value[1]}
    raise OvsdbFormatError(f"not an OVSDB map: {value!r}")


def _rows(text: str, table: str) -> list[dict[str, Any]]:
    """`ovs-vsctl --format=json list TABLE`: {"headings": [...], "data": [[...], ...]}."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise OvsdbFormatError(f"{table}: not JSON ({exc})") from None
    if not isinstance(doc, Mapping) or not isinstance(doc.get("headings"), list):
        raise OvsdbFormatError(f"{table}: no headings")
    headings = [str(h) for h in doc["headings"]]
    rows = doc.get("data")
    if not isinstance(rows, list):
        raise OvsdbFormatError(f"{table}: no data")
    return [dict(zip(headings, row)) for row in rows if isinstance(row, list)]


def _int_or_none(value: Any) -> Optional[int]:
    atom = _one(value)
    return atom if isinstance(atom, int) and not isinstance(atom, bool) else None


def _str_or_none(value: Any) -> Optional[str]:
    atom = _one(value)
    return str(atom) if atom not in (None, "") else None


def parse(bridges: str, ports: str, interfaces: str) -> OpenVSwitch:
    """The three tables' JSON (as ovs-vsctl prints them) joined into bridges."""
    by_iface: dict[str, OvsInterface] = {}
    for row in _rows(interfaces, "Interface"):
        by_iface[str(_atom(row["_uuid"]))] = OvsInterface(
            name=str(_atom(row["name"])),
            type=str(_one(row.get("type", "")) or ""),
            options=_map(row["options"]) if "options" in row else {},
            link_state=_str_or_none(row.get("link_state", ["set", []])),
            admin_state=_str_or_none(row.get("admin_state", ["set", []])),
            error=_str_or_none(row.get("error", ["set", []])),
            ofport=_int_or_none(row.get("ofport", ["set", []])),
            mac_in_use=_str_or_none(row.get("mac_in_use", ["set", []])),
            external_ids=_map(row["external_ids"]) if "external_ids" in row else {},
        )
    by_port: dict[str, OvsPort] = {}
    for row in _rows(ports, "Port"):
        ifaces = [by_iface[u] for u in _atoms(row["interfaces"]) if u in by_iface]
        trunks = [t for t in _atoms(row.get("trunks", ["set", []])) if isinstance(t, int)]
        by_port[str(_atom(row["_uuid"]))] = OvsPort(
            name=str(_atom(row["name"])),
            interfaces=tuple(sorted(ifaces, key=lambda i: i.name)),
            tag=_int_or_none(row.get("tag", ["set", []])),
            trunks=tuple(sorted(trunks)),
            vlan_mode=_str_or_none(row.get("vlan_mode", ["set", []])),
            bond_mode=_str_or_none(row.get("bond_mode", ["set", []])),
        )
    out = []
    for row in _rows(bridges, "Bridge"):
        members = [by_port[u] for u in _atoms(row["ports"]) if u in by_port]
        out.append(
            OvsBridge(
                name=str(_atom(row["name"])),
                ports=tuple(sorted(members, key=lambda p: p.name)),
                fail_mode=_str_or_none(row.get("fail_mode", ["set", []])),
                datapath_type=_str_or_none(row.get("datapath_type", "")),
            )
        )
    return OpenVSwitch(tuple(sorted(out, key=lambda b: b.name)))


def _table(ctx: FactContext, table: str) -> str:
    argv = command(table)
    try:
        done = ctx.source.run(argv, timeout=10)
    except SourceError as exc:
        raise FactUnavailable(f"ovs-vsctl: {exc.reason}") from None
    if done.returncode != 0:
        said = (done.stderr.strip() or f"exit {done.returncode}")[:300]
        raise FactUnavailable(f"ovs-vsctl list {table}: {said}")
    return done.stdout


@fact("ovs")
def ovs(ctx: FactContext) -> OpenVSwitch:
    texts = [_table(ctx, table) for table in ("Bridge", "Port", "Interface")]
    try:
        return parse(*texts)
    except (OvsdbFormatError, KeyError) as exc:
        raise FactUnavailable(f"ovs-vsctl's JSON could not be read: {exc}") from None


def uplinks(
    found: OpenVSwitch, bridge: OvsBridge, skip: Sequence[str] = ()
) -> dict[str, list[tuple[OvsBridge, OvsPort, OvsInterface]]]:
    """The ways out of `bridge`, following patch ports to the bridges they join: "system"
    ports (NICs, bonds, VLANs, and taps of other guests: the caller tells them apart),
    "tunnel" ports, and the "patch" ports crossed; the bridge's own internal ports and the
    ports named in `skip` are left out."""
    out: dict[str, list[tuple[OvsBridge, OvsPort, OvsInterface]]] = {
        "system": [],
        "tunnel": [],
        "patch": [],
    }
    seen = {bridge.name}
    todo = [bridge]
    while todo:
        current = todo.pop(0)
        for port in current.ports:
            if port.name in skip:
                continue
            for iface in port.interfaces:
                if iface.type == "internal":
                    continue
                if iface.tunnel:
                    out["tunnel"].append((current, port, iface))
                elif iface.patch_peer is not None:
                    out["patch"].append((current, port, iface))
                    peer = found.find(iface.patch_peer)
                    if peer is not None and peer[0].name not in seen:
                        seen.add(peer[0].name)
                        todo.append(peer[0])
                elif iface.type in ("", "system", "dpdk", "afxdp"):
                    out["system"].append((current, port, iface))
    return out
