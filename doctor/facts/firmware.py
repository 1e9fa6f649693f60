"""UEFI firmware facts: QEMU's firmware descriptors, qemu.conf `nvram`, what libvirt's domain
capabilities offer, and the firmware files each domain names.

The descriptors are JSON files in QEMU's firmware.json schema (docs/interop/firmware.json in
QEMU). They are looked up as libvirt looks them up (src/qemu/qemu_interop_config.c):

- in /usr/share/qemu/firmware (distribution packages), then /etc/qemu/firmware (the
  administrator), then, for a session (non-root) daemon only, $XDG_CONFIG_HOME/qemu/firmware
  (~/.config/qemu/firmware). libvirt's system daemon never reads a home directory, a
  deliberate divergence from QEMU's specification;
- a file in a later directory replaces the file of the same name in an earlier one, and an
  empty file hides it;
- names starting with "." and anything that is not a regular file are skipped; a name that
  cannot be stat'ed (a dangling symlink) makes libvirt refuse the whole lot;
- the files are then taken in the order of their names across all directories, and the first
  one that matches a domain wins.

A descriptor libvirt cannot parse makes it refuse every descriptor ("unable to parse json file
'...'"), so parse problems are kept with libvirt's wording. How a domain's firmware is chosen
and where its NVRAM template comes from follows libvirt 9.0 (src/qemu/qemu_firmware.c and
qemuPrepareNVRAM), checked against the real daemon on the lab machine; see `select_firmware`
and `find_template`.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, Optional

from doctor.facts import FactContext, fact
from doctor.facts.util import read_optional
from doctor.record import record
from doctor.sources.base import NotFound, Source, SourceError

SYSTEM_DIRS = ("/usr/share/qemu/firmware", "/etc/qemu/firmware")
NVRAM_DIR = "/var/lib/libvirt/qemu/nvram"  # the system daemon's nvramDir
MAX_DESCRIPTOR = 1024 * 1024  # libvirt reads at most 1 MiB of a descriptor

INTERFACES = ("bios", "openfirmware", "uboot", "uefi")
DEVICES = ("flash", "kernel", "memory")
FLASH_MODES = ("split", "combined", "stateless")

# QEMU names two targets differently from libvirt (virQEMUCapsArchFromString).
_QEMU_ARCH = {"i386": "i686", "arm": "armv7l"}
# libvirt's architectures (src/util/virarch.c); any other name is "unknown architecture".
_ARCH_NAMES = (
    "i686 x86_64 aarch64 armv6l armv7l armv7b alpha cris loongarch64 m68k microblaze "
    "microblazeel mips mipsel mips64 mips64el openrisc parisc parisc64 ppc ppcle ppc64 "
    "ppc64le ppcemb riscv32 riscv64 s390 s390x sh4 sh4eb sparc sparc64 unicore32 xtensa xtensaeb"
)
ARCHES = frozenset(_ARCH_NAMES.split())
X86 = ("i686", "x86_64")

# Machine-type aliases that libvirt expands to the newest versioned type before it matches
# descriptors ("q35" becomes pc-q35-7.2 with QEMU 7.2); a stand-in version is used here.
_ALIASES = {"q35": "pc-q35-", "pc": "pc-i440fx-", "virt": "virt-"}

# When qemu.conf does not set `nvram`, libvirt falls back to a list compiled into it. Its
# qemu.conf documents this list as "the libvirt default"; Debian's build compiles it in (read
# from libvirt_driver_qemu.so of libvirt 9.0.0-4+deb12u2 on the lab machine, and proven there:
# a domain with loader OVMF_CODE.fd and no template started with OVMF_VARS.fd copied). Other
# builds may compile in none, so outside the Debian family a match here is not a promise.
BUILTIN_NVRAM = (
    ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
    ("/usr/share/OVMF/OVMF_CODE.secboot.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
    ("/usr/share/AAVMF/AAVMF_CODE.fd", "/usr/share/AAVMF/AAVMF_VARS.fd"),
    ("/usr/share/AAVMF/AAVMF32_CODE.fd", "/usr/share/AAVMF/AAVMF32_VARS.fd"),
)
BUILTIN_KNOWN_FAMILIES = ("debian",)

# Where distributions put UEFI builds, for hosts that have files but no descriptors.
LOOSE_DIRS = {
    "x86_64": (
        "/usr/share/OVMF",
        "/usr/share/edk2/ovmf",
        "/usr/share/edk2/x64",
        "/usr/share/edk2-ovmf/x64",
        "/usr/share/qemu",
    ),
    "i686": ("/usr/share/OVMF", "/usr/share/edk2/ovmf-ia32", "/usr/share/edk2/ia32"),
    "aarch64": (
        "/usr/share/AAVMF",
        "/usr/share/edk2/aarch64",
        "/usr/share/qemu-efi-aarch64",
        "/usr/share/edk2-armvirt/aarch64",
        "/usr/share/qemu",
    ),
    "armv7l": ("/usr/share/AAVMF", "/usr/share/edk2/arm"),
}
_LOOSE_NAME = re.compile(
    r"^(?:(?:OVMF|OVMF32|AAVMF|AAVMF32)_CODE[\w.-]*|OVMF|QEMU_EFI[\w.-]*"
    r"|edk2-(?:x86_64|i386|aarch64|arm)-code[\w.-]*)\.(?:fd|bin|raw|qcow2)$"
)
_LOOSE_ARCH = {
    "x86_64": ("OVMF_CODE", "OVMF.", "edk2-x86_64-"),
    "i686": ("OVMF32_CODE", "edk2-i386-"),
    "aarch64": ("AAVMF_CODE", "QEMU_EFI", "edk2-aarch64-"),
    "armv7l": ("AAVMF32_CODE", "QEMU_EFI", "edk2-arm-"),
}

# The package that carries UEFI for an architecture, by distribution family.
PACKAGES = {
    "debian": {
        "x86_64": "ovmf",
        "i686": "ovmf-ia32",
        "aarch64": "qemu-efi-aarch64",
        "armv7l": "qemu-efi-arm",
    },
    "fedora": {"x86_64": "edk2-ovmf", "aarch64": "edk2-aarch64"},
    "arch": {"x86_64": "edk2-ovmf", "aarch64": "edk2-aarch64"},
    "suse": {"x86_64": "qemu-ovmf-x86_64", "aarch64": "qemu-uefi-aarch64"},
}


class DescriptorError(ValueError):
    """libvirt would refuse this descriptor; the message is libvirt's."""


