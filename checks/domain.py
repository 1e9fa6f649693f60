"""Domain configuration checks: what libvirt or QEMU refuses, or will refuse at the next start or
hot-plug, read from each domain's XML before anyone runs into it. The quoted errors are what
libvirt 9.0 and QEMU 7.2 said on the lab machine (tests/integration/test_domain_libvirt.py)."""

from __future__ import annotations

import posixpath
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from typing import Any, Optional

from doctor.facts.domains import Disk, Domain, Domains, MachineLimit, MachineLimits, PciDevice
from doctor.facts.fleet import Fleet
from doctor.facts.libvirt import DOMAIN_SCHEMA, LibvirtSchemas, QemuConf
from doctor.facts.logs import QEMU_LOG_DIR, LibvirtLogs, line_time, time_up_to
from doctor.facts.sockets import Listeners
from doctor.facts.tls import HostClock
from doctor.model import Finding, Location, Status
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


def at(path: str) -> Optional[Location]:
    """Where a finding points in the definition: the element at `path` (none when the
    definition was not read from XML, e.g. a test's hand-made Domain)."""
    return Location(path) if path else None


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
    tags=("domain", "libvirt", "definition"),
)
def pci_slots_exhausted(
    domains: Domains,
    libvirt_logs: Optional[LibvirtLogs] = None,
    host_clock: Optional[HostClock] = None,
) -> Iterator[Finding]:
    """What it checks: how many devices can still be hot-plugged into each domain, counted as
    libvirt counts them from the domain's PCI controllers and the addresses its devices
    occupy. On q35 (and other PCIe machines) a device goes into an empty pcie-root-port or
    pcie-switch-downstream-port; pcie-root itself takes no hot-plug, and free slots on a
    pci-bridge serve conventional PCI devices only. On i440fx it goes into a free pci-root
    slot (1-31; slot 0 is the host bridge, slot 1 the PIIX3 ISA/IDE/USB bridge, the rest as
    the addresses in the XML say) or a pci-bridge slot. pci-root hot-plug needs ACPI, and
    ports with `<target hotplug='off'/>` take none. Devices of hand-written XML that have no
    address yet are counted as taking free slots first. No free slot (or pci-root hot-plug
    without ACPI) is a warning with the count and the fix: such a domain defines and runs,
    only a later hot-plug fails. It is a failure when the host's libvirt logs show that an
    attach to that domain failed so ("No more available PCI slots", "Bus 'pci.0' does not
    support hotplugging") since it last started (its QEMU log says when; without one, in the
    last 7 days): in a line that names the domain (quoted, as `name=`, or by UUID) or in its
    QEMU log, or in a daemon line naming no domain when that domain is the only running one
    that can have caused it.

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
    counted = {dom.name: free_slots(dom) for dom in domains.items}
    attaches = failed_attaches(domains, counted, libvirt_logs, host_clock)
    for dom in domains.items:
        slots = counted[dom.name]
        if slots is None:
            yield Finding(
                "skip",
                f"hot-plug slots are counted for x86 i440fx and PCIe machines, not "
                f"{_machine(dom)} ({dom.arch or '?'})",
                subject=dom.subject,
                evidence={"machine": dom.machine, "arch": dom.arch},
            )
            continue
        yield _slots_finding(dom, slots, attaches.get(dom.name))


RECENT = 7 * 86400  # log lines older than this (by the host's clock) are history
ATTACH_ERRORS = (NO_SLOTS, NO_ACPI_HOTPLUG)


@record
class FailedAttach:
    """A log line saying a hot-plug failed for want of a slot, and how it is tied to a domain."""

    error: str  # NO_SLOTS or NO_ACPI_HOTPLUG
    origin: str
    line: str
    time: Optional[float]
    how: str  # "named", "its QEMU log", or why an unnamed line can only be this domain's

    def as_dict(self) -> dict[str, Any]:
        return {"log": self.origin, "line": self.line[:400], "attributed": self.how}


def _line_names(dom: Domain, line: str) -> bool:
    """Whether a log line names the domain: quoted, as name=..., or by its UUID."""
    name = re.escape(dom.name)
    if dom.uuid and dom.uuid.lower() in line.lower():
        return True
    return re.search(rf"(['\"]{name}['\"]|\bname={name}(?![\w.-]))", line) is not None


def failed_attaches(
    domains: Domains,
    counted: dict[str, Optional[FreeSlots]],
    logs: Optional[LibvirtLogs],
    clock: Optional[HostClock],
) -> dict[str, FailedAttach]:
    """The most recent failed attach for want of a slot, per domain it can be tied to."""
    if logs is None or not domains.items:
        return {}
    started = _started(domains, logs)
    # The running domains that can have caused an unnamed line, by error.
    suspects: dict[str, list[Domain]] = {NO_SLOTS: [], NO_ACPI_HOTPLUG: []}
    for dom in domains.items:
        slots = counted.get(dom.name)
        if slots is None or not dom.active:
            continue
        if slots.no_acpi:
            suspects[NO_ACPI_HOTPLUG].append(dom)
        elif slots.count == 0:
            suspects[NO_SLOTS].append(dom)
    found: dict[str, FailedAttach] = {}
    for log in logs.logs:
        stamp: Optional[float] = None
        own = next((d for d in domains.items if log.origin == f"{QEMU_LOG_DIR}/{d.name}.log"), None)
        previous = -1
        for index, line in enumerate(log.lines):
            error = next((e for e in ATTACH_ERRORS if e in line), None)
            if error is None:
                continue
            stamp = time_up_to(log.lines, index, previous) or stamp  # read only for errors
            previous = index
            named = [d for d in domains.items if _line_names(d, line)]
            if own is not None:
                hits = [(own, "in its QEMU log")]
            elif named:
                hits = [(d, "the line names it") for d in named]
            elif unnamed_suspect(suspects[error], started, stamp) is not None:
                hits = [
                    (
                        suspects[error][0],
                        "the line names no domain; it is later than this domain's start, and "
                        "this is the only running domain "
                        + (
                            "without ACPI on i440fx"
                            if error == NO_ACPI_HOTPLUG
                            else "with no free slot"
                        ),
                    )
                ]
            else:
                continue
            for dom, how in hits:
                if _since(dom, started, stamp, clock):
                    found[dom.name] = FailedAttach(error, log.origin, line.strip(), stamp, how)
    return found


def _since(
    dom: Domain, started: dict[str, float], stamp: Optional[float], clock: Optional[HostClock]
) -> bool:
    """Whether a log line is about the domain as it is: later than its last start when its
    QEMU log says when that was, else no older than RECENT by the host's clock."""
    since = started.get(dom.name)
    if since is not None:
        return stamp is not None and stamp >= since
    return clock is None or stamp is None or clock.time - stamp <= RECENT


def _started(domains: Domains, logs: LibvirtLogs) -> dict[str, float]:
    """When each domain last started, from its QEMU log ("TIME: starting up libvirt ...")."""
    by_log = {f"{QEMU_LOG_DIR}/{d.name}.log": d.name for d in domains.items}
    started: dict[str, float] = {}
    for log in logs.logs:
        name = by_log.get(log.origin)
        if name is None:
            continue
        for line in log.lines:
            if ": starting up " in line:
                stamp = line_time(line)
                if stamp is not None:
                    started[name] = stamp
    return started


def unnamed_suspect(
    suspects: list[Domain], started: dict[str, float], stamp: Optional[float]
) -> Optional[Domain]:
    """The domain an unnamed daemon line is about: the only running domain that can have
    caused it, provided the line is later than that domain's start (an older line is some
    earlier domain's)."""
    if len(suspects) != 1 or stamp is None:
        return None
    since = started.get(suspects[0].name)
    return suspects[0] if since is not None and stamp >= since else None


