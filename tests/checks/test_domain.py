"""DOM001-DOM008: a failing and a passing case each.

Domains come from libvirt's test driver (a `<node>` document under tmp_path, test:///PATH.xml),
which parses them with libvirt's own domain parser, or, where that parser already refuses the
XML (boot orders) or the XML is a real capture it cannot load (the i440fx fixture's anonymised
MAC, the q35 fixture's `itco` watchdog, newer than libvirt 9.0), from definition files in a tree
(`--root`). What the real daemon says about the same definitions is asserted in
tests/integration/test_domain_libvirt.py.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import pytest

from checks import domain as domain_checks
from checks.domain import ImageUse, clashing, likely_meant
from doctor.facts.domains import Domains, parse_domain

from kdsnap import one, run_checks
from kdtest import REALDATA, lines_executed

Q35 = (
    REALDATA
    / "domains/lkml-danmoulding__virsh-dumpxml__q35-running_fedora-virt-manager_libvirt-pcie-root-ports.xml"
).read_text()
I440FX = (
    REALDATA / "domains/insights__etc-libvirt-qemu__i440fx_rhel7.4_virt-manager-persistent.xml"
).read_text()
TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"


def guest(
    name: str,
    devices: str = "",
    *,
    machine: str = "pc-q35-7.2",
    memory: str = "<memory unit='MiB'>128</memory>",
    vcpu: str = "<vcpu>1</vcpu>",
    features: str = "<acpi/>",
    os_boot: str = "",
) -> str:
    """A domain as a user writes it (type kvm; `node` turns it into a test-driver domain)."""
    return f"""<domain type='kvm'>
  <name>{name}</name>
  {memory}
  {vcpu}
  <os><type arch='x86_64' machine='{machine}'>hvm</type>{os_boot}</os>
  <features>{features}</features>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>{devices}</devices>
