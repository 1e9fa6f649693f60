"""Domain configuration checks: what libvirt or QEMU refuses, or will refuse at the next start or
hot-plug, read from each domain's XML before anyone runs into it. The quoted errors are what
libvirt 9.0 and QEMU 7.2 said on the lab machine (tests/integration/test_domain_libvirt.py)."""

from __future__ import annotations

import posixpath
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any, Optional

from doctor.facts.domains import Disk, Domain, Domains, PciDevice
from doctor.facts.libvirt import QemuConf
from doctor.facts.sockets import Listeners
from doctor.model import Finding, Status
from doctor.record import record
from doctor.registry import check

X86 = ("x86_64", "i686")
MiB = 1024  # in KiB


def machine_family(dom: Domain) -> str:
    """q35, i440fx, isapc or microvm for an x86 guest (no machine: QEMU's default, i440fx);
    otherwise the machine type as written."""
    machine = (dom.machine or "").lower()
    if (dom.arch or "x86_64") in X86:
        if "q35" in machine:
            return "q35"
        if machine.startswith("microvm"):
            return "microvm"
        if machine == "isapc":
            return "isapc"
        if not machine or machine == "pc" or machine.startswith("pc-") or "i440fx" in machine:
            return "i440fx"
    return machine or "?"


def _machine(dom: Domain) -> str:
    return dom.machine or "the default machine type"


def _no_domains(domains: Domains) -> Finding:
    return Finding("pass", f"no domains ({domains.origin})", evidence=domains.as_dict())


def _int(text: Any) -> Optional[int]:
    try:
        return int(str(text), 0)
    except ValueError:
        return None


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


# --- DOM001 pci-slots-exhausted --------------------------------------------------------------

PCIE_PORTS = ("pcie-root-port", "pcie-switch-downstream-port")
PCI_BRIDGES = ("pci-bridge", "pcie-to-pci-bridge")
PIIX3_SLOT = 1  # i440fx: the PIIX3 ISA bridge (function 0), with IDE (1) and USB (2)
NO_SLOTS = "No more available PCI slots"
NO_ACPI_HOTPLUG = "Bus 'pci.0' does not support hotplugging"


@record
class Slot:
    bus: int  # the index of the PCI controller that provides it
    slot: int
    controller: str  # that controller's model


@record
class FreeSlots:
    """Where a device hot-plugged into a running domain can go, as libvirt chooses."""

    root: str  # pci-root or pcie-root
    free: tuple[Slot, ...]  # for the usual (virtio) device
    conventional: tuple[Slot, ...]  # PCIe machines: on PCI bridges, for legacy PCI devices only
    no_acpi: tuple[Slot, ...]  # i440fx pci-root without ACPI: QEMU refuses hot-plug there
    hotplug_off: tuple[Slot, ...]  # on controllers with <target hotplug='off'/>
    pending: tuple[str, ...]  # devices with no address yet: they take free slots first
    ports: int  # pcie-root-ports and downstream ports, occupied or not
    hotplug_buses: frozenset[int] = frozenset()  # the indexes of those controllers

    @property
    def count(self) -> int:
        return max(0, len(self.free) - len(self.pending))


def _ranges(numbers: list[int], fmt: str) -> str:
    """[7, 8, 9, 12] -> "7-9, 12" (each number written with `fmt`)."""
    spans: list[list[int]] = []
    for number in sorted(numbers):
        if spans and number == spans[-1][1] + 1:
            spans[-1][1] = number
        else:
            spans.append([number, number])
    return ", ".join(
        fmt.format(a) if a == b else f"{fmt.format(a)}-{fmt.format(b)}" for a, b in spans
    )


def describe(slots: tuple[Slot, ...]) -> str:
    """Slots in words: "pcie-root-ports 7-14", "pci-root slots 0x09-0x1f; pci-bridge 1 slots
    0x01-0x1f"."""
    parts = []
    for model in PCIE_PORTS:
        indexes = [s.bus for s in slots if s.controller == model]
        if indexes:
            parts.append(f"{model}{'s' if len(indexes) > 1 else ''} {_ranges(indexes, '{}')}")
    for bus, model in sorted(
        {(s.bus, s.controller) for s in slots if s.controller not in PCIE_PORTS}
    ):
        numbers = [s.slot for s in slots if s.bus == bus]
        name = model if model == "pci-root" else f"{model} {bus}"
        plural = "s" if len(numbers) > 1 else ""
        parts.append(f"{name} slot{plural} {_ranges(numbers, '0x{:02x}')}")
    return "; ".join(parts)


# What libvirt puts on pcie-root itself when it addresses a q35 device (not a root port).
ON_PCIE_ROOT = frozenset({"pcie-root-port", "dmi-to-pci-bridge", "pcie-expander-bus"})


def _takes_free_slot(device: PciDevice, root: str) -> bool:
    """Whether a device without an address will take a hot-plug slot when libvirt addresses
    it, rather than a place on pcie-root (q35: video, sound, SATA, ICH9 USB, root ports) or
    in the PIIX3's slot 1 (i440fx: IDE, PIIX3 USB)."""
    element, kind, model = device.element, device.type, device.model or ""
    if root == "pcie-root":
        if element in ("video", "sound"):
            return False
        if element == "controller":
            return not (kind == "sata" or model.startswith("ich9") or model in ON_PCIE_ROOT)
        return True
    if element == "controller" and kind == "ide":
        return False
    return not (element == "controller" and kind == "usb" and model in ("", "piix3-uhci"))


