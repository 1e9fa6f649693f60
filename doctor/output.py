"""Writing what the user asked for (-o FILE) without harming what is already there.

kvmdoctor often runs as root on a production host: `-o /dev/null` must not turn /dev/null into
a regular file, `-o /dev/stdout` must not replace a link, and a full device is an error.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from typing import Optional


def write_file(path: str, data: bytes) -> None:
    """Write `data` to `path` as Output describes: atomically to a new or regular file, through
    to anything else, never replacing a link or a node. Raises OSError."""
    try:
        st: Optional[os.stat_result] = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "it is a directory", path)
    if st is not None and not stat.S_ISREG(st.st_mode):
        _write_through(path, data)
        return
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp makes 0600; a new report gets the usual mode, a replaced file keeps its own.
        mode = stat.S_IMODE(st.st_mode) if st is not None else 0o666 & ~_umask()
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_through(path: str, data: bytes) -> None:
    """Write into what is already at `path` (a device, a FIFO, the target of a link) without
    creating or replacing anything: O_NOCTTY, no O_CREAT."""
    flags = os.O_WRONLY | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
    target = os.stat(path)  # follows a link: a dangling one is FileNotFoundError
    if stat.S_ISREG(target.st_mode):
        flags |= os.O_TRUNC
    elif stat.S_ISDIR(target.st_mode):
        raise IsADirectoryError(errno.EISDIR, "it is a directory", path)
    fd = os.open(path, flags)
    with os.fdopen(fd, "wb", buffering=0) as handle:
        view = memoryview(data)
        while view:
            written = handle.write(view)
            if not written:
                raise OSError(errno.EIO, "short write", path)
            view = view[written:]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
