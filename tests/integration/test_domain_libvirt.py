"""DOM checks against the lab's real libvirtd (qemu:///system, KVM): the check predicts, then
libvirt or QEMU says it (`virsh attach-device --live`, `virsh define`, `virsh start`), and the
two must agree, down to the quoted error.

Every domain here is named kd-dom..., has 128 MiB (but the DOM007 one) and no network: the NICs
hot-plugged are QEMU user-mode ones (`<interface type='user'>`). The `lab` fixture destroys and
undefines each domain with --nvram and removes its log and images, also when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kdsnap import one, run_checks
from kdtest import answers, kvm_device, require

pytestmark = pytest.mark.integration
URI = "qemu:///system"
SOCKET = "/run/libvirt/libvirt-sock"
IMAGES = Path("/var/lib/libvirt/images")
LOGS = Path("/var/log/libvirt/qemu")
NIC = "<interface type='user'><model type='virtio'/></interface>"
# Names and images carry this run's tag: two pytest sessions on one machine (a developer's
# parallel helpers) must not start, lock or remove each other's domains and images.
TAG = f"{os.getpid():x}"


def virsh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["virsh", "-c", URI, *args], capture_output=True, text=True, timeout=120, check=False
    )


class Lab:
    """Defines kd-dom domains and makes images; `clean()` removes all of it."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.names: list[str] = []
        self.images: list[Path] = []

    def define(self, xml: str) -> subprocess.CompletedProcess[str]:
        found = re.search(r"<name>(kd-dom[\w-]*)</name>", xml)
        assert found is not None, "test domains are named kd-dom..."
        name = found.group(1)
        self.names.append(name)
        path = self.tmp_path / f"{name}.xml"
        path.write_text(xml)
        return virsh("define", str(path))

    def defined(self, xml: str) -> str:
        done = self.define(xml)
        assert done.returncode == 0, done.stderr
        return self.names[-1]

    def running(self, xml: str) -> str:
        name = self.defined(xml)
        started = virsh("start", name)
        assert started.returncode == 0, started.stderr
        return name

    def attach(self, name: str, xml: str) -> subprocess.CompletedProcess[str]:
        path = self.tmp_path / f"{name}-device.xml"
        path.write_text(xml)
        return virsh("attach-device", name, str(path), "--live")

    def image(self, name: str) -> Path:
        path = IMAGES / f"{name}-{TAG}.qcow2"
        self.images.append(path)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True)
        return path

    def clean(self) -> None:
        for name in self.names:
            virsh("destroy", name)
            virsh("undefine", "--nvram", name)
            with contextlib.suppress(FileNotFoundError):
                (LOGS / f"{name}.log").unlink()
        for path in self.images:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        left = [n for n in self.names if virsh("dominfo", n).returncode == 0]
        assert left == [], f"still defined: {left}"


@pytest.fixture(scope="module")
def daemon() -> None:
    require(os.geteuid() == 0, "root")
    require(answers(SOCKET), f"libvirtd answering on {SOCKET} (make setup-lab starts it)")
    require(shutil.which("virsh") is not None, "virsh (libvirt-clients)")
    require(shutil.which("qemu-img") is not None, "qemu-img (qemu-utils)")
    kvm_device()


@pytest.fixture
def lab(daemon: None, tmp_path: Path) -> Iterator[Lab]:
    made = Lab(tmp_path)
    try:
        yield made
    finally:
        made.clean()


def guest(
    name: str,
    devices: str = "",
    *,
    machine: str = "q35",
    memory: str = "<memory unit='MiB'>128</memory>",
    vcpu: str = "<vcpu>1</vcpu>",
    features: str = "<acpi/>",
    os_boot: str = "",
) -> str:
    """A KVM guest named NAME-TAG, with no disk and no network; no USB controller and no
    balloon, so that the PCI slots hold only what the test puts there."""
    return f"""<domain type='kvm'>
  <name>{name}-{TAG}</name>
  {memory}
  {vcpu}
  <os><type arch='x86_64' machine='{machine}'>hvm</type>{os_boot}</os>
  <features>{features}</features>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
    {devices}
  </devices>
</domain>
"""


def finding(code: str, name: str) -> Any:
    return one(run_checks(Path("/"), (code,), uri=URI), code, f"domain:{name}")


def from_file(tmp_path: Path, code: str, name: str, xml: str) -> Any:
    """The check on a definition libvirt refused, met as a file (hand-edited, or restored)."""
    root = tmp_path / "tree"
    (root / "etc/libvirt/qemu").mkdir(parents=True, exist_ok=True)
    (root / f"etc/libvirt/qemu/{name}.xml").write_text(xml)
    return one(run_checks(root, (code,)), code, f"domain:{name}")