def free_slots(dom: Domain) -> Optional[FreeSlots]:
    """The free hot-plug slots of a domain, from its PCI controllers and the addresses its
    devices occupy; None for machines other than x86 i440fx and PCIe (q35, virt) ones."""
    family = machine_family(dom)
    buses = _pci_buses(dom)
    default_root = {"q35": "pcie-root", "i440fx": "pci-root"}.get(family)
    root = buses.get(0, {}).get("model") or default_root
    if root not in ("pci-root", "pcie-root"):
        return None
    buses.setdefault(0, {"type": "pci", "index": "0", "model": root})
    used = {(d.bus, d.slot) for d in dom.pci_devices if d.addressed}
    if family == "i440fx":
        used.add((0, PIIX3_SLOT))
    acpi = dom.features.get("acpi", "off") != "off"
    free: list[Slot] = []
    conventional: list[Slot] = []
    no_acpi: list[Slot] = []
    hotplug_off: list[Slot] = []
    hotplug_buses: set[int] = set()
    ports = 0
    for index, ctrl in sorted(buses.items()):
        model = ctrl.get("model") or ""
        if model in PCIE_PORTS:
            slots: Iterable[int] = (0,)
        elif model in PCI_BRIDGES or model == "pci-root":
            slots = range(1, 32)
        else:  # pcie-root, dmi-to-pci-bridge, upstream ports, expander buses: no hot-plug
            continue
        ports += model in PCIE_PORTS
        hotplug_buses.add(index)
        empty = [Slot(index, slot, model) for slot in slots if (index, slot) not in used]
        target = ctrl.get("target") or {}
        if target.get("hotplug") == "off":
            hotplug_off += empty
        elif model == "pci-root" and family == "i440fx" and not acpi:
            no_acpi += empty
        elif root == "pcie-root" and model in PCI_BRIDGES:
            conventional += empty
        else:
            free += empty
    pending = tuple(
        d.label for d in dom.pci_devices if not d.addressed and _takes_free_slot(d, root)
    )
    return FreeSlots(
        root,
        tuple(free),
        tuple(conventional),
        tuple(no_acpi),
        tuple(hotplug_off),
        pending,
        ports,
        frozenset(hotplug_buses),
    )


def _pci_buses(dom: Domain) -> dict[int, dict[str, Any]]:
    """The domain's PCI controllers by index. A controller written without `index=` (as
    hand-written XML often has them) gets one as libvirt gives it: the root bus is 0, the
    others take the lowest free index from 1 up, in document order."""
    pci = [c for c in dom.controllers if c.get("type") == "pci"]
    buses: dict[int, dict[str, Any]] = {}
    for ctrl in pci:
        index = _int(ctrl["index"]) if "index" in ctrl else None
        if index is not None:
            buses[index] = ctrl
    taken = set(buses) | {0}  # the root's, written or implicit
    for ctrl in pci:
        if "index" in ctrl:
            continue
        if ctrl.get("model") in ("pci-root", "pcie-root"):
            buses.setdefault(0, ctrl)
            continue
        index = next(i for i in range(1, len(pci) + 2) if i not in taken)
        taken.add(index)
        buses[index] = {**ctrl, "index": str(index)}
    return buses


def _controller_text(ctrl: dict[str, Any]) -> str:
    """ "3 pcie-root-port at 00:02.2" (a PCI controller: its index, model and own address)."""
    addr = ctrl.get("address") or {}
    where = ""
    if addr.get("type") == "pci":
        bus, slot, fn = (_int(addr.get(k, "0")) or 0 for k in ("bus", "slot", "function"))
        where = f" at {bus:02x}:{slot:02x}.{fn}"
    off = " hotplug='off'" if (ctrl.get("target") or {}).get("hotplug") == "off" else ""
    return f"{ctrl.get('index', '0')} {ctrl.get('model') or '?'}{where}{off}"


@check(
    "DOM001",
    "pci-slots-exhausted",
    title="A domain has no free PCI slot to hot-plug a device into",
    tags=("domain", "libvirt"),
)
def pci_slots_exhausted(domains: Domains) -> Iterator[Finding]:
    """What it checks: how many devices can still be hot-plugged into each domain, counted as
    libvirt counts them from the domain's PCI controllers and the addresses its devices
    occupy. On q35 (and other PCIe machines) a device goes into an empty pcie-root-port or
    pcie-switch-downstream-port; pcie-root itself takes no hot-plug, and free slots on a
    pci-bridge serve conventional PCI devices only. On i440fx it goes into a free pci-root
    slot (1-31; slot 0 is the host bridge, slot 1 the PIIX3 ISA/IDE/USB bridge, the rest as
    the addresses in the XML say) or a pci-bridge slot. pci-root hot-plug needs ACPI, and
    ports with `<target hotplug='off'/>` take none. Devices of hand-written XML that have no
    address yet are counted as taking free slots first.

    Why it matters: `virsh attach-device --live` (and virt-manager's "Add Hardware", and
    OpenStack's interface attach) fails with "internal error: No more available PCI slots".
    libvirt cannot add a pcie-root-port or pci-bridge to a running domain, so the domain
    must be shut off to make room. On i440fx without `<acpi/>` libvirt still picks a
    pci-root slot and QEMU refuses it: "Bus 'pci.0' does not support hotplugging".

    How to fix: with the domain shut off, add empty ports for the devices still to come
    (`virsh edit`, one `<controller type='pci' model='pcie-root-port'/>` per device on q35,
    or a `<controller type='pci' model='pci-bridge'/>` on i440fx, which gives 31 slots), or
    turn on `<features><acpi/></features>` on i440fx; then start it again. virt-install
    leaves spare root ports (`--controller pci,model=pcie-root-port`, repeated).

    References: https://libvirt.org/pci-hotplug.html
    https://libvirt.org/pci-addresses.html
    https://libvirt.org/formatdomain.html#controllers
    """
    if not domains.items:
        yield _no_domains(domains)
        return
    for dom in domains.items:
        slots = free_slots(dom)
        if slots is None:
            yield Finding(
                "skip",
                f"hot-plug slots are counted for x86 i440fx and PCIe machines, not "
                f"{_machine(dom)} ({dom.arch or '?'})",
                subject=dom.subject,
                evidence={"machine": dom.machine, "arch": dom.arch},
            )
            continue
        yield _slots_finding(dom, slots)


