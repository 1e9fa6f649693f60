"""Sources: the only code that reads the host. See doctor/sources/base.py for the questions."""

from __future__ import annotations

from doctor.sources.base import (
    AccessDenied,
    AclEntry,
    CommandResult,
    Identity,
    KvmProbe,
    NotFound,
    PathEscapes,
    ProcessInfo,
    Source,
    SourceError,
    StatInfo,
    Uname,
    Unavailable,
)

__all__ = [
    "AccessDenied",
    "AclEntry",
    "CommandResult",
    "Identity",
    "KvmProbe",
    "NotFound",
    "PathEscapes",
    "ProcessInfo",
    "Source",
    "SourceError",
    "StatInfo",
    "Uname",
    "Unavailable",
]