def pci(bus: int, slot: int, function: int = 0) -> str:
    return (
        f"<address type='pci' domain='0x0000' bus='0x{bus:02x}' slot='0x{slot:02x}' "
        f"function='0x{function:x}'/>"
    )


# --- DOM001: predicted, then `virsh attach-device --live` ------------------------------------


def test_dom001_on_a_running_q35_guest_follows_its_root_ports(lab: Lab) -> None:
    """Two root ports, a NIC in the first: one slot free, then none after a hot-plug."""
    ports = "".join(
        f"<controller type='pci' index='{i}' model='pcie-root-port'>{pci(0, 1, i - 1)}</controller>"
        for i in (1, 2)
    )
    nic = NIC.replace("</interface>", f"{pci(1, 0)}</interface>")
    name = lab.running(guest("kd-dom001-q35", ports + nic))

    before = finding("DOM001", name)
    assert (before.status, before.message) == ("pass", "1 free hot-plug slot: pcie-root-port 2")
    attached = lab.attach(name, NIC)
    assert attached.returncode == 0, attached.stderr

    after = finding("DOM001", name)
    assert after.status == "warn"  # it runs; only the next hot-plug fails
    assert after.evidence["free_count"] == 0
    assert after.message.startswith("0 free hot-plug slots: all 2 pcie-root-ports are occupied")
    refused = lab.attach(name, NIC)
    assert refused.returncode != 0
    assert "error: internal error: No more available PCI slots" in refused.stderr
    assert '"No more available PCI slots"' in after.message
    # libvirtd.log now holds the refusal (naming no domain), later than this domain's start
    failed = finding("DOM001", name)
    assert failed.status == "fail", failed.message
    assert "No more available PCI slots" in failed.evidence["failed_attach"]["line"]


def test_dom001_on_a_running_i440fx_guest_follows_its_pci_root_slots(lab: Lab) -> None:
    """NICs in pci-root slots 3-31 (no video): slot 2 is the last free one."""
    nics = "".join(NIC.replace("</interface>", f"{pci(0, s)}</interface>") for s in range(3, 32))
    name = lab.running(guest("kd-dom001-pc", nics, machine="pc"))

    before = finding("DOM001", name)
    assert (before.status, before.message) == ("pass", "1 free hot-plug slot: pci-root slot 0x02")
    attached = lab.attach(name, NIC)
    assert attached.returncode == 0, attached.stderr

    after = finding("DOM001", name)
    assert after.status == "warn"
    assert after.message.startswith(
        "0 free hot-plug slots: every pci-root and pci-bridge slot is occupied"
    )
    refused = lab.attach(name, NIC)
    assert refused.returncode != 0
    assert "error: internal error: No more available PCI slots" in refused.stderr


def test_dom001_predicts_that_qemu_refuses_pci_root_hotplug_without_acpi(lab: Lab) -> None:
    name = lab.running(guest("kd-dom001-noacpi", machine="pc", features=""))
    predicted = finding("DOM001", name)
    assert predicted.status == "warn"
    assert "(\"Bus 'pci.0' does not support hotplugging\")" in predicted.message
    refused = lab.attach(name, NIC)
    assert refused.returncode != 0
    assert "Bus 'pci.0' does not support hotplugging" in refused.stderr
    failed = finding("DOM001", name)
    assert failed.status == "fail", failed.message
    assert "does not support hotplugging" in failed.evidence["failed_attach"]["line"]


# --- what `virsh define` refuses, quoted by the check on the same XML -------------------------

