"""Host identity and whether it runs inside a hypervisor."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, field
from typing import Any, Optional

from doctor.facts import FactContext, fact
from doctor.facts.util import read_optional
from doctor.record import record
from doctor.sources.base import SourceError


@record
class HostInfo:
    hostname: Optional[str]
    kernel: Optional[str]
    os: Optional[str]
    arch: Optional[str]
    arch_from: Optional[str]  # how the architecture was learned

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def os_release_name(text: str) -> Optional[str]:
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip().strip("\"'")
    return values.get("PRETTY_NAME") or values.get("NAME")


_EMULATOR = re.compile(r"^qemu-system-(\w+)$")


@fact("host")
def host(ctx: FactContext) -> HostInfo:
    source = ctx.source
    try:
        uname = source.uname()
    except SourceError:
        uname = None
    os_text = read_optional(source, "/etc/os-release") or read_optional(
        source, "/usr/lib/os-release"
    )
    hostname = uname.nodename if uname else read_optional(source, "/etc/hostname")
    kernel = uname.release if uname else read_optional(source, "/proc/sys/kernel/osrelease")
    arch, arch_from = (uname.machine, "uname") if uname else _tree_arch(ctx)
    return HostInfo(
        hostname=hostname,
        kernel=kernel,
        os=os_release_name(os_text) if os_text else None,
        arch=arch,
        arch_from=arch_from,
    )


def _tree_arch(ctx: FactContext) -> tuple[Optional[str], Optional[str]]:
    cpu = ctx.optional("cpu")
    if cpu is not None and cpu.arch:
        return cpu.arch, "/proc/cpuinfo"
    for directory in ("/usr/bin", "/usr/libexec"):
        try:
            names = ctx.source.list_dir(directory)
        except SourceError:
            continue
        arches = sorted({m.group(1) for n in names if (m := _EMULATOR.match(n))})
        if len(arches) == 1:
            return arches[0], f"{directory}/qemu-system-{arches[0]}"
        if "qemu-kvm" in names:
            return None, None
    return None, None


# --- virtualization -------------------------------------------------------------------------

DMI_FIELDS = ("sys_vendor", "product_name", "bios_vendor", "board_vendor")

# (field, substring, hypervisor id). The first match wins; the order puts clouds before the
# hypervisor they run on, as systemd-detect-virt does.
_DMI_TABLE = (
    ("sys_vendor", "Amazon EC2", "amazon"),
    ("bios_vendor", "Amazon EC2", "amazon"),
    ("sys_vendor", "Google", "google"),
    ("product_name", "Google Compute Engine", "google"),
    ("product_name", "OpenStack", "openstack"),
    ("sys_vendor", "OpenStack", "openstack"),
    ("sys_vendor", "VMware", "vmware"),
    ("product_name", "VMware", "vmware"),
    ("bios_vendor", "VMware", "vmware"),
    ("product_name", "VirtualBox", "virtualbox"),
    ("sys_vendor", "innotek GmbH", "virtualbox"),
    ("board_vendor", "Oracle Corporation", "virtualbox"),
    ("sys_vendor", "Xen", "xen"),
    ("bios_vendor", "Xen", "xen"),
    ("sys_vendor", "Parallels", "parallels"),
    ("bios_vendor", "Parallels", "parallels"),
    ("sys_vendor", "BHYVE", "bhyve"),
    ("bios_vendor", "BHYVE", "bhyve"),
    ("product_name", "KVM", "kvm"),
    ("sys_vendor", "QEMU", "kvm"),
    ("bios_vendor", "SeaBIOS", "kvm"),
    ("sys_vendor", "Bochs", "kvm"),
    ("sys_vendor", "Nutanix", "kvm"),
    ("sys_vendor", "Microsoft Corporation", "microsoft"),
    ("bios_vendor", "Microsoft Corporation", "microsoft"),
)

# What the kernel names in "Hypervisor detected: <name>" (arch/x86/kernel/cpu/*.c).
_KERNEL_NAMES = {
    "kvm": "kvm",
    "vmware": "vmware",
    "microsoft hyper-v": "microsoft",
    "xen hvm": "xen",
    "xen pv": "xen",
    "acrn": "acrn",
    "jailhouse": "jailhouse",
    "bhyve": "bhyve",
}
_DETECTED = re.compile(r"Hypervisor detected: (.+?)\s*$")

HYPERVISOR_NAMES = {
    "amazon": "Amazon EC2",
    "google": "Google Compute Engine",
    "openstack": "OpenStack (KVM)",
    "vmware": "VMware",
    "virtualbox": "VirtualBox",
    "xen": "Xen",
    "parallels": "Parallels",
    "bhyve": "bhyve",
    "kvm": "KVM/QEMU",
    "microsoft": "Microsoft Hyper-V",
    "acrn": "ACRN",
    "jailhouse": "Jailhouse",
    "unknown": "an unidentified hypervisor",
}


@record
class Virtualization:
    """Whether this machine is itself a virtual machine, and of what."""

    hypervisor: Optional[str]  # id from HYPERVISOR_NAMES; None on bare metal
    detected_by: tuple[str, ...]
    dmi: dict[str, str] = field(default_factory=dict)
    kernel_line: Optional[str] = None
    cpu_hypervisor_bit: Optional[bool] = None

    @property
    def name(self) -> str:
        return HYPERVISOR_NAMES.get(self.hypervisor or "", "bare metal")

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["name"] = self.name
        return out


def classify_dmi(dmi: Mapping[str, Optional[str]]) -> Optional[str]:
    """The hypervisor the DMI strings name; a field that is absent may be missing or None."""
    for key, needle, hypervisor in _DMI_TABLE:
        if needle.lower() in (dmi.get(key) or "").lower():
            product = (dmi.get("product_name") or "").lower()
            if hypervisor == "microsoft" and "virtual" not in product:
                continue  # Microsoft also makes physical machines (Surface)
            return hypervisor
    return None


@fact("virt")
def virt(ctx: FactContext) -> Virtualization:
    source = ctx.source
    dmi = {}
    for name in DMI_FIELDS:
        value = read_optional(source, f"/sys/class/dmi/id/{name}")
        if value:
            dmi[name] = value
    cpu = ctx.optional("cpu")
    log = ctx.optional("kernel_log")
    kernel_line = None
    if log is not None:
        for line in log.lines:  # the text first: a boot's log has thousands of lines
            if "Hypervisor detected: " in line and _DETECTED.search(line):
                kernel_line = line.strip()
                break
    detected_by = []
    hypervisor = classify_dmi(dmi)
    if hypervisor:
        detected_by.append("dmi")
    if kernel_line:
        match = _DETECTED.search(kernel_line)
        named = _KERNEL_NAMES.get(match.group(1).lower(), "unknown") if match else "unknown"
        detected_by.append("kernel log")
        hypervisor = hypervisor or named
    xen = read_optional(source, "/sys/hypervisor/type")
    if xen == "xen":
        detected_by.append("/sys/hypervisor/type")
        hypervisor = hypervisor or "xen"
    bit = cpu.hypervisor_bit if cpu is not None else None
    if bit:
        detected_by.append("cpuid hypervisor bit")
        hypervisor = hypervisor or "unknown"
    return Virtualization(
        hypervisor=hypervisor,
        detected_by=tuple(detected_by),
        dmi=dmi,
        kernel_line=kernel_line,
        cpu_hypervisor_bit=bit,
    )
