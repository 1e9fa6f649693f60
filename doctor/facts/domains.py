"""libvirt domains and capabilities, parsed from libvirt's XML.

Domains come from the libvirt connection when it works; otherwise from their definition files
(/etc/libvirt/qemu/*.xml) and the status files of running ones (/run/libvirt/qemu/*.xml), so a
host whose daemon is down, and a tree under --root, can still be examined. Each domain says
where it came from.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import asdict, field, replace
from typing import Any, Optional

from doctor.facts import FactContext, FactUnavailable, fact
from doctor.facts.util import child_paths, definition_root, element_paths, read_text
from doctor.record import record
from doctor.sources.base import NotFound, SourceError, Unavailable

DEFINITIONS = "/etc/libvirt/qemu"
STATUS = "/run/libvirt/qemu"


@record
class Loader:
    path: Optional[str]
    readonly: Optional[str]
    type: Optional[str]  # rom, pflash
    secure: Optional[str]  # yes, no
    format: Optional[str] = None
    stateless: Optional[str] = None  # yes, no


@record
class Nvram:
    path: Optional[str]
    template: Optional[str]
    format: Optional[str] = None


@record
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
    path: str = ""  # the element in the definition: /domain/devices/disk[2]
    format: Optional[str] = None  # <driver type=...>: raw, qcow2, ...
    vendor: Optional[str] = None  # <vendor> and <product>: the SCSI inquiry strings
    product: Optional[str] = None


@record
class Interface:
    type: str  # network, bridge, direct, ethernet, vhostuser, ...
    mac: Optional[str]
    source: dict[str, str]  # network=, bridge=, dev=, mode=
    target: Optional[str]  # the tap (running domains)
    model: Optional[str]
    virtualport: Optional[str]
    boot_order: Optional[int] = None
    address: dict[str, str] = field(default_factory=dict)
    path: str = ""  # the element in the definition: /domain/devices/interface[1]


@record
class PciDevice:
    """A device in a guest PCI slot, or one that will take a slot when libvirt assigns the
    addresses it lacks (hand-written XML, the test driver)."""

    element: str  # interface, disk, controller, video, hostdev, ...
    type: Optional[str]  # the element's type attribute: controller pci/usb/sata, hostdev pci
    label: str  # how a reader finds it in the XML: "interface 52:54:00:01:a7:85", "disk vda"
    model: Optional[str] = None  # controller or device model (pcie-root-port, virtio, ich9-ehci1)
    bus: Optional[int] = None  # index of the PCI controller it sits on; None: no address yet
    slot: Optional[int] = None
    function: Optional[int] = None
    path: str = ""  # the element in the definition: /domain/devices/controller[3]
    address: Optional[dict[str, str]] = None  # its <address type='pci'> as written

    @property
    def addressed(self) -> bool:
        return self.bus is not None and self.slot is not None

    @property
    def where(self) -> str:
        if not self.addressed:
            return "no address yet"
        return f"{self.bus:02x}:{self.slot:02x}.{self.function or 0}"


@record
class BootOrder:
    """A per-device `<boot order='N'/>`."""

    device: str  # the same label as PciDevice's: "disk vda", "interface 52:54:00:…"
    order: int
    path: str = ""  # the <boot> element: /domain/devices/disk[1]/boot


@record
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
    # <features> children: name -> state ("on" when present without one), or driver (ioapic)
    features: dict[str, str] = field(default_factory=dict)
    memory_value: Optional[int] = None  # <memory> as written: the number and its unit
    memory_unit: Optional[str] = None
    pci_devices: tuple[PciDevice, ...] = ()
    boot_orders: tuple[BootOrder, ...] = ()
    # Started when the host boots (`virsh autostart`; /etc/libvirt/qemu/autostart/NAME.xml).
    autostart: bool = False
    graphics_paths: tuple[str, ...] = ()  # the <graphics> elements, as `graphics` lists them
    # `kvmdoctor lint`: the file the definition was read from (findings are about it) and the
    # line of each element, by path (/domain/devices/disk[2]); empty when read for `run`.
    file: Optional[str] = None
    lines: dict[str, int] = field(default_factory=dict)
    # <hostdev>s: mode, type and their guest <address> (a SCSI one's drive address)
    hostdevs: tuple[dict[str, Any], ...] = ()
    smm_tseg_kib: Optional[float] = None  # <smm><tseg unit=...>N</tseg>
    numa_memory_kib: Optional[int] = None  # the sum of <cpu><numa><cell memory=...>
    iommu_address: dict[str, str] = field(default_factory=dict)  # the <iommu>'s <address>
    # `kvmdoctor lint`: the definition as written, for checks that validate the document
    # itself (libvirt's schema); None when read for `run`.
    xml: Optional[str] = None

    @property
    def pci_addresses(self) -> tuple[dict[str, str], ...]:
        """Every device's `<address type='pci'>` as written, with the device's label and path:
        derived when a check asks (the PCI address checks), so `run` does not pay for it."""
        return tuple(
            {"device": pci.label, "path": pci.path, **pci.address}
            for pci in self.pci_devices
            if pci.address is not None
        )

    @property
    def subject(self) -> str:
        return f"file:{self.file}" if self.file is not None else f"domain:{self.name}"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        # where lint read it (the finding's location says so), and its text
        del out["file"], out["lines"], out["xml"]
        return out


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
    if src.get("protocol"):  # nbd:bar, or nbd://host:port/bar when it names its server
        host = src.find("host")
        server = host.get("name") or host.get("socket") if host is not None else None
        if server:
            port = f":{host.get('port')}" if host is not None and host.get("port") else ""
            return f"{src.get('protocol')}://{server}{port}/{src.get('name', '')}"
        return f"{src.get('protocol')}:{src.get('name', '')}"
    return None


_SOUND_ON_PCI = frozenset({"ich6", "ich7", "ich9", "ac97", "es1370"})


def _device_model(elem: ET.Element) -> Optional[str]:
    tag = elem.tag
    if tag in ("controller", "sound", "memballoon", "rng", "watchdog", "iommu"):
        return elem.get("model")
    if tag in ("video", "interface"):
        model = elem.find("model")
        return model.get("type") if model is not None else None
    if tag == "disk":
        target = elem.find("target")
        return target.get("bus") if target is not None else None
    if tag == "input":
        return elem.get("bus")
    return None


def device_label(elem: ET.Element) -> str:
    """How a reader finds the device in the XML: its target, MAC, index or model."""
    tag = elem.tag
    if tag == "disk":
        target = elem.find("target")
        return f"disk {target.get('dev') if target is not None else '?'}"
    if tag == "interface":
        mac = elem.find("mac")
        if mac is not None and mac.get("address"):
            return f"interface {mac.get('address')}"
        return f"interface type={elem.get('type', '?')}"
    if tag == "controller":
        named = f" ({elem.get('model')})" if elem.get("model") else ""
        return f"controller {elem.get('type', '?')} {elem.get('index', '0')}{named}"
    if tag == "hostdev":
        src = elem.find("source/address")
        if src is not None and src.get("bus") is not None:
            host = _pci_text(src)
            return f"hostdev {host}" if host else "hostdev"
    model = _device_model(elem)
    return f"{tag} {model}" if model else tag


def _hex(text: Optional[str]) -> Optional[int]:
    if text is None:
        return None
    try:
        return int(text, 0)
    except ValueError:
        return None


def _pci_text(addr: ET.Element) -> Optional[str]:
    bus, slot, function = _hex(addr.get("bus")), _hex(addr.get("slot")), _hex(addr.get("function"))
    if bus is None or slot is None:
        return None
    return f"{_hex(addr.get('domain')) or 0:04x}:{bus:02x}:{slot:02x}.{function or 0}"


def _takes_pci_slot_unaddressed(elem: ET.Element) -> bool:
    """Whether libvirt gives this device a PCI address when it has none (x86, PCIe machines)."""
    tag, model = elem.tag, _device_model(elem)
    if tag in ("interface", "shmem", "vsock", "filesystem"):
        return True
    if tag in ("disk", "input"):
        return model == "virtio"
    if tag == "controller":
        kind = elem.get("type")
        if kind == "pci":
            return model not in ("pci-root", "pcie-root")
        if kind == "usb":
            return model != "none"
        return kind in ("scsi", "virtio-serial", "sata")
    if tag == "video":
        return model != "none"
    if tag == "sound":
        return model in _SOUND_ON_PCI
    if tag in ("memballoon", "rng"):
        return (model or "").startswith("virtio")
    if tag == "hostdev":
        return elem.get("mode", "subsystem") == "subsystem" and elem.get("type") == "pci"
    if tag == "watchdog":
        return model == "i6300esb"
    return False


def _pci_device(elem: ET.Element, path: str = "") -> Optional[PciDevice]:
    """The device's guest PCI address (its own <address>, not a hostdev's <source>), or an
    unaddressed device that will get one; None for devices on other buses."""
    addr = elem.find("address")
    if addr is not None and addr.get("type") != "pci":
        return None
    if addr is None and not _takes_pci_slot_unaddressed(elem):
        return None
    return PciDevice(
        element=elem.tag,
        type=elem.get("type"),
        label=device_label(elem),
        model=_device_model(elem),
        bus=_hex(addr.get("bus", "0")) if addr is not None else None,
        slot=_hex(addr.get("slot")) if addr is not None else None,
        function=_hex(addr.get("function", "0")) if addr is not None else None,
        path=path,
        address=dict(addr.attrib) if addr is not None else None,
    )


def _features(features: Optional[ET.Element]) -> dict[str, str]:
    if features is None:
        return {}
    return {
        child.tag: child.get("state") or child.get("driver") or "on"
        for child in features
        if isinstance(child.tag, str)
    }


def _graphics(gfx: ET.Element) -> dict[str, str]:
    """The attributes (never passwords), with the listen address of a <listen> child when the
    attribute is absent, and the listen type (address, network, socket, none)."""
    attrs = {k: v for k, v in gfx.attrib.items() if k not in ("passwd", "password")}
    listen = gfx.find("listen")
    if listen is not None:
        attrs["listen_type"] = listen.get("type", "address")
        if "listen" not in attrs and listen.get("address"):
            attrs["listen"] = listen.get("address", "")
    return attrs


def _devices(devices: ET.Element) -> Iterator[tuple[ET.Element, str]]:
    """The device elements (not comments), with no path."""
    for device in devices:
        if isinstance(device.tag, str):
            yield device, ""


def parse_domain(
    xml: str, *, active: bool, persistent: bool, origin: str, file: Optional[str] = None
) -> Domain:
    """A domain from its XML (a definition, or a status file around one). With `file` (for
    `kvmdoctor lint`), the domain's findings are about that file and the line of every
    element is kept."""
    positions: Optional[dict[ET.Element, int]] = {} if file is not None else None
    # or the one a status file wraps
    root = definition_root(xml, "domain", "domstatus", lines=positions)
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
    feature_states = _features(features)
    smm = None
    if features is not None and features.find("smm") is not None:
        smm = features.find("smm").get("state", "on")  # type: ignore[union-attr]
    devices = root.find("devices")
    disks, nics, controllers, graphics = [], [], [], []
    pci_devices: list[PciDevice] = []
    boot_orders: list[BootOrder] = []
    emulator = None
    iommu = None
    paths: dict[ET.Element, str] = {}
    if devices is not None:
        emulator = (devices.findtext("emulator") or "").strip() or None
        # Element paths (/domain/devices/disk[2]) only for lint, whose findings point at
        # elements: `run` parses as fast as it did without them.
        if positions is not None:
            paths = {elem: path for elem, path in child_paths(devices, "/domain/devices")}
        listed = paths.items() if positions is not None else _devices(devices)
        for device, path in listed:
            pci = _pci_device(device, path)
            if pci is not None:
                pci_devices.append(pci)
            boot_el = device.find("boot")
            order = _int(boot_el.get("order")) if boot_el is not None else None
            if order is not None:
                where = f"{path}/boot" if path else ""
                boot_orders.append(BootOrder(device_label(device), order, where))
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
                    path=paths.get(disk, ""),
                    format=disk.find("driver").get("type")  # type: ignore[union-attr]
                    if disk.find("driver") is not None
                    else None,
                    vendor=disk.findtext("vendor"),
                    product=disk.findtext("product"),
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
                    path=paths.get(nic, ""),
                )
            )
        for ctrl in devices.findall("controller"):
            model_el = ctrl.find("model")
            target_el = ctrl.find("target")
            controllers.append(
                {
                    **ctrl.attrib,
                    "address": _address(ctrl),
                    "model_name": model_el.get("name") if model_el is not None else None,
                    # chassis, port, busNr, hotplug ('off' takes a port out of hot-plug)
                    "target": dict(target_el.attrib) if target_el is not None else {},
                    "path": paths.get(ctrl, ""),
                }
            )
        for gfx in devices.findall("graphics"):
            graphics.append(_graphics(gfx))
        iommu_el = devices.find("iommu")
        if iommu_el is not None:
            driver = iommu_el.find("driver")
            iommu = {
                "model": iommu_el.get("model", ""),
                **(dict(driver.attrib) if driver is not None else {}),
            }
    vcpu = root.find("vcpu")
    memory = root.find("memory")
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
            stateless=loader_el.get("stateless"),
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
        memory_kib=_kib(memory),
        vcpus=_int((vcpu.text or "").strip()) if vcpu is not None else None,
        disks=tuple(disks),
        interfaces=tuple(nics),
        controllers=tuple(controllers),
        graphics=tuple(graphics),
        iommu=iommu,
        features=feature_states,
        memory_value=_int((memory.text or "").strip()) if memory is not None else None,
        memory_unit=(memory.get("unit") or "KiB") if memory is not None else None,
        pci_devices=tuple(pci_devices),
        boot_orders=tuple(boot_orders),
        graphics_paths=tuple(paths.get(g, "") for g in devices.findall("graphics"))
        if devices is not None
        else (),
        file=file,
        lines={path: positions[elem] for path, elem in element_paths(root, "/domain")}
        if positions is not None
        else {},
        hostdevs=tuple(
            {**hostdev.attrib, "address": _address(hostdev), "path": paths.get(hostdev, "")}
            for hostdev in (devices.findall("hostdev") if devices is not None else ())
        ),
        smm_tseg_kib=_tseg_kib(features),
        numa_memory_kib=_numa_kib(root),
        iommu_address=_address(devices.find("iommu"))  # type: ignore[arg-type]
        if devices is not None and devices.find("iommu") is not None
        else {},
        xml=xml if file is not None else None,
    )


def _tseg_kib(features: Optional[ET.Element]) -> Optional[float]:
    tseg = features.find("smm/tseg") if features is not None else None
    if tseg is None or not (tseg.text or "").strip().isdigit():
        return None
    factor = _UNITS.get((tseg.get("unit") or "MiB").lower(), 1)
    return int((tseg.text or "").strip()) * factor


def _numa_kib(root: ET.Element) -> Optional[int]:
    cells = root.findall("cpu/numa/cell")
    if not cells:
        return None
    total = 0
    for cell in cells:
        size = ET.Element("memory", {"unit": cell.get("unit", "KiB")})
        size.text = cell.get("memory")
        total += _kib(size) or 0
    return total


@record
class Domains:
    items: tuple[Domain, ...]
    origin: str  # "libvirt <uri>" or "definition and status files"
    problems: tuple[str, ...] = ()  # files or domains that could not be parsed
    # Whether the domains run on the host kvmdoctor examines: not for libvirt's test driver
    # or a remote URI, whose paths, taps and bridges are not this host's.
    local: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "local": self.local,
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
            found = _from_libvirt(listed, uri.effective)
            if uri.parts.driver == "test" or uri.parts.remote:
                found = replace(found, local=False)
            return found
    return _from_files(ctx)


def _from_libvirt(listed: list[dict[str, Any]], uri: str) -> Domains:
    items, problems = [], []
    for entry in listed:
        xml = entry.get("live_xml") or entry.get("xml")
        if not xml:
            continue
        try:
            dom = parse_domain(
                xml, active=entry["active"], persistent=entry["persistent"], origin="libvirt"
            )
            items.append(replace(dom, autostart=bool(entry.get("autostart"))))
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
    try:  # libvirt links each autostarted definition into autostart/
        autostarted = {
            n[: -len(".xml")]
            for n in ctx.source.list_dir(f"{DEFINITIONS}/autostart")
            if n.endswith(".xml")
        }
    except SourceError:
        autostarted = set()
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
            dom = replace(live, persistent=True)
        items.append(replace(dom, autostart=dom.name in autostarted))
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


@record
class Guest:
    os_type: str
    arch: str
    emulator: Optional[str]
    machines: tuple[str, ...]
    domain_types: dict[str, Optional[str]]  # kvm/qemu -> its own emulator, if any


@record
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


# --- the machine types' vCPU limits, from the host's QEMU ------------------------------------

OVER_ANY_LIMIT = 255  # every x86 machine type takes this many vCPUs


@record
class MachineLimit:
    """What libvirt's domain capabilities say of one machine type as a domain writes it."""

    arch: str
    machine: str  # as the domain writes it: q35, pc, pc-q35-7.2
    canonical: Optional[str]  # what the host's QEMU resolves it to: pc-q35-7.2
    max_vcpus: Optional[int]  # <vcpu max=...>: QEMU's limit, under KVM also the host's