def _slots_finding(dom: Domain, slots: FreeSlots, attach: Optional[FailedAttach] = None) -> Finding:
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
    status: Status = "warn"
    failed = ""
    if attach is not None and (slots.no_acpi or count == 0):
        status = "fail"
        evidence["failed_attach"] = attach.as_dict()
        failed = f'; {attach.origin} shows an attach that failed so ("{attach.line[:200]}")'
    where_ports = at("/domain/features" if slots.no_acpi else "/domain/devices")
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
            status,
            f"{describe(slots.no_acpi)} {'is' if len(slots.no_acpi) == 1 else 'are'} free but "
            "the domain has no <acpi/>: libvirt picks "
            f'one of them for a hot-plugged device and QEMU refuses it ("{NO_ACPI_HOTPLUG}"); '
            f"turn on <features><acpi/></features> while the domain is off{failed}",
            subject=dom.subject,
            evidence=evidence,
            location=where_ports,
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
            status,
            f"0 free hot-plug slots: {where}{estimate}; attaching a device to the running "
            f'domain fails with "{NO_SLOTS}"; {fix} while the domain is off{bridges}{failed}',
            subject=dom.subject,
            evidence=evidence,
            location=where_ports,
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
    tags=("domain", "libvirt", "definition"),
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
                location=at(ide[0].path if ide else controllers[0].get("path", "")),
            )
        else:
            over = [d for d in ide if (ide_controller(d) or 0) > 0] or ide[IDE_PLACES:]
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
                    location=at(over[0].path if over else ""),
                )
            elif controllers:
                indexes = ", ".join(str(c.get("index")) for c in controllers)
                yield Finding(
                    "fail",
                    f"IDE controller index {indexes} on {_machine(dom)}, which has one: libvirt "
                    f'refuses the domain ("{SINGLE_IDE}"); remove the extra <controller>',
                    subject=dom.subject,
                    evidence=evidence,
                    location=at(controllers[0].get("path", "")),
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
    tags=("domain", "libvirt", "definition"),
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
                location=at(on_virtio[0].path),
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
    tags=("domain", "libvirt", "definition"),
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
        second: dict[int, str] = {}  # the <boot> that repeats an order
        for boot in dom.boot_orders:
            if counts[boot.order]:
                second.setdefault(boot.order, boot.path)
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
                location=at(dom.boot_orders[0].path),
            )
        elif repeated:
            order, devices = next(iter(repeated.items()))
            yield Finding(
                "fail",
                f"boot order {order} is given to {' and '.join(devices)}: libvirt refuses the "
                f"domain (\"boot order '{order}' used for more than one device\")",
                subject=dom.subject,
                evidence=evidence,
                location=at(second.get(order, "")),
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
    path: str = ""  # the <disk> element

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
                        disk.path,
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
    tags=("domain", "libvirt", "definition"),
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
    names its own image twice never starts. A network disk (nbd, rbd, iSCSI, named with
    its server) has no such lock: libvirt and QEMU start both users, and two writers corrupt
    it later; that is a warning, as is a clash between domains of which none runs.

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
    # an image QEMU locks (a file or block device) first: its clash stops a start
    found = sorted(found, key=lambda c: not c.image.startswith("/"))
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
    if not image.startswith("/"):
        # No image lock guards a network disk: nothing refuses the start, and two writers
        # corrupt it later (libvirt and QEMU accept a domain that names one twice).
        status = "warn"
        if len(mine) > 1:
            what = f"{image} is opened twice by this domain ({', '.join(u.disk for u in mine)})"
        elif running_count:
            what = f"{image} ({mine[0].disk}) is held by running {_names(holders, running_count)}"
        else:
            what = f"{image} ({mine[0].disk}) is also named by {_names(others, other_count)}"
        text = (
            f"{what}: no image lock guards a network disk, so both start, and two writers "
            "corrupt it"
        )
    elif len(mine) > 1:
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
    if len(found) > 1:
        text += f" (and {_plural(len(found) - 1, 'more image')})"
    where = mine[1].path if len(mine) > 1 else mine[0].path
    return Finding(status, text, subject=dom.subject, evidence=evidence, location=at(where))


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
    path: str = ""  # the <graphics> element

    @property
    def text(self) -> str:
        how = "fixed" if self.fixed else "automatic"
        return f"{self.kind} port {self.port} on {self.address} ({how})"


def port_claims(dom: Domain, conf: Optional[QemuConf]) -> list[PortClaim]:
    """The TCP ports a domain's consoles hold (running) or will ask for (fixed ones)."""
    claims = []
    paths = dom.graphics_paths or ("",) * len(dom.graphics)
    for gfx, path in zip(dom.graphics, paths):
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
                claims.append(PortClaim(dom.name, dom.active, label, port, address, fixed, path))
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
    tags=("domain", "libvirt", "definition"),
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
    problems: list[tuple[Status, str, str]] = []
    for claim in owned:
        use = by_port[claim.port]
        reserved = RESERVE_FAILED.format(port=claim.port)
        same = [c for c in owned if c is not claim and c.port == claim.port]
        if same:
            problems.append(("fail", f"{claim.text} is also its {same[0].kind} port", claim.path))
        holder = next((c for c in use.running if c.domain != dom.name), None)
        names, count = use.other_domains(dom.name)
        if holder is not None and not dom.active:
            problems.append(
                (
                    "fail",
                    f"{claim.text} is held by running {holder.domain} ({holder.kind}): this "
                    f'domain cannot start ("{reserved}")',
                    claim.path,
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
                    claim.path,
                )
            )
        elif count:
            problems.append(
                (
                    "warn",
                    f"{claim.text} is also fixed for {_listed(names, count)}: they cannot run at "
                    f'the same time (the second to start fails: "{reserved}")',
                    claim.path,
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
                        claim.path,
                    )
                )
    if problems:
        order = {"fail": 0, "warn": 1, "info": 2}
        problems.sort(key=lambda p: order.get(p[0], 3))
        status, text, path = problems[0]
        if len(problems) > 1:
            text += f" (and {_plural(len(problems) - 1, 'more conflict')})"
        evidence["conflicts"] = [t for _, t, _ in problems]
        return Finding(status, text, subject=dom.subject, evidence=evidence, location=at(path))
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
    tags=("domain", "libvirt", "definition"),
)
def memory_implausibly_small(domains: Domains) -> Iterator[Finding]:
    """What it checks: each domain's `<memory>`: under 128 MiB is a warning (few current
    systems boot in it, though a small test image may; under 16 MiB no firmware and kernel
    fit), naming the likely slip: `<memory>` without a unit is KiB, so
    `<memory>2048</memory>` is 2 MiB, not 2 GiB. A warning, not a failure: libvirt and QEMU
    define and start such a domain; it is the guest that does not get far.

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
                "warn",
                f"{written} is {_size(kib)}: nothing boots in under 16 MiB{guess}",
                subject=dom.subject,
                evidence=evidence,
                location=at("/domain/memory"),
            )
        else:
            yield Finding(
                "warn",
                f"{written} is {_size(kib)}: few systems boot in under 128 MiB",
                subject=dom.subject,
                evidence=evidence,
                location=at("/domain/memory"),
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
    tags=("domain", "libvirt", "definition"),
)
def vcpus_need_eim(domains: Domains) -> Iterator[Finding]:
    """What it checks: domains with more than 255 vCPUs (the `<vcpu>` maximum, hot-pluggable
    ones included): x86 APIC IDs above 255 need x2APIC with interrupt remapping in extended
    interrupt mode, which means q35 with `<iommu model='intel'>` whose driver has
    `intremap='on'` and `eim='on'`, and the split I/O APIC (`<ioapic driver='qemu'/>`) that
    interrupt remapping requires. i440fx stops at 255.

    Why it matters: libvirt refuses the domain: "unsupported configuration: more than 255
    vCPUs require extended interrupt mode enabled on the iommu device", or "IOMMU interrupt
    remapping requires split I/O APIC (ioapic driver='qemu')". A machine type that takes
    no more than 255 vCPUs at all (i440fx, pc-q35-2.4 to 2.7) is left to DOM016
    (vcpus-exceed-machine-limit), which reports it once.

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
        limit = machine_max_cpus(dom)
        if limit is not None and limit[1] and limit[0] <= MAX_WITHOUT_EIM:
            # one problem, one check: the machine type cannot take them at all (DOM016)
            yield Finding(
                "skip",
                f"{vcpus} vCPUs on {_machine(dom)}, which takes at most {limit[0]}: "
                "vcpus-exceed-machine-limit (DOM016) reports it",
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
            location=at("/domain/vcpu"),
        )


# --- DOM020 domain-uuid-on-two-hosts (fleet) ------------------------------------------------


@check(
    "DOM020",
    "domain-uuid-on-two-hosts",
    title="One domain UUID is defined on more than one host of a fleet",
    tags=("domain", "fleet"),
)
def domain_uuid_on_two_hosts(fleet: Fleet) -> Iterator[Finding]:
    """What it checks: across the hosts of a fleet (`kvmdoctor report merge`, from each
    host's report), every domain UUID that more than one host defines: one finding about
    `uuid:UUID` naming each host, its domain and whether it runs there. Hosts whose reports
    do not list their guests are named in a `skip`.

    Why it matters: libvirt identifies a domain by its UUID. A UUID on two hosts is a copied
    definition (a cloned host, an XML file copied by hand, a migration that was never cleaned
    up); running on both, two copies of one guest write to the same disks and clash on the
    network, and libvirt refuses a migration to a host that already has the UUID ("domain
    'x' already exists with uuid ..."). Management tools that track guests by UUID mix the two.

    How to fix: keep the domain on the host where it belongs: `virsh undefine NAME` (add
    `--nvram` for UEFI guests) on the other; for a genuine second guest, define the copy
    without its `<uuid>` line so libvirt generates a new one, and give it new MACs
    (`virt-clone` does both).

    References: https://libvirt.org/formatdomain.html#general-metadata
    https://libvirt.org/manpages/virsh.html#undefine
    """
    owners: dict[str, list[tuple[str, Any]]] = defaultdict(list)
    for host in fleet.hosts:
        for guest in host.guests or ():
            if guest.uuid:
                owners[guest.uuid.lower()].append((host.name, guest))
    shared = 0
    for uuid, users in owners.items():
        hosts = list(dict.fromkeys(name for name, _ in users))
        if len(hosts) < 2:
            continue
        shared += 1
        running = [name for name, guest in users if guest.active]
        status: Status = "fail" if len(set(running)) > 1 else "warn"
        listed = ", ".join(
            f"host:{name}/domain:{guest.name} ({'running' if guest.active else 'defined'})"
            for name, guest in users
        )
        why = (
            "two copies of one guest run"
            if status == "fail"
            else "a copied definition: the second start or a migration clashes"
        )
        yield Finding(
            status,
            f"UUID {uuid} is defined on {len(hosts)} hosts: {listed}; {why}",
            subject=f"uuid:{uuid}",
            evidence={
                "uuid": uuid,
                "hosts": hosts,
                "domains": [f"host:{name}/domain:{guest.name}" for name, guest in users],
                "running_on": list(dict.fromkeys(running)),
            },
        )
    unknown = fleet.without_guests()
    for name in unknown:
        yield Finding(
            "skip",
            f"the report of {name} does not list its guests (made by an older kvmdoctor, or "
            "without the domain checks)",
            subject=f"report:{fleet.report_of(name)}",
        )
    if not shared:
        counted = len(fleet.hosts) - len(unknown)
        yield Finding(
            "pass",
            f"no domain UUID is defined on two hosts ({counted} hosts' guests compared)",
            subject="fleet",
            evidence=fleet.as_dict(),
        )


