"""CPU facts from /proc/cpuinfo: vendor, flags, virtualization extensions, hypervisor bit."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

from doctor.facts import FactContext, FactUnavailable, fact
from doctor.facts.util import read_text
from doctor.sources.base import SourceError

_VIRT_FLAGS = {"vmx": "VT-x", "svm": "AMD-V"}


@dataclass(frozen=True)
class CpuInfo:
    vendor: Optional[str]  # vendor_id on x86 ("GenuineIntel"), "CPU implementer" on arm
    model: Optional[str]
    arch: Optional[str]  # inferred from the cpuinfo layout: x86_64, i686, aarch64, ppc64le, s390x
    processors: int
    flags: tuple[str, ...]
    virt_flag: Optional[str]  # "vmx" or "svm" when the CPU advertises one
    hypervisor_bit: bool  # CPUID says we run under a hypervisor

    @property
    def virt_feature(self) -> str:
        """The name operators know the extension by, for messages."""
        if self.virt_flag:
            return _VIRT_FLAGS[self.virt_flag]
        if self.vendor == "AuthenticAMD":
            return "AMD-V (SVM)"
        if self.vendor == "GenuineIntel":
            return "VT-x (VMX)"
        return "hardware virtualization"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["flags"] = len(self.flags)  # the whole list is in the snapshot, not every finding
        return out


def parse_cpuinfo(text: str) -> CpuInfo:
    blocks = [b for b in text.split("\n\n") if b.strip()]
    if not blocks:
        raise ValueError("empty /proc/cpuinfo")
    fields: dict[str, str] = {}
    for line in blocks[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    processors = sum(1 for line in text.splitlines() if line.lower().startswith("processor"))
    flags = tuple((fields.get("flags") or fields.get("features") or "").split())
    vendor = fields.get("vendor_id") or fields.get("cpu implementer") or fields.get("vendor")
    virt = next((f for f in _VIRT_FLAGS if f in flags), None)
    return CpuInfo(
        vendor=vendor,
        model=fields.get("model name") or fields.get("cpu") or fields.get("processor"),
        arch=_arch(fields, flags),
        processors=processors or 1,
        flags=flags,
        virt_flag=virt,
        hypervisor_bit="hypervisor" in flags,
    )


def _arch(fields: dict[str, str], flags: tuple[str, ...]) -> Optional[str]:
    vendor = fields.get("vendor_id", "")
    if "s390" in vendor.lower():
        return "s390x"
    if vendor:
        return "x86_64" if "lm" in flags else "i686"
    if "cpu implementer" in fields or fields.get("cpu architecture") == "8":
        return "aarch64"
    if "power" in fields.get("cpu", "").lower():
        return "ppc64le"
    if "isa" in fields and "rv64" in fields["isa"]:
        return "riscv64"
    return None


@fact("cpu")
def cpu(ctx: FactContext) -> CpuInfo:
    try:
        text = read_text(ctx.source, "/proc/cpuinfo")
    except SourceError as exc:
        raise FactUnavailable(f"cannot read /proc/cpuinfo: {exc.reason}") from None
    try:
        return parse_cpuinfo(text)
    except ValueError as exc:
        raise FactUnavailable(f"/proc/cpuinfo: {exc}") from None