@record
class MachineLimits:
    """The host's limits for the machine types of the domains that may reach them (more than
    255 vCPUs: below that every x86 machine type takes them)."""

    items: tuple[MachineLimit, ...]
    problems: tuple[str, ...] = ()

    def get(self, dom: Domain) -> Optional[MachineLimit]:
        for item in self.items:
            if (item.arch, item.machine) == _machine_key(dom):
                return item
        return None

    def as_dict(self) -> dict[str, Any]:
        return {"items": [asdict(i) for i in self.items], "problems": list(self.problems)}


def _machine_key(dom: Domain) -> tuple[str, str]:
    return (dom.arch or "x86_64", dom.machine or "")


def parse_domcaps_vcpus(xml: str) -> tuple[Optional[str], Optional[int]]:
    """The machine type and `<vcpu max=...>` of libvirt's domain capabilities."""
    root = ET.fromstring(xml)
    vcpu = root.find("vcpu")
    limit = _int(vcpu.get("max")) if vcpu is not None else None
    return (root.findtext("machine") or "").strip() or None, limit


@fact("machine_limits")
def machine_limits(ctx: FactContext) -> MachineLimits:
    uri = ctx.get("uri")
    if uri.parts.driver != "qemu":
        raise FactUnavailable("machine types' limits come from a qemu:// connection only")
    wanted = sorted(
        {
            _machine_key(dom)
            for dom in ctx.get("domains").items
            if (dom.vcpus or 1) > OVER_ANY_LIMIT and dom.machine
        }
    )
    items: list[MachineLimit] = []
    problems: list[str] = []
    for arch, machine in wanted:
        try:
            # libvirt's default virtualization type: kvm where the host has it
            xml = ctx.source.libvirt(uri.uri, "domcapabilities", arch=arch, machine=machine)
            canonical, limit = parse_domcaps_vcpus(xml)
        except SourceError as exc:
            if not items and not problems and isinstance(exc, Unavailable):
                raise FactUnavailable(f"libvirt domcapabilities: {exc.reason}") from None
            problems.append(f"{arch} {machine}: {exc.reason}")
            continue
        except ET.ParseError as exc:
            problems.append(f"{arch} {machine}: not XML: {exc}")
            continue
        items.append(MachineLimit(arch, machine, canonical, limit))
    return MachineLimits(tuple(items), tuple(problems))