def _slots_finding(dom: Domain, slots: FreeSlots) -> Finding:
    count = slots.count
    evidence: dict[str, Any] = {
        "machine": dom.machine,
        "acpi": dom.features.get("acpi", "off") != "off",
        "pci_controllers": [_controller_text(c) for c in dom.controllers if c.get("type") == "pci"],
        # what sits on the buses that take hot-plug (pcie-root's own slots do not count)
        "occupied": [
            f"{d.where} {d.label}"
            for d in dom.pci_devices
            if d.addressed and d.bus in slots.hotplug_buses
        ],
        "free_count": count,
        "free": describe(slots.free),
        "conventional_pci_only": describe(slots.conventional),
        "no_acpi": describe(slots.no_acpi),
        "hotplug_off": describe(slots.hotplug_off),
        "no_address_yet": list(slots.pending),
    }
    estimate = (
        f" (estimated: {_plural(len(slots.pending), 'device')} without a PCI address "
        "will take free slots first)"
        if slots.pending
        else ""
    )
    bridges = (
        f"; {describe(slots.conventional)} take conventional PCI devices only (e1000, "
        "rtl8139), not virtio"
        if slots.conventional
        else ""
    )
    if slots.no_acpi:
        return Finding(
            "fail",
            f"{describe(slots.no_acpi)} {'is' if len(slots.no_acpi) == 1 else 'are'} free but "
            "the domain has no <acpi/>: libvirt picks "
            f'one of them for a hot-plugged device and QEMU refuses it ("{NO_ACPI_HOTPLUG}"); '
            "turn on <features><acpi/></features> while the domain is off",
            subject=dom.subject,
            evidence=evidence,
        )
    if count == 0:
        off = f" ({describe(slots.hotplug_off)} with hotplug='off')" if slots.hotplug_off else ""
        if slots.root == "pcie-root":
            where = (
                f"all {_plural(slots.ports, 'pcie-root-port')} are occupied{off}"
                if slots.ports
                else "it has no pcie-root-port"
            )
            fix = "add empty pcie-root-ports"
        else:
            where = f"every pci-root and pci-bridge slot is occupied{off}"
            fix = "add a pci-bridge (31 slots)"
        return Finding(
            "fail",
            f"0 free hot-plug slots: {where}{estimate}; attaching a device to the running "
            f'domain fails with "{NO_SLOTS}"; {fix} while the domain is off{bridges}',
            subject=dom.subject,
            evidence=evidence,
        )
    return Finding(
        "pass",
        f"{_plural(count, 'free hot-plug slot')}: {describe(slots.free)}{estimate}{bridges}",
        subject=dom.subject,
        evidence=evidence,
    )


# --- DOM002 ide-controller-limit -------------------------------------------------------------

IDE_UNSUPPORTED = "IDE controllers are unsupported for this QEMU binary or machine type"
ONE_IDE = "Only 1 IDE controller is supported"  # a disk addressed beyond the first
SINGLE_IDE = "Only a single IDE controller is supported for this machine type"  # <controller>
IDE_PLACES = 4  # one controller: 2 buses x 2 units


def _disk_index(name: str, prefix: str) -> Optional[int]:
    """hda -> 0, hdz -> 25, hdaa -> 26, as libvirt's virDiskNameToIndex counts."""
    if not name.startswith(prefix) or not name[len(prefix) :].isalpha():
        return None
    index = 0
    for letter in name[len(prefix) :]:
        index = index * 26 + (ord(letter.lower()) - ord("a") + 1)
    return index - 1


def ide_controller(disk: Disk) -> Optional[int]:
    """The IDE controller a disk is on: its drive address, else from its name (4 per
    controller, as libvirt assigns them)."""
    if disk.address.get("type") == "drive":
        return _int(disk.address.get("controller", "0"))
    index = _disk_index(disk.target or "", "hd")
    return index // IDE_PLACES if index is not None else None


@check(
    "DOM002",
    "ide-controller-limit",
    title="IDE devices a machine type cannot hold",
    tags=("domain", "libvirt"),
)
def ide_controller_limit(domains: Domains) -> Iterator[Finding]:
    """What it checks: IDE disks and CD-ROMs (`bus='ide'`) against what the machine type
    offers: i440fx has one IDE controller with four places (two buses, two units each: hda
    to hdd), and q35, microvm and non-x86 machines have none. A fifth IDE device, or one
    addressed to controller 1, needs a second controller that does not exist.

    Why it matters: libvirt refuses to define or start the domain: "unsupported
    configuration: IDE controllers are unsupported for this QEMU binary or machine type"
    (q35), "internal error: Only 1 IDE controller is supported" (a fifth IDE device), or
    "unsupported configuration: Only a single IDE controller is supported for this machine
    type" (a `<controller type='ide' index='1'/>`). It usually follows copying an i440fx
    definition to q35, or adding a fifth CD-ROM.

    How to fix: on q35 use `bus='sata'` (the built-in AHCI controller, six ports) or
    `bus='scsi'` with a virtio-scsi controller; on i440fx keep at most four IDE devices and
    move the others to virtio (`bus='virtio'` for disks, `bus='scsi'` for CD-ROMs).

    References: https://libvirt.org/formatdomain.html#hard-drives-floppy-disks-cdroms
    https://libvirt.org/formatdomain.html#controllers
    """
    if not domains.items:
        yield _no_domains(domains)
        return
    for dom in domains.items:
        ide = [d for d in dom.disks if d.bus == "ide"]
        controllers = [
            c for c in dom.controllers if c.get("type") == "ide" and _int(c.get("index", "0"))
        ]
        family = machine_family(dom)
        evidence = {
            "machine": dom.machine,
            "arch": dom.arch,
            "ide_devices": [
                {"target": d.target, "device": d.device, "address": d.address} for d in ide
            ],
            "extra_ide_controllers": [c.get("index") for c in controllers],
        }
        names = ", ".join(d.target or "?" for d in ide)
        what = f"{_plural(len(ide), 'IDE device')} ({names})" if ide else "an IDE <controller>"
        if not ide and not controllers:
            yield Finding("pass", "no IDE devices", subject=dom.subject, evidence=evidence)
        elif family not in ("i440fx", "isapc"):
            yield Finding(
                "fail",
                f"{what} on {_machine(dom)}, which has no "
                f'IDE controller: libvirt refuses the domain ("{IDE_UNSUPPORTED}"); use '
                "bus='sata' or bus='scsi' with a virtio-scsi controller",
                subject=dom.subject,
                evidence=evidence,
            )
        else:
            beyond = [d.target or "?" for d in ide if (ide_controller(d) or 0) > 0]
            if len(ide) > IDE_PLACES or beyond:
                extra = ", ".join(beyond) or "a device"
                yield Finding(
                    "fail",
                    f"{_plural(len(ide), 'IDE device')} ({names}) but {_machine(dom)} has one "
                    f"IDE controller with {IDE_PLACES} places; {extra} would need another: "
                    f'libvirt refuses the domain ("{ONE_IDE}"); move disks to virtio and '
                    "CD-ROMs to SCSI or SATA",
                    subject=dom.subject,
                    evidence=evidence,
                )
            elif controllers:
                indexes = ", ".join(str(c.get("index")) for c in controllers)
                yield Finding(
                    "fail",
                    f"IDE controller index {indexes} on {_machine(dom)}, which has one: libvirt "
                    f'refuses the domain ("{SINGLE_IDE}"); remove the extra <controller>',
                    subject=dom.subject,
                    evidence=evidence,
                )
            else:
                yield Finding(
                    "pass",
                    f"{_plural(len(ide), 'IDE device')} ({names}) on the one IDE controller "
                    f"({len(ide)} of {IDE_PLACES} places)",
                    subject=dom.subject,
                    evidence=evidence,
                )