IDE_CDROM = "<disk type='file' device='cdrom'><target dev='{}' bus='{}'/><readonly/></disk>"
EIM = "<iommu model='intel'><driver intremap='on' eim='on'/></iommu>"
BIG = "<vcpu current='1'>256</vcpu>"
REFUSED = [
    (
        "DOM002",
        guest("kd-dom002-q35", IDE_CDROM.format("hda", "ide")),
        "error: unsupported configuration: IDE controllers are unsupported for this QEMU "
        "binary or machine type",
    ),
    (
        "DOM002",
        guest(
            "kd-dom002-five",
            "".join(IDE_CDROM.format(f"hd{x}", "ide") for x in "abcde"),
            machine="pc",
        ),
        "error: internal error: Only 1 IDE controller is supported",
    ),
    (
        "DOM002",
        guest("kd-dom002-second", "<controller type='ide' index='1'/>", machine="pc"),
        "error: unsupported configuration: Only a single IDE controller is supported for this "
        "machine type",
    ),
    (
        "DOM003",
        guest("kd-dom003", IDE_CDROM.format("vda", "virtio")),
        "error: unsupported configuration: disk type of 'vda' does not support ejectable media",
    ),
    (
        "DOM004",
        guest(
            "kd-dom004-mixed",
            NIC.replace("</", "<boot order='1'/></", 1),
            os_boot="<boot dev='hd'/>",
        ),
        "error: unsupported configuration: per-device boot elements cannot be used together "
        "with os/boot elements",
    ),
    (
        "DOM004",
        guest("kd-dom004-twice", NIC.replace("</", "<boot order='1'/></", 1) * 2),
        "error: unsupported configuration: boot order '1' used for more than one device",
    ),
    (
        "DOM008",
        guest("kd-dom008-no-iommu", vcpu=BIG),
        "error: unsupported configuration: more than 255 vCPUs require extended interrupt mode "
        "enabled on the iommu device",
    ),
    (
        "DOM016",  # DOM008 leaves a machine type that takes at most 255 vCPUs to DOM016
        guest("kd-dom016-pc", vcpu=BIG, machine="pc"),
        "error: unsupported configuration: Maximum CPUs greater than specified machine type "
        "limit 255",
    ),
    (
        "DOM008",
        guest("kd-dom008-unsplit", EIM, vcpu=BIG),
        "error: unsupported configuration: IOMMU interrupt remapping requires split I/O APIC "
        "(ioapic driver='qemu')",
    ),
]


@pytest.mark.parametrize(
    ("code", "xml", "said"),
    REFUSED,
    ids=[re.findall(r"<name>(.*)-\w+</name>", x)[0] for _, x, _ in REFUSED],
)
def test_the_check_quotes_what_virsh_define_refuses(
    lab: Lab, tmp_path: Path, code: str, xml: str, said: str
) -> None:
    refused = lab.define(xml)
    assert refused.returncode != 0
    assert said in refused.stderr.splitlines()
    name = lab.names[-1]
    predicted = from_file(tmp_path, code, name, xml)
    assert predicted.status == "fail"
    libvirt_message = said.split(": ", 2)[-1]  # without "error: <kind>:"
    assert f'"{libvirt_message}"' in predicted.message


ACCEPTED = [
    (
        "DOM002",
        guest(
            "kd-dom002-four",
            "".join(IDE_CDROM.format(f"hd{x}", "ide") for x in "abcd"),
            machine="pc",
        ),
        "4 IDE devices (hda, hdb, hdc, hdd) on the one IDE controller (4 of 4 places)",
    ),
    (
        "DOM003",
        guest("kd-dom003-scsi", IDE_CDROM.format("sda", "scsi")),
        "CD-ROM: sda on scsi",
    ),
    (
        "DOM004",
        guest("kd-dom004-order", NIC.replace("</", "<boot order='1'/></", 1)),
        "per-device boot order (1: interface 52:54:00:",
    ),
    (
        "DOM008",
        guest("kd-dom008-eim", EIM, vcpu=BIG, features="<acpi/><ioapic driver='qemu'/>"),
        "256 vCPUs with <iommu model='intel'><driver intremap='on' eim='on'/></iommu> and "
        "the split I/O APIC",
    ),
]


@pytest.mark.parametrize(
    ("code", "xml", "message"),
    ACCEPTED,
    ids=[re.findall(r"<name>(.*)-\w+</name>", x)[0] for _, x, _ in ACCEPTED],
)
def test_the_check_passes_what_libvirt_defines(lab: Lab, code: str, xml: str, message: str) -> None:
    name = lab.defined(xml)
    passed = finding(code, name)
    assert passed.status == "pass"
    assert passed.message.startswith(message)


def test_dom008_passes_a_256_vcpu_guest_that_starts(lab: Lab) -> None:
    name = lab.running(
        guest("kd-dom008-runs", EIM, vcpu=BIG, features="<acpi/><ioapic driver='qemu'/>")
    )
    assert finding("DOM008", name).status == "pass"


# --- DOM005: predicted, then `virsh start` ----------------------------------------------------


def disk(image: Path, dev: str = "vda", flags: str = "") -> str:
    return (
        "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source file='{image}'/><target dev='{dev}' bus='virtio'/>{flags}</disk>"
    )