# --- descriptors ---------------------------------------------------------------------------


@record
class FlashFile:
    filename: str
    format: str


@record
class Target:
    architecture: str  # libvirt's name (i686, armv7l, x86_64, aarch64, ...)
    machines: tuple[str, ...]  # glob patterns


@record
class Descriptor:
    """One firmware descriptor, as libvirt parses it."""

    name: str  # the file name: the sort key across directories
    path: str
    description: Optional[str]
    interface_types: tuple[str, ...]
    device: str  # flash, kernel, memory
    targets: tuple[Target, ...]
    features: tuple[str, ...]  # known features only; libvirt ignores the others
    mode: Optional[str] = None  # flash only: split (the default), combined, stateless
    executable: Optional[FlashFile] = None  # flash
    nvram_template: Optional[FlashFile] = None  # flash, split mode
    filename: Optional[str] = None  # kernel, memory

    @property
    def uefi(self) -> bool:
        return "uefi" in self.interface_types

    @property
    def loader(self) -> Optional[str]:
        """The file QEMU executes: the flash executable, or the kernel/memory image."""
        return self.executable.filename if self.executable else self.filename

    @property
    def template(self) -> Optional[str]:
        return self.nvram_template.filename if self.nvram_template else None

    def files(self) -> tuple[str, ...]:
        return tuple(p for p in (self.loader, self.template) if p)

    def architectures(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t.architecture for t in self.targets))

    def serves(self, arch: Optional[str], machine: Optional[str]) -> bool:
        """Whether a target covers this architecture and machine type (libvirt's
        qemuFirmwareMatchesMachineArch, with GLib's simple globs)."""
        return any(
            t.architecture == arch and any(machine_matches(p, machine) for p in t.machines)
            for t in self.targets
        )

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["uefi"] = self.uefi
        return out

    def summary(self) -> dict[str, Any]:
        """The parts a reader needs to verify a finding."""
        return {
            "name": self.name,
            "path": self.path,
            "interface_types": list(self.interface_types),
            "targets": {t.architecture: list(t.machines) for t in self.targets},
            "features": list(self.features),
            "device": self.device,
            "mode": self.mode,
            "loader": self.loader,
            "nvram_template": self.template,
        }


KNOWN_FEATURES = frozenset(
    {
        "acpi-s3",
        "acpi-s4",
        "amd-sev",
        "amd-sev-es",
        "amd-sev-snp",
        "enrolled-keys",
        "host-uefi-vars",
        "intel-tdx",
        "requires-smm",
        "secure-boot",
        "verbose-dynamic",
        "verbose-static",
    }
)


def machine_matches(pattern: str, machine: Optional[str]) -> bool:
    """GLib's g_pattern_match_simple: `*` is any run of characters, `?` any one; nothing else
    is special. A machine alias (q35, pc, virt) stands for a versioned type of its family."""
    if machine is None:
        return False
    regex = re.compile(
        "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern) + r"\Z",
        re.DOTALL,
    )
    if regex.match(machine):
        return True
    prefix = _ALIASES.get(machine)
    return prefix is not None and bool(regex.match(prefix + "0.0"))


def is_q35(machine: Optional[str]) -> bool:
    """libvirt's qemuDomainIsQ35."""
    return machine is not None and (machine == "q35" or machine.startswith("pc-q35"))


def _str_list(doc: dict[str, Any], key: str) -> Optional[list[Any]]:
    value = doc.get(key)
    return value if isinstance(value, list) else None


def _flash_file(doc: Any, path: str) -> FlashFile:
    doc = doc if isinstance(doc, dict) else {}
    filename, fmt = doc.get("filename"), doc.get("format")
    if not isinstance(filename, str):
        raise DescriptorError(f"missing 'filename' in '{path}'")
    if not isinstance(fmt, str):
        raise DescriptorError(f"missing 'format' in '{path}'")
    return FlashFile(filename, fmt)