# --- DOM003 cdrom-on-virtio-bus --------------------------------------------------------------


def disk_xml(disk: Disk) -> str:
    """The disk's element as the XML has it (source, target, read-only), rebuilt."""
    source = ""
    if disk.source:
        attr = {"file": "file", "block": "dev", "dir": "dir"}.get(disk.type)
        source = f"<source {attr}='{disk.source}'/>" if attr else f"<!-- source {disk.source} -->"
    target = f"<target dev='{disk.target}' bus='{disk.bus}'/>"
    flags = ("<readonly/>" if disk.readonly else "") + ("<shareable/>" if disk.shareable else "")
    return f"<disk type='{disk.type}' device='{disk.device}'>{source}{target}{flags}</disk>"


@check(
    "DOM003",
    "cdrom-on-virtio-bus",
    title="A CD-ROM is on the virtio bus",
    tags=("domain", "libvirt"),
)
def cdrom_on_virtio_bus(domains: Domains) -> Iterator[Finding]:
    """What it checks: CD-ROM devices (`device='cdrom'`) whose target bus is virtio.

    Why it matters: virtio-blk has no removable media, so libvirt's QEMU driver refuses the
    domain: "unsupported configuration: disk type of 'vda' does not support ejectable
    media". It typically comes from changing every `bus=` to virtio for speed.

    How to fix: put the CD-ROM on `bus='scsi'` with a virtio-scsi controller
    (`<controller type='scsi' model='virtio-scsi'/>`), or on `bus='sata'` (q35) or
    `bus='ide'` (i440fx), and give it a matching name (sda, hdc).

    References: https://libvirt.org/formatdomain.html#hard-drives-floppy-disks-cdroms
    """
    if not domains.items:
        yield _no_domains(domains)
        return
    for dom in domains.items:
        cdroms = [d for d in dom.disks if d.device == "cdrom"]
        on_virtio = [d for d in cdroms if d.bus == "virtio"]
        evidence = {"cdroms": [disk_xml(d) for d in cdroms]}
        if on_virtio:
            names = ", ".join(d.target or "?" for d in on_virtio)
            first = on_virtio[0].target
            yield Finding(
                "fail",
                f"CD-ROM {names} is on the virtio bus, which has no removable media: libvirt "
                f"refuses the domain (\"disk type of '{first}' does not support ejectable "
                "media\"); use bus='scsi' with a virtio-scsi controller, or sata/ide",
                subject=dom.subject,
                evidence=evidence,
            )
        elif cdroms:
            buses = ", ".join(f"{d.target} on {d.bus}" for d in cdroms)
            yield Finding("pass", f"CD-ROM: {buses}", subject=dom.subject, evidence=evidence)
        else:
            yield Finding("pass", "no CD-ROM", subject=dom.subject, evidence=evidence)


# --- DOM004 boot-order-conflict --------------------------------------------------------------

BOOT_MIXED = "per-device boot elements cannot be used together with os/boot elements"


@check(
    "DOM004",
    "boot-order-conflict",
    title="Per-device boot order together with <os><boot>, or one order given twice",
    tags=("domain", "libvirt"),
)
def boot_order_conflict(domains: Domains) -> Iterator[Finding]:
    """What it checks: that a domain chooses its boot devices one way only: either
    `<os><boot dev='hd'/>` elements, or `<boot order='N'/>` inside devices (disks,
    interfaces, host devices), and that no order number is given to two devices.

    Why it matters: libvirt refuses the definition: "unsupported configuration: per-device
    boot elements cannot be used together with os/boot elements", or "boot order '1' used
    for more than one device" (its generic parser: the test driver refuses it too). The
    usual origin is a hand-edited definition file, or a tool that adds `<boot order>` to a
    template that already has `<os><boot>`.

    How to fix: keep one style. Per-device `<boot order='N'/>` is the finer one: remove
    every `<boot dev=.../>` from `<os>`, and number the devices 1, 2, 3 without repeats.

    References: https://libvirt.org/formatdomain.html#bios-bootloader
    https://libvirt.org/formatdomain.html#hard-drives-floppy-disks-cdroms
    """
    if not domains.items:
        yield _no_domains(domains)
        return
    for dom in domains.items:
        os_xml = "".join(f"<boot dev='{dev}'/>" for dev in dom.os_boot)
        per_device = [f"{b.device}: <boot order='{b.order}'/>" for b in dom.boot_orders]
        evidence: dict[str, Any] = {
            "os": f"<os>{os_xml}</os>" if os_xml else None,
            "per_device": per_device,
        }
        counts: dict[int, list[str]] = defaultdict(list)
        for boot in dom.boot_orders:
            counts[boot.order].append(boot.device)
        repeated = {order: devs for order, devs in sorted(counts.items()) if len(devs) > 1}
        if dom.os_boot and dom.boot_orders:
            yield Finding(
                "fail",
                f"both <os>{os_xml}</os> and per-device boot order ("
                f"{', '.join(b.device for b in dom.boot_orders)}): libvirt refuses the domain "
                f'("{BOOT_MIXED}"); keep only the per-device <boot order=.../>',
                subject=dom.subject,
                evidence=evidence,
            )
        elif repeated:
            order, devices = next(iter(repeated.items()))
            yield Finding(
                "fail",
                f"boot order {order} is given to {' and '.join(devices)}: libvirt refuses the "
                f"domain (\"boot order '{order}' used for more than one device\")",
                subject=dom.subject,
                evidence=evidence,
            )
        elif dom.boot_orders:
            ordered = ", ".join(
                f"{b.order}: {b.device}" for b in sorted(dom.boot_orders, key=lambda b: b.order)
            )
            yield Finding(
                "pass", f"per-device boot order ({ordered})", subject=dom.subject, evidence=evidence
            )
        else:
            what = f"<os>{os_xml}</os>" if os_xml else "the firmware's default order"
            yield Finding("pass", f"boots by {what}", subject=dom.subject, evidence=evidence)


