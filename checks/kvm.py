"""KVM checks: the device, the CPU's virtualization extensions, the modules, who may use it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Optional

from doctor.facts.accounts import Accounts, Principal, Principals, access, mode_string
from doctor.facts.cpu import CpuInfo
from doctor.facts.host import Virtualization
from doctor.facts.kernel import KernelLog, KernelModules
from doctor.facts.kvm import Device, FirmwareControl, KvmState, NetDevices
from doctor.facts.libvirt import LibvirtUri
from doctor.model import Finding, Status
from doctor.registry import check

# What the kernel prints when the firmware forbids VT-x/AMD-V (old and new wordings).
FIRMWARE_DISABLED = re.compile(
    r"kvm: disabled by bios|VMX \(outside TXT\) disabled by BIOS|VMX not enabled \(by BIOS\)"
    r"|SVM disabled \(by BIOS\)",
    re.IGNORECASE,
)
# What it prints when the CPU (as this kernel sees it) has no extension at all.
NO_HW_SUPPORT = re.compile(
    r"kvm: no hardware support|VMX not supported by CPU|SVM not supported by CPU", re.IGNORECASE
)
# Texts every match of each holds: a kernel log without them is not searched.
FIRMWARE_DISABLED_NEEDLES = ("by bios",)
NO_HW_SUPPORT_NEEDLES = ("no hardware support", "not supported by cpu")
VENDOR_MODULES = {"GenuineIntel": "kvm_intel", "AuthenticAMD": "kvm_amd", "HygonGenuine": "kvm_amd"}
# Modules that provide /dev/kvm's backend: VT-x, AMD-V, PVM (no hardware extension), POWER.
BACKENDS = ("kvm_intel", "kvm_amd", "kvm_pvm", "kvm_hv", "kvm_pr")

NESTED_KNOBS = {
    "vmware": 'power the VM off and enable "Expose hardware assisted virtualization to the guest '
    'OS" in its CPU settings (vhv.enable = "TRUE" in the .vmx file)',
    "microsoft": "with the VM off, run on the Hyper-V host: Set-VMProcessor -VMName <vm> "
    "-ExposeVirtualizationExtensions $true (on Azure: pick a VM size that supports nested "
    "virtualization)",
    "kvm": "on the outer KVM host load kvm_intel/kvm_amd with nested=1 and give this guest the "
    "extension (<cpu mode='host-passthrough'/> or <feature policy='require' name='vmx'/>), "
    "then power-cycle it",
    "openstack": "ask the cloud operator for a flavor with nested virtualization "
    "(cpu_mode=host-passthrough or host-model on nested-enabled compute nodes)",
    "virtualbox": "with the VM off: VBoxManage modifyvm <vm> --nested-hw-virt on "
    '(Settings > System > Processor > "Enable Nested VT-x/AMD-V")',
    "xen": "set nestedhvm=1 in the guest's xl configuration (HVM guests only) and restart it",
    "amazon": "use a bare-metal (*.metal) instance type, or one that offers nested virtualization",
    "google": "recreate the instance with --enable-nested-virtualization on an Intel or AMD "
    "machine type that supports it",
    "parallels": 'enable "Nested virtualization" in the VM\'s CPU & Memory settings',
    "bhyve": "bhyve does not offer nested virtualization to its guests; run on bare metal",
}
DEFAULT_KNOB = (
    "ask whoever runs this virtual machine to expose VT-x/AMD-V to it (nested virtualization)"
)


def _firmware_lines(log: Optional[KernelLog]) -> list[str]:
    return log.search(FIRMWARE_DISABLED, FIRMWARE_DISABLED_NEEDLES) if log is not None else []


def _firmware_disabled(log: Optional[KernelLog], msr: Optional[FirmwareControl]) -> bool:
    return bool(_firmware_lines(log)) or bool(msr and msr.disabled)


def _cpu_evidence(cpu: Optional[CpuInfo]) -> dict[str, object]:
    if cpu is None:
        return {"cpu": None}
    return {
        "cpu": {
            "vendor": cpu.vendor,
            "model": cpu.model,
            "virt_flag": cpu.virt_flag,
            "hypervisor_bit": cpu.hypervisor_bit,
        }
    }


@check("KVM001", "kvm-device-missing", title="/dev/kvm is missing", tags=("host", "ci"))
def kvm_device_missing(
    kvm: KvmState,
    cpu: Optional[CpuInfo] = None,
    modules: Optional[KernelModules] = None,
    kernel_log: Optional[KernelLog] = None,
    virt: Optional[Virtualization] = None,
    firmware_control: Optional[FirmwareControl] = None,
) -> Iterator[Finding]:
    """What it checks: that /dev/kvm exists and is the KVM character device. When it is missing,
    the finding says why, from what KVM003, KVM004 and KVM005 look at: the firmware, an outer
    hypervisor, the modules.

    Why it matters: without /dev/kvm libvirt offers no `kvm` domain type and QEMU falls back to
    emulation or fails: "invalid argument: could not find capabilities for domaintype=kvm",
    "Could not access KVM kernel module: No such file or directory".

    How to fix: follow the cause named in the finding: enable VT-x/AMD-V in the firmware set-up,
    expose it from the outer hypervisor, or load the module (`modprobe kvm_intel` or
    `modprobe kvm_amd`). In a container, pass the device in (`--device /dev/kvm`).

    References: https://www.linux-kvm.org/page/FAQ
    https://docs.kernel.org/virt/kvm/api.html
    """
    dev = kvm.device
    evidence: dict[str, object] = {"device": dev.as_dict()}
    if dev.error is not None:
        yield Finding("skip", f"{dev.path} could not be examined: {dev.error}", evidence=evidence)
        return
    if dev.exists and not dev.is_char:
        yield Finding(
            "fail",
            f"{dev.path} exists but is a {dev.stat.type if dev.stat else '?'}, "
            "not the KVM character device (10:232)",
            evidence=evidence,
        )
        return
    if dev.exists:
        yield Finding(
            "pass",
            f"{dev.path} exists (character device {dev.stat.rdev if dev.stat else ''})",
            evidence=evidence,
        )
        return
    cause, because = _why_missing(cpu, modules, kernel_log, virt, firmware_control)
    evidence.update(_cpu_evidence(cpu))
    evidence["modules"] = modules.as_dict() if modules else None
    evidence["firmware_lines"] = _firmware_lines(kernel_log)
    evidence["hypervisor"] = virt.name if virt and virt.hypervisor else None
    evidence["cause"] = cause
    yield Finding("fail", f"{dev.path} does not exist: {because}", evidence=evidence)


def _why_missing(
    cpu: Optional[CpuInfo],
    modules: Optional[KernelModules],
    log: Optional[KernelLog],
    virt: Optional[Virtualization],
    msr: Optional[FirmwareControl],
) -> tuple[str, str]:
    """(the check code that holds the cause, the cause in words)."""
    feature = cpu.virt_feature if cpu else "hardware virtualization"
    if _firmware_disabled(log, msr):
        lines = _firmware_lines(log)
        said = f' (kernel: "{lines[-1].strip()}")' if lines else f" ({msr.register if msr else ''})"
        return "KVM003", f"the firmware has {feature} switched off{said}"
    if modules is not None and not modules.has("kvm") and not modules.modular:
        return "KVM005", "this kernel was built without KVM and cannot load modules"
    # An outer hypervisor that hides vmx/svm comes before loading modules: with no vmx/svm the
    # backend module cannot load, so "not loaded" is a consequence there, not the cause.
    if cpu is not None and cpu.virt_flag is None and virt is not None and virt.hypervisor:
        return "KVM004", (
            f"this machine runs under {virt.name} and its CPU shows no vmx/svm: "
            "the outer hypervisor does not pass virtualization through"
        )
    if modules is not None and not modules.has("kvm"):
        return "KVM005", "the kvm module is not loaded"
    if cpu is not None and cpu.virt_flag is not None and modules is not None:
        vendor = VENDOR_MODULES.get(cpu.vendor or "")
        if vendor and not modules.has(vendor):
            return "KVM005", f"the CPU has {feature} but {vendor} is not loaded"
    if cpu is not None and cpu.virt_flag is None:
        return "KVM003", (
            f"the CPU advertises no vmx/svm: it lacks {feature}, or the firmware "
            "disabled it (recent kernels then hide the flag)"
        )
    return "KVM005", "no KVM backend module is loaded"


@check(
    "KVM002",
    "kvm-device-not-accessible",
    title="/dev/kvm cannot be opened by a principal that needs it",
    tags=("host", "ci"),
)
def kvm_device_not_accessible(
    kvm: KvmState,
    principals: Principals,
    accounts: Accounts,
    uri: Optional[LibvirtUri] = None,
) -> Iterator[Finding]:
    """What it checks: whether each principal that must use /dev/kvm can open it read-write:
    the user running kvmdoctor (the one behind sudo), the qemu.conf user with its groups, the
    running libvirtd/virtqemud and QEMU processes with the supplementary groups the kernel
    really gave them (/proc/PID/status). Mode, owner, group and POSIX ACL entries are applied
    as the kernel applies them, mask included, and the rule that decided is named.

    Why it matters: QEMU fails with "Could not access KVM kernel module: Permission denied" and
    libvirt with "failed to initialize KVM: Permission denied".

    How to fix: add the principal to the device's group (`usermod -aG kvm alice`, then log in
    again), or grant an ACL (`setfacl -m u:alice:rw /dev/kvm`, lost at reboot unless a udev
    rule sets it). Restore the usual mode with a udev rule:
    `KERNEL=="kvm", GROUP="kvm", MODE="0660"`.

    References: https://libvirt.org/drvqemu.html
    https://man7.org/linux/man-pages/man5/acl.5.html
    """
    dev = kvm.device
    if dev.stat is None:
        yield Finding("skip", f"{dev.path} does not exist (see KVM001)")
        return
    st = dev.stat
    device = {
        "path": dev.path,
        "mode": mode_string(st),
        "owner": accounts.user_name(st.uid),
        "group": accounts.group_name(st.gid),
        "acl": [_acl_text(e.tag, e.qualifier, e.perms, accounts) for e in st.acl],
    }
    for principal in principals.items:
        verdict = access(st, principal.uid, principal.gids, accounts)
        evidence: dict[str, object] = {
            "device": device,
            "principal": principal.as_dict(accounts),
            "decided_by": verdict.detail,
        }
        ok = verdict.read_write
        message = ""
        probe = kvm.probe
        if principal.groups_from == "the kvmdoctor process" and probe is not None:
            # The kernel's own answer for this very process outranks the computation.
            evidence["open_result"] = "ok" if probe.opened else probe.open_errno
            if probe.opened and not ok:
                ok, message = (
                    True,
                    (
                        f"{principal.name} opened {dev.path} although the mode does "
                        f"not grant it ({verdict.detail})"
                    ),
                )
            elif not probe.opened and ok and probe.open_errno in ("EACCES", "EPERM"):
                ok = False
                message = (
                    f"{principal.name} may open {dev.path} by its mode ({verdict.detail}) "
                    f"but open() failed with {probe.open_errno}: an LSM (SELinux, "
                    "AppArmor) or a device cgroup denies it"
                )
        if ok:
            yield Finding(
                "pass",
                message or f"{_who(principal)} can open {dev.path} read-write ({verdict.detail})",
                subject=principal.subject,
                evidence=evidence,
            )
            continue
        if not message:
            message = (
                f"{_who(principal)} cannot open {dev.path} read-write: "
                f"{device['mode']} {device['owner']}:{device['group']}, {verdict.detail}"
            )
            configured = principal.configured_gids or ()
            if st.gid in configured and st.gid not in principal.gids:
                message += (
                    f"; /etc/group puts {principal.name} in {device['group']} but this "
                    "process started before that (see KVM007)"
                )
        yield Finding(
            _severity(principal, uri), message, subject=principal.subject, evidence=evidence
        )
    for note in principals.notes:
        if "does not exist" in note:
            yield Finding("warn", note, subject="qemu.conf", evidence={"note": note})


def _acl_text(tag: str, qualifier: Optional[int], perms: str, accounts: Accounts) -> str:
    if qualifier is None:
        return f"{tag}::{perms}"
    name = accounts.user_name(qualifier) if tag == "user" else accounts.group_name(qualifier)
    return f"{tag}:{name}:{perms}"


def _who(p: Principal) -> str:
    if p.pid is not None:
        return f"{p.role} {p.pid} (user {p.name})"
    return f"{p.role} {p.name} (uid {p.uid})"


def _severity(principal: Principal, uri: Optional[LibvirtUri]) -> Status:
    if principal.role != "invoking user":
        return "fail"
    # The invoking user needs the device itself only for qemu:///session or bare QEMU.
    return "fail" if uri is not None and uri.session else "warn"


@check(
    "KVM003",
    "cpu-virt-disabled-by-firmware",
    title="VT-x/AMD-V is disabled in the firmware",
    tags=("host", "ci"),
)
def cpu_virt_disabled_by_firmware(
    kvm: Optional[KvmState] = None,
    cpu: Optional[CpuInfo] = None,
    kernel_log: Optional[KernelLog] = None,
    firmware_control: Optional[FirmwareControl] = None,
) -> Iterator[Finding]:
    """What it checks: whether the BIOS/UEFI switched VT-x or AMD-V off, in the kernel's own
    words ("kvm: disabled by bios", "VMX (outside TXT) disabled by BIOS", "kvm_intel: VMX not
    enabled (by BIOS) in MSR_IA32_FEAT_CTL", "kvm_amd: SVM disabled (by BIOS) in MSR_VM_CR")
    and, where /dev/cpu/0/msr can be read, from the control MSR itself (IA32_FEATURE_CONTROL
    0x3a locked without VMX, or VM_CR with SVMDIS). Recent kernels hide the vmx flag from
    /proc/cpuinfo when the firmware disabled it, so a missing flag is not proof of a CPU
    without VT-x. When KVM demonstrably works (KVM006), this check passes.

    Why it matters: /dev/kvm then does not exist or cannot create VMs, and libvirt reports
    "invalid argument: could not find capabilities for domaintype=kvm".

    How to fix: enter the firmware set-up and enable "Intel Virtualization Technology" (VT-x)
    or "SVM Mode" (AMD), often under CPU, Chipset or Security; then power the machine off
    and on: a warm reboot may keep the MSR locked.

    References: https://www.linux-kvm.org/page/FAQ
    https://docs.kernel.org/arch/x86/feature-bits.html
    """
    lines = _firmware_lines(kernel_log)
    evidence: dict[str, object] = {
        "kernel_lines": lines,
        "kernel_log": kernel_log.as_dict() if kernel_log else None,
        "msr": firmware_control.as_dict() if firmware_control else None,
        **_cpu_evidence(cpu),
    }
    feature = cpu.virt_feature if cpu else "hardware virtualization"
    if kvm is not None and kvm.usable:
        yield Finding(
            "pass",
            "KVM creates VMs, so the firmware has not disabled virtualization",
            evidence=evidence,
        )
        return
    if lines or (firmware_control and firmware_control.disabled):
        if lines:
            said = f'the kernel said "{lines[-1].strip()}"'
        else:
            register = firmware_control.register if firmware_control else "the MSR"
            said = f"{register} is locked with it off"
        yield Finding("fail", f"The firmware has {feature} switched off: {said}", evidence=evidence)
        return
    if kernel_log is None and firmware_control is None:
        yield Finding(
            "skip",
            "neither the kernel log nor the firmware control MSR could be read",
            evidence=evidence,
        )
        return
    looked = " and ".join(
        part
        for part in (
            f"the kernel log ({kernel_log.origin})" if kernel_log else "",
            f"{firmware_control.register}" if firmware_control else "",
        )
        if part
    )
    yield Finding(
        "pass", f"no sign that the firmware disabled {feature} in {looked}", evidence=evidence
    )


@check(
    "KVM004",
    "nested-virt-not-exposed",
    title="The outer hypervisor does not pass VT-x/AMD-V through",
    tags=("host", "ci"),
)
def nested_virt_not_exposed(
    virt: Virtualization,
    kvm: Optional[KvmState] = None,
    cpu: Optional[CpuInfo] = None,
) -> Iterator[Finding]:
    """What it checks: whether this machine is itself a virtual machine (CPUID hypervisor bit,
    DMI vendor and product, the kernel's "Hypervisor detected" line, /sys/hypervisor) whose
    hypervisor does not expose VT-x/AMD-V to it. It names the hypervisor and the setting
    that passes virtualization through. A guest in which KVM demonstrably works passes, with
    or without the vmx/svm flag.

    Why it matters: without the extension there is no /dev/kvm, or it cannot create VMs, and
    every guest of this host would run emulated, if at all.

    How to fix: enable nested virtualization where the outer VM is defined: VMware "Expose
    hardware assisted virtualization to the guest OS"; Hyper-V `Set-VMProcessor
    -ExposeVirtualizationExtensions $true`; KVM `nested=1` plus host-passthrough CPU;
    VirtualBox `--nested-hw-virt on`; clouds: an instance type that offers it. Power-cycle
    the VM afterwards.

    References: https://docs.kernel.org/virt/kvm/x86/running-nested-guests.html
    https://learn.microsoft.com/virtualization/hyper-v-on-windows/user-guide/nested-virtualization
    """
    evidence: dict[str, object] = {"virtualization": virt.as_dict(), **_cpu_evidence(cpu)}
    if not virt.hypervisor:
        yield Finding("pass", "not running inside a hypervisor", evidence=evidence)
        return
    knob = NESTED_KNOBS.get(virt.hypervisor, DEFAULT_KNOB)
    evidence["knob"] = knob
    if kvm is not None and kvm.usable:
        flag = "" if cpu is None or cpu.virt_flag else " although the CPU flags show no vmx/svm"
        yield Finding(
            "pass", f"running inside {virt.name}, and KVM works here{flag}", evidence=evidence
        )
        return
    if cpu is not None and cpu.virt_flag:
        yield Finding(
            "pass",
            f"running inside {virt.name}, which exposes {cpu.virt_feature}",
            evidence=evidence,
        )
        return
    if cpu is None:
        yield Finding(
            "skip", f"running inside {virt.name}; CPU flags unavailable", evidence=evidence
        )
        return
    untested = (
        kvm is not None
        and kvm.device.is_char
        and (kvm.probe is None or kvm.probe.open_errno in ("EACCES", "EPERM"))
    )
    if untested and kvm is not None:
        # Some hypervisors provide KVM without the flag (as on PVM hosts); only the ioctl could
        # tell, and it could not be made here (--root, a snapshot without it, no permission).
        yield Finding(
            "info",
            f"running inside {virt.name}; the CPU shows no vmx/svm but {kvm.device.path} exists, "
            "and whether it works could not be tested here (KVM006)",
            evidence=evidence,
        )
        return
    yield Finding(
        "fail",
        f"this machine runs under {virt.name}, which does not pass VT-x/AMD-V through: {knob}",
        evidence=evidence,
    )


@check(
    "KVM005", "kvm-module-not-loaded", title="The KVM modules are not loaded", tags=("host", "ci")
)
def kvm_module_not_loaded(
    modules: KernelModules,
    kvm: Optional[KvmState] = None,
    cpu: Optional[CpuInfo] = None,
    kernel_log: Optional[KernelLog] = None,
    virt: Optional[Virtualization] = None,
) -> Iterator[Finding]:
    """What it checks: that the kvm module and a backend for this CPU (kvm_intel, kvm_amd, or
    another such as kvm_pvm) are loaded or built in, from /proc/modules and /sys/module. It
    also reports the backend's `nested` parameter, which decides whether guests can run their
    own KVM guests.

    Why it matters: with kvm loaded but no backend there is no /dev/kvm; the kernel log often
    says why the backend refused to load ("kvm_intel: VMX not supported by CPU").

    How to fix: `modprobe kvm_intel` (or `kvm_amd`); to make it permanent list it in
    /etc/modules-load.d/kvm.conf. For nested guests: `options kvm_intel nested=1` in
    /etc/modprobe.d/kvm.conf, then reload the module with no VM running.

    References: https://www.linux-kvm.org/page/FAQ
    https://docs.kernel.org/virt/kvm/x86/running-nested-guests.html
    """
    backends = {m: modules.state(m) for m in BACKENDS if modules.has(m)}
    expected = VENDOR_MODULES.get(cpu.vendor or "") if cpu else None
    nested = {m: p["nested"] for m, p in modules.parameters.items() if "nested" in p}
    refusals = (
        kernel_log.search(NO_HW_SUPPORT, NO_HW_SUPPORT_NEEDLES) + _firmware_lines(kernel_log)
        if kernel_log
        else []
    )
    evidence: dict[str, object] = {
        "kvm": modules.state("kvm"),
        "backends": backends,
        "expected_backend": expected,
        "modular_kernel": modules.modular,
        "nested": nested,
        "kernel_lines": refusals,
    }
    nested_text = "".join(
        f"; {m} nested={v} (nested guests {'possible' if v in ('Y', '1') else 'off'})"
        for m, v in nested.items()
    )
    if kvm is not None and kvm.usable:
        names = ", ".join(f"{m} ({s})" for m, s in backends.items()) or "a built-in backend"
        yield Finding(
            "pass", f"kvm ({modules.state('kvm')}) with {names}{nested_text}", evidence=evidence
        )
        return
    # Under an outer hypervisor that hides vmx/svm, modprobe cannot succeed: say so rather
    # than advise it (KVM004 names the cause).
    hidden = cpu is not None and cpu.virt_flag is None and virt is not None and virt.hypervisor
    if hidden and virt is not None:
        evidence["outer_hypervisor"] = virt.name
    if not modules.has("kvm"):
        if not modules.modular:
            msg = "the kernel has no KVM built in and cannot load modules: boot a kernel with KVM"
        elif hidden and virt is not None:
            msg = (
                f"the kvm module is not loaded, and {expected or 'its backend'} would not load: "
                f"{virt.name} shows this machine no vmx/svm (see KVM004)"
            )
        else:
            msg = f"the kvm module is not loaded: modprobe {expected or 'kvm'}"
        yield Finding("fail", msg, evidence=evidence)
        return
    if not backends:
        want = expected or "the backend for this CPU"
        # The kernel's word about the module we wanted, else its last word on KVM.
        about = [line for line in refusals if expected and expected in line] or refusals
        why = f' (kernel: "{about[-1].strip()}")' if about else ""
        yield Finding(
            "fail", f"kvm is loaded but {want} is not{why}: modprobe {want}", evidence=evidence
        )
        return
    names = ", ".join(f"{m} ({s})" for m, s in backends.items())
    yield Finding(
        "pass", f"kvm ({modules.state('kvm')}) with {names}{nested_text}", evidence=evidence
    )


@check(
    "KVM006",
    "kvm-usable",
    title="KVM is usable: /dev/kvm opens and creates a VM",
    tags=("host", "ci"),
)
def kvm_usable(kvm: KvmState, cpu: Optional[CpuInfo] = None) -> Iterator[Finding]:
    """What it checks: the proof rather than the signs. kvmdoctor opens /dev/kvm, asks the
    kernel for its API version (KVM_GET_API_VERSION, 12) and for a VM (KVM_CREATE_VM, closed
    at once). Some hosts provide KVM without a vmx/svm flag in /proc/cpuinfo (nested set-ups,
    PVM); the flag is evidence, the ioctl is proof, and no other check contradicts a pass here.

    Why it matters: this is what QEMU does first. If it fails, every KVM guest fails to
    start; if it works, a missing CPU flag is not a problem.

    How to fix: follow KVM001 to KVM005 for a missing device, KVM002 for permissions. If the
    VM cannot be created with EBUSY, another hypervisor (VirtualBox, VMware Workstation) holds
    VT-x: stop it.

    References: https://docs.kernel.org/virt/kvm/api.html
    """
    dev = kvm.device
    probe = kvm.probe
    evidence: dict[str, object] = {
        "device": dev.as_dict(),
        "probe": probe.as_dict() if probe else None,
        **_cpu_evidence(cpu),
    }
    if not dev.exists:
        yield Finding(
            "fail", f"KVM is not usable: {dev.path} does not exist (see KVM001)", evidence=evidence
        )
        return
    if probe is None:
        yield Finding(
            "skip", f"{dev.path} was not opened: {kvm.probe_unavailable}", evidence=evidence
        )
        return
    if not probe.opened:
        if probe.open_errno in ("EACCES", "EPERM"):
            yield Finding(
                "warn",
                f"kvmdoctor may not open {dev.path} ({probe.open_errno}), so it "
                "cannot prove KVM works; run it as root or see KVM002",
                evidence=evidence,
            )
        else:
            yield Finding(
                "fail", f"opening {dev.path} failed with {probe.open_errno}", evidence=evidence
            )
        return
    if probe.api_version is None:
        yield Finding(
            "fail", f"KVM_GET_API_VERSION failed with {probe.api_errno}", evidence=evidence
        )
        return
    if probe.api_version != 12:
        yield Finding(
            "fail", f"KVM API version {probe.api_version}, QEMU needs 12", evidence=evidence
        )
        return
    if not probe.vm_created:
        hint = (
            ": another hypervisor (VirtualBox, VMware Workstation) may hold VT-x/AMD-V"
            if probe.create_vm_errno == "EBUSY"
            else ""
        )
        yield Finding(
            "fail", f"KVM_CREATE_VM failed with {probe.create_vm_errno}{hint}", evidence=evidence
        )
        return
    flag = ""
    if cpu is not None and cpu.virt_flag is None:
        flag = ", although /proc/cpuinfo shows no vmx/svm flag"
    yield Finding(
        "pass",
        f"KVM is usable: API version {probe.api_version}, a VM was created{flag}",
        evidence=evidence,
    )


# Groups whose membership decides access to KVM and libvirt.
_KVM_GROUPS = ("kvm", "libvirt", "libvirtd", "libvirt-qemu", "qemu")


@check(
    "KVM007",
    "kvm-group-membership-stale",
    title="A group membership in /etc/group is not in effect yet",
    tags=("host",),
)
def kvm_group_membership_stale(
    principals: Principals,
    accounts: Accounts,
    kvm: Optional[KvmState] = None,
) -> Iterator[Finding]:
    """What it checks: for the user running kvmdoctor and for running libvirt daemons and QEMU
    processes, whether /etc/group gives them the kvm or libvirt group (or /dev/kvm's group)
    while the process itself does not have it yet. Group lists are fixed when a login session
    or a process starts; `usermod -aG kvm alice` changes nothing for what already runs.

    Why it matters: "I added myself to the kvm group and it still says Permission denied" is
    the most common KVM permission ticket, and the fix is a re-login, not more chmod.

    How to fix: log out and back in (or `newgrp kvm` in one shell); restart the daemon
    (`systemctl restart libvirtd` or `virtqemud`); power-cycle guests whose QEMU process lacks
    the group (`virsh shutdown` then `virsh start`: a reboot inside the guest keeps the
    process).

    References: https://man7.org/linux/man-pages/man1/newgrp.1.html
    https://libvirt.org/drvqemu.html
    """
    relevant = {g.gid for g in accounts.groups if g.name in _KVM_GROUPS}
    if kvm is not None and kvm.device.stat is not None:
        relevant.add(kvm.device.stat.gid)
    stale = 0
    for p in principals.items:
        if p.configured_gids is None or p.groups_from.startswith("/etc/group"):
            continue  # nothing running to compare with
        missing = sorted((set(p.configured_gids) & relevant) - set(p.gids))
        if not missing:
            continue
        stale += 1
        names = ", ".join(accounts.group_name(g) for g in missing)
        if p.role == "invoking user":
            fix = f"log out and back in (or run `newgrp {accounts.group_name(missing[0])}`)"
        elif p.role == "QEMU process":
            fix = "power-cycle the guest (virsh shutdown, then virsh start)"
        else:
            fix = f"restart {p.role}"
        yield Finding(
            "warn",
            f"/etc/group puts {p.name} in {names}, but {_who(p)} does not have it yet: {fix}",
            subject=p.subject,
            evidence={
                "principal": p.as_dict(accounts),
                "missing": [accounts.group_name(g) for g in missing],
            },
        )
    if not stale:
        checked = sum(1 for p in principals.items if not p.groups_from.startswith("/etc/group"))
        yield Finding(
            "pass",
            f"group memberships are in effect for the {checked} running principal(s) examined",
            evidence={"examined": checked},
        )


@check(
    "KVM008",
    "vhost-net-unavailable",
    title="/dev/vhost-net or /dev/net/tun is missing",
    tags=("host", "ci"),
)
def vhost_net_unavailable(
    net_devices: NetDevices, modules: Optional[KernelModules] = None
) -> Iterator[Finding]:
    """What it checks: /dev/net/tun, without which libvirt cannot create the tap devices of
    bridged and NAT guest NICs (fail), and /dev/vhost-net, without which virtio-net runs its
    data path in QEMU instead of the kernel (warn).

    Why it matters: a missing tun device stops guests from starting ("Unable to open
    /dev/net/tun", "Could not open /dev/net/tun: No such file or directory"); a missing
    vhost-net device costs throughput and CPU ("Unable to open vhost-net. Opened so far 0,
    requested 1" when `<driver name='vhost'/>` is explicit).

    How to fix: `modprobe tun` / `modprobe vhost_net` and list them in
    /etc/modules-load.d/; in a container pass the devices in. The nodes are character
    devices 10:200 (tun) and 10:238 (vhost-net).

    References: https://docs.kernel.org/networking/tuntap.html
    https://libvirt.org/formatdomain.html#setting-nic-driver-specific-options
    """
    yield _device_finding(
        net_devices.tun, "tun", "fail", modules, "libvirt cannot create tap devices for guest NICs"
    )
    yield _device_finding(
        net_devices.vhost_net,
        "vhost_net",
        "warn",
        modules,
        "virtio-net guests fall back to QEMU's slower userspace data path",
    )


def _device_finding(
    dev: Device, module: str, severity: Status, modules: Optional[KernelModules], consequence: str
) -> Finding:
    evidence: dict[str, object] = {
        "device": dev.as_dict(),
        "module": modules.state(module) if modules else None,
    }
    subject = f"device:{dev.path}"
    if dev.error is not None:
        return Finding(
            "skip",
            f"{dev.path} could not be examined: {dev.error}",
            subject=subject,
            evidence=evidence,
        )
    if dev.exists and dev.is_char:
        return Finding("pass", f"{dev.path} exists", subject=subject, evidence=evidence)
    if dev.exists:
        return Finding(
            severity,
            f"{dev.path} is a {dev.stat.type if dev.stat else '?'}, not a "
            f"character device: {consequence}",
            subject=subject,
            evidence=evidence,
        )
    load = ""
    if modules is not None and not modules.has(module):
        load = (
            f"; {module} is not loaded: modprobe {module}"
            if modules.modular
            else f"; this kernel has no {module} and cannot load modules"
        )
    return Finding(
        severity, f"{dev.path} is missing: {consequence}{load}", subject=subject, evidence=evidence
    )