def parse_descriptor(text: str, *, name: str, path: str) -> Descriptor:
    """Parse one descriptor as libvirt 9.0 does (qemuFirmwareParse): `interface-types`,
    `mapping`, `targets` and `features` are required; unknown interface types, devices, flash
    modes and architectures are errors; unknown features are ignored; `description` and `tags`
    are not interpreted. Raises DescriptorError with libvirt's message."""
    try:
        doc = json.loads(text)
    except ValueError:
        raise DescriptorError(f"unable to parse json file '{path}'") from None
    if not isinstance(doc, dict):
        raise DescriptorError(f"unable to parse json file '{path}'")
    interfaces = _str_list(doc, "interface-types")
    if interfaces is None:
        raise DescriptorError(f"failed to get interface-types from '{path}'")
    for item in interfaces:
        if item not in INTERFACES:
            raise DescriptorError(f"unknown interface type: '{item}'")
    mapping = doc.get("mapping")
    if not isinstance(mapping, dict):
        raise DescriptorError(f"missing mapping in '{path}'")
    device = mapping.get("device")
    if not isinstance(device, str):
        raise DescriptorError(f"missing device type in '{path}'")
    if device not in DEVICES:
        raise DescriptorError(f"unknown device type in '{path}'")
    mode = executable = template = filename = None
    if device == "flash":
        mode = mapping.get("mode", "split")
        if not isinstance(mode, str):
            raise DescriptorError("Firmware flash mode value was malformed")
        if mode not in FLASH_MODES:
            raise DescriptorError(f"Firmware flash mode value '{mode}' unexpected")
        if "executable" not in mapping:
            raise DescriptorError(f"missing 'executable' in '{path}'")
        executable = _flash_file(mapping["executable"], path)
        if mode == "split":
            if "nvram-template" not in mapping:
                raise DescriptorError(f"missing 'nvram-template' in '{path}'")
            template = _flash_file(mapping["nvram-template"], path)
    else:
        filename = mapping.get("filename")
        if not isinstance(filename, str):
            raise DescriptorError(f"missing 'filename' in '{path}'")
    targets_doc = _str_list(doc, "targets")
    if targets_doc is None:
        raise DescriptorError(f"failed to get targets from '{path}'")
    targets = []
    for item in targets_doc:
        item = item if isinstance(item, dict) else {}
        arch = item.get("architecture")
        if not isinstance(arch, str):
            raise DescriptorError(f"missing 'architecture' in '{path}'")
        libvirt_arch = _QEMU_ARCH.get(arch, arch)
        if libvirt_arch not in ARCHES:
            raise DescriptorError(f"unknown architecture '{arch}'")
        machines = _str_list(item, "machines")
        if machines is None:
            raise DescriptorError(f"missing 'machines' in '{path}'")
        targets.append(Target(libvirt_arch, tuple(str(m) for m in machines)))
    features = _str_list(doc, "features")
    if features is None:
        raise DescriptorError(f"failed to get features from '{path}'")
    description = doc.get("description")
    return Descriptor(
        name=name,
        path=path,
        description=description if isinstance(description, str) else None,
        interface_types=tuple(interfaces),
        device=device,
        targets=tuple(targets),
        features=tuple(f for f in features if f in KNOWN_FEATURES),
        mode=mode,
        executable=executable,
        nvram_template=template,
        filename=filename,
    )


# --- the search directories and their precedence ------------------------------------------


@record
class SearchDir:
    path: str
    scope: str  # "distribution", "administrator", "user"
    state: str  # "present", "absent", "unreadable"
    entries: tuple[str, ...] = ()
    error: Optional[str] = None


@record
class Entry:
    """A file found in a search directory, and what became of it."""

    name: str
    path: str
    # "used", "masks" (empty: hides the same name elsewhere), "overridden" (a later directory
    # has the same name), "skipped" (not a regular file, or a dot file), "dangling" (cannot be
    # stat'ed: libvirt refuses every descriptor), "unreadable", "invalid" (libvirt cannot parse)
    status: str
    detail: Optional[str] = None


def resolve_precedence(
    listings: Sequence[tuple[str, Sequence[tuple[str, str]]]],
) -> tuple[list[tuple[str, str]], list[Entry]]:
    """From (directory, [(name, kind)]) in increasing priority, where kind is the stat type
    ("file", "dir", ...) or "dangling", return the (name, path) pairs libvirt reads, sorted by
    name, and the entries that lost (overridden, skipped, dangling)."""
    chosen: dict[str, str] = {}
    lost: list[Entry] = []
    for directory, names in listings:
        for name, kind in names:
            path = f"{directory.rstrip('/')}/{name}"
            if name.startswith("."):
                lost.append(Entry(name, path, "skipped", "a dot file"))
                continue
            if kind == "dangling":
                lost.append(
                    Entry(
                        name,
                        path,
                        "dangling",
                        f"Unable to access {path}: No such file or directory",
                    )
                )
                continue
            if kind != "file":
                lost.append(Entry(name, path, "skipped", f"a {kind}, not a regular file"))
                continue
            if name in chosen:
                lost.append(Entry(name, chosen[name], "overridden", f"replaced by {path}"))
            chosen[name] = path
    return sorted(chosen.items()), lost


# --- qemu.conf nvram, domain capabilities, package hints -----------------------------------


@record
class NvramPair:
    loader: str
    template: str