</domain>"""


def node(tmp_path: Path, *xml: str, running: tuple[str, ...] = ()) -> str:
    """A test-driver URI whose <node> holds these domains; those named in `running` run."""
    parts = []
    for text in xml:
        name = re.search(r"<name>([^<]+)</name>", text)
        assert name is not None
        text = re.sub(r"<!--.*?-->\s*", "", text, flags=re.DOTALL)
        text = re.sub(
            r"<domain type='kvm'( id='\d+')?>",
            f"<domain type='test' xmlns:test='{TEST_NS}'>",
            text,
            count=1,
        )
        if name.group(1) not in running:
            text = text.replace("</domain>", "<test:runstate>5</test:runstate></domain>")
        parts.append(text)
    path = tmp_path / "kd-node.xml"
    path.write_text("<node>\n" + "\n".join(parts) + "\n</node>\n")
    return f"test://{path}"


def tree(tmp_path: Path, **definitions: str) -> Path:
    """A host tree holding these definitions in /etc/libvirt/qemu (NAME.xml)."""
    root = tmp_path / "tree"
    (root / "etc/libvirt/qemu").mkdir(parents=True)
    for name, xml in definitions.items():
        (root / f"etc/libvirt/qemu/{name}.xml").write_text(xml)
    return root


def on_node(tmp_path: Path, code: str, *xml: str, running: tuple[str, ...] = ()) -> Any:
    return run_checks(Path("/"), (code,), uri=node(tmp_path, *xml, running=running))


def pci(bus: int, slot: int, function: int = 0) -> str:
    return (
        f"<address type='pci' domain='0x0000' bus='0x{bus:02x}' slot='0x{slot:02x}' "
        f"function='0x{function:x}'/>"
    )


def root_port(index: int, slot: int = 2) -> str:
    return (
        f"<controller type='pci' index='{index}' model='pcie-root-port'>"
        f"{pci(0, slot, index - 1)}</controller>"
    )


def nic(address: str = "", mac: str = "52:54:00:00:00:01") -> str:
    return (
        f"<interface type='user'><mac address='{mac}'/><model type='virtio'/>{address}</interface>"
    )


# --- DOM001 pci-slots-exhausted ----------------------------------------------------------------


def test_dom001_counts_the_empty_root_ports_of_the_real_q35_guest(tmp_path: Path) -> None:
    name = "raid5-test-Fedora-Server-39-x86_64"
    finding = one(run_checks(tree(tmp_path, **{name: Q35}), ("DOM001",)), "DOM001")
    assert finding.subject == f"domain:{name}"
    assert (finding.status, finding.message) == (
        "pass",
        "8 free hot-plug slots: pcie-root-ports 7-14",
    )
    assert finding.evidence["free_count"] == 8
    assert "01:00.0 interface 52:54:00:01:a7:85" in finding.evidence["occupied"]
    assert "14 pcie-root-port at 00:03.5" in finding.evidence["pci_controllers"]


def test_dom001_numbers_controllers_written_without_index_as_libvirt_does(
    tmp_path: Path,
) -> None:
    """Hand-written XML, as DOM001's own fix text says to write it: root ports without
    `index=`. libvirt numbers them from 1 in document order (the test driver below shows its
    own numbering gives the same count); they never replace pcie-root."""
    ports = "<controller type='pci' model='pcie-root'/>" + (
        "<controller type='pci' model='pcie-root-port'/>" * 3
    )
    nic = "<interface type='user'><model type='virtio'/></interface>"
    xml = guest("kd-hand-ports", ports + nic)
    written = one(run_checks(tree(tmp_path, **{"kd-hand-ports": xml}), ("DOM001",)), "DOM001")
    assert written.status == "pass", written.message
    # three empty ports, one of which the NIC without an address will take
    assert written.message.startswith("2 free hot-plug slots: pcie-root-ports 1-3")
    assert "estimated: 1 device without a PCI address" in written.message
    by_libvirt = one(on_node(tmp_path, "DOM001", xml), "DOM001")  # libvirt assigned it all
    assert by_libvirt.evidence["free_count"] == written.evidence["free_count"] == 2


def test_dom001_warns_for_the_real_q35_guest_once_its_spare_ports_are_gone(tmp_path: Path) -> None:
    """Ports 7-14 removed: every remaining root port carries a device. The domain defines and
    runs; only a hot-plug fails: a warning."""
    trimmed = re.sub(
        r"<controller type='pci' index='(?:[7-9]|1[0-4])' model='pcie-root-port'>.*?</controller>",
        "",
        Q35,
        flags=re.DOTALL,
    )
    finding = one(run_checks(tree(tmp_path, kd=trimmed), ("DOM001",)), "DOM001")
    assert finding.status == "warn"
    assert finding.message == (
        "0 free hot-plug slots: all 6 pcie-root-ports are occupied; attaching a device to the "
        'running domain fails with "No more available PCI slots"; add empty pcie-root-ports '
        "while the domain is off"
    )


def test_dom001_counts_the_free_pci_root_slots_of_the_real_i440fx_guest(tmp_path: Path) -> None:
    finding = one(run_checks(tree(tmp_path, **{"rhel7.4": I440FX}), ("DOM001",)), "DOM001")
    # Slots 2-8 hold video, NIC, sound, USB, virtio-serial, disk and balloon; slot 1 is PIIX3.
    assert (finding.status, finding.message) == (
        "pass",
        "23 free hot-plug slots: pci-root slots 0x09-0x1f",
    )


def full_i440fx(name: str, *, free_slot: Optional[int] = None, features: str = "<acpi/>") -> str:
    """i440fx with a NIC in every pci-root slot from 2 to 31 (but `free_slot`)."""
    nics = "".join(nic(pci(0, slot)) for slot in range(2, 32) if slot != free_slot)
    return guest(
        name,
        "<controller type='usb' model='none'/><memballoon model='none'/>" + nics,
        machine="pc-i440fx-7.2",
        features=features,
    )


def test_dom001_warns_when_every_pci_root_slot_is_taken(tmp_path: Path) -> None:
    finding = one(on_node(tmp_path, "DOM001", full_i440fx("kd-full")), "DOM001")
    assert finding.status == "warn"
    assert finding.message.startswith(
        "0 free hot-plug slots: every pci-root and pci-bridge slot is occupied; attaching a "
        'device to the running domain fails with "No more available PCI slots"; add a '
        "pci-bridge (31 slots)"
    )


def test_dom001_counts_a_pci_bridges_slots_on_i440fx(tmp_path: Path) -> None:
    bridge = f"<controller type='pci' index='1' model='pci-bridge'>{pci(0, 2)}</controller>"
    xml = full_i440fx("kd-bridge", free_slot=2).replace("</devices>", bridge + "</devices>")
    finding = one(on_node(tmp_path, "DOM001", xml), "DOM001")
    assert (finding.status, finding.message) == (
        "pass",
        "31 free hot-plug slots: pci-bridge 1 slots 0x01-0x1f",
    )


def test_dom001_warns_on_i440fx_without_acpi_while_pci_root_has_room(tmp_path: Path) -> None:
    xml = full_i440fx("kd-noacpi", free_slot=9, features="")
    finding = one(on_node(tmp_path, "DOM001", xml), "DOM001")
    assert finding.status == "warn"
    assert finding.message.startswith(
        "pci-root slot 0x09 is free but the domain has no <acpi/>: libvirt picks one of them "
        "for a hot-plugged device and QEMU refuses it (\"Bus 'pci.0' does not support "
        'hotplugging")'
    )


def test_dom001_does_not_count_ports_with_hotplug_off_nor_bridges_for_virtio(
    tmp_path: Path,
) -> None:
    devices = (
        "<controller type='pci' index='0' model='pcie-root'/>"
        + root_port(1)
        + "<controller type='pci' index='2' model='pcie-root-port'><target hotplug='off'/>"
        + f"{pci(0, 2, 1)}</controller>"
        + root_port(3)
        + f"<controller type='pci' index='4' model='pcie-to-pci-bridge'>{pci(3, 0)}</controller>"
        + nic(pci(1, 0))
    )
    finding = one(on_node(tmp_path, "DOM001", guest("kd-off", devices)), "DOM001")
    assert finding.status == "warn"
    assert finding.message.startswith(
        "0 free hot-plug slots: all 3 pcie-root-ports are occupied (pcie-root-port 2 with "
        "hotplug='off')"
    )
    assert finding.message.endswith(
        "; pcie-to-pci-bridge 4 slots 0x01-0x1f take conventional PCI devices only (e1000, "
        "rtl8139), not virtio"
    )


def test_dom001_counts_devices_without_an_address_against_the_empty_ports(tmp_path: Path) -> None:
    """Hand-written XML: libvirt assigns addresses at define time; the test driver never does."""
    devices = (
        "<controller type='pci' index='0' model='pcie-root'/>"
        + root_port(1)
        + root_port(2)
        + nic()
        + "<video><model type='virtio'/></video>"  # goes to pcie-root 00:01.0
    )
    finding = one(on_node(tmp_path, "DOM001", guest("kd-hand", devices)), "DOM001")
    assert (finding.status, finding.message) == (
        "pass",
        "1 free hot-plug slot: pcie-root-ports 1-2 (estimated: 1 device without a PCI "
        "address will take free slots first)",
    )
    assert finding.evidence["no_address_yet"] == ["interface 52:54:00:00:00:01"]


# Failed attaches in the host's logs turn DOM001's warning into a failure. The lines are libvirt
# 9.0's, as the lab's libvirtd.log and QEMU logs have them (integration: test_domain_libvirt.py).
AT = 1796400000.0  # 2026-12-04T...Z: the tree is judged at this time, never today's
STAMP = "2026-12-04 08:32:21.762+0000"
STARTED = "2026-12-04 08:30:00.000+0000: starting up libvirt version: 9.0.0, qemu version: 7.2.0"
NO_SLOTS_LINE = (
    f"{STAMP}: 750: error : virDomainPCIAddressGetNextAddr:1165 : internal error: No more "
    "available PCI slots"
)
NO_ACPI_LINE = (
    f"{STAMP}: 750: error : qemuMonitorJSONCheckErrorFull:366 : internal error: unable to "
    "execute QEMU command 'device_add': Bus 'pci.0' does not support hotplugging"
)


def running_tree(
    tmp_path: Path, daemon_log: str, *running: tuple[str, str], qemu_logs: bool = True
) -> Path:
    """A host whose domains (name, xml) run (status files), with their QEMU logs saying when
    they started and libvirtd.log holding `daemon_log`."""
    root = tree(tmp_path)
    (root / "run/libvirt/qemu").mkdir(parents=True)
    (root / "var/log/libvirt/qemu").mkdir(parents=True)
    (root / "var/log/libvirt/libvirtd.log").write_text(daemon_log + "\n")
    for name, xml in running:
        live = xml.replace("<domain type='kvm'>", "<domain type='kvm' id='1'>")
        status = f"<domstatus state='running' pid='1'>{live}</domstatus>"
        (root / f"run/libvirt/qemu/{name}.xml").write_text(status)
        if qemu_logs:
            (root / f"var/log/libvirt/qemu/{name}.log").write_text(STARTED + "\n")
    return root


def test_dom001_fails_when_the_daemon_log_shows_the_attach_that_failed(tmp_path: Path) -> None:
    root = running_tree(tmp_path, NO_SLOTS_LINE, ("kd-full", full_i440fx("kd-full")))
    finding = one(run_checks(root, ("DOM001",), at=AT), "DOM001")
    assert finding.status == "fail"
    assert finding.message.endswith(
        '; /var/log/libvirt/libvirtd.log shows an attach that failed so ("' + NO_SLOTS_LINE + '")'
    )
    assert finding.evidence["failed_attach"]["attributed"].startswith(
        "the line names no domain; it is later than this domain's start"
    )


def test_dom001_fails_without_acpi_when_qemu_refused_the_hotplug(tmp_path: Path) -> None:
    xml = full_i440fx("kd-noacpi", free_slot=9, features="")
    root = running_tree(tmp_path, NO_ACPI_LINE, ("kd-noacpi", xml))
    finding = one(run_checks(root, ("DOM001",), at=AT), "DOM001")
    assert finding.status == "fail"
    assert "Bus 'pci.0' does not support hotplugging\")" in finding.message


def test_dom001_ties_a_line_naming_the_domain_to_it_among_several(tmp_path: Path) -> None:
    named = NO_SLOTS_LINE + " (name='kd-two')"
    root = running_tree(
        tmp_path,
        named,
        ("kd-one", full_i440fx("kd-one")),
        ("kd-two", full_i440fx("kd-two")),
    )
    findings = run_checks(root, ("DOM001",), at=AT)
    assert one(findings, "DOM001", "domain:kd-two").status == "fail"
    assert one(findings, "DOM001", "domain:kd-one").status == "warn"


def test_dom001_warns_when_the_log_cannot_say_which_domain_failed(tmp_path: Path) -> None:
    # two running suspects and a line naming neither
    both = running_tree(
        tmp_path / "both",
        NO_SLOTS_LINE,
        ("kd-one", full_i440fx("kd-one")),
        ("kd-two", full_i440fx("kd-two")),
    )
    assert {f.status for f in run_checks(both, ("DOM001",), at=AT)["DOM001"]} == {"warn"}
    # one suspect, but the line is older than its start: another domain's
    early = NO_SLOTS_LINE.replace("08:32:21", "08:29:59")
    old = running_tree(tmp_path / "old", early, ("kd-full", full_i440fx("kd-full")))
    assert one(run_checks(old, ("DOM001",), at=AT), "DOM001").status == "warn"
    # one suspect, but no QEMU log says since when it runs
    unknown = running_tree(
        tmp_path / "unknown", NO_SLOTS_LINE, ("kd-full", full_i440fx("kd-full")), qemu_logs=False
    )
    assert one(run_checks(unknown, ("DOM001",), at=AT), "DOM001").status == "warn"
    # a line naming the domain, with no QEMU log to say when it started: a line of the last
    # 7 days counts, an older one is history
    named = NO_SLOTS_LINE + " (name='kd-full')"
    later = running_tree(
        tmp_path / "later", named, ("kd-full", full_i440fx("kd-full")), qemu_logs=False
    )
    assert one(run_checks(later, ("DOM001",), at=AT), "DOM001").status == "fail"
    finding = one(run_checks(later, ("DOM001",), at=AT + 8 * 86400), "DOM001")
    assert finding.status == "warn"
    # a line older than the domain's start is about an earlier run, named or not
    before = running_tree(
        tmp_path / "before",
        named.replace("08:32:21", "08:29:59"),
        ("kd-full", full_i440fx("kd-full")),
    )
    assert one(run_checks(before, ("DOM001",), at=AT), "DOM001").status == "warn"


# --- DOM002 ide-controller-limit ---------------------------------------------------------------


def cdrom(dev: str, bus: str) -> str:
    return f"<disk type='file' device='cdrom'><target dev='{dev}' bus='{bus}'/><readonly/></disk>"


def test_dom002_fails_for_the_real_i440fx_definition_moved_to_q35_with_its_ide_cdrom(
    tmp_path: Path,
) -> None:
    moved = I440FX.replace("machine='pc-i440fx-2.10'", "machine='pc-q35-7.2'").replace(
        "<devices>", "<devices>" + cdrom("hda", "ide"), 1
    )
    finding = one(run_checks(tree(tmp_path, **{"rhel7.4": moved}), ("DOM002",)), "DOM002")
    assert finding.status == "fail"
    assert finding.message == (
        "1 IDE device (hda) on pc-q35-7.2, which has no IDE controller: libvirt refuses the "
        'domain ("IDE controllers are unsupported for this QEMU binary or machine type"); use '
        "bus='sata' or bus='scsi' with a virtio-scsi controller"
    )


def test_dom002_fails_for_a_fifth_ide_device_on_i440fx(tmp_path: Path) -> None:
    disks = "".join(cdrom(f"hd{letter}", "ide") for letter in "abcde")
    finding = one(
        on_node(tmp_path, "DOM002", guest("kd-ide5", disks, machine="pc-i440fx-7.2")), "DOM002"
    )
    assert finding.status == "fail"
    assert finding.message == (
        "5 IDE devices (hda, hdb, hdc, hdd, hde) but pc-i440fx-7.2 has one IDE controller with "
        '4 places; hde would need another: libvirt refuses the domain ("Only 1 IDE controller '
        'is supported"); move disks to virtio and CD-ROMs to SCSI or SATA'
    )


def test_dom002_fails_for_a_second_ide_controller_on_the_real_i440fx_definition(
    tmp_path: Path,
) -> None:
    edited = I440FX.replace("<devices>", "<devices><controller type='ide' index='1'/>", 1)
    finding = one(run_checks(tree(tmp_path, **{"rhel7.4": edited}), ("DOM002",)), "DOM002")
    assert (finding.status, finding.message) == (
        "fail",
        "IDE controller index 1 on pc-i440fx-2.10, which has one: libvirt refuses the domain "
        '("Only a single IDE controller is supported for this machine type"); remove the extra '
        "<controller>",
    )


def test_dom002_passes_for_four_ide_devices_on_i440fx_and_none_on_q35(tmp_path: Path) -> None:
    disks = "".join(cdrom(f"hd{letter}", "ide") for letter in "abcd")
    findings = on_node(
        tmp_path,
        "DOM002",
        guest("kd-ide4", disks, machine="pc-i440fx-7.2"),
        guest("kd-sata", cdrom("sda", "sata")),
    )
    assert one(findings, "DOM002", "domain:kd-ide4").message == (
        "4 IDE devices (hda, hdb, hdc, hdd) on the one IDE controller (4 of 4 places)"
    )
    assert one(findings, "DOM002", "domain:kd-sata").message == "no IDE devices"
    assert {f.status for f in findings["DOM002"]} == {"pass"}


# --- DOM003 cdrom-on-virtio-bus ----------------------------------------------------------------


def test_dom003_fails_for_a_cdrom_on_virtio(tmp_path: Path) -> None:
    finding = one(on_node(tmp_path, "DOM003", guest("kd-cd", cdrom("vda", "virtio"))), "DOM003")
    assert finding.status == "fail"
    assert finding.message.startswith(
        "CD-ROM vda is on the virtio bus, which has no removable media: libvirt refuses the "
        "domain (\"disk type of 'vda' does not support ejectable media\")"
    )
    assert finding.evidence["cdroms"] == [
        "<disk type='file' device='cdrom'><target dev='vda' bus='virtio'/><readonly/></disk>"
    ]


def test_dom003_passes_for_a_cdrom_on_scsi_and_for_the_real_guests_without_one(
    tmp_path: Path,
) -> None:
    scsi = guest("kd-cd", "<controller type='scsi' model='virtio-scsi'/>" + cdrom("sda", "scsi"))
    assert one(on_node(tmp_path, "DOM003", scsi), "DOM003").message == "CD-ROM: sda on scsi"
    findings = run_checks(tree(tmp_path, a=Q35, b=I440FX), ("DOM003",))
    assert [(f.status, f.message) for f in findings["DOM003"]] == [("pass", "no CD-ROM")] * 2


# --- DOM004 boot-order-conflict ----------------------------------------------------------------


def test_dom004_fails_for_the_real_definition_given_a_per_device_boot_order(
    tmp_path: Path,
) -> None:
    """libvirt (even the test driver) refuses this XML, so it can only be met as a file."""
    edited = I440FX.replace(
        "<target dev='vda' bus='virtio'/>", "<target dev='vda' bus='virtio'/><boot order='1'/>"
    )
    finding = one(run_checks(tree(tmp_path, **{"rhel7.4": edited}), ("DOM004",)), "DOM004")
    assert finding.status == "fail"
    assert finding.message == (
        "both <os><boot dev='hd'/></os> and per-device boot order (disk vda): libvirt refuses "
        'the domain ("per-device boot elements cannot be used together with os/boot elements"); '
        "keep only the per-device <boot order=.../>"
    )
    assert finding.evidence["per_device"] == ["disk vda: <boot order='1'/>"]


def test_dom004_fails_when_two_devices_share_an_order(tmp_path: Path) -> None:
    two = guest(
        "kd-boot", nic("<boot order='1'/>") + nic("<boot order='1'/>", mac="52:54:00:00:00:02")
    )
    finding = one(run_checks(tree(tmp_path, kd=two), ("DOM004",)), "DOM004")
    assert finding.status == "fail"
    assert finding.message == (
        "boot order 1 is given to interface 52:54:00:00:00:01 and interface 52:54:00:00:00:02: "
        "libvirt "
        "refuses the domain (\"boot order '1' used for more than one device\")"
    )


def test_dom004_passes_for_one_style_only(tmp_path: Path) -> None:
    per_device = guest("kd-order", nic("<boot order='2'/>") + cdrom("sda", "sata"))
    per_device = per_device.replace("<readonly/>", "<readonly/><boot order='1'/>")
    findings = on_node(tmp_path, "DOM004", per_device)
    assert one(findings, "DOM004").message == (
        "per-device boot order (1: disk sda, 2: interface 52:54:00:00:00:01)"
    )
    real = one(run_checks(tree(tmp_path, **{"rhel7.4": I440FX}), ("DOM004",)), "DOM004")
    assert (real.status, real.message) == ("pass", "boots by <os><boot dev='hd'/></os>")


# --- DOM005 disk-used-twice --------------------------------------------------------------------


def disk(image: str, dev: str = "vda", flags: str = "") -> str:
    return (
        "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source file='{image}'/><target dev='{dev}' bus='virtio'/>{flags}</disk>"
    )


IMAGE = "/var/lib/libvirt/images/kd-shared.qcow2"


def test_dom005_fails_for_an_image_a_running_domain_holds(tmp_path: Path) -> None:
    findings = on_node(
        tmp_path,
        "DOM005",
        guest("kd-a", disk(IMAGE)),
        guest("kd-b", disk(IMAGE.replace("images/", "images/./"))),
        running=("kd-a",),
    )
    stopped = one(findings, "DOM005", "domain:kd-b")
    assert stopped.status == "fail"
    assert stopped.message == (
        f"{IMAGE} (vda (writable)) is held by running kd-a vda (writable): this domain cannot "
        'start while it runs ("Failed to get "write" lock")'
    )
    holder = one(findings, "DOM005", "domain:kd-a")
    assert holder.status == "fail"
    assert "kd-b vda (writable), which cannot start while this domain runs" in holder.message


def test_dom005_warns_when_neither_runs_and_fails_for_an_image_named_twice(tmp_path: Path) -> None:
    findings = on_node(
        tmp_path,
        "DOM005",
        guest("kd-a", disk(IMAGE)),
        guest("kd-b", disk(IMAGE)),
        guest("kd-twice", disk(IMAGE + "2") + disk(IMAGE + "2", "vdb")),
    )
    assert one(findings, "DOM005", "domain:kd-a").status == "warn"
    assert "they cannot run at the same time" in one(findings, "DOM005", "domain:kd-b").message
    twice = one(findings, "DOM005", "domain:kd-twice")
    assert (twice.status, twice.message) == (
        "fail",
        f"{IMAGE}2 is opened twice by this domain (vda (writable), vdb (writable)): it cannot "
        'start ("Failed to get "write" lock")',
    )


NBD = (
    "<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
    "<source protocol='nbd' name='{name}'><host name='{host}' port='10809'/></source>"
    "<target dev='{dev}' bus='virtio'/></disk>"
)


def test_dom005_warns_for_a_network_disk_named_twice_which_no_lock_refuses() -> None:
    """libvirt 9.0's own suite accepts one domain with the same nbd export twice
    (disk-network-nbd): QEMU locks no network disk, so only the data is at risk."""
    twice = NBD.format(name="bar", host="example.org", dev="vda") + NBD.format(
        name="bar", host="example.org", dev="vdb"
    )
    elsewhere = NBD.format(name="bar", host="example.org", dev="vda") + NBD.format(
        name="bar", host="example.net", dev="vdb"
    )
    domains = Domains(
        (
            parse_domain(guest("kd-nbd", twice), active=False, persistent=True, origin="t"),
            parse_domain(guest("kd-two", elsewhere), active=False, persistent=True, origin="t"),
        ),
        "test",
    )
    by_name = {f.subject: f for f in domain_checks.disk_used_twice(domains)}
    assert (by_name["domain:kd-nbd"].status, by_name["domain:kd-nbd"].message) == (
        "warn",
        "network:nbd://example.org:10809/bar is opened twice by this domain (vda (writable), "
        "vdb (writable)): no image lock guards a network disk, so both start, and two writers "
        "corrupt it",
    )
    # the same export name on another server is another disk: kd-two shares only one of its
    two = by_name["domain:kd-two"]
    assert two.status == "warn"
    assert two.message.startswith(
        "network:nbd://example.org:10809/bar (vda (writable)) is also named by kd-nbd vda "
        "(writable), kd-nbd vdb (writable): "
    )


def test_dom005_fails_for_a_reader_of_an_image_a_running_domain_writes(tmp_path: Path) -> None:
    findings = on_node(
        tmp_path,
        "DOM005",
        guest("kd-w", disk(IMAGE)),
        guest("kd-r", disk(IMAGE, flags="<readonly/>")),
        running=("kd-w",),
    )
    reader = one(findings, "DOM005", "domain:kd-r")
    assert reader.status == "fail"
    assert reader.message.endswith('("Failed to get shared "write" lock")')


def test_dom005_passes_for_read_only_and_shareable_users(tmp_path: Path) -> None:
    raw = IMAGE.replace("qcow2", "raw")
    findings = on_node(
        tmp_path,
        "DOM005",
        guest("kd-a", disk(IMAGE, flags="<readonly/>") + disk(raw, "vdb", "<shareable/>")),
        guest("kd-b", disk(IMAGE, flags="<readonly/>") + disk(raw, "vdb", "<shareable/>")),
        running=("kd-a", "kd-b"),
    )
    assert [(f.status, f.message) for f in findings["DOM005"]] == [
        ("pass", "2 images, none opened by another disk")
    ] * 2


def test_image_locking_model_is_linear_for_a_thousand_readers_and_one_writer() -> None:
    readers = [ImageUse(f"kd-{n}", False, "sda", True, False) for n in range(1000)]
    assert clashing(readers) == []
    writer = ImageUse("kd-w", True, "vda", False, False)
    assert len(clashing([*readers, writer])) == 1001
    shared = [ImageUse(f"kd-{n}", False, "vdb", False, True) for n in range(3)]
    assert clashing(shared) == []
    exclusive_reader = ImageUse("kd-r", False, "vdb", True, False)
    assert clashing([*shared, exclusive_reader]) == [*shared, exclusive_reader]


# --- DOM006 graphics-port-conflict -------------------------------------------------------------


def vnc(port: int, listen: str = "127.0.0.1") -> str:
    return f"<graphics type='vnc' port='{port}' autoport='no' listen='{listen}'/>"


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A socket listening on 127.0.0.1, on a port the kernel picked."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock
    sock.close()


def test_dom006_fails_for_a_port_a_program_listens_on(
    tmp_path: Path, listener: socket.socket
) -> None:
    port = listener.getsockname()[1]
    findings = on_node(
        tmp_path,
        "DOM006",
        guest("kd-same", vnc(port)),
        guest("kd-other-address", vnc(port, "192.0.2.7")),
        guest("kd-any", vnc(port, "0.0.0.0").replace("vnc", "spice")),
    )
    taken = one(findings, "DOM006", "domain:kd-same")
    assert taken.status == "fail"
    assert taken.message.startswith(
        f"VNC port {port} on 127.0.0.1 (fixed) is taken by a socket listening on "
        f'127.0.0.1:{port} (uid 0): this domain cannot start (QEMU: "Failed to find an '
        'available port: Address already in use")'
    )
    assert one(findings, "DOM006", "domain:kd-any").status == "fail"
    # Not the listener's address: only the other domains stand in the way.
    other = one(findings, "DOM006", "domain:kd-other-address")
    assert other.status == "warn"
    assert "is also fixed for kd-any, kd-same: they cannot run at the same time" in other.message


def test_dom006_fails_for_a_port_a_running_domain_holds(tmp_path: Path) -> None:
    findings = on_node(
        tmp_path,
        "DOM006",
        guest("kd-runs", vnc(5977)),
        guest("kd-off", vnc(5977)),
        running=("kd-runs",),
    )
    stopped = one(findings, "DOM006", "domain:kd-off")
    assert (stopped.status, stopped.message) == (
        "fail",
        "VNC port 5977 on 127.0.0.1 (fixed) is held by running kd-runs (VNC): this domain "
        'cannot start ("Failed to reserve port 5977")',
    )
    holder = one(findings, "DOM006", "domain:kd-runs")
    assert holder.status == "info"


def test_dom006_passes_for_free_fixed_ports_and_automatic_ones(
    tmp_path: Path, listener: socket.socket
) -> None:
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()  # nobody listens there now
    findings = on_node(
        tmp_path,
        "DOM006",
        guest("kd-fixed", vnc(port)),
        guest("kd-auto", "<graphics type='vnc' autoport='yes'/>"),
        guest("kd-headless"),
        guest("kd-running", vnc(5978)),
        running=("kd-running",),
    )
    assert one(findings, "DOM006", "domain:kd-running").message == (
        "holds VNC port 5978 on 127.0.0.1 (fixed), and no other domain names it"
    )
    assert one(findings, "DOM006", "domain:kd-fixed").message == (
        f"VNC port {port} on 127.0.0.1 (fixed): free"
    )
    assert one(findings, "DOM006", "domain:kd-auto").message == ("no fixed console port (vnc)")
    assert one(findings, "DOM006", "domain:kd-headless").message == "no graphical console"


# --- DOM007 memory-implausibly-small -----------------------------------------------------------


def test_dom007_warns_for_memory_written_without_a_unit(tmp_path: Path) -> None:
    # a warning, not a failure: libvirt and QEMU start such a guest (integration test)
    finding = one(
        on_node(tmp_path, "DOM007", guest("kd-tiny", memory="<memory>2048</memory>")), "DOM007"
    )
    assert (finding.status, finding.message) == (
        "warn",
        "<memory unit='KiB'>2048</memory> is 2 MiB: nothing boots in under 16 MiB; "
        "<memory unit='MiB'>2048</memory> (2 GiB) was probably meant",
    )


def test_dom007_warns_under_128_mib_and_names_gib_for_a_small_mib_number(tmp_path: Path) -> None:
    small = one(
        on_node(tmp_path, "DOM007", guest("kd-64", memory="<memory unit='MiB'>64</memory>")),
        "DOM007",
    )
    assert small.status == "warn"
    assert small.message == (
        "<memory unit='KiB'>65536</memory> is 64 MiB: few systems boot in under 128 MiB"
    )
    written = tree(tmp_path, **{"kd-4": guest("kd-4", memory="<memory unit='MiB'>4</memory>")})
    finding = one(run_checks(written, ("DOM007",)), "DOM007")
    assert finding.message == (
        "<memory unit='MiB'>4</memory> is 4 MiB: nothing boots in under 16 MiB; "
        "<memory unit='GiB'>4</memory> (4 GiB) was probably meant"
    )


def test_dom007_passes_for_128_mib_and_the_real_guests(tmp_path: Path) -> None:
    assert one(on_node(tmp_path, "DOM007", guest("kd-ok")), "DOM007").message == (
        "128 MiB of memory"
    )
    findings = run_checks(tree(tmp_path, a=Q35, b=I440FX), ("DOM007",))
    assert sorted(f.message for f in findings["DOM007"]) == [
        "2 GiB of memory",
        "4 GiB of memory",
    ]


def test_likely_meant_climbs_to_the_first_plausible_unit() -> None:
    assert likely_meant(4, "KiB") == "<memory unit='GiB'>4</memory> (4 GiB)"
    assert likely_meant(512, "k") == "<memory unit='MiB'>512</memory> (512 MiB)"
    assert likely_meant(1, "G") is None  # 1 GiB is plausible, nothing to climb to
    assert likely_meant(100, "MB") == "<memory unit='GB'>100</memory> (93.1323 GiB)"


# --- DOM008 vcpus-need-eim ---------------------------------------------------------------------

EIM = "<iommu model='intel'><driver intremap='on' eim='on'/></iommu>"


def test_dom008_fails_for_256_vcpus_without_an_iommu(tmp_path: Path) -> None:
    xml = guest("kd-big", vcpu="<vcpu current='1'>256</vcpu>")
    finding = one(on_node(tmp_path, "DOM008", xml), "DOM008")
    assert finding.status == "fail"
    assert finding.message.startswith(
        '256 vCPUs but no <iommu> has no extended interrupt mode ("more than 255 vCPUs require '
        'extended interrupt mode enabled on the iommu device"): libvirt refuses the domain'
    )


def test_dom008_fails_without_the_split_ioapic_and_leaves_i440fx_to_dom016(
    tmp_path: Path,
) -> None:
    """Even the test driver refuses remapping without the split I/O APIC: a file then. An
    i440fx guest with more than 255 vCPUs is one problem, its machine type's limit: DOM016
    fails it, DOM008 says so and does not fail it too."""
    findings = run_checks(
        tree(
            tmp_path,
            a=guest("kd-unsplit", EIM, vcpu="<vcpu current='1'>256</vcpu>"),
            b=guest("kd-pc", vcpu="<vcpu current='1'>288</vcpu>", machine="pc-i440fx-7.2"),
        ),
        ("DOM008", "DOM016"),
    )
    assert "(\"IOMMU interrupt remapping requires split I/O APIC (ioapic driver='qemu')\")" in (
        one(findings, "DOM008", "domain:kd-unsplit").message
    )
    deferred = one(findings, "DOM008", "domain:kd-pc")
    assert (deferred.status, deferred.message) == (
        "skip",
        "288 vCPUs on pc-i440fx-7.2, which takes at most 255: vcpus-exceed-machine-limit "
        "(DOM016) reports it",
    )
    limit = one(findings, "DOM016", "domain:kd-pc")
    assert limit.status == "fail"
    assert "Maximum CPUs greater than specified machine type limit 255" in limit.message


def test_dom008_passes_with_eim_and_for_the_real_guests(tmp_path: Path) -> None:
    xml = guest(
        "kd-big",
        EIM,
        vcpu="<vcpu current='1'>256</vcpu>",
        features="<acpi/><ioapic driver='qemu'/>",
    )
    finding = one(on_node(tmp_path, "DOM008", xml), "DOM008")
    assert (finding.status, finding.message) == (
        "pass",
        "256 vCPUs with <iommu model='intel'><driver intremap='on' eim='on'/></iommu> and the "
        "split I/O APIC",
    )
    findings = run_checks(tree(tmp_path, a=Q35, b=I440FX), ("DOM008",))
    assert sorted(f.message for f in findings["DOM008"]) == [
        "4 vCPUs: no interrupt remapping needed",
        "8 vCPUs: no interrupt remapping needed",
    ]


@pytest.mark.parametrize("code", [f"DOM00{n}" for n in range(1, 9)])
def test_every_dom_check_passes_once_on_a_host_without_domains(tmp_path: Path, code: str) -> None:
    finding = one(run_checks(tree(tmp_path), (code,)), code)
    assert (finding.status, finding.message) == (
        "pass",
        "no domains (definition and status files)",
    )


# --- scale: nothing per domain may be quadratic ----------------------------------------------


def clones(count: int) -> Domains:
    """`count` clones of one template that kept its writable image, its fixed VNC port and an
    install ISO; every other one runs: the worst case for DOM005 and DOM006."""
    template = parse_domain(
        guest(
            "kd-clone",
            disk(IMAGE)
            + "<disk type='file' device='cdrom'><source file='/srv/iso/kd.iso'/>"
            + "<target dev='sda' bus='sata'/><readonly/></disk>"
            + vnc(5999),
        ),
        active=False,
        persistent=True,
        origin="test",
    )
    items = tuple(replace(template, name=f"kd-clone-{n}", active=n % 2 == 0) for n in range(count))
    return Domains(items, "test")


DOM_CHECKS = [
    domain_checks.pci_slots_exhausted,
    domain_checks.ide_controller_limit,
    domain_checks.cdrom_on_virtio_bus,
    domain_checks.boot_order_conflict,
    domain_checks.disk_used_twice,
    domain_checks.graphics_port_conflict,
    domain_checks.memory_implausibly_small,
    domain_checks.vcpus_need_eim,
]


def test_every_dom_check_grows_linearly_with_clones_sharing_an_image_and_a_port() -> None:
    def work(count: int) -> int:
        domains = clones(count)
        totals: list[int] = []
        lines = lines_executed(
            lambda: totals.append(sum(len(list(check(domains))) for check in DOM_CHECKS))
        )
        assert totals == [8 * count]
        return lines

    small, large = work(400), work(1600)
    # Linear work grows 4x; a quadratic step would grow 16x.
    assert large / small < 6, (small, large)