# --- DOM005 disk-used-twice ------------------------------------------------------------------

WRITE_LOCK = 'Failed to get "write" lock'
SHARED_WRITE_LOCK = 'Failed to get shared "write" lock'


@record
class ImageUse:
    domain: str
    active: bool
    target: str
    readonly: bool
    shareable: bool

    @property
    def disk(self) -> str:
        mode = "read-only" if self.readonly else "writable"
        return f"{self.target} ({mode}{', shareable' if self.shareable else ''})"

    @property
    def how(self) -> str:
        return f"{self.domain} {self.disk}"


def _image_key(disk: Disk) -> Optional[str]:
    if not disk.source or disk.device not in ("disk", "lun", "cdrom", "floppy"):
        return None
    if disk.type in ("file", "block", "dir") and disk.source.startswith("/"):
        return posixpath.normpath(disk.source)
    return f"{disk.type}:{disk.source}"


def image_uses(domains: Domains) -> dict[str, list[ImageUse]]:
    """Every image and the disks that name it (CD-ROMs are always read-only)."""
    uses: dict[str, list[ImageUse]] = defaultdict(list)
    for dom in domains.items:
        for disk in dom.disks:
            key = _image_key(disk)
            if key is not None:
                uses[key].append(
                    ImageUse(
                        dom.name,
                        dom.active,
                        disk.target or "?",
                        disk.readonly or disk.device == "cdrom",
                        disk.shareable,
                    )
                )
    return uses


def clashing(users: list[ImageUse]) -> list[ImageUse]:
    """The users QEMU's image locking turns away while another holds the image: a writer
    excludes every other user and a reader excludes writers, except among disks that all
    declare <shareable/>. Linear in the users (one ISO may serve a thousand domains)."""
    writers = sum(1 for u in users if not u.readonly)
    exclusive = sum(1 for u in users if not u.shareable)
    exclusive_writers = sum(1 for u in users if not u.readonly and not u.shareable)
    out = []
    for use in users:
        me_writer, me_exclusive = int(not use.readonly), int(not use.shareable)
        me_both = me_writer * me_exclusive
        if use.readonly:  # clashes with a writer, unless both are shareable
            other = (writers - me_writer) if not use.shareable else exclusive_writers - me_both
        else:  # clashes with anyone, unless both are shareable
            other = (len(users) - 1) if not use.shareable else exclusive - me_exclusive
        if other > 0:
            out.append(use)
    return out


@check(
    "DOM005",
    "disk-used-twice",
    title="One disk image is opened by two disks that exclude each other",
    tags=("domain", "libvirt"),
)
def disk_used_twice(domains: Domains) -> Iterator[Finding]:
    """What it checks: images (files, block devices, volumes, network disks) named by more
    than one disk, in two domains or twice in one, where QEMU's image locking lets only one
    of them open it: a writable disk excludes every other user, and a read-only one excludes
    writers. Read-only users together are fine, and so are disks that all carry
    `<shareable/>` (a raw image for a cluster file system).

    Why it matters: the second QEMU to open the image exits: "Failed to get "write" lock /
    Is another process using the image [...]?" (or "Failed to get shared "write" lock" for
    a read-only user), so the domain does not start while the other runs; a domain that
    names its own image twice never starts. Where no lock protects the image (network
    disks, locking turned off), two writers corrupt it.

    How to fix: give each domain its own image (`qemu-img create -f qcow2 -b base.qcow2 -F
    qcow2 vm2.qcow2` for a copy-on-write overlay on a shared base), remove the duplicate
    disk, or mark a disk meant to be shared `<shareable/>` in every domain (raw format,
    `cache='none'`) or `<readonly/>` in all of them.

    References: https://libvirt.org/formatdomain.html#hard-drives-floppy-disks-cdroms
    https://qemu-project.gitlab.io/qemu/system/qemu-block-drivers.html#disk-image-file-locking
    """
    if not domains.items:
        yield _no_domains(domains)
        return
    clashes: dict[str, list[Clash]] = defaultdict(list)
    for image, users in image_uses(domains).items():
        if len(users) > 1:
            turned_away = clashing(users)
            if turned_away:
                clash = Clash.of(image, turned_away)
                for name in clash.by_domain:
                    clashes[name].append(clash)
    for dom in domains.items:
        found = clashes.get(dom.name)
        if found:
            yield _clash_finding(dom, found)
            continue
        images = [key for key in map(_image_key, dom.disks) if key is not None]
        yield Finding(
            "pass",
            f"{_plural(len(images), 'image')}, none opened by another disk"
            if images
            else "no disk images",
            subject=dom.subject,
            evidence={"images": images},
        )


SHOWN = 10  # users named per image in a message and its evidence


@record
class Clash:
    """The users of one image that QEMU's locking turns away from each other, grouped once so
    that each domain's finding costs the same however many domains name the image."""

    image: str
    users: tuple[ImageUse, ...]
    by_domain: dict[str, tuple[ImageUse, ...]]
    running: tuple[ImageUse, ...]
    running_names: tuple[str, ...]  # the first SHOWN, sorted

    @classmethod
    def of(cls, image: str, users: list[ImageUse]) -> Clash:
        grouped: dict[str, list[ImageUse]] = defaultdict(list)
        for use in users:
            grouped[use.domain].append(use)
        running = tuple(u for u in users if u.active)
        return cls(
            image,
            tuple(users),
            {name: tuple(uses) for name, uses in grouped.items()},
            running,
            tuple(sorted({u.domain for u in running})[:SHOWN]),
        )

    def others(self, domain: str, *, running: bool = False) -> tuple[list[ImageUse], int]:
        """Up to SHOWN users in other domains (running ones only), and how many there are."""
        pool = self.running if running else self.users
        own = sum(1 for u in self.by_domain[domain] if u.active or not running)
        shown: list[ImageUse] = []
        for use in pool:
            if len(shown) == SHOWN:
                break
            if use.domain != domain:
                shown.append(use)
        return shown, len(pool) - own