# === Define-time rules =======================================================================
#
# What libvirt 9.0's parser, post-parse and validation refuse at `virsh define` (or its QEMU
# driver at the next start), in the areas the checks above cover. Each check quotes libvirt's
# message; tests/fixtures/libvirt-suite/ holds the inputs of libvirt's own test suite that
# show each one (docs/lint-oracle.md).


Verdict = tuple[Optional[str], str, dict[str, Any], str]


def _verdicts(domains: Domains, judge: Callable[[Domain], Verdict]) -> Iterator[Finding]:
    """One finding per domain from `judge(dom)` -> (libvirt's refusal or None, the pass
    message, evidence, the path of the element the refusal is about)."""
    if not domains.items:
        yield _no_domains(domains)
        return
    for dom in domains.items:
        problem, fine, evidence, where = judge(dom)
        if problem is None:
            yield Finding("pass", fine, subject=dom.subject, evidence=evidence)
        else:
            yield Finding(
                "fail", problem, subject=dom.subject, evidence=evidence, location=at(where)
            )


# --- DOM009 domain-without-memory ------------------------------------------------------------

NO_MEMORY = "Memory size must be specified via <memory> or in the <numa> configuration"


def _judge_memory(dom: Domain) -> Verdict:
    evidence = {"memory_kib": dom.memory_kib, "numa_memory_kib": dom.numa_memory_kib}
    if dom.memory_kib or dom.numa_memory_kib:
        return None, f"{_size(dom.memory_kib or dom.numa_memory_kib or 0)} of memory", evidence, ""
    return (
        f'no <memory> and no NUMA cell memory: libvirt refuses the domain ("{NO_MEMORY}"); '
        "add <memory unit='MiB'>...</memory>",
        "",
        evidence,
        "/domain",
    )


@check(
    "DOM009",
    "domain-without-memory",
    title="A domain gives no memory size",
    tags=("domain", "libvirt", "definition"),
)
def domain_without_memory(domains: Domains) -> Iterator[Finding]:
    """What it checks: that each domain has a memory size: a non-zero `<memory>`, or
    `memory=` on its `<cpu><numa><cell>` elements.

    Why it matters: libvirt refuses the definition: "XML error: Memory size must be
    specified via <memory> or in the <numa> configuration". Templates that fill the size in
    later, and generators that dropped an empty variable, produce it.

    How to fix: give the size with its unit, `<memory unit='MiB'>2048</memory>` (and the
    same `<currentMemory>`), or `memory=` on each NUMA cell.

    References: https://libvirt.org/formatdomain.html#memory-allocation
    """
    yield from _verdicts(domains, _judge_memory)


# --- DOM010 disk-target-duplicated -----------------------------------------------------------


def _judge_targets(dom: Domain) -> Verdict:
    sources: dict[str, list[str]] = defaultdict(list)
    second: dict[str, str] = {}
    for disk in dom.disks:
        if disk.target:
            sources[disk.target].append(disk.source or "(no source)")
            if len(sources[disk.target]) == 2:
                second[disk.target] = disk.path
    evidence = {"targets": {t: s for t, s in sources.items()}}
    for target, used in sources.items():
        if len(used) > 1:
            return (
                f"target '{target}' is given to {len(used)} disks ({', '.join(used)}): libvirt "
                f"refuses the domain (\"target '{target}' duplicated for disk sources "
                f"'{used[0]}' and '{used[1]}'\"); give each disk its own target name",
                "",
                evidence,
                second[target],
            )
    return None, f"{_plural(len(sources), 'disk target')}, each used once", evidence, ""


@check(
    "DOM010",
    "disk-target-duplicated",
    title="Two disks have the same target name",
    tags=("domain", "libvirt", "definition"),
)
def disk_target_duplicated(domains: Domains) -> Iterator[Finding]:
    """What it checks: that no two disks of a domain share a `<target dev=...>` name
    (vda, sda, hdc), whatever their buses.

    Why it matters: libvirt refuses the definition: "XML error: target 'sda' duplicated for
    disk sources '/tmp/idedisk.img' and '/tmp/usbdisk.img'". It comes from copying a disk
    element to add a second disk without renaming the target.

    How to fix: rename one target (`sdb`, `vdb`: the next free letter on its bus); the
    name only orders the disks, the guest names its devices itself.

    References: https://libvirt.org/formatdomain.html#hard-drives-floppy-disks-cdroms
    """
    yield from _verdicts(domains, _judge_targets)


# --- DOM011 drive-address-conflict -----------------------------------------------------------

DUPLICATE_DRIVE = "Found duplicate drive address for disk with target name"
DRIVE_FIELDS = ("controller", "bus", "target", "unit")