class NvramListError(ValueError):
    """qemu.conf `nvram` is not a list of strings: libvirt refuses it before anything else."""


def parse_nvram_pairs(value: Any) -> tuple[NvramPair, ...]:
    """qemu.conf `nvram`: a list of "LOADER:TEMPLATE" strings (libvirt's virFirmwareParse).
    Raises NvramListError, or ValueError for a malformed pair, with libvirt's complaint."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise NvramListError("expected a string list for 'nvram' parameter")
    pairs = []
    for item in value:
        parts = item.split(":")
        if len(parts) != 2:
            raise ValueError(f"Invalid nvram format: '{item}'")
        pairs.append(NvramPair(parts[0], parts[1]))
    return tuple(pairs)


@record
class DomainCapsFirmware:
    """The `<os>` part of libvirt's domain capabilities for one arch and machine."""

    arch: Optional[str]
    machine: Optional[str]
    supported: bool
    firmware: tuple[str, ...]  # <enum name='firmware'>: efi, bios (from descriptors)
    loaders: tuple[str, ...]  # <loader><value>: files libvirt found
    secure: tuple[str, ...]  # <enum name='secure'>

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_domcaps_firmware(xml: str) -> DomainCapsFirmware:
    root = ET.fromstring(xml)
    os_el = root.find("os")

    def enum(parent: Optional[ET.Element], name: str) -> tuple[str, ...]:
        if parent is None:
            return ()
        for el in parent.findall("enum"):
            if el.get("name") == name:
                return tuple((v.text or "").strip() for v in el.findall("value"))
        return ()

    loader = os_el.find("loader") if os_el is not None else None
    return DomainCapsFirmware(
        arch=(root.findtext("arch") or "").strip() or None,
        machine=(root.findtext("machine") or "").strip() or None,
        supported=os_el is not None and os_el.get("supported") == "yes",
        firmware=enum(os_el, "firmware"),
        loaders=tuple((v.text or "").strip() for v in loader.findall("value"))
        if loader is not None
        else (),
        secure=enum(loader, "secure"),
    )