def _names(shown: list[ImageUse], total: int) -> str:
    text = ", ".join(u.how for u in shown)
    return text + (f" and {total - len(shown)} more" if total > len(shown) else "")


def _clash_finding(dom: Domain, found: list[Clash]) -> Finding:
    clash = found[0]
    image = clash.image
    mine = clash.by_domain[dom.name]
    evidence = {
        "images": {c.image: [u.how for u in c.users[:SHOWN]] for c in found},
        "users": {c.image: len(c.users) for c in found},
        "running": sorted({name for c in found for name in c.running_names})[:SHOWN],
    }
    said = SHARED_WRITE_LOCK if all(u.readonly for u in mine) else WRITE_LOCK
    holders, running_count = clash.others(dom.name, running=True)
    others, other_count = clash.others(dom.name)
    status: Status = "fail"
    if len(mine) > 1:
        text = (
            f"{image} is opened twice by this domain ({', '.join(u.disk for u in mine)}): it "
            f'cannot start ("{WRITE_LOCK}")'
        )
    elif running_count and not dom.active:
        text = (
            f"{image} ({mine[0].disk}) is held by running {_names(holders, running_count)}: "
            f'this domain cannot start while it runs ("{said}")'
        )
    elif dom.active:
        text = (
            f"{image} ({mine[0].disk}) is also named by {_names(others, other_count)}, which "
            f'cannot start while this domain runs ("{WRITE_LOCK}")'
        )
    else:
        status = "warn"
        text = (
            f"{image} ({mine[0].disk}) is also named by {_names(others, other_count)}: they "
            f'cannot run at the same time (the second to start fails: "{WRITE_LOCK}")'
        )
    if not image.startswith("/"):
        text += "; no file lock protects a network disk: two writers corrupt it"
    if len(found) > 1:
        text += f" (and {_plural(len(found) - 1, 'more image')})"
    return Finding(status, text, subject=dom.subject, evidence=evidence)


# --- DOM006 graphics-port-conflict -----------------------------------------------------------

RESERVE_FAILED = "Failed to reserve port {port}"
ADDRESS_IN_USE = "Failed to find an available port: Address already in use"
DEFAULT_LISTEN = "127.0.0.1"  # qemu.conf vnc_listen and spice_listen


@record
class PortClaim:
    domain: str
    active: bool
    kind: str  # VNC, VNC websocket, SPICE, SPICE TLS
    port: int
    address: str
    fixed: bool

    @property
    def text(self) -> str:
        how = "fixed" if self.fixed else "automatic"
        return f"{self.kind} port {self.port} on {self.address} ({how})"


def port_claims(dom: Domain, conf: Optional[QemuConf]) -> list[PortClaim]:
    """The TCP ports a domain's consoles hold (running) or will ask for (fixed ones)."""
    claims = []
    for gfx in dom.graphics:
        kind = gfx.get("type")
        if kind not in ("vnc", "spice") or gfx.get("listen_type") in ("socket", "none"):
            continue
        default = DEFAULT_LISTEN
        if conf is not None:
            default = str(conf.values.get(f"{kind}_listen", DEFAULT_LISTEN))
        address = gfx.get("listen") or default
        autoport = gfx.get("autoport") == "yes"
        names = (
            (("port", "VNC"), ("websocket", "VNC websocket"))
            if kind == "vnc"
            else (("port", "SPICE"), ("tlsPort", "SPICE TLS"))
        )
        for attr, label in names:
            port = _int(gfx.get(attr, ""))
            if port is None or port <= 0:
                continue
            # A websocket port of -1 asks for one; a running domain's XML says if it got one.
            generated = gfx.get("websocketGenerated") == "yes"
            fixed = not generated if attr == "websocket" else not autoport
            if fixed or dom.active:
                claims.append(PortClaim(dom.name, dom.active, label, port, address, fixed))
    return claims


@record
class PortUse:
    """Every claim on one port, grouped once: a domain's finding then costs the same however
    many domains (clones of one template, say) name the port."""

    claims: tuple[PortClaim, ...]
    domains: tuple[str, ...]  # sorted
    running: tuple[PortClaim, ...]

    @classmethod
    def of(cls, claims: list[PortClaim]) -> PortUse:
        return cls(
            tuple(claims),
            tuple(sorted({c.domain for c in claims})),
            tuple(c for c in claims if c.active),
        )

    def other_domains(self, domain: str) -> tuple[list[str], int]:
        """Up to SHOWN other domains naming the port (sorted), and how many there are."""
        shown: list[str] = []
        for name in self.domains:
            if len(shown) == SHOWN:
                break
            if name != domain:
                shown.append(name)
        return shown, len(self.domains) - (domain in self.domains)


def _listed(names: list[str], total: int) -> str:
    text = ", ".join(names)
    return text + (f" and {total - len(names)} more" if total > len(names) else "")


