"""The one object through which the probe changes the host.

Only the process that entered the Lab undoes anything: a child forked meanwhile (pyroute2
forks one to open a socket in a namespace, and stops it with SIGTERM) inherits the signal
handlers and must not run the clean-up; it exits at once instead.

Every change (a tracefs mount, a trace instance, a clsact qdisc with a mirred filter on a
guest's tap) is made by
`Lab.change(what, do, undo)`, which records how to undo it; leaving the `with` block undoes all
of them in reverse order: at the normal end, on an exception, on SIGINT and on SIGTERM (the
Lab installs handlers for both before it changes anything, even where SIGINT was ignored at
start as in a shell's background job, and restores the previous ones afterwards; a signal
that arrives while a change is being made waits until its undo is recorded).
A lock file held with flock refuses a second probe while one runs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import sys
from collections.abc import Iterator
from types import FrameType
from typing import Any, Callable, Optional

from doctor.signals import Terminated

__all__ = ["Busy", "Lab", "Terminated"]

LOCK_PATH = "/run/kvmdoctor/probe.lock"
SIGNALS = (signal.SIGINT, signal.SIGTERM)
TRACEFS = "/sys/kernel/tracing"


class Busy(Exception):
    """Another probe holds the lock."""


class Lab:
    def __init__(self, lock_path: str = LOCK_PATH) -> None:
        self.lock_path = lock_path
        self.changes: list[tuple[str, Callable[[], None]]] = []
        self.done: list[str] = []  # descriptions of what was made, in order
        self.undo_errors: list[str] = []
        self._lock_fd: Optional[int] = None
        self._old: dict[int, Any] = {}
        self._pid = os.getpid()

    # --- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        self._pid = os.getpid()
        # The handlers come first, before anything the probe could leave behind, and whatever
        # the process inherited: a shell starts a background job with SIGINT ignored, and the
        # probe must still be stoppable (and clean up) once it changes the host.
        for signum in SIGNALS:
            self._old[signum] = signal.signal(signum, self._on_signal)
        try:
            self._lock()
        except BaseException:
            self._restore_handlers()
            raise
        return self

    def _lock(self) -> None:
        os.makedirs(os.path.dirname(self.lock_path), exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                holder = _read_holder(self.lock_path)
                raise Busy(
                    f"another kvmdoctor probe is running{holder}; try again when it ends"
                ) from None
            raise
        self._lock_fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())

    def _restore_handlers(self) -> None:
        for signum, old in self._old.items():
            signal.signal(signum, old)
        self._old.clear()

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        if os.getpid() != self._pid:
            # A child forked while the lab was active (pyroute2 forks one to open a socket in
            # a namespace, and stops it with SIGTERM): it owns none of the changes.
            os._exit(128 + signum)
        # Unwind: the `with` block's exit undoes every change. Further signals wait for it.
        for other in self._old:
            signal.signal(other, signal.SIG_IGN)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated()

    def __exit__(self, *exc: object) -> None:
        for signum in self._old:
            signal.signal(signum, signal.SIG_IGN)
        try:
            self.undo()
        finally:
            self._restore_handlers()
            if self._lock_fd is not None:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
                self._lock_fd = None

    def undo(self) -> None:
        if os.getpid() != self._pid:
            return  # a forked child: the changes are its parent's to undo
        while self.changes:
            what, undo = self.changes.pop()
            try:
                undo()
            except Exception as exc:  # noqa: BLE001 - every other change must still be undone
                self.undo_errors.append(f"undo {what}: {type(exc).__name__}: {exc}")
                sys.stderr.write(f"kvmdoctor: could not undo {what}: {exc}\n")

    # --- changes -----------------------------------------------------------------------------

    def change(self, what: str, do: Callable[[], Any], undo: Callable[[], None]) -> Any:
        """Make one change and record its undo; the undo is recorded only once it succeeded.

        SIGINT and SIGTERM are held back while the change is made and recorded (and so are
        they in the commands it runs, which inherit the mask): a signal between a change and
        its record would leave the change behind. A held signal arrives right afterwards."""
        with _signals_held():
            result = do()
            self.changes.append((what, undo))
            self.done.append(what)
        return result

    def tracefs(self) -> str:
        """tracefs's mount point, mounting it (and unmounting it afterwards) when needed."""
        if os.path.isdir(os.path.join(TRACEFS, "instances")):
            return TRACEFS
        self.change(f"mount tracefs on {TRACEFS}", lambda: _mount("tracefs", TRACEFS), _unmount)
        return TRACEFS

    def trace_instance(self, name: str) -> str:
        """A private trace instance, removed afterwards."""
        base = self.tracefs()
        path = os.path.join(base, "instances", name)

        def remove() -> None:
            # Events off first: an instance with readers or enabled events may refuse rmdir.
            with contextlib.suppress(OSError):
                _write(os.path.join(path, "tracing_on"), "0")
            with contextlib.suppress(OSError):
                _write(os.path.join(path, "events/enable"), "0")
            with contextlib.suppress(FileNotFoundError):  # gone already: nothing to undo
                os.rmdir(path)

        self.change(f"trace instance {path}", lambda: os.mkdir(path), remove)
        return path

    def mirred_ingress(self, tap: str, guest_mac: str) -> None:
        """A clsact qdisc on `tap` with an egress u32 filter that turns frames from the guest's
        MAC around into the tap's ingress (`tc ... action mirred ingress redirect`): frames
        the host writes on the tap enter the bridge as if the guest sent them. Deleting the
        qdisc afterwards removes the filter with it."""
        self.change(
            f"clsact qdisc on {tap}",
            lambda: _tc("qdisc", "add", "dev", tap, "clsact"),
            lambda: _tc("qdisc", "del", "dev", tap, "clsact"),
        )
        self.change(
            f"u32 mirred ingress filter on {tap} for {guest_mac}",
            lambda: _tc(
                "filter",
                "add",
                "dev",
                tap,
                "egress",
                "prio",
                "1",
                "protocol",
                "all",
                "u32",
                "match",
                "ether",
                "src",
                guest_mac,
                "action",
                "mirred",
                "ingress",
                "redirect",
                "dev",
                tap,
            ),  # fmt: skip
            lambda: None,  # goes with the qdisc
        )


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back (they stay pending) until the block ends."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _tc(*args: str) -> None:
    """A change made with iproute2's tc (pyroute2's u32 cannot match link-layer offsets);
    only its exit status is read."""
    import subprocess

    done = subprocess.run(["tc", *args], capture_output=True, text=True, timeout=10, check=False)
    if done.returncode != 0:
        raise OSError(errno.EIO, f"tc {' '.join(args)}: {done.stderr.strip()}")


def _read_holder(path: str) -> str:
    try:
        with open(path, encoding="ascii") as handle:
            pid = handle.read().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


def _write(path: str, value: str) -> None:
    with open(path, "w", encoding="ascii") as handle:
        handle.write(value)


def _mount(fstype: str, target: str) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(fstype.encode(), target.encode(), fstype.encode(), 0, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype} on {target}: {os.strerror(err)}")


def _unmount() -> None:
    """Unmount the tracefs the Lab mounted, unless it is not mounted there any more."""
    try:
        _umount(TRACEFS)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: not a mount point (any more)
            raise


def _umount(target: str) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(target.encode(), 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {target}: {os.strerror(err)}")
