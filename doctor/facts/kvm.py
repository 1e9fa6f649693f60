"""KVM device facts: /dev/kvm, what the kernel answers through it, the firmware control MSR,
and the other devices QEMU needs (/dev/vhost-net, /dev/net/tun)."""

from __future__ import annotations

from typing import Any, Optional

from doctor.facts import FactContext, FactUnavailable, fact
from doctor.record import record
from doctor.sources.base import KvmProbe, NotFound, SourceError, StatInfo, Unavailable

KVM_DEVICE = "/dev/kvm"


@record
class Device:
    path: str
    stat: Optional[StatInfo]  # None when the path does not exist
    error: Optional[str] = None  # why it could not be examined, when it exists but was not statted

    @property
    def exists(self) -> bool:
        return self.stat is not None

    @property
    def is_char(self) -> bool:
        return self.stat is not None and self.stat.type == "char"

    def as_dict(self) -> dict[str, Any]:
        from doctor.facts.accounts import mode_string

        if self.stat is None:
            return {"path": self.path, "exists": False, "error": self.error}
        return {
            "path": self.path,
            "exists": True,
            "type": self.stat.type,
            "mode": mode_string(self.stat),
            "uid": self.stat.uid,
            "gid": self.stat.gid,
            "rdev": self.stat.rdev,
            "acl": [
                f"{e.tag}:{'' if e.qualifier is None else e.qualifier}:{e.perms}"
                for e in self.stat.acl
            ],
        }


def device(ctx: FactContext, path: str) -> Device:
    try:
        return Device(path, ctx.source.stat(path))
    except NotFound:
        return Device(path, None)
    except Unavailable as exc:
        raise FactUnavailable(f"{path}: {exc.reason}") from None
    except SourceError as exc:
        return Device(path, None, error=exc.reason)


@record
class KvmState:
    device: Device
    probe: Optional[
        KvmProbe
    ]  # None when the source cannot open devices (--root, snapshot without it)
    probe_unavailable: Optional[str] = None

    @property
    def usable(self) -> bool:
        """Proven usable: the device opened and the kernel created a VM."""
        return bool(self.probe and self.probe.vm_created)

    def as_dict(self) -> dict[str, Any]:
        return {
            "device": self.device.as_dict(),
            "probe": self.probe.as_dict() if self.probe else None,
            "probe_unavailable": self.probe_unavailable,
        }


@fact("kvm")
def kvm(ctx: FactContext) -> KvmState:
    dev = device(ctx, KVM_DEVICE)
    if not dev.exists:
        return KvmState(dev, None, "the device does not exist")
    try:
        return KvmState(dev, ctx.source.kvm_probe(KVM_DEVICE))
    except SourceError as exc:
        return KvmState(dev, None, exc.reason)


@record
class NetDevices:
    vhost_net: Device
    tun: Device


@fact("net_devices")
def net_devices(ctx: FactContext) -> NetDevices:
    return NetDevices(device(ctx, "/dev/vhost-net"), device(ctx, "/dev/net/tun"))


# --- the firmware's say on virtualization ------------------------------------------------------

IA32_FEATURE_CONTROL = 0x3A  # bit 0: lock, bit 2: VMX outside SMX allowed
MSR_VM_CR = 0xC0010114  # bit 3: lock, bit 4: SVMDIS


@record
class FirmwareControl:
    """The MSR through which firmware allows or forbids VT-x/AMD-V."""

    register: str
    value: str
    locked: bool
    disabled: bool  # the firmware locked virtualization off

    def as_dict(self) -> dict[str, Any]:
        return {
            "register": self.register,
            "value": self.value,
            "locked": self.locked,
            "disabled": self.disabled,
        }


@fact("firmware_control")
def firmware_control(ctx: FactContext) -> FirmwareControl:
    cpu = ctx.get("cpu")
    if cpu.vendor == "GenuineIntel":
        value = _msr(ctx, IA32_FEATURE_CONTROL)
        locked = bool(value & 1)
        return FirmwareControl(
            "IA32_FEATURE_CONTROL (0x3a)", f"{value:#x}", locked, disabled=locked and not value & 4
        )
    if cpu.vendor == "AuthenticAMD":
        value = _msr(ctx, MSR_VM_CR)
        return FirmwareControl(
            "VM_CR (0xc0010114)", f"{value:#x}", bool(value & 8), disabled=bool(value & 16)
        )
    raise FactUnavailable(f"no firmware virtualization MSR known for CPU vendor {cpu.vendor!r}")


def _msr(ctx: FactContext, register: int) -> int:
    try:
        return ctx.source.read_msr(register)
    except SourceError as exc:
        raise FactUnavailable(f"MSR {register:#x}: {exc.reason}") from None
