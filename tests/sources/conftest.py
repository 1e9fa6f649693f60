"""Fixtures for the source tests: a directory whose filesystem stores POSIX ACLs, setfacl and
getfacl as the reference, processes that run as unprivileged test identities, root."""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Unprivileged ids that no account on the machine uses (checked by the `test_ids` fixture).
TEST_UID = 61001
TEST_GIDS = (61002, 61003)
PR_SET_NAME = 15  # prctl(2): the process name shown in /proc/PID/status


def _needs(what: str) -> None:
    if IN_CI:
        pytest.fail(f"CI must provide {what}")
    pytest.skip(f"needs {what}")


@pytest.fixture
def as_root() -> None:
    """Changing owners and credentials needs root: skipped locally, a failure in CI."""
    if os.geteuid() != 0:
        _needs("root")


@pytest.fixture
def test_ids() -> tuple[int, tuple[int, ...]]:
    """(uid, gids) of the test identity; the uid belongs to no account on this machine."""
    with pytest.raises(KeyError):
        pwd.getpwuid(TEST_UID)
    return TEST_UID, TEST_GIDS


def _setfacl_works(directory: Path) -> bool:
    probe = directory / ".kd-acl-probe"
    probe.write_bytes(b"")
    try:
        done = subprocess.run(
            ["setfacl", "-m", f"u:{TEST_UID}:r", str(probe)], capture_output=True, check=False
        )
        return done.returncode == 0
    finally:
        probe.unlink()


@pytest.fixture
def acl_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory whose filesystem stores POSIX ACLs: tmp_path when it does (ext4 on the lab
    machine), else a kd-prefixed directory on /dev/shm or /tmp, removed even on failure."""
    if shutil.which("setfacl") is None or shutil.which("getfacl") is None:
        _needs("setfacl and getfacl (Debian package acl)")
    if _setfacl_works(tmp_path):
        yield tmp_path
        return
    for base in ("/dev/shm", tempfile.gettempdir()):
        candidate = Path(tempfile.mkdtemp(prefix="kd-acl-", dir=base))
        try:
            if _setfacl_works(candidate):
                yield candidate
                return
        finally:
            shutil.rmtree(candidate, ignore_errors=True)
    pytest.skip("kernel lacks POSIX ACL support on tmp_path, /dev/shm and /tmp")


class Facl:
    """setfacl to write ACLs and getfacl to read them back: the reference implementation."""

    @staticmethod
    def set(path: Path, spec: str) -> None:
        subprocess.run(["setfacl", "--set", spec, str(path)], check=True, capture_output=True)

    @staticmethod
    def entries(path: Path, *, default: bool = False) -> list[tuple[str, Optional[int], str]]:
        """(tag, qualifier, perms) in getfacl's order, numeric ids, comments dropped."""
        out = subprocess.run(
            ["getfacl", "--omit-header", "--numeric", "--absolute-names", str(path)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        entries = []
        for line in out.splitlines():
            line = line.split("#", 1)[0].strip()
            if not line or line.startswith("default:") != default:
                continue
            tag, qualifier, perms = line[len("default:") if default else 0 :].split(":")
            entries.append((tag, int(qualifier) if qualifier else None, perms))
        return entries


@pytest.fixture
def facl() -> Facl:
    return Facl()


@pytest.fixture
def run_as() -> Iterator[Callable[[int, int, tuple[int, ...], str], int]]:
    """start(uid, gid, groups, name) forks a process that names itself `name`, drops to those
    credentials and waits; it returns the pid once the credentials are in place. Every process
    started is killed at teardown."""
    children: list[tuple[int, int]] = []

    def start(uid: int, gid: int, groups: tuple[int, ...], name: str) -> int:
        ready_r, ready_w = os.pipe()
        hold_r, hold_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child never returns into pytest
            status = 1
            try:
                os.close(ready_r)
                os.close(hold_w)
                libc = ctypes.CDLL(None, use_errno=True)
                libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
                os.setgroups(list(groups))
                os.setgid(gid)
                os.setuid(uid)
                os.write(ready_w, b"1")
                os.read(hold_r, 1)  # returns when the parent closes its end
                status = 0
            finally:
                os._exit(status)
        os.close(ready_w)
        os.close(hold_r)
        children.append((pid, hold_w))
        ready = os.read(ready_r, 1)
        os.close(ready_r)
        assert ready == b"1", "the test process could not take the test credentials"
        return pid

    yield start
    for pid, hold_w in children:
        os.close(hold_w)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


@pytest.fixture
def as_user() -> Callable[..., Any]:
    """call(fn, uid, gid, groups) runs fn() in a forked child with those credentials and
    returns what it returned (it must be picklable); an exception in the child fails the test."""

    def call(fn: Callable[[], Any], uid: int, gid: int, groups: tuple[int, ...]) -> Any:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child never returns into pytest
            try:
                os.close(read_end)
                os.setgroups(list(groups))
                os.setgid(gid)
                os.setuid(uid)
                try:
                    payload = pickle.dumps(("ok", fn()))
                except BaseException as exc:  # reported to the parent, which fails the test
                    payload = pickle.dumps(("raised", f"{type(exc).__name__}: {exc}"))
                with os.fdopen(write_end, "wb") as out:
                    out.write(payload)
            finally:
                os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as handle:
            data = handle.read()
        os.waitpid(pid, 0)
        assert data, "the child process died before answering"
        status, value = pickle.loads(data)
        assert status == "ok", f"in the child: {value}"
        return value

    return call
