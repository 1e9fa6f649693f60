"""CPU facts from /proc/cpuinfo: vendor, flags, virtualization extensions, hypervisor bit."""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any, Optional

from doctor.facts import FactContext, FactUnavailable, fact
from doctor.facts.util import read_text
from doctor.record import record
from doctor.sources.base import SourceError

_VIRT_FLAGS = {"vmx": "VT-x", "svm": "AMD-V"}
# One line per logical CPU: "processor : 3" (x86, arm, ppc), "processor 3: version = ..." (s390).
# Old arm64 kernels also print a "Processor : AArch64 Processor rev 4" title line: not a CPU.
_PROCESSOR_LINE = re.compile(r"^processor\s*(?::\s*\d+\s*$|\d+\s*:)")
_ARM_SUFFIX = re.compile(r"\((v\d+l)\)\s*$")


@record
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
    processors = sum(1 for line in text.splitlines() if _PROCESSOR_LINE.match(line))
    flags = tuple((fields.get("flags") or fields.get("features") or "").split())
    vendor = fields.get("vendor_id") or fields.get("cpu implementer") or fields.get("vendor")
    virt = next((f for f in _VIRT_FLAGS if f in flags), None)
    title = fields.get("processor", "")  # a CPU number, or the title line of old arm64 kernels
    model = fields.get("model name") or fields.get("cpu")
    return CpuInfo(
        vendor=vendor,
        model=model or (title if title and not title.isdigit() else None),
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
    if "cpu implementer" in fields or "cpu architecture" in fields:
        # arm64 kernels list "fp" and "asimd"; 32-bit kernels (also on ARMv8 hardware) say
        # "vfp"/"neon" and name the mode in the model: "ARMv7 Processor rev 3 (v7l)".
        if {"fp", "asimd"} & set(flags) or fields.get("cpu architecture") == "AArch64":
            return "aarch64"
        suffix = _ARM_SUFFIX.search(fields.get("model name") or fields.get("processor", ""))
        return f"arm{suffix.group(1)}" if suffix else "armv7l"
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
