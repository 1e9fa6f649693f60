"""Firmware checks: UEFI builds for the host, each domain's NVRAM template, loader and NVRAM
files, and what Secure Boot demands of the machine type."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from typing import Any, Optional

from doctor.facts.domains import Domain, Domains
from doctor.facts.firmware import (
    X86,
    Descriptor,
    DomainFirmware,
    DomainsFirmware,
    FirmwareInventory,
    PackageHint,
    is_q35,
    select_firmware,
)
from doctor.model import Finding, Status
from doctor.registry import check

_INSTALL = {
    "debian": ("apt-get install {}", "apt-get install --reinstall {}"),
    "fedora": ("dnf install {}", "dnf reinstall {}"),
    "arch": ("pacman -S {}", "pacman -S {}"),
    "suse": ("zypper install {}", "zypper install --force {}"),
}


def _install_hint(pkg: Optional[PackageHint], *, reinstall: bool = False) -> str:
    if pkg is None or pkg.name is None:
        return (
            "install the distribution's UEFI firmware package for this architecture "
            "(ovmf, edk2-ovmf, qemu-efi-aarch64, edk2-aarch64, ...)"
        )
    install, again = _INSTALL.get(pkg.family or "", ("install {}", "reinstall {}"))
    if pkg.installed and reinstall:
        return f"{pkg.name} is installed but its files are gone: `{again.format(pkg.name)}`"
    if pkg.installed:
        return f"{pkg.name} is installed; check its files (`{again.format(pkg.name)}`)"
    return f"install {pkg.name} (`{install.format(pkg.name)}`)"


def _described(inv: FirmwareInventory, desc: Descriptor) -> dict[str, Any]:
    return {**desc.summary(), "missing": list(inv.missing_files(desc))}


def _names(descs: list[Descriptor] | tuple[Descriptor, ...]) -> str:
    return ", ".join(d.name for d in descs)


def _host_evidence(inv: FirmwareInventory) -> dict[str, Any]:
    arch = inv.host_arch
    return {
        "arch": arch,
        "arch_from": inv.arch_from,
        "scope": inv.scope,
        "directories": [asdict(d) for d in inv.directories],
        "descriptors": [_described(inv, d) for d in inv.uefi_for(arch)],
        "other_descriptors": {
            d.name: list(d.architectures()) for d in inv.descriptors if d not in inv.uefi_for(arch)
        },
        "not_used": [asdict(e) for e in inv.entries if e.status != "used"],
        "package": inv.package.as_dict() if inv.package else None,
        "loose_files": list(inv.loose_files),
        "domcaps": inv.domcaps.as_dict() if inv.domcaps else None,
        "domcaps_error": inv.domcaps_error,
        "qemu_conf_nvram": [asdict(p) for p in inv.nvram_pairs] if inv.nvram_configured else None,
        "qemu_conf_nvram_error": inv.nvram_error,
    }


@check(
    "FW001",
    "uefi-firmware-missing",
    title="No UEFI firmware for the host's architecture",
    tags=("host", "firmware"),
)
def uefi_firmware_missing(firmware: FirmwareInventory) -> Iterator[Finding]:
    """What it checks: the QEMU firmware descriptors libvirt reads for the host's architecture
    (/usr/share/qemu/firmware, /etc/qemu/firmware and, for a session daemon,
    ~/.config/qemu/firmware; a file in a later directory replaces one of the same name, an empty
    file hides it, and the files are taken in name order), whether each one's executable and
    NVRAM template exist, and whether libvirt can parse them all (and qemu.conf `nvram`). Without
    descriptors it looks for OVMF/AAVMF builds in the distributions' usual places, and names
    the package that provides them. Where libvirt answers, its domain
    capabilities (`<os><enum name='firmware'>`, `<loader><value>`) corroborate the verdict.

    Why it matters: `<os firmware='efi'>` needs a descriptor ("Unable to find any firmware to
    satisfy 'efi'"); virt-install and virt-manager refuse UEFI guests ("Did not find any UEFI
    binary path for arch 'x86_64'"). One descriptor that libvirt cannot parse, or a dangling
    symlink among them, stops libvirt from using any of them. libvirt does not check that a
    descriptor's files exist before it picks one, so a stale descriptor left behind by a
    removed package breaks the guests it is picked for.

    How to fix: install the firmware package named in the finding (Debian/Ubuntu: ovmf,
    qemu-efi-aarch64; Fedora/RHEL: edk2-ovmf, edk2-aarch64; Arch: edk2-ovmf; SUSE:
    qemu-ovmf-x86_64, qemu-uefi-aarch64), or reinstall it when its files are gone. Remove or
    repair a descriptor libvirt cannot parse; hide a stale one with an empty file of the same
    name in /etc/qemu/firmware. Remove a malformed qemu.conf `nvram` ("LOADER:TEMPLATE"
    strings). Restart libvirtd when its domain capabilities lag behind.

    References: https://gitlab.com/qemu-project/qemu/-/blob/master/docs/interop/firmware.json
    https://libvirt.org/formatdomain.html#bios-bootloader
    https://libvirt.org/formatdomaincaps.html
    """
    inv = firmware
    arch = inv.host_arch
    evidence = _host_evidence(inv)
    if inv.problems:
        yield Finding(
            "fail",
            f"libvirt cannot load the firmware descriptors ({inv.problems[0]}): every "
            "<os firmware='efi'> domain fails to start until the file is repaired or removed",
            evidence=evidence,
        )
        return
    if inv.nvram_error:
        yield Finding(
            "fail",
            f"qemu.conf sets nvram, and libvirt refuses it ({inv.nvram_error}): its QEMU "
            "driver does not load until the setting is fixed or removed (descriptors make it "
            "unnecessary)",
            evidence=evidence,
        )
        return
    if not inv.complete:
        why = "; ".join(f"{d.path}: {d.error}" for d in inv.directories if d.error)
        yield Finding(
            "skip", f"the firmware directories could not be read ({why})", evidence=evidence
        )
        return
    if arch is None:
        yield Finding(
            "skip",
            "the host's architecture is unknown (no uname, /proc/cpuinfo or single "
            "qemu-system-* emulator to tell)",
            evidence=evidence,
        )
        return
    uefi = inv.uefi_for(arch)
    usable = [d for d in uefi if not inv.missing_files(d)]
    broken = [d for d in uefi if inv.missing_files(d)]
    searched = ", ".join(d.path for d in inv.directories)
    status: Status
    if usable and broken:
        first = broken[0]
        order = (
            f"; it sorts before {usable[0].name}, so libvirt picks it first"
            if first.name < usable[0].name
            else ""
        )
        status, message = (
            "warn",
            f"{len(broken)} of {len(uefi)} UEFI descriptors for {arch} name missing files "
            f"({first.path}: {', '.join(inv.missing_files(first))}){order}; guests it is picked "
            f"for fail to start: {_install_hint(inv.package, reinstall=True)}, or hide it with "
            f"an empty /etc/qemu/firmware/{first.name}",
        )
    elif usable:
        status, message = (
            "pass",
            f"UEFI firmware for {arch}: {len(usable)} descriptor(s) ({_names(usable)}), "
            "every file present",
        )
    elif uefi:
        missing = sorted({p for d in uefi for p in inv.missing_files(d)})
        status, message = (
            "fail",
            f"every UEFI descriptor for {arch} ({_names(uefi)}) names missing files "
            f"({', '.join(missing)}): {_install_hint(inv.package, reinstall=True)}",
        )
    elif inv.loose_files:
        status, message = (
            "warn",
            f"no UEFI firmware descriptor for {arch} in {searched}: <os firmware='efi'> fails "
            "(\"Unable to find any firmware to satisfy 'efi'\"); UEFI builds exist that a "
            f"<loader> element can name ({', '.join(inv.loose_files[:3])}): "
            f"{_install_hint(inv.package)} to get descriptors",
        )
    else:
        status, message = (
            "fail",
            f"no UEFI firmware for {arch}: no descriptor in {searched} and no OVMF/AAVMF "
            f"build (virt-install: \"Did not find any UEFI binary path for arch '{arch}'\"): "
            f"{_install_hint(inv.package)}",
        )
    status, message = _corroborate(inv, status, message, bool(usable))
    yield Finding(status, message, evidence=evidence)


def _corroborate(
    inv: FirmwareInventory, status: Status, message: str, usable: bool
) -> tuple[Status, str]:
    caps = inv.domcaps
    if caps is None:
        return status, message
    offered = "efi" in caps.firmware
    where = f"{caps.arch} {caps.machine}"
    if offered == usable:
        said = (
            f"libvirt's domain capabilities for {where} agree (firmware efi, "
            f"{len(caps.loaders)} loader(s))"
            if offered
            else f"libvirt's domain capabilities for {where} offer no efi either"
        )
        return status, f"{message}; {said}"
    if usable:
        return "warn", (
            f"{message}, but libvirt's domain capabilities for {where} offer no efi: "
            "libvirtd may have cached them before the firmware was installed (restart it)"
        )
    return "warn", (
        f"{message}, but libvirt's domain capabilities for {where} offer efi "
        f"({', '.join(caps.loaders) or 'no loader listed'}): libvirt reads descriptors "
        "this examination did not"
    )


def _no_domains(origin: str) -> Finding:
    return Finding("pass", f"no domains are defined ({origin})", evidence={"origin": origin})


def _domain_evidence(d: DomainFirmware) -> dict[str, Any]:
    return {
        "domain": d.name,
        "arch": d.arch,
        "machine": d.machine,
        "autoselect": d.autoselect,
        "loader": d.loader.as_dict() if d.loader else None,
        "loader_from": d.loader_from,
        "nvram": d.nvram.as_dict() if d.nvram else None,
        "nvram_from": d.nvram_from,
        "nvram_dir": d.nvram_dir.as_dict() if d.nvram_dir else None,
        "template": d.template.as_dict() if d.template else None,
        "selection": d.selection.as_dict(),
    }


@check(
    "FW002",
    "uefi-nvram-template-missing",
    title="No NVRAM template can be found for a domain's UEFI loader",
    tags=("domain", "firmware"),
)
def uefi_nvram_template_missing(
    domain_firmware: DomainsFirmware, firmware: FirmwareInventory
) -> Iterator[Finding]:
    """What it checks: for each UEFI domain whose variable store (NVRAM file) does not exist
    yet, where libvirt would copy it from, in libvirt's order: the `template` attribute of
    `<nvram>`; the firmware descriptor that matches the domain (its executable is the loader,
    and its targets cover the domain's architecture and machine type); and, for hand-written
    loaders only, the LOADER:TEMPLATE list in qemu.conf `nvram` (ignored by libvirt as soon as
    any descriptor exists) or the list built into libvirt. It then checks that the template
    found exists. A domain whose NVRAM file exists needs no template.

    Why it matters: `virsh start` fails with "unable to find any master var store for loader:
    /path/CODE.fd" when nothing maps the loader, and with "Failed to open file
    '/path/VARS.fd': No such file or directory" when the mapping names a missing template.
    Typical causes: a custom or copied firmware file, a loader from another distribution, a
    Secure Boot build on an i440fx machine (its descriptor covers q35 only), or a definition
    restored from a backup without its NVRAM file.

    How to fix: name the template in the domain, `<nvram template='/usr/share/OVMF/
    OVMF_VARS_4M.fd'>`, or switch to `<os firmware='efi'>` and let libvirt pick from the
    descriptors. To reuse variables from elsewhere, copy that NVRAM file to the domain's
    `<nvram>` path before starting it.

    References: https://libvirt.org/formatdomain.html#bios-bootloader
    https://libvirt.org/kbase/secureboot.html
    https://gitlab.com/qemu-project/qemu/-/blob/master/docs/interop/firmware.json
    """
    if not domain_firmware.items:
        yield _no_domains(domain_firmware.origin)
        return
    for d in domain_firmware.items:
        yield _template_finding(d, firmware)


def _template_finding(d: DomainFirmware, inv: FirmwareInventory) -> Finding:
    evidence = _domain_evidence(d)
    subject = d.subject
    loader = d.loader.path if d.loader else None
    if not d.uefi:
        return Finding(
            "pass", "boots BIOS: no UEFI variable store", subject=subject, evidence=evidence
        )
    if not d.needs_nvram:
        return Finding(
            "pass",
            "its pflash loader is not read-only, so QEMU keeps the variables in the loader "
            "file itself: no NVRAM file or template is used",
            subject=subject,
            evidence=evidence,
        )
    if d.autoselect == "efi" and loader is None and d.selection.chosen is None:
        if not inv.complete:
            return Finding(
                "skip",
                "the firmware directories could not be read",
                subject=subject,
                evidence=evidence,
            )
        return Finding(
            "fail",
            f"no firmware descriptor satisfies <os firmware='efi'> for {d.arch} {d.machine}: "
            "libvirt refuses to start it (\"Unable to find any firmware to satisfy 'efi'\")",
            subject=subject,
            evidence=evidence,
        )
    nvram, lookup = d.nvram, d.template
    if nvram is None or lookup is None or nvram.exists is None:
        return Finding(
            "skip",
            "whether its NVRAM file exists could not be examined"
            + (f" ({nvram.error})" if nvram and nvram.error else ""),
            subject=subject,
            evidence=evidence,
        )
    template = lookup.template
    if nvram.exists:
        if template is None or template.exists is False:
            return Finding(
                "info",
                f"its NVRAM {nvram.path} exists, so no template is needed, but libvirt could "
                "not recreate it (virsh start --reset-nvram): "
                + (
                    f"the template {template.path} does not exist"
                    if template
                    else f"nothing maps loader {loader}"
                ),
                subject=subject,
                evidence=evidence,
            )
        return Finding(
            "pass",
            f"its NVRAM {nvram.path} exists (template {template.path}, from {lookup.found_by})",
            subject=subject,
            evidence=evidence,
        )
    if template is None:
        if not inv.complete:
            return Finding(
                "skip",
                "the firmware directories could not be read, so the template search is incomplete",
                subject=subject,
                evidence=evidence,
            )
        return Finding(
            "fail",
            f"libvirt cannot create its NVRAM {nvram.path}: no template maps loader {loader} "
            f'("unable to find any master var store for loader: {loader}"); add '
            "template='...' to <nvram>, or use <os firmware='efi'>",
            subject=subject,
            evidence=evidence,
        )
    if template.exists is None:
        return Finding(
            "skip",
            f"whether the template {template.path} exists could not be examined",
            subject=subject,
            evidence=evidence,
        )
    if template.exists is False:
        return Finding(
            "fail",
            f"the NVRAM template {template.path} (from {lookup.found_by}) does not exist, so "
            f"libvirt cannot create {nvram.path} (\"Failed to open file '{template.path}': "
            'No such file or directory")',
            subject=subject,
            evidence=evidence,
        )
    if not lookup.certain:
        return Finding(
            "warn",
            f"only {lookup.found_by} maps loader {loader} to {template.path}: name it in the "
            f"domain (<nvram template='{template.path}'>) so that the start does not depend "
            "on how libvirt was built",
            subject=subject,
            evidence=evidence,
        )
    return Finding(
        "pass",
        f"its NVRAM {nvram.path} will be created from {template.path} ({lookup.found_by})",
        subject=subject,
        evidence=evidence,
    )


@check(
    "FW003",
    "domain-firmware-missing",
    title="A domain's loader or NVRAM path does not exist",
    tags=("domain", "firmware"),
)
def domain_firmware_missing(
    domain_firmware: DomainsFirmware, firmware: FirmwareInventory
) -> Iterator[Finding]:
    """What it checks: for each domain, that the firmware file it names in `<loader>` exists
    (for `<os firmware='efi'>` without a loader: the executable of the descriptor libvirt would
    pick), and that its `<nvram>` file exists or can be created: a missing NVRAM file is
    recreated from a template at the next start (see FW002), but not in a directory that does
    not exist. For a missing loader it names the firmware files that do exist for the domain's
    architecture and machine type.

    Why it matters: `virsh start` fails with "Path '/usr/share/OVMF/OVMF_CODE.fd' is not
    accessible: No such file or directory" (or, when no NVRAM template is known either,
    "unable to find any master var store for loader: ..."). Firmware packages rename their
    files (Debian's 2 MB OVMF_CODE.fd gave way to OVMF_CODE_4M.fd; Fedora moved from
    /usr/share/OVMF to /usr/share/edk2/ovmf), and definitions copied from another host name
    paths that only exist there. A running guest whose NVRAM file was deleted loses its UEFI
    variables (boot entries) at the next start.

    How to fix: point `<loader>` at a file that exists (one of those in the finding, with the
    matching `<nvram template>`), or replace the loader with `<os firmware='efi'>`. Create the
    NVRAM directory (`/var/lib/libvirt/qemu/nvram` for the system daemon) or move `<nvram>`
    into it.

    References: https://libvirt.org/formatdomain.html#bios-bootloader
    https://wiki.debian.org/SecureBoot/VirtualMachine
    """
    if not domain_firmware.items:
        yield _no_domains(domain_firmware.origin)
        return
    for d in domain_firmware.items:
        yield _paths_finding(d, firmware)


def _candidates(inv: FirmwareInventory, d: DomainFirmware) -> list[str]:
    found = [
        desc.loader
        for desc in inv.descriptors
        if desc.loader
        and desc.serves(d.arch, d.machine)
        and inv.exists(desc.loader)
        and (d.selection.wanted or "uefi") in desc.interface_types
    ]
    return list(dict.fromkeys(p for p in found if p))


def _paths_finding(d: DomainFirmware, inv: FirmwareInventory) -> Finding:
    evidence = _domain_evidence(d)
    subject = d.subject
    problems: list[str] = []
    notes: list[str] = []
    unknown: list[str] = []
    status: Status = "pass"
    if d.loader is not None:
        if d.loader.exists is False:
            candidates = _candidates(inv, d)
            evidence["candidates"] = candidates
            instead = f"; files that exist for {d.machine}: {', '.join(candidates)}"
            problems.append(
                f'loader {d.loader.path} ({d.loader_from}) does not exist ("Path '
                f"'{d.loader.path}' is not accessible: No such file or directory\")"
                + (instead if candidates else "")
            )
        elif d.loader.exists is None:
            unknown.append(f"loader {d.loader.path}: {d.loader.error}")
    if d.nvram is not None and d.nvram.exists is False:
        if d.nvram_dir is not None and d.nvram_dir.exists is False:
            problems.append(
                f"the directory of its NVRAM file {d.nvram.path} does not exist, so libvirt "
                f"cannot create it (\"Failed to create file '{d.nvram.path}.new': No such "
                'file or directory")'
            )
        elif d.active:
            status = "warn"
            notes.append(
                f"the NVRAM file {d.nvram.path} of this running domain is gone: its UEFI "
                "variables (boot entries) are lost at the next start"
            )
        else:
            status = "info" if status == "pass" else status
            notes.append(
                f"its NVRAM file {d.nvram.path} does not exist yet: libvirt creates it from a "
                "template when the domain starts (FW002)"
            )
    elif d.nvram is not None and d.nvram.exists is None:
        unknown.append(f"NVRAM {d.nvram.path}: {d.nvram.error}")
    if problems:
        return Finding("fail", "; ".join(problems), subject=subject, evidence=evidence)
    if unknown and not notes:
        return Finding(
            "skip",
            "could not examine " + "; ".join(unknown),
            subject=subject,
            evidence=evidence,
        )
    if notes:
        return Finding(status, "; ".join(notes), subject=subject, evidence=evidence)
    if d.loader is None and d.nvram is None:
        return Finding(
            "pass",
            "names no firmware files (QEMU's default BIOS)",
            subject=subject,
            evidence=evidence,
        )
    named = [f"loader {d.loader.path}"] if d.loader else []
    named += [f"NVRAM {d.nvram.path}"] if d.nvram else []
    verb = "exist" if len(named) > 1 else "exists"
    return Finding("pass", f"{' and '.join(named)} {verb}", subject=subject, evidence=evidence)


def secure_boot_requests(dom: Domain, inv: FirmwareInventory) -> list[str]:
    """What in the definition asks for UEFI Secure Boot (and so for SMM on x86)."""
    reasons = []
    loader = dom.loader
    if loader is not None and loader.secure == "yes":
        reasons.append("<loader secure='yes'>")
    if dom.firmware_features.get("secure-boot") == "yes":
        reasons.append("<feature enabled='yes' name='secure-boot'/>")
    if loader is not None and loader.path:
        smm = [d for d in inv.mapping(loader.path) if "requires-smm" in d.features]
        if smm:
            reasons.append(f"loader {loader.path} is a Secure Boot build that requires SMM")
    elif dom.firmware == "efi":
        chosen = select_firmware(inv.descriptors, dom).chosen
        desc = next((d for d in inv.descriptors if d.name == chosen), None)
        if desc is not None and "requires-smm" in desc.features:
            reasons.append(
                f"firmware='efi' picks {desc.name}, a Secure Boot build that requires SMM"
            )
    return reasons


def xml_fragment(dom: Domain) -> str:
    """The parts of the definition that decide Secure Boot, rebuilt from the parsed domain."""
    attrs = f" firmware='{dom.firmware}'" if dom.firmware else ""
    lines = [
        f"<os{attrs}>",
        f"  <type arch='{dom.arch}' machine='{dom.machine}'>hvm</type>",
    ]
    if dom.firmware_features:
        lines.append("  <firmware>")
        lines += [
            f"    <feature enabled='{v}' name='{k}'/>" for k, v in dom.firmware_features.items()
        ]
        lines.append("  </firmware>")
    loader = dom.loader
    if loader is not None:
        named = (("readonly", loader.readonly), ("secure", loader.secure), ("type", loader.type))
        la = "".join(f" {k}='{v}'" for k, v in named if v)
        lines.append(f"  <loader{la}>{loader.path or ''}</loader>")
    lines.append("</os>")
    lines.append(
        f"<features><smm state='{dom.smm}'/></features>" if dom.smm else "<!-- no <smm/> -->"
    )
    return "\n".join(lines)


@check(
    "FW004",
    "secure-boot-needs-q35-smm",
    title="Secure Boot is requested without the q35 machine type or SMM",
    tags=("domain", "firmware"),
)
def secure_boot_needs_q35_smm(domains: Domains, firmware: FirmwareInventory) -> Iterator[Finding]:
    """What it checks: for each x86 domain that asks for UEFI Secure Boot (`<loader
    secure='yes'>`, `<feature enabled='yes' name='secure-boot'/>`, a loader that a firmware
    descriptor marks `requires-smm`, or `<os firmware='efi'>` picking such a build), that the
    machine type is q35 and that System Management Mode is not turned off (and, with
    `secure='yes'` on a hand-written loader, that it is turned on).

    Why it matters: OVMF's Secure Boot builds protect their variable store with SMM, which
    QEMU emulates only on q35. libvirt refuses "Secure boot is supported with q35 machine types
    only" and "Secure boot requires SMM feature enabled" when it defines the domain; with
    `firmware='efi'` the start fails ("Unable to find any firmware to satisfy 'efi'", or
    "domain has SMM turned off but chosen firmware requires it"); a Secure Boot build named
    by path on i440fx finds no NVRAM template, or hangs in the firmware.

    How to fix: use a q35 machine type (`<type machine='q35'>`; an i440fx guest's devices
    change with it, so reinstall or re-create it) and `<features><smm state='on'/></features>`,
    or drop the Secure Boot request: a non-Secure-Boot build (OVMF_CODE_4M.fd) runs on both.

    References: https://libvirt.org/kbase/secureboot.html
    https://libvirt.org/formatdomain.html#hypervisor-features
    https://gitlab.com/qemu-project/qemu/-/blob/master/docs/interop/firmware.json
    """
    if not domains.items:
        yield _no_domains(domains.origin)
        return
    for dom in domains.items:
        yield _secure_boot_finding(dom, firmware)


def _secure_boot_finding(dom: Domain, inv: FirmwareInventory) -> Finding:
    reasons = secure_boot_requests(dom, inv)
    selection = select_firmware(inv.descriptors, dom)
    evidence: dict[str, Any] = {
        "domain": dom.name,
        "xml": xml_fragment(dom),
        "requested_by": reasons,
        "machine": dom.machine,
        "arch": dom.arch,
        "smm": dom.smm,
        "selection": selection.as_dict(),
    }
    subject = dom.subject
    if not reasons:
        return Finding("pass", "does not ask for Secure Boot", subject=subject, evidence=evidence)
    asked = ", ".join(reasons)
    secure_loader = dom.loader is not None and dom.loader.secure == "yes"
    if dom.arch not in X86:
        if secure_loader:
            return Finding(
                "fail",
                f'{asked} on {dom.arch}: SMM exists on x86 only ("Secure boot is supported '
                'for x86_64 architecture only")',
                subject=subject,
                evidence=evidence,
            )
        return Finding(
            "pass",
            f"Secure Boot on {dom.arch} needs neither q35 nor SMM",
            subject=subject,
            evidence=evidence,
        )
    problems, said = [], []
    if not is_q35(dom.machine):
        problems.append(f"the machine type {dom.machine} is not q35")
        if secure_loader:
            said.append("Secure boot is supported with q35 machine types only")
        elif dom.firmware == "efi" and selection.chosen is None:
            said.append("Unable to find any firmware to satisfy 'efi'")
    if dom.smm == "off":
        problems.append("SMM is turned off (<smm state='off'/>)")
    elif secure_loader and dom.firmware != "efi" and dom.smm != "on":
        problems.append("SMM is not turned on (no <smm state='on'/>)")
        said.append("Secure boot requires SMM feature enabled")
    if secure_loader and dom.arch != "x86_64":
        problems.append(f"{dom.arch} guests cannot use an SMM-protected store")
        said.append("Secure boot is supported for x86_64 architecture only")
    if selection.conflict:
        said.append(selection.conflict)
    evidence["libvirt_says"] = said
    if problems:
        quoted = "; libvirt: " + "; ".join(f'"{s}"' for s in said) if said else ""
        return Finding(
            "fail",
            f"Secure Boot is requested ({asked}) but {' and '.join(problems)}{quoted}",
            subject=subject,
            evidence=evidence,
        )
    smm = "on" if dom.smm == "on" else "turned on by libvirt for the chosen build"
    return Finding(
        "pass",
        f"Secure Boot ({asked}) on {dom.machine} with SMM {smm}",
        subject=subject,
        evidence=evidence,
    )