@check(
    "DOM006",
    "graphics-port-conflict",
    title="A fixed VNC/SPICE port is taken",
    tags=("domain", "libvirt"),
)
def graphics_port_conflict(
    domains: Domains,
    qemu_conf: Optional[QemuConf] = None,
    tcp_listeners: Optional[Listeners] = None,
) -> Iterator[Finding]:
    """What it checks: VNC and SPICE consoles on fixed ports (`port` or `tlsPort` with
    `autoport='no'`, or a `websocket` number): whether another domain's console holds or names
    the same port, or a socket on the host already listens on it (/proc/net/tcp and tcp6:
    the same address, or either side the wildcard). Running domains' consoles, automatic
    ports included, are what they hold now; the listen address defaults to qemu.conf's
    `vnc_listen`/`spice_listen` (127.0.0.1).

    Why it matters: libvirt reserves each console port for the whole host, so the second
    domain with a fixed port fails to start: "internal error: Failed to reserve port 5900";
    when another program listens there, QEMU exits: "Failed to find an available port:
    Address already in use". Domains that only name the same port cannot run at the same
    time.

    How to fix: let libvirt choose (`<graphics type='vnc' autoport='yes'/>`), or give each
    domain its own port and keep the fixed ones out of the automatic range by raising
    qemu.conf's `remote_display_port_min` (5900) above them; stop or move the program that
    listens on the port (`ss -ltnp 'sport = :5900'` names it).

    References: https://libvirt.org/formatdomain.html#graphical-framebuffers
    https://docs.kernel.org/networking/proc_net_tcp.html
    """
    if not domains.items:
        yield _no_domains(domains)
        return
    claims = {dom.name: port_claims(dom, qemu_conf) for dom in domains.items}
    grouped: dict[int, list[PortClaim]] = defaultdict(list)
    for owned in claims.values():
        for claim in owned:
            grouped[claim.port].append(claim)
    by_port = {port: PortUse.of(claimed) for port, claimed in grouped.items()}
    listeners_note = None if tcp_listeners is not None else "host sockets unknown"
    for dom in domains.items:
        owned = claims[dom.name]
        evidence: dict[str, Any] = {
            "consoles": [dict(g) for g in dom.graphics],
            "claims": [c.text for c in owned],
        }
        if listeners_note:
            evidence["listeners"] = listeners_note
        if not owned:
            what = (
                "no graphical console"
                if not dom.graphics
                else "no fixed console port ("
                + ", ".join(g.get("type", "?") for g in dom.graphics)
                + ")"
            )
            yield Finding("pass", what, subject=dom.subject, evidence=evidence)
            continue
        yield _port_finding(dom, owned, by_port, tcp_listeners, evidence)


def _port_finding(
    dom: Domain,
    owned: list[PortClaim],
    by_port: dict[int, PortUse],
    listeners: Optional[Listeners],
    evidence: dict[str, Any],
) -> Finding:
    problems: list[tuple[Status, str]] = []
    for claim in owned:
        use = by_port[claim.port]
        reserved = RESERVE_FAILED.format(port=claim.port)
        same = [c for c in owned if c is not claim and c.port == claim.port]
        if same:
            problems.append(("fail", f"{claim.text} is also its {same[0].kind} port"))
        holder = next((c for c in use.running if c.domain != dom.name), None)
        names, count = use.other_domains(dom.name)
        if holder is not None and not dom.active:
            problems.append(
                (
                    "fail",
                    f"{claim.text} is held by running {holder.domain} ({holder.kind}): this "
                    f'domain cannot start ("{reserved}")',
                )
            )
        elif count and dom.active:
            named = _listed(names, count)
            problems.append(
                (
                    "info",
                    f"{claim.text} is held by this domain, and {named} "
                    f"{'names' if count == 1 else 'name'} it too: "
                    f"{'it' if count == 1 else 'they'} cannot start while this domain runs",
                )
            )
        elif count:
            problems.append(
                (
                    "warn",
                    f"{claim.text} is also fixed for {_listed(names, count)}: they cannot run at "
                    f'the same time (the second to start fails: "{reserved}")',
                )
            )
        if listeners is not None and not dom.active and not use.running:
            # a running domain's console explains a listener on its port (covered above)
            taken = [t for t in listeners.on_port(claim.port) if t.overlaps(claim.address)]
            if taken:
                evidence.setdefault("listeners", []).extend(
                    f"{t.address}:{t.port} (uid {t.uid}, inode {t.inode})" for t in taken
                )
                problems.append(
                    (
                        "fail",
                        f"{claim.text} is taken by a socket listening on "
                        f"{taken[0].address}:{taken[0].port} (uid {taken[0].uid}): this domain "
                        f'cannot start (QEMU: "{ADDRESS_IN_USE}")',
                    )
                )
    if problems:
        order = {"fail": 0, "warn": 1, "info": 2}
        problems.sort(key=lambda p: order.get(p[0], 3))
        status, text = problems[0]
        if len(problems) > 1:
            text += f" (and {_plural(len(problems) - 1, 'more conflict')})"
        evidence["conflicts"] = [t for _, t in problems]
        return Finding(status, text, subject=dom.subject, evidence=evidence)
    ports = ", ".join(c.text for c in owned)
    if dom.active:  # only fixed ports are claimed by a domain that is off
        text = f"holds {ports}, and no other domain names it"
    elif listeners is None:
        text = f"{ports}: no other domain names it (host sockets unknown)"
    else:
        text = f"{ports}: free"
    return Finding("pass", text, subject=dom.subject, evidence=evidence)


# --- DOM007 memory-implausibly-small ---------------------------------------------------------

WARN_BELOW = 128 * MiB
FAIL_BELOW = 16 * MiB
# Units libvirt accepts, by family, with their size in KiB; the next larger one is the usual
# slip (a number meant in MiB written without a unit, which libvirt reads as KiB).
BINARY = (("b", 1 / 1024), ("KiB", 1), ("MiB", MiB), ("GiB", MiB**2), ("TiB", MiB**3))
DECIMAL = (("bytes", 1 / 1024), ("KB", 1000 / 1024), ("MB", 1000**2 / 1024), ("GB", 1000**3 / 1024))
UNIT_NAMES = {
    "b": "b",
    "bytes": "b",
    "k": "KiB",
    "kib": "KiB",
    "m": "MiB",
    "mib": "MiB",
    "g": "GiB",
    "gib": "GiB",
    "t": "TiB",
    "tib": "TiB",
    "kb": "KB",
    "mb": "MB",
    "gb": "GB",
}


def _size(kib: float) -> str:
    for unit, size in (("TiB", MiB**3), ("GiB", MiB**2), ("MiB", MiB)):
        if kib >= size:
            return f"{kib / size:g} {unit}"
    return f"{kib:g} KiB"


def likely_meant(value: int, unit: str) -> Optional[str]:
    """The same number in the smallest larger unit that makes a plausible guest (>= 128 MiB)."""
    name = UNIT_NAMES.get(unit.lower(), unit)
    for family in (BINARY, DECIMAL):
        names = [n for n, _ in family]
        if name in names:
            if value * family[names.index(name)][1] >= WARN_BELOW:
                return None
            for bigger, size in family[names.index(name) + 1 :]:
                if value * size >= WARN_BELOW:
                    return f"<memory unit='{bigger}'>{value}</memory> ({_size(value * size)})"
    return None


