"""The primitive questions every source answers, and the answers' types.

A source is the only code in kvmdoctor that touches the host. Facts are computed from these
answers alone, so a live host, a mounted image (`--root`) and a recorded snapshot are
interchangeable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, field
from typing import Any, Callable, Optional, Protocol

from doctor.record import record


class SourceError(Exception):
    """A primitive question could not be answered. `details` carries structured data about
    the refusal (libvirt's error code and domain, say); snapshots record it too."""

    kind = "error"

    def __init__(self, what: str, reason: str, details: Optional[dict[str, Any]] = None) -> None:
        super().__init__(f"{what}: {reason}")
        self.what = what
        self.reason = reason
        self.details: dict[str, Any] = dict(details or {})


class NotFound(SourceError):
    """The path, command or object does not exist."""

    kind = "not-found"


class AccessDenied(SourceError):
    """It exists, but kvmdoctor was not allowed to read it."""

    kind = "access-denied"


class Unavailable(SourceError):
    """This source cannot answer this kind of question (a snapshot that did not record it,
    a command under `--root`, a kernel interface that is absent)."""

    kind = "unavailable"


class PathEscapes(SourceError):
    """A path or symlink under `--root` leads outside the tree."""

    kind = "path-escapes"


class TimedOut(SourceError):
    """No answer within the time limit (a daemon that accepts and never replies)."""

    kind = "timeout"


class LibvirtError(SourceError):
    """libvirt refused: `details` holds code, code_name, domain, domain_name, level, message."""

    kind = "libvirt-error"


ERROR_KINDS: dict[str, type[SourceError]] = {
    cls.kind: cls
    for cls in (
        SourceError,
        NotFound,
        AccessDenied,
        Unavailable,
        PathEscapes,
        TimedOut,
        LibvirtError,
    )
}


@record
class AclEntry:
    """One POSIX ACL entry, as getfacl prints it: tag `user`, `group`, `mask` or `other`;
    qualifier the uid/gid for named entries; perms like `rw-`."""

    tag: str
    qualifier: Optional[int]
    perms: str


@record
class StatInfo:
    path: str
    type: str  # "char", "block", "dir", "file", "link", "socket", "fifo"
    mode: int  # permission bits only (0o7777)
    uid: int
    gid: int
    rdev: Optional[str] = None  # "major:minor" for devices
    acl: tuple[AclEntry, ...] = ()  # extended ACL entries; empty when the path has none

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StatInfo:
        acl = tuple(AclEntry(**entry) for entry in data.get("acl", ()))
        return cls(**{**data, "acl": acl})


@record
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


@record
class ProcessInfo:
    pid: int
    ppid: int
    name: str
    exe: str
    cmdline: tuple[str, ...]
    uid: int  # real uid
    gid: int  # real gid

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# A test of a process's name and executable path: the processes a fact asks for.
ProcessFilter = Callable[[str, str], bool]


def wanted_processes(
    procs: list[ProcessInfo], wanted: Optional[ProcessFilter]
) -> list[ProcessInfo]:
    """The processes `wanted` accepts (all of them without a test)."""
    return list(procs) if wanted is None else [p for p in procs if wanted(p.name, p.exe)]


@record
class Identity:
    """Who is running kvmdoctor: the process credentials and, under sudo, who asked."""

    uid: int
    euid: int
    gid: int
    groups: tuple[int, ...]
    sudo_user: Optional[str] = None
    sudo_uid: Optional[int] = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@record
class Uname:
    sysname: str
    nodename: str
    release: str
    version: str
    machine: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@record
class KvmProbe:
    """What the kernel said when kvmdoctor opened the KVM device and asked it for a VM.

    `open_errno`, `api_errno` and `create_vm_errno` are errno names ("EACCES"); None on success
    or when the step was not reached.
    """

    path: str
    opened: bool
    open_errno: Optional[str] = None
    api_version: Optional[int] = None
    api_errno: Optional[str] = None
    vm_created: Optional[bool] = None
    create_vm_errno: Optional[str] = None
    extensions: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@record
class KeyInfo:
    """What may be said of a private key without its contents."""

    path: str
    loaded: bool  # parsed as an unencrypted PEM/DER private key
    key_type: Optional[str] = None  # "RSA", "EC", "Ed25519", ...
    bits: Optional[int] = None
    public_sha256: Optional[str] = None  # SHA-256 of the public key's SubjectPublicKeyInfo DER
    problem: Optional[str] = None  # why it could not be loaded (encrypted, not a key)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Source(Protocol):
    """The questions kvmdoctor asks of a host. Every method raises a SourceError subclass
    when it cannot answer; none returns a partial answer silently."""

    kind: str  # "live", "root" or "snapshot"

    def describe(self) -> dict[str, Any]:
        """Where the answers come from, for the report."""
        ...

    def read_file(self, path: str, *, max_bytes: int = ..., tail: bool = ...) -> bytes: ...

    def list_dir(self, path: str) -> list[str]: ...

    def stat(self, path: str) -> StatInfo: ...

    def read_link(self, path: str) -> str: ...

    def run(self, argv: Sequence[str], *, timeout: float = ...) -> CommandResult: ...

    def processes(self, wanted: Optional[ProcessFilter] = None) -> list[ProcessInfo]:
        """Every running process, or only those `wanted` accepts (by name and executable)."""
        ...

    def identity(self) -> Identity: ...

    def uname(self) -> Uname: ...

    def environ(self, name: str) -> Optional[str]: ...

    def kvm_probe(self, path: str = ...) -> KvmProbe: ...

    def read_msr(self, register: int, cpu: int = ...) -> int: ...

    def clock(self) -> float:
        """The host's clock (seconds since the epoch) when it was read."""
        ...

    def key_info(self, path: str) -> KeyInfo:
        """The private key's public half and type; the key's contents never leave the source."""
        ...

    def libvirt(self, uri: Optional[str], request: str, **params: Any) -> Any:
        """Ask libvirt (libvirt-python): request is "connect" (connection facts), "capabilities"
        or "domcapabilities" (XML text), "domains" or "networks" (lists of dicts with their
        XML), "interface_addresses" (domain=NAME: its addresses from DHCP leases and the
        host's ARP table, by source). Raises LibvirtError with libvirt's code and domain, or
        TimedOut."""
        ...

    def netlink(self, request: str, netns: Optional[str] = ...) -> list[dict[str, Any]]:
        """Netlink dumps through pyroute2 as plain dicts ({"index": ..., "attrs": {...}}):
        "links", "addresses", "routes", "neighbours", "fdb"; in `netns` when given."""
        ...

    def close(self) -> None:
        """Release connections (libvirt)."""
        ...


DEFAULT_MAX_BYTES = 8 * 1024 * 1024
