"""Sources: the only code that reads the host. See doctor/sources/base.py for the questions."""

from __future__ import annotations

import os
from typing import Optional

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


def open_source(
    *,
    root: Optional[str] = None,
    snapshot: Optional[str] = None,
    uri: Optional[str] = None,
    connect_timeout: float = 10.0,
) -> Source:
    """The source a command line asks for: a snapshot, a tree, or this host, behind the one
    layer that scrubs secrets from its answers. Only the module of the source chosen is
    imported (a live run does not load the snapshot reader)."""
    from doctor.sources.redact import ScrubbedSource

    if snapshot is not None:
        from doctor.sources.snapshot import SnapshotSource

        return ScrubbedSource(SnapshotSource(snapshot))
    from doctor.sources.live import LiveSource

    if root is not None and not os.path.isdir(root):
        raise NotFound(root, "--root must name a directory")
    return ScrubbedSource(LiveSource(root=root or "/", uri=uri, libvirt_timeout=connect_timeout))


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
    "open_source",
]
