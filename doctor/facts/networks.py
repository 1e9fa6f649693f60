"""libvirt virtual networks: forward mode, bridge, subnets, state.

From the libvirt connection when it answers; otherwise from libvirt's own files: the
persistent definitions (/etc/libvirt/qemu/networks/NAME.xml), their autostart links
(/etc/libvirt/qemu/networks/autostart/NAME.xml) and the status files of active networks
(/run/libvirt/network/NAME.xml, `<networkstatus>` around the live definition). Each network
says where it came from.
"""

from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET
from dataclasses import asdict, field
from typing import Any, Optional

from doctor.facts import FactContext, FactUnavailable, fact
from doctor.facts.util import definition_root, element_paths
from doctor.record import record
from doctor.sources.base import NotFound, SourceError, Unavailable

DEFINITIONS = "/etc/libvirt/qemu/networks"
AUTOSTART = "/etc/libvirt/qemu/networks/autostart"
STATUS = "/run/libvirt/network"
# Forward modes in which libvirt gives guests macvtap devices on the <forward> interfaces
# instead of a bridge (https://libvirt.org/formatnetwork.html#connectivity).
MACVTAP_MODES = ("bridge", "private", "vepa", "passthrough")


@record
class NetworkIP:
    family: str  # ipv4, ipv6
    address: str
    prefix: Optional[int]
    subnet: Optional[str]  # "192.0.2.0/24"


@record
class Network:
    name: str
    uuid: Optional[str]
    forward_mode: Optional[str]  # None: isolated; nat, route, open, bridge, private, vepa, ...
    bridge: Optional[str]  # <bridge name=...>
    active: bool
    persistent: bool
    autostart: bool
    origin: str  # "libvirt" or the file it was read from
    ips: tuple[NetworkIP, ...] = ()
    forward_dev: Optional[str] = None  # <forward dev=...>
    forward_interfaces: tuple[str, ...] = ()  # <forward><interface dev=.../>
    virtualport: Optional[str] = None  # openvswitch, 802.1Qbh, ...
    stp: Optional[str] = None
    delay: Optional[str] = None
    # `kvmdoctor lint`: the file the definition was read from (findings are about it) and the
    # line of each element, by path (/network/ip[2]); empty when read for `run`.
    file: Optional[str] = None
    lines: dict[str, int] = field(default_factory=dict)

    @property
    def subject(self) -> str:
        return f"file:{self.file}" if self.file is not None else f"network:{self.name}"

    @property
    def uses_macvtap(self) -> bool:
        """Guests get macvtap devices on the forward interfaces, not a bridge port."""
        return self.forward_mode in MACVTAP_MODES and self.bridge is None

    @property
    def libvirt_bridge(self) -> bool:
        """libvirt creates (and owns) the bridge: isolated, nat, route and open networks."""
        return self.forward_mode in (None, "nat", "route", "open")

    def subnets(self, family: str = "ipv4") -> list[str]:
        return [ip.subnet for ip in self.ips if ip.family == family and ip.subnet]

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["file"], out["lines"]  # where lint read it: the finding's location says so
        return out


@record
class Networks:
    items: tuple[Network, ...]
    origin: str  # "libvirt <uri>" or "definition and status files"
    problems: tuple[str, ...] = ()

    def get(self, name: Optional[str]) -> Optional[Network]:
        return next((n for n in self.items if n.name == name), None) if name else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "networks": [
                {"name": n.name, "active": n.active, "forward_mode": n.forward_mode}
                for n in self.items
            ],
            "problems": list(self.problems),
        }


def _ip(elem: ET.Element) -> Optional[NetworkIP]:
    address = elem.get("address")
    if not address:
        return None
    family = elem.get("family") or ("ipv6" if ":" in address else "ipv4")
    prefix: Optional[int] = None
    if elem.get("prefix", "").isdigit():
        prefix = int(elem.get("prefix", "0"))
    elif elem.get("netmask"):
        try:
            prefix = ipaddress.ip_network(f"0.0.0.0/{elem.get('netmask')}").prefixlen
        except ValueError:
            prefix = None
    elif family == "ipv4":
        # libvirt's default: the classful prefix of the address (virSocketAddrGetIPPrefix).
        first = int(address.split(".")[0]) if address.split(".")[0].isdigit() else 0
        prefix = 8 if first < 128 else 16 if first < 192 else 24
    subnet = None
    if prefix is not None:
        try:
            subnet = str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))
        except ValueError:
            subnet = None
    return NetworkIP(family, address, prefix, subnet)