def os_release_ids(text: str) -> tuple[str, ...]:
    """ID then ID_LIKE of an os-release file: the distribution and what it derives from."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip().strip("\"'")
    ids = [values.get("ID", "")] + values.get("ID_LIKE", "").split()
    return tuple(i for i in ids if i)


def family(ids: Sequence[str]) -> Optional[str]:
    for item in ids:
        if item in PACKAGES:
            return item
        if item in ("ubuntu",):
            return "debian"
        if item in ("rhel", "centos"):
            return "fedora"
        if item.startswith("opensuse") or item == "sles":
            return "suse"
    return None


@record
class PackageHint:
    family: Optional[str]  # debian, fedora, arch, suse
    name: Optional[str]  # the package that carries UEFI for the host's architecture
    installed: Optional[bool]  # from dpkg's or pacman's database; None: not known
    evidence: Optional[str] = None  # the file that said so
    # The installed package's version: the head of its Debian changelog, or pacman's entry
    # name; None when not known (RPM and SUSE hosts keep it in a database kvmdoctor does not
    # read). The fleet compares it across hosts (`kvmdoctor report merge`, LIB009).
    version: Optional[str] = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- files -----------------------------------------------------------------------------------


@record
class FileState:
    path: str
    exists: Optional[bool]  # None: the source could not tell
    type: Optional[str] = None
    error: Optional[str] = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def file_state(source: Source, path: str) -> FileState:
    """Whether the path exists, as the root daemon sees it (symlinks followed)."""
    if not path.startswith("/"):
        return FileState(path, False, error="not an absolute path")
    try:
        st = source.stat(path)
    except NotFound:
        return FileState(path, False)
    except SourceError as exc:
        return FileState(path, None, error=f"{exc.kind}: {exc.reason}")
    return FileState(path, True, st.type)


# --- the inventory -------------------------------------------------------------------------


@record
class FirmwareInventory:
    """Everything libvirt consults to find UEFI firmware on this host."""

    scope: str  # "system" (root daemon: no home directory) or "session"
    directories: tuple[SearchDir, ...]
    entries: tuple[Entry, ...]  # every file seen in the directories, with its fate
    descriptors: tuple[Descriptor, ...]  # what libvirt uses, in its order
    files: dict[str, FileState]  # every file a descriptor or an nvram pair names
    host_arch: Optional[str]
    arch_from: Optional[str]
    nvram_configured: Optional[bool] = None  # qemu.conf sets `nvram`; None: qemu.conf unknown
    nvram_pairs: tuple[NvramPair, ...] = ()
    nvram_error: Optional[str] = None  # libvirt refuses qemu.conf (and the QEMU driver) so
    builtin_known: bool = False  # this distribution's libvirt compiles BUILTIN_NVRAM in
    loose_files: tuple[str, ...] = ()  # UEFI builds in well-known places, for host_arch
    package: Optional[PackageHint] = None
    domcaps: Optional[DomainCapsFirmware] = None
    domcaps_error: Optional[str] = None
    notes: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """Whether every search directory could be read (a snapshot may not hold them)."""
        return all(d.state != "unreadable" for d in self.directories)

    @property
    def problems(self) -> tuple[str, ...]:
        """Why libvirt would refuse to load the descriptors at all."""
        return tuple(
            e.detail or e.path for e in self.entries if e.status in ("dangling", "invalid")
        )

    @property
    def descriptor_files(self) -> tuple[str, ...]:
        """Non-empty descriptor files libvirt lists (parsed or not)."""
        return tuple(e.path for e in self.entries if e.status in ("used", "invalid"))

    def exists(self, path: Optional[str]) -> Optional[bool]:
        if path is None:
            return None
        state = self.files.get(path)
        return state.exists if state else None

    def uefi_for(self, arch: Optional[str]) -> tuple[Descriptor, ...]:
        return tuple(d for d in self.descriptors if d.uefi and arch in d.architectures())

    def mapping(self, loader: str) -> tuple[Descriptor, ...]:
        """Descriptors whose executable is this file, for any machine."""
        return tuple(d for d in self.descriptors if d.loader == loader)

    def missing_files(self, desc: Descriptor) -> tuple[str, ...]:
        return tuple(p for p in desc.files() if self.exists(p) is False)

    def legacy(self) -> tuple[tuple[NvramPair, ...], str, bool]:
        """The LOADER:TEMPLATE list libvirt falls back to when no descriptor maps a loader:
        (pairs, where they come from, whether the list is known for certain)."""
        if self.nvram_configured:
            if self.descriptor_files:
                return (
                    (),
                    "qemu.conf nvram, which libvirt ignores (and its built-in list with it) "
                    "because firmware descriptors exist",
                    True,
                )
            return self.nvram_pairs, "qemu.conf nvram", True
        pairs = tuple(NvramPair(a, b) for a, b in BUILTIN_NVRAM)
        if self.builtin_known:
            return pairs, "libvirt's built-in list (compiled into this distribution's build)", True
        return pairs, "libvirt's built-in list, if this build has one (Debian's shown)", False

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["complete"] = self.complete
        out["problems"] = list(self.problems)
        return out


def _listing(
    ctx: FactContext, path: str, scope: str
) -> tuple[SearchDir, list[tuple[str, str]], list[Entry]]:
    source = ctx.source
    try:
        names = source.list_dir(path)
    except NotFound:
        return SearchDir(path, scope, "absent"), [], []
    except SourceError as exc:
        return SearchDir(path, scope, "unreadable", error=f"{exc.kind}: {exc.reason}"), [], []
    kinds: list[tuple[str, str]] = []
    unreadable: list[Entry] = []
    for name in sorted(names):
        full = f"{path}/{name}"
        if name.startswith("."):
            kinds.append((name, "dot"))
            continue
        try:
            kinds.append((name, source.stat(full).type))
        except NotFound:
            kinds.append((name, "dangling"))
        except SourceError as exc:
            unreadable.append(Entry(name, full, "unreadable", f"{exc.kind}: {exc.reason}"))
    return SearchDir(path, scope, "present", tuple(names)), kinds, unreadable


def _user_dir(ctx: FactContext) -> tuple[Optional[str], Optional[str]]:
    """$XDG_CONFIG_HOME/qemu/firmware or ~/.config/qemu/firmware of the invoking user."""
    try:
        config = ctx.source.environ("XDG_CONFIG_HOME")
        home = ctx.source.environ("HOME")
    except SourceError as exc:
        return None, f"the session's firmware directory is unknown: {exc.reason}"
    if not config:
        if not home:
            return None, "the session's firmware directory is unknown: HOME is not set"
        config = f"{home.rstrip('/')}/.config"
    return f"{config.rstrip('/')}/qemu/firmware", None


def _loose_files(ctx: FactContext, arch: Optional[str]) -> tuple[str, ...]:
    found = []
    prefixes = _LOOSE_ARCH.get(arch or "", ())
    for directory in LOOSE_DIRS.get(arch or "", ()):
        try:
            names = ctx.source.list_dir(directory)
        except SourceError:
            continue
        for name in names:
            if _LOOSE_NAME.match(name) and name.startswith(prefixes):
                found.append(f"{directory}/{name}")
    return tuple(dict.fromkeys(found))


# The first line of a Debian changelog: "edk2 (2022.11-6+deb12u2) bookworm; urgency=medium".
_CHANGELOG_HEAD = re.compile(r"^\S+ \(([^()\s]+)\)")


def debian_changelog_version(data: bytes) -> Optional[str]:
    """The version at the head of a gzipped Debian changelog (only its start is needed)."""
    import zlib

    try:
        text = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, 4096)
    except zlib.error:
        return None
    match = _CHANGELOG_HEAD.match(text.decode("utf-8", "replace"))
    return match.group(1) if match else None


def _debian_version(source: Source, name: str) -> Optional[str]:
    """The installed version of a Debian package, from the changelog it ships."""
    try:
        data = source.read_file(f"/usr/share/doc/{name}/changelog.Debian.gz", max_bytes=65536)
    except SourceError:
        return None
    return debian_changelog_version(data)


def _package(ctx: FactContext, fam: Optional[str], arch: Optional[str]) -> PackageHint:
    name = PACKAGES.get(fam or "", {}).get(arch or "")
    if name is None:
        return PackageHint(fam, None, None)
    if fam == "debian":
        for path in (f"/var/lib/dpkg/info/{name}.list", f"/var/lib/dpkg/info/{name}:all.list"):
            state = file_state(ctx.source, path)
            if state.exists:
                return PackageHint(fam, name, True, path, _debian_version(ctx.source, name))
        exists = file_state(ctx.source, "/var/lib/dpkg/status").exists
        return PackageHint(fam, name, False if exists else None, "/var/lib/dpkg/info")
    if fam == "arch":
        try:
            names = ctx.source.list_dir("/var/lib/pacman/local")
        except SourceError:
            return PackageHint(fam, name, None)
        pattern = re.compile(rf"^{re.escape(name)}-\d")
        hit = next((n for n in names if pattern.match(n)), None)
        return PackageHint(
            fam,
            name,
            hit is not None,
            f"/var/lib/pacman/local/{hit or name + '-*'}",
            hit[len(name) + 1 :] if hit else None,
        )
    return PackageHint(fam, name, None)


def _domcaps(
    ctx: FactContext, arch: Optional[str]
) -> tuple[Optional[DomainCapsFirmware], Optional[str]]:
    uri = ctx.optional("uri")
    if uri is None or uri.parts.driver != "qemu":
        return None, "domain capabilities come from a qemu:// connection only"
    machine = "q35" if arch in X86 else None
    try:
        xml = ctx.source.libvirt(uri.uri, "domcapabilities", arch=arch, machine=machine)
    except SourceError as exc:
        return None, f"libvirt domcapabilities: {exc.reason}"
    try:
        return parse_domcaps_firmware(xml), None
    except ET.ParseError as exc:
        return None, f"libvirt's domain capabilities are not XML: {exc}"


@fact("firmware")
def firmware(ctx: FactContext) -> FirmwareInventory:
    source = ctx.source
    uri = ctx.optional("uri")
    session = bool(uri and uri.session)
    notes: list[str] = []
    dirs = [(SYSTEM_DIRS[0], "distribution"), (SYSTEM_DIRS[1], "administrator")]
    if session:
        user_dir, why = _user_dir(ctx)
        if user_dir:
            dirs.append((user_dir, "user"))
        elif why:
            notes.append(why)
    searched, listings, entries = [], [], []
    for path, scope in dirs:
        state, kinds, unreadable = _listing(ctx, path, scope)
        searched.append(state)
        listings.append((path, kinds))
        entries.extend(unreadable)
    chosen, lost = resolve_precedence(listings)
    entries.extend(lost)
    descriptors = []
    for name, path in chosen:
        try:
            data = source.read_file(path, max_bytes=MAX_DESCRIPTOR + 1)
        except SourceError as exc:
            entries.append(Entry(name, path, "unreadable", f"{exc.kind}: {exc.reason}"))
            continue
        if not data:
            entries.append(Entry(name, path, "masks", "empty: hides this name elsewhere"))
            continue
        if len(data) > MAX_DESCRIPTOR:
            entries.append(Entry(name, path, "invalid", f"File '{path}' is too large"))
            continue
        try:
            desc = parse_descriptor(data.decode("utf-8", "replace"), name=name, path=path)
        except DescriptorError as exc:
            entries.append(Entry(name, path, "invalid", str(exc)))
            continue
        entries.append(Entry(name, path, "used"))
        descriptors.append(desc)

    conf = ctx.optional("qemu_conf")
    nvram_configured: Optional[bool] = None
    pairs: tuple[NvramPair, ...] = ()
    nvram_error = None
    if conf is not None:
        nvram_configured = "nvram" in conf.values
        if nvram_configured:
            try:
                pairs = parse_nvram_pairs(conf.values["nvram"])
            except NvramListError as exc:
                nvram_error = f"{conf.path}: {exc}"
            except ValueError as exc:
                # libvirt parses the pairs only when no descriptor exists (and then refuses
                # the whole qemu.conf); with descriptors it ignores the setting unread.
                if not any(e.status in ("used", "invalid") for e in entries):
                    nvram_error = str(exc)
    else:
        notes.append("qemu.conf could not be read: its nvram setting is unknown")

    host = ctx.optional("host")
    arch = host.arch if host else None
    ids = os_release_ids(
        read_optional(source, "/etc/os-release")
        or read_optional(source, "/usr/lib/os-release")
        or ""
    )
    fam = family(ids)
    paths = [p for d in descriptors for p in d.files()]
    paths += [p for pair in pairs for p in (pair.loader, pair.template)]
    loose = _loose_files(ctx, arch)
    domcaps, domcaps_error = _domcaps(ctx, arch)
    return FirmwareInventory(
        scope="session" if session else "system",
        directories=tuple(searched),
        entries=tuple(sorted(entries, key=lambda e: (e.name, e.path))),
        descriptors=tuple(descriptors),
        files={p: file_state(source, p) for p in dict.fromkeys(paths)},
        host_arch=arch,
        arch_from=host.arch_from if host else None,
        nvram_configured=nvram_configured,
        nvram_pairs=pairs,
        nvram_error=nvram_error,
        builtin_known=fam in BUILTIN_KNOWN_FAMILIES,
        loose_files=loose,
        package=_package(ctx, fam, arch),
        domcaps=domcaps,
        domcaps_error=domcaps_error,
        notes=tuple(notes),
    )


# --- choosing a domain's firmware, as libvirt does -----------------------------------------


@record
class Selection:
    """What libvirt's descriptor matching gives for one domain."""

    wanted: Optional[str]  # the interface: uefi or bios; None: nothing to select
    chosen: Optional[str] = None  # descriptor name
    rejected: tuple[tuple[str, str], ...] = ()  # (descriptor name, why it does not match)
    conflict: Optional[str] = None  # libvirt picks it, then refuses to start (9.0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "wanted": self.wanted,
            "chosen": self.chosen,
            "rejected": [{"descriptor": n, "why": w} for n, w in self.rejected],
            "conflict": self.conflict,
        }


