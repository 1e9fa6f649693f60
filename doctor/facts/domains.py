"""libvirt domains and capabilities, parsed from libvirt's XML.

Domains come from the libvirt connection when it works; otherwise from their definition files
(/etc/libvirt/qemu/*.xml) and the status files of running ones (/run/libvirt/qemu/*.xml), so a
host whose daemon is down, and a tree under --root, can still be examined. Each domain says
where it came from.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from doctor.facts import FactContext, FactUnavailable, fact
from doctor.facts.util import read_text
from doctor.sources.base import NotFound, SourceError, Unavailable

DEFINITIONS = "/etc/libvirt/qemu"
STATUS = "/run/libvirt/qemu"


@dataclass(frozen=True)
class Loader:
    path: Optional[str]
    readonly: Optional[str]
    type: Optional[str]  # rom, pflash
    secure: Optional[str]  # yes, no
    format: Optional[str] = None


@dataclass(frozen=True)
class Nvram:
    path: Optional[str]
    template: Optional[str]
    format: Optional[str] = None


@dataclass(frozen=True)
class Disk:
    device: str  # disk, cdrom, floppy, lun
    type: str  # file, block, network, volume, dir
    bus: Optional[str]
    target: Optional[str]
    source: Optional[str]  # file or dev path, or pool/volume, or protocol:name
    readonly: bool
    shareable: bool
    boot_order: Optional[int] = None
    address: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Interface:
    type: str  # network, bridge, direct, ethernet, vhostuser, ...
    mac: Optional[str]
    source: dict[str, str]  # network=, bridge=, dev=, mode=
    target: Optional[str]  # the tap (running domains)
    model: Optional[str]
    virtualport: Optional[str]
    boot_order: Optional[int] = None
    address: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Domain:
    name: str
    uuid: Optional[str]
    type: str  # kvm, qemu
    active: bool
    persistent: bool
    origin: str  # "libvirt" or the file it was read from
    arch: Optional[str] = None
    machine: Optional[str] = None
    firmware: Optional[str] = None  # <os firmware='efi'>
    loader: Optional[Loader] = None
    nvram: Optional[Nvram] = None
    firmware_features: dict[str, str] = field(default_factory=dict)  # secure-boot, enrolled-keys
    os_boot: tuple[str, ...] = ()  # <os><boot dev=.../>
    smm: Optional[str] = None  # <features><smm state=.../> ("on" when present without state)
    emulator: Optional[str] = None
    memory_kib: Optional[int] = None
    vcpus: Optional[int] = None
    disks: tuple[Disk, ...] = ()
    interfaces: tuple[Interface, ...] = ()
    controllers: tuple[dict[str, Any], ...] = ()
    graphics: tuple[dict[str, str], ...] = ()
    iommu: Optional[dict[str, str]] = None

    @property
    def subject(self) -> str:
        return f"domain:{self.name}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_UNITS = {
    "b": 1 / 1024,
    "bytes": 1 / 1024,
    "k": 1,
    "kib": 1,
    "kb": 1000 / 1024,
    "m": 1024,
    "mib": 1024,
    "mb": 1000**2 / 1024,
    "g": 1024**2,
    "gib": 1024**2,
    "gb": 1000**3 / 1024,
    "t": 1024**3,
    "tib": 1024**3,
    "tb": 1000**4 / 1024,
}


def _kib(elem: Optional[ET.Element]) -> Optional[int]:
    if elem is None or not (elem.text or "").strip().isdigit():
        return None
    factor = _UNITS.get((elem.get("unit") or "KiB").lower(), 1)
    return int(int(elem.text.strip()) * factor)  # type: ignore[union-attr]


def _int(text: Optional[str]) -> Optional[int]:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _address(elem: ET.Element) -> dict[str, str]:
    addr = elem.find("address")
    return dict(addr.attrib) if addr is not None else {}


def _disk_source(disk: ET.Element) -> Optional[str]:
    src = disk.find("source")
    if src is None:
        return None
    for attr in ("file", "dev", "dir"):
        if src.get(attr):
            return src.get(attr)
    if src.get("volume"):
        return f"{src.get('pool')}/{src.get('volume')}"
    if src.get("protocol"):
        return f"{src.get('protocol')}:{src.get('name', '')}"
    return None


def parse_domain(xml: str, *, active: bool, persistent: bool, origin: str) -> Domain:
    root = ET.fromstring(xml)
    if root.tag == "domstatus":  # a status file wraps the live definition
        inner = root.find("domain")
        if inner is None:
            raise ValueError("status file without <domain>")
        root = inner
    if root.tag != "domain":
        raise ValueError(f"<{root.tag}> is not a domain")
    os_el = root.find("os")
    os_type = os_el.find("type") if os_el is not None else None
    loader_el = os_el.find("loader") if os_el is not None else None
    nvram_el = os_el.find("nvram") if os_el is not None else None
    fw_features = {}
    if os_el is not None:
        for feat in os_el.findall("firmware/feature"):
            if feat.get("name"):
                fw_features[feat.get("name", "")] = feat.get("enabled", "")
    features = root.find("features")
    smm = None
    if features is not None and features.find("smm") is not None:
        smm = features.find("smm").get("state", "on")  # type: ignore[union-attr]
    devices = root.find("devices")
    disks, nics, controllers, graphics = [], [], [], []
    emulator = None
    iommu = None
    if devices is not None:
        emulator = (devices.findtext("emulator") or "").strip() or None
        for disk in devices.findall("disk"):
            target = disk.find("target")
            boot = disk.find("boot")
            disks.append(
                Disk(
                    device=disk.get("device", "disk"),
                    type=disk.get("type", "file"),
                    bus=target.get("bus") if target is not None else None,
                    target=target.get("dev") if target is not None else None,
                    source=_disk_source(disk),
                    readonly=disk.find("readonly") is not None,
                    shareable=disk.find("shareable") is not None,
                    boot_order=_int(boot.get("order")) if boot is not None else None,
                    address=_address(disk),
                )
            )
        for nic in devices.findall("interface"):
            src = nic.find("source")
            tgt = nic.find("target")
            model = nic.find("model")
            vport = nic.find("virtualport")
            mac = nic.find("mac")
            boot = nic.find("boot")
            nics.append(
                Interface(
                    type=nic.get("type", ""),
                    mac=mac.get("address") if mac is not None else None,
                    source=dict(src.attrib) if src is not None else {},
                    target=tgt.get("dev") if tgt is not None else None,
                    model=model.get("type") if model is not None else None,
                    virtualport=vport.get("type") if vport is not None else None,
                    boot_order=_int(boot.get("order")) if boot is not None else None,
                    address=_address(nic),
                )
            )
        for ctrl in devices.findall("controller"):
            model_el = ctrl.find("model")
            controllers.append(
                {
                    **ctrl.attrib,
                    "address": _address(ctrl),
                    "model_name": model_el.get("name") if model_el is not None else None,
                }
            )
        for gfx in devices.findall("graphics"):
            attrs = {k: v for k, v in gfx.attrib.items() if k not in ("passwd", "password")}
            graphics.append(attrs)
        iommu_el = devices.find("iommu")
        if iommu_el is not None:
            driver = iommu_el.find("driver")
            iommu = {
                "model": iommu_el.get("model", ""),
                **(dict(driver.attrib) if driver is not None else {}),
            }
    vcpu = root.find("vcpu")
    return Domain(
        name=(root.findtext("name") or "").strip(),
        uuid=(root.findtext("uuid") or "").strip() or None,
        type=root.get("type", ""),
        active=active,
        persistent=persistent,
        origin=origin,
        arch=os_type.get("arch") if os_type is not None else None,
        machine=os_type.get("machine") if os_type is not None else None,
        firmware=os_el.get("firmware") if os_el is not None else None,
        loader=Loader(
            path=(loader_el.text or "").strip() or None,
            readonly=loader_el.get("readonly"),
            type=loader_el.get("type"),
            secure=loader_el.get("secure"),
            format=loader_el.get("format"),
        )
        if loader_el is not None
        else None,
        nvram=Nvram(
            path=(nvram_el.text or "").strip() or None,
            template=nvram_el.get("template"),
            format=nvram_el.get("format"),
        )
        if nvram_el is not None
        else None,
        firmware_features=fw_features,
        os_boot=tuple(b.get("dev", "") for b in os_el.findall("boot")) if os_el is not None else (),
        smm=smm,
        emulator=emulator,
        memory_kib=_kib(root.find("memory")),
        vcpus=_int((vcpu.text or "").strip()) if vcpu is not None else None,
        disks=tuple(disks),
        interfaces=tuple(nics),
        controllers=tuple(controllers),
        graphics=tuple(graphics),
        iommu=iommu,
    )


@dataclass(frozen=True)
class Domains:
    items: tuple[Domain, ...]
    origin: str  # "libvirt <uri>" or "definition and status files"
    problems: tuple[str, ...] = ()  # files or domains that could not be parsed

    def as_dict(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "names": [d.name for d in self.items],
            "problems": list(self.problems),
        }


@fact("domains")
def domains(ctx: FactContext) -> Domains:
    uri = ctx.get("uri")
    if uri.parts.driver == "qemu" or uri.parts.driver == "test":
        try:
            listed = ctx.source.libvirt(uri.uri, "domains")
        except SourceError as exc:
            if uri.parts.remote or uri.parts.driver == "test":
                raise FactUnavailable(f"libvirt: {exc.reason}") from None
        else:
            return _from_libvirt(listed, uri.effective)
    return _from_files(ctx)


def _from_libvirt(listed: list[dict[str, Any]], uri: str) -> Domains:
    items, problems = [], []
    for entry in listed:
        xml = entry.get("live_xml") or entry.get("xml")
        if not xml:
            continue
        try:
            items.append(
                parse_domain(
                    xml, active=entry["active"], persistent=entry["persistent"], origin="libvirt"
                )
            )
        except (ET.ParseError, ValueError) as exc:
            problems.append(f"{entry.get('name')}: {exc}")
    return Domains(tuple(items), f"libvirt {uri}", tuple(problems))


def _xml_files(ctx: FactContext, directory: str) -> list[str]:
    try:
        return [f"{directory}/{n}" for n in ctx.source.list_dir(directory) if n.endswith(".xml")]
    except (NotFound, Unavailable):
        return []


def _from_files(ctx: FactContext) -> Domains:
    running: dict[str, Domain] = {}
    problems = []
    for path in _xml_files(ctx, STATUS):
        try:
            dom = parse_domain(
                read_text(ctx.source, path), active=True, persistent=False, origin=path
            )
        except (SourceError, ET.ParseError, ValueError) as exc:
            problems.append(f"{path}: {exc}")
            continue
        running[dom.name] = dom
    items = []
    for path in _xml_files(ctx, DEFINITIONS):
        try:
            dom = parse_domain(
                read_text(ctx.source, path), active=False, persistent=True, origin=path
            )
        except (SourceError, ET.ParseError, ValueError) as exc:
            problems.append(f"{path}: {exc}")
            continue
        live = running.pop(dom.name, None)
        if live is not None:  # the live definition, marked persistent
            from dataclasses import replace

            dom = replace(live, persistent=True)
        items.append(dom)
    items.extend(running.values())  # transient domains
    if not items and not problems and not _xml_files(ctx, DEFINITIONS):
        try:
            ctx.source.list_dir(DEFINITIONS)
        except SourceError as exc:
            raise FactUnavailable(
                f"no libvirt connection and {DEFINITIONS}: {exc.reason}"
            ) from None
    return Domains(
        tuple(sorted(items, key=lambda d: d.name)), "definition and status files", tuple(problems)
    )


# --- capabilities --------------------------------------------------------------------------


@dataclass(frozen=True)
class Guest:
    os_type: str
    arch: str
    emulator: Optional[str]
    machines: tuple[str, ...]
    domain_types: dict[str, Optional[str]]  # kvm/qemu -> its own emulator, if any


@dataclass(frozen=True)
class Capabilities:
    host_arch: Optional[str]
    guests: tuple[Guest, ...]

    def emulators(self) -> dict[str, str]:
        """emulator path -> the arch it serves."""
        out: dict[str, str] = {}
        for guest in self.guests:
            for path in (guest.emulator, *guest.domain_types.values()):
                if path:
                    out.setdefault(path, guest.arch)
        return out

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_capabilities(xml: str) -> Capabilities:
    root = ET.fromstring(xml)
    guests = []
    for guest in root.findall("guest"):
        arch = guest.find("arch")
        if arch is None:
            continue
        guests.append(
            Guest(
                os_type=(guest.findtext("os_type") or "").strip(),
                arch=arch.get("name", ""),
                emulator=(arch.findtext("emulator") or "").strip() or None,
                machines=tuple(sorted({(m.text or "").strip() for m in arch.findall("machine")})),
                domain_types={
                    d.get("type", ""): (d.findtext("emulator") or "").strip() or None
                    for d in arch.findall("domain")
                },
            )
        )
    return Capabilities((root.findtext("host/cpu/arch") or "").strip() or None, tuple(guests))


@fact("capabilities")
def capabilities(ctx: FactContext) -> Capabilities:
    uri = ctx.get("uri")
    try:
        xml = ctx.source.libvirt(uri.uri, "capabilities")
    except SourceError as exc:
        raise FactUnavailable(f"libvirt capabilities: {exc.reason}") from None
    try:
        return parse_capabilities(xml)
    except ET.ParseError as exc:
        raise FactUnavailable(f"libvirt capabilities are not XML: {exc}") from None