def parse_network(
    xml: str,
    *,
    active: bool,
    persistent: bool,
    autostart: bool,
    origin: str,
    file: Optional[str] = None,
) -> Network:
    """A network from its XML (a definition, or a status file around one). With `file` (for
    `kvmdoctor lint`), the network's findings are about that file and the line of every
    element is kept."""
    positions: Optional[dict[ET.Element, int]] = {} if file is not None else None
    # a status file wraps the live definition
    root = definition_root(xml, "network", "networkstatus", lines=positions)
    forward = root.find("forward")
    bridge = root.find("bridge")
    vport = root.find("virtualport")
    ips = tuple(ip for ip in (_ip(e) for e in root.findall("ip")) if ip is not None)
    mode = None
    if forward is not None:
        mode = forward.get("mode", "nat")  # <forward/> without a mode means NAT
    return Network(
        name=(root.findtext("name") or "").strip(),
        uuid=(root.findtext("uuid") or "").strip() or None,
        forward_mode=mode,
        bridge=bridge.get("name") if bridge is not None and bridge.get("name") else None,
        active=active,
        persistent=persistent,
        autostart=autostart,
        origin=origin,
        ips=ips,
        forward_dev=forward.get("dev") if forward is not None else None,
        forward_interfaces=tuple(
            i.get("dev", "") for i in forward.findall("interface") if i.get("dev")
        )
        if forward is not None
        else (),
        virtualport=vport.get("type") if vport is not None else None,
        stp=bridge.get("stp") if bridge is not None else None,
        delay=bridge.get("delay") if bridge is not None else None,
        file=file,
        lines={path: positions[elem] for path, elem in element_paths(root, "/network")}
        if positions is not None
        else {},
    )


@fact("networks")
def networks(ctx: FactContext) -> Networks:
    uri = ctx.get("uri")
    if uri.parts.driver in ("qemu", "test"):
        try:
            listed = ctx.source.libvirt(uri.uri, "networks")
        except SourceError as exc:
            if uri.parts.remote or uri.parts.driver == "test":
                raise FactUnavailable(f"libvirt: {exc.reason}") from None
        else:
            return _from_libvirt(listed, uri.effective)
    return _from_files(ctx)


def _from_libvirt(listed: list[dict[str, Any]], uri: str) -> Networks:
    items, problems = [], []
    for entry in listed:
        xml = entry.get("xml")
        if not xml:
            continue
        try:
            items.append(
                parse_network(
                    xml,
                    active=bool(entry.get("active")),
                    persistent=bool(entry.get("persistent")),
                    autostart=bool(entry.get("autostart")),
                    origin="libvirt",
                )
            )
        except (ET.ParseError, ValueError) as exc:
            problems.append(f"{entry.get('name')}: {exc}")
    return Networks(tuple(items), f"libvirt {uri}", tuple(problems))


def _xml_names(ctx: FactContext, directory: str) -> Optional[list[str]]:
    try:
        return [n for n in ctx.source.list_dir(directory) if n.endswith(".xml")]
    except (NotFound, Unavailable):
        return None


def _from_files(ctx: FactContext) -> Networks:
    source = ctx.source
    problems: list[str] = []
    running: dict[str, Network] = {}
    for name in _xml_names(ctx, STATUS) or []:
        path = f"{STATUS}/{name}"
        try:
            net = parse_network(
                source.read_file(path).decode("utf-8", "replace"),
                active=True,
                persistent=False,
                autostart=False,
                origin=path,
            )
        except (SourceError, ET.ParseError, ValueError) as exc:
            problems.append(f"{path}: {exc}")
            continue
        running[net.name] = net
    autostart = set(_xml_names(ctx, AUTOSTART) or [])
    definitions = _xml_names(ctx, DEFINITIONS)
    if definitions is None and not running:
        try:
            source.list_dir(DEFINITIONS)
        except SourceError as exc:
            raise FactUnavailable(
                f"no libvirt connection, and {DEFINITIONS}: {exc.reason}"
            ) from None
    items = []
    for name in definitions or []:
        path = f"{DEFINITIONS}/{name}"
        try:
            net = parse_network(
                source.read_file(path).decode("utf-8", "replace"),
                active=False,
                persistent=True,
                autostart=name in autostart,
                origin=path,
            )
        except (SourceError, ET.ParseError, ValueError) as exc:
            problems.append(f"{path}: {exc}")
            continue
        live = running.pop(net.name, None)
        if live is not None:  # the live definition, marked persistent
            from dataclasses import replace

            net = replace(live, persistent=True, autostart=net.autostart)
        items.append(net)
    items.extend(running.values())  # transient networks
    return Networks(
        tuple(sorted(items, key=lambda n: n.name)), "definition and status files", tuple(problems)
    )