def _wanted(dom: Any) -> Optional[str]:
    if dom.firmware in ("efi", "bios"):
        return "uefi" if dom.firmware == "efi" else "bios"
    if dom.loader is not None:
        return {"pflash": "uefi", "rom": "bios"}.get(dom.loader.type or "")
    return None


def mismatch(desc: Descriptor, dom: Any, wanted: str) -> Optional[str]:
    """Why libvirt 9.0's qemuFirmwareMatchDomain rejects this descriptor for this domain, or
    None when it matches. `dom` is a doctor.facts.domains.Domain. Power-management (S3/S4)
    and launch-security (SEV) requests are not in the parsed domain and are not matched."""
    if wanted not in desc.interface_types:
        return f"interface-types {list(desc.interface_types)} lack {wanted}"
    loader = dom.loader
    if (
        loader is not None
        and loader.path
        and (desc.device != "flash" or desc.loader != loader.path)
    ):
        return f"maps {desc.loader}, not {loader.path}"
    if not desc.serves(dom.arch, dom.machine):
        cover = "; ".join(f"{t.architecture} {list(t.machines)}" for t in desc.targets)
        return f"targets {cover} do not cover {dom.arch} {dom.machine}"
    features = set(desc.features)
    requests = dom.firmware_features or {}
    for feature, label in (("secure-boot", "Secure Boot"), ("enrolled-keys", "enrolled keys")):
        asked = requests.get(feature)
        if asked == "yes" and feature not in features:
            return f"the domain requests {label}; this firmware has none"
        if asked == "no" and feature in features:
            return f"the domain refuses {label}; this firmware has it"
    if loader is not None and loader.secure == "yes" and "requires-smm" not in features:
        return "the domain restricts flash writes to SMM (secure='yes'); this firmware has no SMM"
    if desc.device == "flash" and desc.mode != "split":
        return f"flash mode {desc.mode}: libvirt uses split flash only"
    return None