def _disk_drive_address(disk: Disk) -> Optional[tuple[int, ...]]:
    """The disk's drive address: as written, or as libvirt assigns it from the target name
    (virDomainDiskDefAssignAddress; QEMU's SCSI buses are wide: 15 units, unit 7 skipped)."""
    if disk.address:
        if disk.address.get("type") != "drive":
            return None
        return tuple(_int(disk.address.get(k, "0")) or 0 for k in DRIVE_FIELDS)
    prefix = {"scsi": "sd", "sata": "sd", "ide": "hd", "fdc": "fd"}.get(disk.bus or "")
    idx = _disk_index(disk.target or "", prefix) if prefix else None
    if idx is None:
        return None
    if disk.bus == "scsi":
        unit = idx % 15
        return (idx // 15, 0, 0, unit + 1 if unit >= 7 else unit)
    if disk.bus == "ide":
        return (idx // 4, (idx % 4) // 2, 0, idx % 2)
    if disk.bus == "sata":
        return (idx // 6, 0, 0, idx % 6)
    return (0, 0, 0, idx)


def _drive_text(addr: tuple[int, ...]) -> str:
    return " ".join(f"{k}='{v}'" for k, v in zip(DRIVE_FIELDS, addr))


def _judge_drives(dom: Domain) -> Verdict:
    claims: dict[tuple[Any, ...], list[str]] = defaultdict(list)
    paths: dict[tuple[Any, ...], list[str]] = defaultdict(list)
    for disk in dom.disks:
        addr = _disk_drive_address(disk)
        if addr is not None:
            # SCSI host devices share the SCSI disks' addresses
            key: tuple[Any, ...] = (disk.bus, *addr)
            claims[key].append(f"disk {disk.target}")
            paths[key].append(disk.path)
    for hostdev in dom.hostdevs:
        addr_el = hostdev.get("address") or {}
        if hostdev.get("type") == "scsi" and addr_el.get("type") == "drive":
            drive = tuple(_int(addr_el.get(k, "0")) or 0 for k in DRIVE_FIELDS)
            key = ("scsi", *drive)
            claims[key].append("hostdev scsi")
            paths[key].append(str(hostdev.get("path", "")))
    evidence = {"drive_addresses": [f"{k[0]} {_drive_text(k[1:])}: {v}" for k, v in claims.items()]}
    for key, users in claims.items():
        if len(users) > 1:
            return (
                f"{' and '.join(users)} both take {key[0]} drive address {_drive_text(key[1:])} "
                f"(written, or as libvirt assigns it from the target name): libvirt refuses "
                f'the domain ("{DUPLICATE_DRIVE} ..."); give one of them another unit',
                "",
                evidence,
                paths[key][-1],
            )
    return None, f"drive addresses: {len(claims)}, none taken twice", evidence, ""


@check(
    "DOM011",
    "drive-address-conflict",
    title="Two disks (or SCSI host devices) take the same drive address",
    tags=("domain", "libvirt", "definition"),
)
def drive_address_conflict(domains: Domains) -> Iterator[Finding]:
    """What it checks: the drive addresses (controller, bus, target, unit) of the disks on
    each bus and of SCSI host devices, as written in `<address type='drive'>` or as libvirt
    derives them from the target name when none is written (sda on SATA: controller 0,
    unit 0; hdc on IDE: bus 1, unit 0; SCSI: 15 units a controller, unit 7 skipped).

    Why it matters: libvirt refuses the definition: "unsupported configuration: Found
    duplicate drive address for disk with target name 'sda' controller='0' bus='0'
    target='0' unit='0'", or for a SCSI host device "using disk target name 'sda' conflicts
    with SCSI host device address ..." and "SCSI host address ... in use by another SCSI host
    device". It happens when a disk with an explicit address is added to one whose address
    libvirt would assign, or an element is copied with its `<address>`.

    How to fix: remove the copied `<address type='drive' .../>` and let libvirt assign one,
    or give the disk a free unit.

    References: https://libvirt.org/formatdomain.html#device-addresses
    """
    yield from _verdicts(domains, _judge_drives)


# --- DOM012 pci-address-conflict -------------------------------------------------------------

DOUBLE_PCI = "Attempted double use of PCI Address"
# i440fx: the PIIX3 takes 00:01.0 (ISA bridge), 00:01.1 (IDE) and 00:01.2 (USB UHCI)
PIIX3_FUNCTIONS = {0: "PIIX3 ISA bridge", 1: "PIIX3 IDE controller", 2: "PIIX3 USB controller"}


def _pci_key(addr: dict[str, str]) -> Optional[tuple[int, int, int, int]]:
    parts = [_int(addr.get(k, "0")) for k in ("domain", "bus", "slot", "function")]
    if any(p is None for p in parts) or addr.get("slot") is None:
        return None
    return tuple(parts)  # type: ignore[return-value]


def _pci_addr_text(key: tuple[int, int, int, int]) -> str:
    return f"{key[0]:04x}:{key[1]:02x}:{key[2]:02x}.{key[3]}"


def _judge_pci_addresses(dom: Domain) -> Verdict:
    claims: dict[tuple[int, int, int, int], list[str]] = defaultdict(list)
    where: dict[tuple[int, int, int, int], str] = {}
    for addr in dom.pci_addresses:
        key = _pci_key(addr)
        # a <console> that repeats its <serial>'s address is that same device
        if key is not None and addr.get("device") != "console":
            claims[key].append(str(addr.get("device")))
            where[key] = f"{addr.get('path', '')}/address"
    if machine_family(dom) == "i440fx":
        for function, what in PIIX3_FUNCTIONS.items():
            key = (0, 0, PIIX3_SLOT, function)
            users = claims.get(key, [])
            # the PIIX3's own IDE and UHCI controllers belong there
            own = ("controller ide 0", "controller usb 0")
            if users and not any(u.startswith(own) for u in users):
                claims[key] = [what, *users]
    evidence = {"pci_addresses": [f"{_pci_addr_text(k)} {', '.join(v)}" for k, v in claims.items()]}
    for key, users in sorted(claims.items()):
        if len(users) > 1:
            return (
                f"{' and '.join(users)} take PCI address {_pci_addr_text(key)}: libvirt refuses "
                f'the domain ("{DOUBLE_PCI} {_pci_addr_text(key)}"); remove the <address> of '
                "one of them and let libvirt assign it",
                "",
                evidence,
                where.get(key, ""),
            )
    return None, f"PCI addresses written: {len(claims)}, none taken twice", evidence, ""


@check(
    "DOM012",
    "pci-address-conflict",
    title="Two devices are given the same PCI address",
    tags=("domain", "libvirt", "definition"),
)
def pci_address_conflict(domains: Domains) -> Iterator[Finding]:
    """What it checks: the guest PCI addresses written in the domain's devices
    (`<address type='pci' .../>`): no two devices at one domain:bus:slot.function, and on
    i440fx nothing but the PIIX3's own controllers at 00:01.0-00:01.2, which the PIIX3
    ISA bridge, IDE and USB functions take.

    Why it matters: libvirt refuses the definition: "XML error: Attempted double use of PCI
    Address 0000:00:01.1". Devices copied from another domain with their addresses, and
    addresses picked by hand, run into it.

    How to fix: remove the `<address type='pci' .../>` of the device that moved in and let
    libvirt assign a free one, or pick a free slot.

    References: https://libvirt.org/pci-addresses.html
    https://libvirt.org/formatdomain.html#device-addresses
    """
    yield from _verdicts(domains, _judge_pci_addresses)


# --- DOM013 pci-address-out-of-range ---------------------------------------------------------

PCI_LIMITS = (("domain", 0xFFFF), ("bus", 0xFF), ("slot", 0x1F), ("function", 7))


def _limit_text(name: str, limit: int) -> str:
    return str(limit) if name == "function" else f"0x{limit:X}"


def _judge_pci_ranges(dom: Domain) -> Verdict:
    evidence = {"pci_addresses": [dict(a) for a in dom.pci_addresses]}
    for addr in dom.pci_addresses:
        for name, limit in PCI_LIMITS:
            value = _int(addr.get(name, "0"))
            if value is not None and value > limit:
                return (
                    f"{addr.get('device')} has PCI {name}='{addr.get(name)}', above {limit:#x}: "
                    f"libvirt refuses the domain (\"Invalid PCI address {name}='{addr.get(name)}', "
                    f'must be <= {_limit_text(name, limit)}"); remove the <address> and let '
                    "libvirt assign one",
                    "",
                    evidence,
                    f"{addr.get('path', '')}/address",
                )
    return None, "every written PCI address is in range", evidence, ""


@check(
    "DOM013",
    "pci-address-out-of-range",
    title="A PCI address has a bus, slot or function out of range",
    tags=("domain", "libvirt", "definition"),
)
def pci_address_out_of_range(domains: Domains) -> Iterator[Finding]:
    """What it checks: that each written guest PCI address has bus <= 0xff, slot <= 0x1f
    and function <= 7.

    Why it matters: libvirt refuses the definition: "XML error: Invalid PCI address
    bus='0x100', must be <= 0xFF" (slot: "must be <= 0x1F", function "must be <= 7").
    Generators that count slots past 31 instead of adding a bridge produce it.

    How to fix: remove the address and let libvirt assign one, adding a pci-bridge or
    pcie-root-ports when a bus is full.

    References: https://libvirt.org/pci-addresses.html
    """
    yield from _verdicts(domains, _judge_pci_ranges)


# --- DOM014 pci-controller-topology ----------------------------------------------------------

NO_PORT_SLOT = (
    "a PCI slot is needed to connect a PCI controller model='pcie-root-port', but none is "
    "available, and it cannot be automatically added"
)
ROOT_PORT_FUNCTIONS = 8 * 30  # pcie-root slots 0x01-0x1e, 8 functions each (0x1f: ICH9)


def _topology_problem(dom: Domain) -> Optional[tuple[str, str]]:
    family = machine_family(dom)
    pci = [c for c in dom.controllers if c.get("type") == "pci"]
    seen: dict[int, str] = {}
    for ctrl in pci:
        index = _int(ctrl["index"]) if "index" in ctrl else None
        model = ctrl.get("model") or ""
        here = str(ctrl.get("path", ""))
        if model in ("pci-root", "pcie-root"):
            if index not in (None, 0):
                return here, (
                    f'a {model} has index {index}: "pci-root and pcie-root controllers should '
                    'have index 0"'
                )
            if (ctrl.get("address") or {}).get("type"):
                return here, (
                    f'the {model} has an <address>: "pci-root and pcie-root controllers '
                    'should not have an address"'
                )
        if index is None:
            continue
        if index < 0:
            return here, (
                f'a {model or "PCI"} controller has index {index}: "Invalid value for '
                f"attribute 'index' in element 'controller': '{ctrl['index']}'. Expected "
                'non-negative value"'
            )
        if index in seen:
            return here, (
                f"two PCI controllers have index {index}: \"Multiple 'pci' controllers with "
                f"index '{index}'\""
            )
        seen[index] = model
    root = seen.get(0) or next(
        (c.get("model") for c in pci if c.get("model") in ("pci-root", "pcie-root")), None
    )
    want = {"q35": "pcie-root", "i440fx": "pci-root"}.get(family)
    if root and want and root != want:
        return _root_path(pci), (
            f'{_machine(dom)} needs {want} as PCI controller 0, the XML has {root}: "The PCI '
            f"controller with index='0' must be model='{want}' for this machine type, but "
            f"model='{root}' was found instead\""
        )
    models = [c.get("model") for c in pci]
    if "pcie-expander-bus" in models and family != "q35":
        expander = next(c for c in pci if c.get("model") == "pcie-expander-bus")
        return str(expander.get("path", "")), (
            f'a pcie-expander-bus on {_machine(dom)}: "pcie-expander-bus controllers are not '
            'supported with this machine type"'
        )
    if family == "q35":
        ports = [c for c in pci if c.get("model") == "pcie-root-port"]
        addressed = {
            (_int(a.get("slot", "0")), _int(a.get("function", "0")))
            for a in dom.pci_addresses
            if (_int(a.get("bus", "0")) or 0) == 0
        }
        unaddressed = [c for c in ports if not (c.get("address") or {}).get("type")]
        if len(unaddressed) > ROOT_PORT_FUNCTIONS - len(addressed):
            return str(unaddressed[-1].get("path", "")), (
                f"{len(ports)} pcie-root-ports do not fit on pcie-root ({ROOT_PORT_FUNCTIONS} "
                f'functions): "{NO_PORT_SLOT}"'
            )
    return None


def _root_path(pci: list[dict[str, Any]]) -> str:
    root = next((c for c in pci if c.get("model") in ("pci-root", "pcie-root")), None)
    return str(root.get("path", "")) if root is not None else ""


def _judge_topology(dom: Domain) -> Verdict:
    evidence = {
        "machine": dom.machine,
        "pci_controllers": [_controller_text(c) for c in dom.controllers if c.get("type") == "pci"],
    }
    found = _topology_problem(dom)
    if found:
        return f"libvirt refuses the domain: {found[1]}", "", evidence, found[0]
    return None, "the PCI controllers can be addressed", evidence, ""


@check(
    "DOM014",
    "pci-controller-topology",
    title="The PCI controllers cannot be put together as written",
    tags=("domain", "libvirt", "definition"),
)
def pci_controller_topology(domains: Domains) -> Iterator[Finding]:
    """What it checks: the domain's PCI controllers: controller 0 is pcie-root on q35 and
    pci-root on i440fx, has index 0 and no address; no index is used twice; a
    pcie-expander-bus only on q35; and the pcie-root-ports without an address fit on
    pcie-root (slots 0x01-0x1e, eight functions each, less what other devices take there).

    Why it matters: libvirt refuses the definition, with "XML error: The PCI controller
    with index='0' must be model='pcie-root' for this machine type, but model='pci-root'
    was found instead", "Multiple 'pci' controllers with index '2'", "pci-root and
    pcie-root controllers should have index 0", "pcie-expander-bus controllers are not
    supported with this machine type", or "internal error: a PCI slot is needed to connect
    a PCI controller model='pcie-root-port', but none is available, and it cannot be
    automatically added". Templates moved from i440fx to q35 (or back), and generators
    that add one root port per possible device, produce them.

    How to fix: use the root the machine type has (or change the machine type), give each
    controller its own index (or leave `index=` out: libvirt numbers them in document
    order), and keep the root ports under 240 (add a pcie-switch for more).

    References: https://libvirt.org/pci-addresses.html
    https://libvirt.org/formatdomain.html#controllers
    """
    yield from _verdicts(domains, _judge_topology)


# --- DOM015 shared-disk-format ---------------------------------------------------------------


def _judge_shared(dom: Domain) -> Verdict:
    shared = [d for d in dom.disks if d.shareable and not d.readonly]
    evidence = {"shareable": [f"{d.target}: {d.format or 'raw'}" for d in shared]}
    for disk in shared:
        if (disk.format or "raw") != "raw":
            return (
                f"disk {disk.target} is <shareable/> with format {disk.format}: libvirt refuses "
                f"the domain (\"shared access for disk '{disk.target}' requires use of "
                'supported storage format"); only raw images can be shared',
                "",
                evidence,
                disk.path,
            )
    return None, f"{_plural(len(shared), 'writable shared disk')}, all raw", evidence, ""


@check(
    "DOM015",
    "shared-disk-format",
    title="A shared disk uses a format that cannot be shared",
    tags=("domain", "libvirt", "definition"),
)
def shared_disk_format(domains: Domains) -> Iterator[Finding]:
    """What it checks: that every writable disk marked `<shareable/>` uses the raw format
    (`<driver type='raw'/>`, the default when no type is given).

    Why it matters: libvirt's QEMU driver refuses the domain: "unsupported configuration:
    shared access for disk 'hda' requires use of supported storage format". A qcow2 image
    written by two guests at once corrupts its metadata, so only raw can be shared.

    How to fix: convert the image to raw (`qemu-img convert -O raw disk.qcow2 disk.raw`)
    and use `<driver name='qemu' type='raw'/>`, or drop `<shareable/>` if only one guest
    writes it.

    References: https://libvirt.org/formatdomain.html#hard-drives-floppy-disks-cdroms
    """
    yield from _verdicts(domains, _judge_shared)


# --- DOM016 vcpus-exceed-machine-limit -------------------------------------------------------

MAX_CPUS_I440FX = 255
MAX_CPUS_Q35 = 288  # pc-q35-2.8 up to QEMU 8.0 (pc-q35-2.4 to 2.7: 255)


def machine_max_cpus(dom: Domain) -> Optional[tuple[int, bool]]:
    """The machine type's vCPU limit as QEMU reports it (query-machines, libvirt's
    maxCpus), and whether it is certain without the host's QEMU (a versioned machine type);
    None where unknown."""
    family, machine = machine_family(dom), (dom.machine or "").lower()
    if family == "i440fx":
        return MAX_CPUS_I440FX, True
    if family != "q35":
        return None
    version = machine.rsplit("-", 1)[-1] if machine.startswith("pc-q35-") else None
    parts = tuple(_int(p) or 0 for p in version.split(".")) if version else None
    if parts is None:
        return MAX_CPUS_Q35, False  # "q35": the newest of the host's QEMU
    if parts < (2, 8):
        return MAX_CPUS_I440FX, True
    return MAX_CPUS_Q35, parts < (8, 1)


def _judge_cpu_limit(dom: Domain, host: Optional[MachineLimit] = None) -> Verdict:
    vcpus = dom.vcpus or 1
    limit = machine_max_cpus(dom)
    source = "the machine type"
    if host is not None and host.max_vcpus is not None:
        # the host's QEMU says (libvirt's domain capabilities for the machine as written)
        limit = (host.max_vcpus, True)
        source = f"the host's QEMU for {host.canonical or host.machine} (domcapabilities)"
    evidence = {
        "vcpus": vcpus,
        "machine": dom.machine,
        "max_cpus": limit[0] if limit else None,
        "limit_from": source if limit else None,
    }
    if limit is None or vcpus <= limit[0] or not limit[1]:
        return None, f"{_plural(vcpus, 'vCPU')} on {_machine(dom)}", evidence, ""
    return (
        f"{vcpus} vCPUs on {_machine(dom)}, whose limit is {limit[0]} ({source}): libvirt "
        f'refuses the domain ("Maximum CPUs greater than specified machine type limit '
        f'{limit[0]}"); use q35 (288 vCPUs with QEMU 7.2) or fewer vCPUs',
        "",
        evidence,
        "/domain/vcpu",
    )


@check(
    "DOM016",
    "vcpus-exceed-machine-limit",
    title="More vCPUs than the machine type allows",
    tags=("domain", "libvirt", "definition"),
)
def vcpus_exceed_machine_limit(
    domains: Domains, machine_limits: Optional[MachineLimits] = None
) -> Iterator[Finding]:
    """What it checks: the `<vcpu>` maximum against the machine type's limit as QEMU
    reports it: 255 for every i440fx (`pc`) machine and pc-q35-2.4 to 2.7, 288 for q35 from
    pc-q35-2.8 up to QEMU 8.0's. A versioned machine type is judged on its own; plain `q35`
    (and q35 of QEMU 8.1 and later) is judged with a host only (`run`, `lint --host`): there
    the limit is the host's, libvirt's domain capabilities (`<vcpu max=...>`) for the
    machine type as written, which under KVM is also capped by the host's own maximum.

    Why it matters: libvirt's QEMU driver refuses the domain: "unsupported configuration:
    Maximum CPUs greater than specified machine type limit 255". Large-guest templates
    moved to an older or i440fx machine type run into it.

    How to fix: use a newer q35 machine type (with more than 255 vCPUs also an IOMMU with
    extended interrupt mode, DOM008), or give the domain fewer vCPUs.

    References: https://libvirt.org/formatdomain.html#cpu-allocation
    https://libvirt.org/formatdomaincaps.html
    """

    def judge(dom: Domain) -> Verdict:
        return _judge_cpu_limit(dom, machine_limits.get(dom) if machine_limits else None)

    yield from _verdicts(domains, judge)


# --- DOM017 iommu-model-unsupported ----------------------------------------------------------


def _judge_iommu(dom: Domain) -> Verdict:
    iommu = dom.iommu
    evidence = {"iommu": _iommu_xml(iommu), "machine": dom.machine, "acpi": "acpi" in dom.features}
    if iommu is None:
        return None, "no IOMMU", evidence, ""
    model, family = iommu.get("model"), machine_family(dom)
    x86 = (dom.arch or "x86_64") in X86
    problem = None
    if model == "intel" and family != "q35":
        problem = "IOMMU device: 'intel' is only supported with Q35 machines"
    elif model == "virtio" and x86 and family != "q35":
        problem = "IOMMU device: 'virtio' is only supported with Q35 and ARM Virt machines"
    elif model == "smmuv3" and x86:
        problem = "IOMMU device: 'smmuv3' is only supported with ARM Virt machines"
    elif model == "virtio" and dom.features.get("acpi", "off") == "off":
        problem = "IOMMU device: 'virtio' requires ACPI"
    if problem is None:
        return None, f"IOMMU model {model} on {_machine(dom)}", evidence, ""
    return (
        f"<iommu model='{model}'> on {_machine(dom)}: libvirt refuses the domain "
        f'("{problem}"); use a q35 machine type (with <acpi/>)',
        "",
        evidence,
        "/domain/devices/iommu",
    )


@check(
    "DOM017",
    "iommu-model-unsupported",
    title="An IOMMU model the machine type lacks",
    tags=("domain", "libvirt", "definition"),
)
def iommu_model_unsupported(domains: Domains) -> Iterator[Finding]:
    """What it checks: that the domain's `<iommu model=...>` exists on its machine type:
    `intel` on q35 only, `virtio` on q35 (or ARM virt) with ACPI, `smmuv3` on ARM virt.

    Why it matters: libvirt's QEMU driver refuses the domain: "unsupported configuration:
    IOMMU device: 'intel' is only supported with Q35 machines", "IOMMU device: 'virtio' is
    only supported with Q35 and ARM Virt machines", "IOMMU device: 'virtio' requires ACPI".
    An IOMMU added to an i440fx domain for device assignment or for many vCPUs (DOM008)
    runs into it.

    How to fix: move the domain to q35 (its PCI devices then need PCIe addresses: remove
    the `<address>` elements and let libvirt assign them) and keep `<features><acpi/>`.

    References: https://libvirt.org/formatdomain.html#iommu-devices
    """
    yield from _verdicts(domains, _judge_iommu)


# --- DOM018 smm-tseg-refused -----------------------------------------------------------------


def _judge_tseg(dom: Domain) -> Verdict:
    tseg = dom.smm_tseg_kib
    evidence = {"smm": dom.smm, "tseg_kib": tseg, "machine": dom.machine}
    if tseg is None or dom.smm != "on":
        return None, "no SMM TSEG size given", evidence, ""
    problem = None
    if machine_family(dom) != "q35":
        problem = "SMM TSEG is only supported with q35 machine type"
    elif tseg % MiB:
        problem = "SMM TSEG size must be divisible by 1 MiB"
    if problem is None:
        return None, f"SMM TSEG of {_size(tseg)} on q35", evidence, ""
    return (
        f"<smm><tseg> of {_size(tseg)} on {_machine(dom)}: libvirt refuses the domain "
        f'("{problem}"); remove <tseg> or use q35 with a whole number of MiB',
        "",
        evidence,
        "/domain/features/smm/tseg",
    )


@check(
    "DOM018",
    "smm-tseg-refused",
    title="An SMM TSEG size outside q35, or not in whole MiB",
    tags=("domain", "libvirt", "definition"),
)
def smm_tseg_refused(domains: Domains) -> Iterator[Finding]:
    """What it checks: a `<features><smm state='on'><tseg>` size: only q35's MCH has an
    extended TSEG, and its size is counted in MiB.

    Why it matters: libvirt's QEMU driver refuses the domain: "unsupported configuration:
    SMM TSEG is only supported with q35 machine type", or "SMM TSEG size must be divisible
    by 1 MiB".

    How to fix: remove `<tseg>` (QEMU's default serves most guests; large guests with
    Secure Boot on q35 may need 48 MiB or more), or move the domain to q35.

    References: https://libvirt.org/formatdomain.html#hypervisor-features
    """
    yield from _verdicts(domains, _judge_tseg)


# --- DOM019 firmware-attributes-refused ------------------------------------------------------


AUTO_ON = "cannot be specified when firmware autoselection is enabled"
AUTO_OFF = "firmware autoselection is disabled"


def firmware_problem(dom: Domain) -> Optional[str]:
    """libvirt 9.0's refusal of the domain's firmware attributes (virDomainDefOSValidate,
    its post-parse and the QEMU driver's ACPI rule), in the order it checks them."""
    loader, nvram, auto = dom.loader, dom.nvram, dom.firmware
    features = dom.firmware_features
    if features.get("enrolled-keys") == "yes" and features.get("secure-boot") == "no":
        return (
            "firmware feature 'enrolled-keys' cannot be enabled when firmware feature "
            "'secure-boot' is disabled"
        )
    has_loader = loader is not None or nvram is not None
    if auto:
        if loader is not None and loader.readonly:
            return f"loader attribute 'readonly' {AUTO_ON}"
        if loader is not None and loader.type:
            return (
                "loader attribute 'type' cannot be specified when firmware autoselection is enabled"
            )
        if loader is not None and loader.path:
            return f"loader path {AUTO_ON}"
        if nvram is not None and nvram.template:
            return f"nvram attribute 'template' {AUTO_ON}"
        if loader is not None and loader.secure == "no":
            return f"loader attribute 'secure' {AUTO_ON}"
        if nvram is not None and auto != "efi":
            return f"firmware type '{auto}' does not support nvram"
    else:
        if features:
            return f"cannot use feature-based firmware autoselection when {AUTO_OFF}"
        if has_loader and (loader is None or not loader.path):
            return "no loader path specified and firmware auto selection disabled"
    stateless = loader.stateless if loader is not None else None
    if stateless == "yes" and nvram is not None:
        if nvram.template:
            return "NVRAM template is not permitted when loader is stateless"
        return "NVRAM is not permitted when loader is stateless"
    if stateless == "no":
        if not auto and (loader is None or loader.type != "pflash"):
            return "Only pflash loader type permits NVRAM"
        if auto and auto != "efi":
            return "Only EFI firmware permits NVRAM"
    uefi = auto == "efi" or (loader is not None and loader.type == "pflash")
    if uefi and (dom.arch or "x86_64") in X86 and dom.features.get("acpi", "off") == "off":
        return "UEFI requires ACPI on this architecture"
    return None


def _judge_firmware(dom: Domain) -> Verdict:
    evidence = {
        "firmware": dom.firmware,
        "loader": asdict(dom.loader) if dom.loader else None,
        "nvram": asdict(dom.nvram) if dom.nvram else None,
        "firmware_features": dict(dom.firmware_features),
        "acpi": "acpi" in dom.features,
    }
    problem = firmware_problem(dom)
    if problem is None:
        what = f"firmware='{dom.firmware}'" if dom.firmware else "the firmware attributes"
        return None, f"libvirt accepts {what}", evidence, ""
    where = "/domain/os/loader" if dom.loader is not None else "/domain/os"
    if dom.nvram is not None and "nvram" in problem.lower() and not problem.startswith("Only"):
        where = "/domain/os/nvram"
    return f'libvirt refuses the domain\'s firmware: "{problem}"', "", evidence, where


@check(
    "DOM019",
    "firmware-attributes-refused",
    title="A combination of firmware attributes libvirt refuses",
    tags=("domain", "libvirt", "definition"),
)
def firmware_attributes_refused(domains: Domains) -> Iterator[Finding]:
    """What it checks: the domain's `<os>` firmware attributes against libvirt 9.0's rules.
    With auto-selection (`<os firmware='efi'>`): no loader path, `readonly`, `type`, NVRAM
    `template` or `secure='no'`, and NVRAM only for EFI. Without it: a `<loader>` (or
    `<nvram>`) needs a loader path, and `<firmware><feature>` needs auto-selection. Always:
    a stateless loader takes no NVRAM, a stateful one needs pflash (or EFI), the
    `enrolled-keys` feature needs `secure-boot`, and UEFI on x86 needs ACPI.

    Why it matters: libvirt refuses the definition with one of: "no loader path specified
    and firmware auto selection disabled", "NVRAM is not permitted when loader is
    stateless", "NVRAM template is not permitted when loader is stateless", "firmware
    feature 'enrolled-keys' cannot be enabled when firmware feature 'secure-boot' is
    disabled", "loader attribute 'type' cannot be specified when firmware autoselection is
    enabled", "firmware type 'bios' does not support nvram", "Only pflash loader type
    permits NVRAM", "cannot use feature-based firmware autoselection when firmware
    autoselection is disabled", "UEFI requires ACPI on this architecture". Definitions
    half-converted between manual loader paths and auto-selection produce them.

    How to fix: choose one style. Auto-selection: `<os firmware='efi'>` with at most
    `<firmware><feature enabled='yes' name='secure-boot'/></firmware>` and an `<nvram>`
    path, no loader attributes. Manual: `<loader readonly='yes' type='pflash'>PATH</loader>`
    and `<nvram template='VARS'>PATH</nvram>`, no `<firmware>` features. Keep
    `<features><acpi/>`.

    References: https://libvirt.org/formatdomain.html#bios-bootloader
    https://libvirt.org/kbase/secureboot.html
    """
    yield from _verdicts(domains, _judge_firmware)


# --- DOM021 address-type-unsuited-to-bus -----------------------------------------------------

DRIVE_BUSES = ("ide", "fdc", "scsi", "sata")  # libvirt: these disks take a drive address only


def _address_problem(dom: Domain) -> Optional[tuple[str, str]]:
    """libvirt 9.0's refusal of an <address> type the device's bus cannot take (the disk
    rules of virDomainDiskDefValidate and qemuValidateDomainDeviceDefDisk, the virtio
    IOMMU's of qemuValidateDomainDeviceDefIOMMU), and the element it is about."""
    for disk in dom.disks:
        kind = disk.address.get("type")
        if not kind:
            continue
        where = f"{disk.path}/address" if disk.path else ""
        if disk.bus in DRIVE_BUSES and kind != "drive":
            return where, (
                f"disk '{disk.target}' on the {disk.bus} bus has an <address type='{kind}'>: "
                f"\"Invalid address type '{kind}' for the disk '{disk.target}' with the bus "
                f"type '{disk.bus}'\"; {disk.bus} disks take <address type='drive'> or none"
            )
        if disk.bus == "usb" and kind != "usb":
            return where, (
                f"USB disk '{disk.target}' has an <address type='{kind}'>: \"unexpected "
                "address type for usb disk\"; USB disks take <address type='usb'> or none"
            )
    kind = dom.iommu_address.get("type")
    if (dom.iommu or {}).get("model") == "virtio" and kind and kind != "pci":
        return "/domain/devices/iommu/address", (
            f"<iommu model='virtio'> has an <address type='{kind}'>: \"IOMMU device: "
            "'virtio' needs a PCI address\"; give it a PCI address on bus 0 or none"
        )
    return None


def _judge_address_types(dom: Domain) -> Verdict:
    evidence = {
        "disks": {d.target or "?": d.address.get("type") for d in dom.disks if d.address},
        "iommu_address": dom.iommu_address.get("type"),
    }
    found = _address_problem(dom)
    if found:
        return f"libvirt refuses the domain: {found[1]}", "", evidence, found[0]
    return None, "every device address suits its bus", evidence, ""


@check(
    "DOM021",
    "address-type-unsuited-to-bus",
    title="A device address of a type its bus cannot take",
    tags=("domain", "libvirt", "definition"),
)
def address_type_unsuited_to_bus(domains: Domains) -> Iterator[Finding]:
    """What it checks: the `<address type=...>` of each disk against its bus (IDE, SATA,
    SCSI and floppy disks sit at a `drive` address, USB disks at a `usb` one) and that of a
    virtio IOMMU (a `pci` address).

    Why it matters: libvirt refuses the definition: "unsupported configuration: Invalid
    address type 'pci' for the disk 'hda' with the bus type 'ide'", "internal error:
    unexpected address type for usb disk", "unsupported configuration: IOMMU device:
    'virtio' needs a PCI address". A disk moved to another bus (virtio to SATA for an
    installer, say) that kept its PCI address runs into it.

    How to fix: remove the device's `<address>` and let libvirt assign one, or write one of
    the bus's type: `<address type='drive' controller='0' bus='0' target='0' unit='0'/>`
    for IDE, SATA, SCSI and floppy disks, `<address type='usb' bus='0' port='1'/>` for a
    USB disk.

    References: https://libvirt.org/formatdomain.html#device-addresses
    """
    yield from _verdicts(domains, _judge_address_types)


# --- DOM022 pci-connection-refused -----------------------------------------------------------

ENDPOINT = "endpoint"
# What each PCI controller model accepts downstream (libvirt 9.0, domain_addr.c
# virDomainPCIAddressBusSetModel), for addresses written in the definition: those may put a
# PCI device in a PCIe slot and the reverse, and a pci-bridge wherever a device fits.
PCI_ACCEPTS: dict[str, frozenset[str]] = {
    "pci-root": frozenset({ENDPOINT, "pci-bridge", "pci-expander-bus"}),
    "pci-bridge": frozenset({ENDPOINT, "pci-bridge"}),
    "pci-expander-bus": frozenset({ENDPOINT, "pci-bridge"}),
    "pcie-root": frozenset({ENDPOINT, "pcie-root-port", "dmi-to-pci-bridge", "pcie-expander-bus"}),
    "dmi-to-pci-bridge": frozenset({ENDPOINT, "pci-bridge"}),
    "pcie-to-pci-bridge": frozenset({ENDPOINT, "pci-bridge"}),
    "pcie-root-port": frozenset({ENDPOINT, "pcie-switch-upstream-port", "pcie-to-pci-bridge"}),
    "pcie-switch-downstream-port": frozenset(
        {ENDPOINT, "pcie-switch-upstream-port", "pcie-to-pci-bridge"}
    ),
    "pcie-switch-upstream-port": frozenset({"pcie-switch-downstream-port"}),
    "pcie-expander-bus": frozenset({"pcie-root-port", "dmi-to-pci-bridge"}),
}
PCI_CONNECT = "cannot be plugged into the PCI controller with index"


def _connection(device: PciDevice) -> str:
    if device.element == "controller" and device.type == "pci" and device.model in PCI_ACCEPTS:
        return device.model
    return ENDPOINT


def _connection_problem(dom: Domain) -> Optional[tuple[str, str]]:
    if _topology_problem(dom) is not None:
        return None  # controllers that cannot be numbered or rooted: DOM014 says so
    buses = _pci_buses(dom)
    root = {"q35": "pcie-root", "i440fx": "pci-root"}.get(machine_family(dom))
    if root and 0 not in buses:
        buses[0] = {"model": root}
    for device in dom.pci_devices:
        if device.address is None or device.model in ("pci-root", "pcie-root"):
            continue  # no address yet; a root's address is DOM014's
        # as libvirt reads a written address: attributes left out are 0
        bus, slot, function = (
            _int_any(device.address.get(name, "0")) or 0 for name in ("bus", "slot", "function")
        )
        here = f"{bus:02x}:{slot:02x}.{function}"
        address = f"{_hex4(device.address.get('domain'))}:{here}"
        where = f"{device.path}/address" if device.path else ""
        if device.element == "iommu" and device.model == "virtio" and bus != 0:
            return where, (
                f"<iommu model='virtio'> at {here}: \"The device at PCI address "
                f'{address} needs to be an integrated device (bus=0)"; put it on bus 0'
            )
        parent = (buses.get(bus) or {}).get("model") or ""
        accepts = PCI_ACCEPTS.get(parent)
        connection = _connection(device)
        if accepts is None or connection in accepts:
            continue
        if connection == "pci-bridge" and ENDPOINT in accepts:
            continue
        wanted = "a standard PCI device" if connection == ENDPOINT else f"a {connection}"
        return where, (
            f"{device.label} at {here} sits on PCI controller {bus} ({parent}), which does "
            f'not take {wanted}: "The device at PCI address {address} cannot be plugged '
            f"into the PCI controller with index='{bus}'. "
            f'It requires a controller that accepts {wanted}."'
        )
    return None


def _hex4(text: Optional[str]) -> str:
    return f"{_int_any(text) or 0:04x}"


def _int_any(text: Optional[str]) -> Optional[int]:
    try:
        return int(text, 0) if text is not None else None
    except ValueError:
        return None


def _judge_connections(dom: Domain) -> Verdict:
    evidence = {
        "pci_controllers": [_controller_text(c) for c in dom.controllers if c.get("type") == "pci"]
    }
    found = _connection_problem(dom)
    if found:
        return f"libvirt refuses the domain: {found[1]}", "", evidence, found[0]
    return None, "each addressed PCI device sits on a controller that takes it", evidence, ""


@check(
    "DOM022",
    "pci-connection-refused",
    title="A PCI device or controller addressed to a controller that does not take it",
    tags=("domain", "libvirt", "definition"),
)
def pci_connection_refused(domains: Domains) -> Iterator[Finding]:
    """What it checks: for each device and PCI controller with a PCI address, that the
    controller its `bus=` names takes that kind of device. pci-root takes devices, pci-bridges
    and pci-expander-buses; pcie-root devices, pcie-root-ports, dmi-to-pci-bridges and
    pcie-expander-buses; a pcie-root-port (or switch downstream port) a device, a switch
    upstream port or a pcie-to-pci-bridge; a pcie-expander-bus only root ports and
    dmi-to-pci-bridges; the PCI bridges devices and pci-bridges. A virtio IOMMU must sit on
    bus 0 (an integrated device).

    Why it matters: libvirt refuses the definition: "XML error: The device at PCI address
    0000:01:00.0 cannot be plugged into the PCI controller with index='1'. It requires a
    controller that accepts a dmi-to-pci-bridge.", or "... needs to be an integrated device
    (bus=0)". Controllers copied between i440fx and q35 layouts, or addresses renumbered by
    hand, produce it.

    How to fix: move the device to a controller that takes it (dmi-to-pci-bridge and
    pcie-expander-bus on pcie-root, bus 0; pci-expander-bus on pci-root), or remove its
    `<address>` and let libvirt place it.

    References: https://libvirt.org/pci-addresses.html
    https://libvirt.org/formatdomain.html#controllers
    """
    yield from _verdicts(domains, _judge_connections)


# --- DOM023 disk-target-invalid --------------------------------------------------------------

DISK_NAME = re.compile(r"(fd|hd|vd|sd|xvd|ubd)([a-z]+)(\d*)")
NO_TARGET = "missing target information for device"


def _target_problem(dom: Domain) -> Optional[tuple[str, str]]:
    for disk in dom.disks:
        if disk.target is None:
            if disk.type == "volume":
                continue
            return disk.path, (
                f"a disk ({disk.source or 'no source'}) has no <target dev=... bus=...>: "
                f'"{NO_TARGET} {disk.source or ""}"'.rstrip()
                + "\"; give it a target such as <target dev='vdb' bus='virtio'/>"
            )
        name = DISK_NAME.fullmatch(disk.target)
        where = f"{disk.path}/target" if disk.path else ""
        if name is None:
            return where, (
                f"disk target '{disk.target}' is not a disk name: \"invalid disk target "
                f"'{disk.target}'\"; use a prefix (hd, sd, vd, fd) and letters: vdb"
            )
        if name.group(3):
            return where, (
                f"disk target '{disk.target}' names a partition: \"invalid disk target "
                f"'{disk.target}', partitions can't appear in disk targets\"; name the disk "
                f"('{name.group(1)}{name.group(2)}'), the guest partitions it"
            )
    return None


def _judge_disk_targets(dom: Domain) -> Verdict:
    evidence = {"targets": [d.target for d in dom.disks]}
    found = _target_problem(dom)
    if found:
        return f"libvirt refuses the domain: {found[1]}", "", evidence, found[0]
    return None, f"{_plural(len(dom.disks), 'disk target')}, each a disk name", evidence, ""


@check(
    "DOM023",
    "disk-target-invalid",
    title="A disk without a target, or whose target is not a disk name",
    tags=("domain", "libvirt", "definition"),
)
def disk_target_invalid(domains: Domains) -> Iterator[Finding]:
    """What it checks: that every disk has a `<target dev=...>` and that the name is a
    disk name as libvirt parses it: a prefix (`hd`, `sd`, `vd`, `fd`, `xvd`, `ubd`) and
    letters, with no partition number.

    Why it matters: libvirt refuses the definition: "missing target information for device
    /dev/HostVG/QEMUGuest1", or "unsupported configuration: invalid disk target 'vdb1',
    partitions can't appear in disk targets". A target copied from the guest's view of a
    partition (`vdb1`) or a generator that left the target out produces it.

    How to fix: give each disk `<target dev='vdb' bus='virtio'/>` (the next free name on its
    bus); the guest partitions the disk itself.

    References: https://libvirt.org/formatdomain.html#hard-drives-floppy-disks-cdroms
    """
    yield from _verdicts(domains, _judge_disk_targets)


# --- DOM024 disk-device-attributes-refused ---------------------------------------------------


def _disk_device_problem(dom: Domain) -> Optional[tuple[str, str]]:
    for disk in dom.disks:
        if disk.device == "lun" and disk.type not in ("block", "network", "volume"):
            return disk.path, (
                f"disk '{disk.target}' is device='lun' on a {disk.type} source: \"disk "
                "device='lun' is only valid for block type disk source\"; pass through a "
                "block device (type='block') or use device='disk'"
            )
        if (disk.vendor is not None or disk.product is not None) and disk.bus != "scsi":
            child = "vendor" if disk.vendor is not None else "product"
            return f"{disk.path}/{child}" if disk.path else "", (
                f"disk '{disk.target}' on the {disk.bus} bus has <vendor>/<product>: \"Only "
                'scsi disk supports vendor and product"; put the disk on the scsi bus or '
                "drop them"
            )
    return None


def _judge_disk_devices(dom: Domain) -> Verdict:
    evidence = {
        "disks": [
            {"target": d.target, "device": d.device, "type": d.type, "bus": d.bus}
            for d in dom.disks
        ]
    }
    found = _disk_device_problem(dom)
    if found:
        return f"libvirt refuses the domain: {found[1]}", "", evidence, found[0]
    return None, "the disks' device attributes suit their sources and buses", evidence, ""


@check(
    "DOM024",
    "disk-device-attributes-refused",
    title="A LUN passthrough of a file, or SCSI inquiry strings off the SCSI bus",
    tags=("domain", "libvirt", "definition"),
)
def disk_device_attributes_refused(domains: Domains) -> Iterator[Finding]:
    """What it checks: that a `device='lun'` disk (SCSI command passthrough) has a block
    device, an iSCSI or a volume source, not a file; and that only disks on the `scsi` bus
    carry `<vendor>` and `<product>`.

    Why it matters: libvirt refuses the definition: "unsupported configuration: disk
    device='lun' is only valid for block type disk source", or "unsupported configuration:
    Only scsi disk supports vendor and product". SCSI passthrough needs a device that
    answers SCSI commands; the inquiry strings exist on SCSI disks only.

    How to fix: for passthrough use `<disk type='block' device='lun'>` with the host's
    block device, on a virtio-scsi controller (`bus='scsi'`); otherwise `device='disk'`.
    Drop `<vendor>`/`<product>` from disks on other buses, or move them to `bus='scsi'`.

    References: https://libvirt.org/formatdomain.html#hard-drives-floppy-disks-cdroms
    """
    yield from _verdicts(domains, _judge_disk_devices)


# --- DOM025 definition-refused-by-schema -----------------------------------------------------

RNG_NS = "{http://relaxng.org/ns/structure/1.0}"
_EXTRA_ELEMENT = re.compile(r"(?:Extra element|Element|Did not expect element) (\w+)")
_COMPILED: dict[int, Any] = {}  # one compiled schema per distinct set of schema texts


def _inlined(files: dict[str, str], name: str, seen: set[str]) -> Any:
    """The grammar `name` with every `<include href=...>` replaced by the included grammar's
    content (libvirt's schemas include plain grammars, without overrides), each file once:
    the schema as one document, so it compiles from the texts the fact read."""
    from lxml import etree

    root = etree.fromstring(files[name].encode())
    for include in list(root.iter(f"{RNG_NS}include")):
        parent, href = include.getparent(), include.get("href", "")
        position = parent.index(include)
        parent.remove(include)
        if href in seen or href not in files:
            continue
        seen.add(href)
        grammar = _inlined(files, href, seen)
        children = [child for child in grammar if isinstance(child.tag, str)]
        for attr in ("datatypeLibrary", "ns"):  # inherited by the included grammar's content
            if grammar.get(attr) is not None:
                for child in children:
                    if child.get(attr) is None:
                        child.set(attr, grammar.get(attr))
        for offset, child in enumerate(children):
            parent.insert(position + offset, child)
    return root


def domain_schema(schemas: LibvirtSchemas) -> Any:
    """libvirt's domain schema, compiled (lxml.etree.RelaxNG), once per process."""
    from lxml import etree

    key = hash(tuple(sorted(schemas.files.items())))
    if key not in _COMPILED:
        _COMPILED[key] = etree.RelaxNG(_inlined(schemas.files, DOMAIN_SCHEMA, {DOMAIN_SCHEMA}))
    return _COMPILED[key]


def _schema_errors(schema: Any, xml: str) -> tuple[list[str], str]:
    """libxml2's messages for a definition the schema refuses (none when it is valid), and
    the path of the element they name, as near as they say (/domain/devices)."""
    from lxml import etree

    root = etree.fromstring(xml.encode())
    if root.tag == "domstatus":  # a status file: the definition it holds
        root = root.find("domain")
    if schema.validate(root):
        return [], ""
    messages = list(dict.fromkeys(e.message for e in schema.error_log))
    where = "/domain"
    for message in messages:
        named = _EXTRA_ELEMENT.search(message)
        if named and named.group(1) != "domain" and root.find(named.group(1)) is not None:
            where = f"/domain/{named.group(1)}"
            break
    return messages, where


@check(
    "DOM025",
    "definition-refused-by-schema",
    title="A definition libvirt's RelaxNG schema refuses",
    tags=("domain", "libvirt", "definition", "files"),
)
def definition_refused_by_schema(
    domains: Domains, libvirt_schemas: Optional[LibvirtSchemas] = None
) -> Iterator[Finding]:
    """What it checks: each definition file `kvmdoctor lint` reads, against the RelaxNG
    schema libvirt installs (/usr/share/libvirt/schemas/domain.rng, from libvirt-daemon or
    libvirt-clients) on the machine lint runs on. Without those files it is skipped, saying
    so. `kvmdoctor run` leaves it out (tag `files`): the host's domains are libvirt's own,
    already parsed by it.

    Why it matters: `virsh define --validate`, `virsh edit` and tools that validate refuse
    such a definition ("XML document failed to validate against schema"), and it usually
    holds a value libvirt's parser refuses too: an attribute value out of its range
    (`index='-1'`, a PCI slot above 0x1f), a word the schema does not know, an element
    where none belongs. It is a warning, not a failure: plain `virsh define` parses more
    leniently than the schema, and accepts some definitions the schema refuses (2 of the
    291 inputs libvirt 9.0's test suite accepts).

    How to fix: run `virsh define --validate FILE` (or `virt-xml-validate FILE domain`) for
    the schema's full account, and correct the element the message names; libvirt's domain
    XML reference gives each element's allowed values.

    References: https://libvirt.org/formatdomain.html
    https://libvirt.org/manpages/virt-xml-validate.html
    """
    if not domains.items:
        yield _no_domains(domains)
        return
    written = [dom for dom in domains.items if dom.xml is not None]
    if not written:
        yield Finding(
            "skip",
            "only kvmdoctor lint validates definition files against libvirt's schema: the "
            "host's domains are libvirt's own, already parsed by it",
            evidence={"origin": domains.origin},
        )
        return
    if libvirt_schemas is None:
        for dom in written:
            yield Finding(
                "skip",
                "libvirt's RelaxNG schemas are not installed on this machine (/usr/share/"
                "libvirt/schemas, from libvirt-daemon or libvirt-clients): the definition "
                "is not validated against them",
                subject=dom.subject,
            )
        return
    schema = domain_schema(libvirt_schemas)
    for dom in written:
        messages, where = _schema_errors(schema, dom.xml or "")
        evidence = {"schema": f"{libvirt_schemas.directory}/{DOMAIN_SCHEMA}", "errors": messages}
        if not messages:
            yield Finding(
                "pass",
                "libvirt's schema accepts the definition",
                subject=dom.subject,
                evidence=evidence,
            )
            continue
        yield Finding(
            "warn",
            f"libvirt's schema refuses the definition ({'; '.join(messages[:3])}): `virsh "
            "define --validate` refuses it, and libvirt's parser most likely does too; "
            "`virt-xml-validate FILE domain` names the element",
            subject=dom.subject,
            evidence=evidence,
            location=at(where),
        )
