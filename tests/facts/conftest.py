"""Fixtures for the fact tests: trees made of real captured files, fact contexts over any
source, and (for permission and process tests) root, ACL support and test identities."""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional, Union

import pytest

from doctor.facts import FactContext, RunOptions
from doctor.sources.live import LiveSource

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
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


@pytest.fixture
def realdata() -> Callable[[str], str]:
    """The text of a file under tests/fixtures/realdata (origins in its SOURCES.md)."""
    return lambda rel: (FIXTURES / "realdata" / rel).read_text()


@pytest.fixture
def make_tree(tmp_path: Path) -> Callable[..., Path]:
    """make_tree({"/etc/passwd": text, "/dev/": None, ...}) lays out a host tree; a path ending
    in "/" is an empty directory. Each call makes a new tree."""
    count = 0

    def make(files: dict[str, Optional[Union[str, bytes]]]) -> Path:
        nonlocal count
        count += 1
        root = tmp_path / f"tree{count}"
        root.mkdir()
        for path, content in files.items():
            target = root / path.lstrip("/")
            if path.endswith("/"):
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content or "")
        return root

    return make


@pytest.fixture
def facts() -> Callable[..., FactContext]:
    """facts(source_or_tree, uri=None): a fresh FactContext (a Path means LiveSource(tree))."""

    def make(source: Any, uri: Optional[str] = None) -> FactContext:
        if isinstance(source, Path):
            source = LiveSource(str(source))
        return FactContext(source, RunOptions(uri=uri))

    return make


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
    if shutil.which("setfacl") is None:
        _needs("setfacl (Debian package acl)")
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