def test_dom005_predicts_the_write_lock_failures(lab: Lab) -> None:
    image = lab.image("kd-dom005")
    writer = lab.running(guest("kd-dom005-writer", disk(image)))
    second = lab.defined(guest("kd-dom005-second", disk(image)))
    reader = lab.defined(guest("kd-dom005-reader", disk(image, flags="<readonly/>")))
    own = lab.image("kd-dom005-own")
    twice = lab.defined(guest("kd-dom005-twice", disk(own) + disk(own, "vdb")))
    findings = run_checks(Path("/"), ("DOM005",), uri=URI)

    assert one(findings, "DOM005", f"domain:{writer}").status == "fail"
    for name, lock in (
        (second, 'Failed to get "write" lock'),
        (reader, 'Failed to get shared "write" lock'),
    ):
        predicted = one(findings, "DOM005", f"domain:{name}")
        assert predicted.status == "fail"
        assert f"held by running {writer} vda (writable)" in predicted.message
        assert predicted.message.endswith(f'("{lock}")')
        started = virsh("start", name)
        assert started.returncode != 0
        assert f"{lock}\nIs another process using the image [{image}]?" in started.stderr

    alone = one(findings, "DOM005", f"domain:{twice}")
    assert alone.message.startswith(f"{own} is opened twice by this domain")
    started = virsh("start", twice)
    assert started.returncode != 0
    assert f'Failed to get "write" lock\nIs another process using the image [{own}]?' in (
        started.stderr
    )


def test_dom005_passes_read_only_users_that_start_together(lab: Lab) -> None:
    image = lab.image("kd-dom005-base")
    names = [
        lab.running(guest(f"kd-dom005-ro{n}", disk(image, flags="<readonly/>"))) for n in (1, 2)
    ]
    findings = run_checks(Path("/"), ("DOM005",), uri=URI)
    for name in names:
        assert one(findings, "DOM005", f"domain:{name}").message == (
            "1 image, none opened by another disk"
        )


# --- DOM006: predicted, then `virsh start` ----------------------------------------------------


@pytest.fixture
def free_port() -> int:
    """A port nothing listens on now (the kernel's choice, released at once)."""
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def vnc(port: int) -> str:
    return f"<graphics type='vnc' port='{port}' autoport='no' listen='127.0.0.1'/>"


def test_dom006_predicts_that_libvirt_cannot_reserve_a_held_port(lab: Lab, free_port: int) -> None:
    first = lab.defined(guest("kd-dom006-first", vnc(free_port)))
    assert finding("DOM006", first).message.startswith(f"VNC port {free_port} on 127.0.0.1")
    assert virsh("start", first).returncode == 0
    second = lab.defined(guest("kd-dom006-second", vnc(free_port)))
    predicted = finding("DOM006", second)
    assert predicted.status == "fail"
    assert predicted.message.endswith(f'("Failed to reserve port {free_port}")')
    started = virsh("start", second)
    assert started.returncode != 0
    assert f"error: internal error: Failed to reserve port {free_port}" in started.stderr


def test_dom006_predicts_that_qemu_finds_the_port_in_use(lab: Lab, free_port: int) -> None:
    name = lab.defined(guest("kd-dom006-taken", vnc(free_port)))
    with contextlib.closing(socket.socket()) as squatter:
        squatter.bind(("127.0.0.1", free_port))
        squatter.listen()
        predicted = finding("DOM006", name)
        started = virsh("start", name)
    assert predicted.status == "fail"
    assert predicted.message.endswith(
        '(QEMU: "Failed to find an available port: Address already in use")'
    )
    assert started.returncode != 0
    assert (
        f"-vnc 127.0.0.1:{free_port - 5900},audiodev=audio1: Failed to find an available port: "
        "Address already in use" in started.stderr
    )


# --- DOM007: libvirt and QEMU say nothing -----------------------------------------------------


def test_dom007_warns_of_a_2_mib_guest_that_libvirt_starts_without_a_word(lab: Lab) -> None:
    name = lab.defined(guest("kd-dom007-tiny", memory="<memory>2048</memory>"))
    predicted = finding("DOM007", name)
    assert predicted.status == "warn"  # libvirt and QEMU accept it: not a `fail`
    assert predicted.message == (
        "<memory unit='KiB'>2048</memory> is 2 MiB: nothing boots in under 16 MiB; "
        "<memory unit='MiB'>2048</memory> (2 GiB) was probably meant"
    )
    started = virsh("start", name)
    assert started.returncode == 0, started.stderr
    assert virsh("domstate", name).stdout.strip() == "running"
    normal = lab.defined(guest("kd-dom007-ok"))
    assert finding("DOM007", normal).message == "128 MiB of memory"
