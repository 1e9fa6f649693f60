"""Sources: the only code that reads the host. See doctor/sources/base.py for the questions."""

from __future__ import annotations

from doctor.sources.base import (
    AccessDenied,
    AclEntry,
    CommandResult,
    Identity,
    KeyInfo,
    KvmProbe,
    LibvirtError,
    NotFound,
    PathEscapes,
    ProcessInfo,
    Source,
    SourceError,
    StatInfo,
    TimedOut,
    Uname,
    Unavailable,
)

__all__ = [
    "AccessDenied",
    "AclEntry",
    "CommandResult",
    "Identity",
    "KeyInfo",
    "KvmProbe",
    "LibvirtError",
    "NotFound",
    "PathEscapes",
    "ProcessInfo",
    "Source",
    "SourceError",
    "StatInfo",
    "TimedOut",
    "Uname",
    "Unavailable",
]