def select_firmware(descriptors: Sequence[Descriptor], dom: Any) -> Selection:
    """The first descriptor (in name order) that matches the domain, as libvirt picks it for
    `<os firmware='efi'>` and for a `<loader type='pflash'>` without an NVRAM template."""
    wanted = _wanted(dom)
    if wanted is None:
        return Selection(None)
    rejected = []
    for desc in descriptors:
        why = mismatch(desc, dom, wanted)
        if why is not None:
            rejected.append((desc.name, why))
            continue
        conflict = None
        if "requires-smm" in desc.features and dom.smm == "off":
            conflict = "domain has SMM turned off but chosen firmware requires it"
        return Selection(wanted, desc.name, tuple(rejected), conflict)
    return Selection(wanted, None, tuple(rejected))


@record
class TemplateLookup:
    """Where libvirt would copy a missing NVRAM file from."""

    template: Optional[FileState]  # the template found, with whether it exists
    found_by: Optional[str]  # what named it
    certain: bool = True  # False when it rests on a build default that cannot be read
    searched: tuple[str, ...] = ()  # each mapping considered and why it did not apply

    def as_dict(self) -> dict[str, Any]:
        return {
            "template": self.template.as_dict() if self.template else None,
            "found_by": self.found_by,
            "certain": self.certain,
            "searched": list(self.searched),
        }


def find_template(
    inv: FirmwareInventory,
    dom: Any,
    selection: Selection,
    state: Any,
) -> TemplateLookup:
    """libvirt's search for an NVRAM template: the domain's own `template` attribute; else the
    descriptor matching picks (firmware autoselection, or a pflash loader's path); else, for a
    hand-written loader only, the LOADER:TEMPLATE list (qemu.conf `nvram`, or the list built
    into libvirt). `state(path)` gives a FileState."""
    searched: list[str] = []
    if dom.nvram is not None and dom.nvram.template:
        return TemplateLookup(
            state(dom.nvram.template), "the domain's <nvram template='...'>", True, ()
        )
    loader = dom.loader.path if dom.loader is not None else None
    by_name = {d.name: d for d in inv.descriptors}
    if selection.chosen is not None:
        desc = by_name[selection.chosen]
        if desc.template:
            return TemplateLookup(
                state(desc.template), f"firmware descriptor {desc.path}", True, ()
            )
        searched.append(f"{desc.path}: flash mode {desc.mode} has no NVRAM template")
    for name, why in selection.rejected:
        desc = by_name[name]
        if loader is None or desc.loader == loader:
            searched.append(f"{desc.path}: {why}")
    if not inv.descriptors:
        searched.append("no firmware descriptors in " + ", ".join(d.path for d in inv.directories))
    elif loader is not None and not inv.mapping(loader):
        searched.append(
            f"no firmware descriptor maps {loader} ({len(inv.descriptors)} descriptors read)"
        )
    if dom.firmware == "efi" and loader is None:
        return TemplateLookup(None, None, True, tuple(searched))
    pairs, origin, certain = inv.legacy()
    for pair in pairs:
        if pair.loader == loader:
            return TemplateLookup(state(pair.template), origin, certain, tuple(searched))
    searched.append(f"{origin}: no entry for {loader}" if pairs else f"{origin}: empty")
    return TemplateLookup(None, None, certain, tuple(searched))