@check(
    "DOM007",
    "memory-implausibly-small",
    title="A domain's memory is implausibly small",
    tags=("domain", "libvirt"),
)
def memory_implausibly_small(domains: Domains) -> Iterator[Finding]:
    """What it checks: each domain's `<memory>`: under 128 MiB is a warning (few current
    systems boot in it, though a small test image may), under 16 MiB a failure (no firmware
    and kernel fit), naming the likely slip: `<memory>` without a unit is KiB, so
    `<memory>2048</memory>` is 2 MiB, not 2 GiB.

    Why it matters: libvirt and QEMU accept any size without a word (a 2 MiB guest starts
    and shows as running), and the guest then hangs in the firmware or runs out of memory
    early in its boot, with nothing in libvirt's logs to say why.

    How to fix: give the unit explicitly: `virsh setmaxmem DOMAIN 2G --config` and
    `virsh setmem DOMAIN 2G --config`, or `<memory unit='MiB'>2048</memory>` and the same
    `<currentMemory>` with `virsh edit`; then restart the domain.

    References: https://libvirt.org/formatdomain.html#memory-allocation
    """
    if not domains.items:
        yield _no_domains(domains)
        return
    for dom in domains.items:
        kib = dom.memory_kib
        value, unit = dom.memory_value, dom.memory_unit or "KiB"
        written = f"<memory unit='{unit}'>{value}</memory>"
        evidence = {"memory": written, "memory_kib": kib}
        if kib is None or value is None:
            yield Finding(
                "skip", "the domain gives no <memory> size", subject=dom.subject, evidence=evidence
            )
            continue
        if kib >= WARN_BELOW:
            yield Finding("pass", f"{_size(kib)} of memory", subject=dom.subject, evidence=evidence)
            continue
        if kib < FAIL_BELOW:
            meant = likely_meant(value, unit)
            guess = f"; {meant} was probably meant" if meant else ""
            yield Finding(
                "fail",
                f"{written} is {_size(kib)}: nothing boots in under 16 MiB{guess}",
                subject=dom.subject,
                evidence=evidence,
            )
        else:
            yield Finding(
                "warn",
                f"{written} is {_size(kib)}: few systems boot in under 128 MiB",
                subject=dom.subject,
                evidence=evidence,
            )


# --- DOM008 vcpus-need-eim -------------------------------------------------------------------

MAX_WITHOUT_EIM = 255
NEED_EIM = "more than 255 vCPUs require extended interrupt mode enabled on the iommu device"
MACHINE_LIMIT = "Maximum CPUs greater than specified machine type limit 255"
NEED_SPLIT_IOAPIC = "IOMMU interrupt remapping requires split I/O APIC (ioapic driver='qemu')"
EIM_XML = (
    "<features><ioapic driver='qemu'/></features> and "
    "<iommu model='intel'><driver intremap='on' eim='on'/></iommu>"
)


def _iommu_xml(iommu: Optional[dict[str, str]]) -> Optional[str]:
    if iommu is None:
        return None
    driver = "".join(f" {k}='{v}'" for k, v in iommu.items() if k != "model")
    return f"<iommu model='{iommu.get('model', '')}'><driver{driver}/></iommu>"


@check(
    "DOM008",
    "vcpus-need-eim",
    title="More than 255 vCPUs without an IOMMU in extended interrupt mode",
    tags=("domain", "libvirt"),
)
def vcpus_need_eim(domains: Domains) -> Iterator[Finding]:
    """What it checks: domains with more than 255 vCPUs (the `<vcpu>` maximum, hot-pluggable
    ones included): x86 APIC IDs above 255 need x2APIC with interrupt remapping in extended
    interrupt mode, which means q35 with `<iommu model='intel'>` whose driver has
    `intremap='on'` and `eim='on'`, and the split I/O APIC (`<ioapic driver='qemu'/>`) that
    interrupt remapping requires. i440fx stops at 255.

    Why it matters: libvirt refuses the domain: "unsupported configuration: more than 255
    vCPUs require extended interrupt mode enabled on the iommu device", "IOMMU interrupt
    remapping requires split I/O APIC (ioapic driver='qemu')", or on i440fx "Maximum CPUs
    greater than specified machine type limit 255".

    How to fix: on a q35 machine add `<features><ioapic driver='qemu'/></features>` and
    `<devices><iommu model='intel'><driver intremap='on' eim='on'/></iommu></devices>`
    (the guest kernel needs x2APIC support); or give the domain at most 255 vCPUs.

    References: https://libvirt.org/formatdomain.html#iommu-devices
    https://libvirt.org/formatdomain.html#cpu-allocation
    """
    if not domains.items:
        yield _no_domains(domains)
        return
    for dom in domains.items:
        vcpus = dom.vcpus or 1
        iommu = dom.iommu or {}
        evidence = {
            "vcpus": vcpus,
            "machine": dom.machine,
            "iommu": _iommu_xml(dom.iommu),
            "ioapic": dom.features.get("ioapic"),
        }
        if vcpus <= MAX_WITHOUT_EIM:
            yield Finding(
                "pass",
                f"{_plural(vcpus, 'vCPU')}: no interrupt remapping needed",
                subject=dom.subject,
                evidence=evidence,
            )
            continue
        family = machine_family(dom)
        problem = None
        if family != "q35" and (dom.arch or "x86_64") in X86:
            problem = f'{_machine(dom)} is not q35 ("{MACHINE_LIMIT}")'
        elif iommu.get("model") != "intel" or iommu.get("eim") != "on":
            have = _iommu_xml(dom.iommu) or "no <iommu>"
            problem = f'{have} has no extended interrupt mode ("{NEED_EIM}")'
        elif iommu.get("intremap") != "on":
            problem = f'{_iommu_xml(dom.iommu)} has no interrupt remapping ("{NEED_EIM}")'
        elif dom.features.get("ioapic") != "qemu":
            problem = f'the I/O APIC is not split ("{NEED_SPLIT_IOAPIC}")'
        if problem is None:
            yield Finding(
                "pass",
                f"{vcpus} vCPUs with {_iommu_xml(dom.iommu)} and the split I/O APIC",
                subject=dom.subject,
                evidence=evidence,
            )
            continue
        yield Finding(
            "fail",
            f"{vcpus} vCPUs but {problem}: libvirt refuses the domain; on q35 add {EIM_XML}",
            subject=dom.subject,
            evidence=evidence,
        )