# --- each domain's firmware files ----------------------------------------------------------


@record
class DomainFirmware:
    """The firmware files one domain needs and what libvirt would do to find them."""

    name: str
    autoselect: Optional[str]  # <os firmware='efi|bios'>
    uefi: bool  # a UEFI (pflash) domain
    needs_nvram: bool  # a read-only pflash loader: a per-domain variable store is used
    selection: Selection
    loader: Optional[FileState]  # the domain's loader, or what autoselection would pick
    loader_from: Optional[str]
    nvram: Optional[FileState]
    nvram_from: Optional[str]  # "domain XML" or "libvirt's default"
    nvram_dir: Optional[FileState]
    template: Optional[TemplateLookup]
    active: bool = False
    arch: Optional[str] = None
    machine: Optional[str] = None

    @property
    def subject(self) -> str:
        return f"domain:{self.name}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "autoselect": self.autoselect,
            "uefi": self.uefi,
            "needs_nvram": self.needs_nvram,
            "selection": self.selection.as_dict(),
            "loader": self.loader.as_dict() if self.loader else None,
            "loader_from": self.loader_from,
            "nvram": self.nvram.as_dict() if self.nvram else None,
            "nvram_from": self.nvram_from,
            "nvram_dir": self.nvram_dir.as_dict() if self.nvram_dir else None,
            "template": self.template.as_dict() if self.template else None,
            "active": self.active,
            "arch": self.arch,
            "machine": self.machine,
        }


@record
class DomainsFirmware:
    items: tuple[DomainFirmware, ...]
    origin: str  # where the domains came from

    def as_dict(self) -> dict[str, Any]:
        return {"origin": self.origin, "items": [d.as_dict() for d in self.items]}


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def _nvram_dir(ctx: FactContext) -> Optional[str]:
    """Where libvirt keeps NVRAM files: the system daemon's directory, or the session's
    under $XDG_CONFIG_HOME (None when the session's home is unknown)."""
    uri = ctx.optional("uri")
    if uri is None or not uri.session:
        return NVRAM_DIR
    try:
        config = ctx.source.environ("XDG_CONFIG_HOME")
        home = ctx.source.environ("HOME")
    except SourceError:
        return None
    if not config and home:
        config = f"{home.rstrip('/')}/.config"
    return f"{config.rstrip('/')}/libvirt/qemu/nvram" if config else None


@fact("domain_firmware")
def domain_firmware(ctx: FactContext) -> DomainsFirmware:
    doms = ctx.get("domains")
    inv: FirmwareInventory = ctx.get("firmware")
    nvram_dir = _nvram_dir(ctx)
    cache: dict[str, FileState] = dict(inv.files)

    def state(path: str) -> FileState:
        if path not in cache:
            cache[path] = file_state(ctx.source, path)
        return cache[path]

    items = []
    for dom in doms.items if doms.local else ():
        selection = select_firmware(inv.descriptors, dom)
        loader = dom.loader
        uefi = selection.wanted == "uefi"
        # A hand-written pflash loader has a separate variable store only when read-only;
        # otherwise QEMU writes the variables into the loader file (libvirt 9.0 adds no
        # <nvram> then). Autoselection always uses a read-only build and a store.
        needs_nvram = uefi and (loader is None or not loader.path or loader.readonly == "yes")
        loader_state = loader_from = None
        if loader is not None and loader.path:
            loader_state, loader_from = state(loader.path), "domain XML"
        elif dom.firmware and selection.chosen:
            desc = next(d for d in inv.descriptors if d.name == selection.chosen)
            if desc.loader:
                loader_state = state(desc.loader)
                loader_from = f"firmware='{dom.firmware}' selects {desc.path}"
        nvram = nvram_from = parent = template = None
        if needs_nvram:
            if dom.nvram is not None and dom.nvram.path:
                nvram, nvram_from = state(dom.nvram.path), "domain XML"
            elif nvram_dir is not None:
                # libvirt fills this in when it defines the domain (qemuDomainNVRAMPathFormat)
                nvram = state(f"{nvram_dir}/{dom.name}_VARS.fd")
                nvram_from = "libvirt's default"
            if nvram is not None:
                parent = state(_parent(nvram.path))
            template = find_template(inv, dom, selection, state)
        items.append(
            DomainFirmware(
                name=dom.name,
                autoselect=dom.firmware,
                uefi=uefi,
                needs_nvram=needs_nvram,
                selection=selection,
                loader=loader_state,
                loader_from=loader_from,
                nvram=nvram,
                nvram_from=nvram_from,
                nvram_dir=parent,
                template=template,
                active=dom.active,
                arch=dom.arch,
                machine=dom.machine,
            )
        )
    return DomainsFirmware(tuple(items), doms.origin)
