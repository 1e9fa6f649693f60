"""Shared test policy and fixtures.

Skips: a test may skip only for what this kernel lacks (reason starting "kernel lacks"). In CI
(CI=true) every other skip is turned into a failure, so a missing prerequisite that the machine
can provide (root, libvirtd, a package) is caught instead of passing silently.

Fixtures here serve every test directory: the recorded host snapshot and editable copies of it,
and (for permission, ACL and process tests) root, POSIX ACL support and test identities.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from kdtest import HOST_SNAPSHOT, IN_CI, KERNEL_LACKS, TEST_GIDS, TEST_UID, require

PR_SET_NAME = 15  # prctl(2): the process name shown in /proc/PID/status


def pytest_sessionstart(session: pytest.Session) -> None:
    """`make check-future` runs the suite with the clock moved ahead and says by how much in
    KD_CLOCK_AFTER: if the clock did not move (no libfaketime), that run proves nothing."""
    import time

    after = os.environ.get("KD_CLOCK_AFTER")
    if after and time.time() < float(after):
        raise pytest.UsageError(
            f"KD_CLOCK_AFTER={after}, but the clock says {time.time():.0f}: faketime did not "
            "move it (is the faketime package installed?)"
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under libfaketime (`faketime -f +400d make check`), a wait with a time limit never
    ends: libfaketime 0.9.10 moves the monotonic clock but not sem_clockwait's deadline. The
    tests marked `timed_wait` are left out there (they run in every other run), as
    `make check-future` leaves them out by their marker."""
    if "faketime" not in os.environ.get("LD_PRELOAD", ""):
        return
    waiting = [item for item in items if item.get_closest_marker("timed_wait")]
    if waiting:
        config.hook.pytest_deselected(items=waiting)
        items[:] = [item for item in items if not item.get_closest_marker("timed_wait")]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    # An expected failure (xfail) is reported as skipped too; it is no missing prerequisite,
    # and pytest would not count it as failed anyway (the run's exit status would lie).
    if not (IN_CI and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = str(report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr)
    if KERNEL_LACKS not in reason:
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which must not happen for this prerequisite: {reason}"


@pytest.fixture
def host_snapshot() -> Path:
    """A snapshot recorded by `kvmdoctor collect` on the lab machine (see its README.md)."""
    return HOST_SNAPSHOT


@pytest.fixture
def edit_snapshot(tmp_path: Path) -> Any:
    """A writable copy of the host snapshot: `snap = edit_snapshot(); snap.set_file(...)`."""
    from kdsnap import EditableSnapshot

    count = 0

    def make(base: Path = HOST_SNAPSHOT) -> EditableSnapshot:
        nonlocal count
        count += 1
        return EditableSnapshot(base, tmp_path / f"snapshot-{count}")

    return make


# --- root, POSIX ACLs and unprivileged test identities ----------------------------------------


@pytest.fixture
def as_root() -> None:
    """Changing owners and credentials needs root: skipped locally, a failure in CI."""
    require(os.geteuid() == 0, "root")


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
    require(shutil.which("setfacl") is not None, "setfacl (Debian package acl)")
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
    pytest.skip(f"{KERNEL_LACKS} POSIX ACL support on tmp_path, /dev/shm and /tmp")


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


# --- the session-end sweep: nothing a test made may outlive the run ---------------------------

PREFIX = "kd"


def _sweep() -> list[str]:
    """Remove kd-prefixed namespaces, links, libvirt domains/networks and lab daemons; say what
    was found."""
    found: list[str] = []
    if os.geteuid() == 0:
        from kdlab import sweep as sweep_labs

        found += sweep_labs()  # a second libvirtd that a LibvirtLab did not stop
    try:
        from pyroute2 import IPRoute, netns

        for name in netns.listnetns():
            if name.startswith(PREFIX):
                found.append(f"netns {name}")
                netns.remove(name)
        with IPRoute() as ipr:
            for link in ipr.get_links():
                name = link.get_attr("IFLA_IFNAME") or ""
                if name.startswith(PREFIX):
                    found.append(f"link {name}")
                    ipr.link("del", index=link["index"])
    except (ImportError, OSError):
        pass
    if os.path.exists("/run/libvirt/libvirt-sock") and os.geteuid() == 0:
        try:
            import libvirt

            conn = libvirt.open("qemu:///system")
            try:
                for dom in conn.listAllDomains():
                    if dom.name().startswith(PREFIX):
                        found.append(f"domain {dom.name()}")
                        if dom.isActive():
                            dom.destroy()
                        if dom.isPersistent():
                            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
                for net in conn.listAllNetworks():
                    if net.name().startswith(PREFIX):
                        found.append(f"network {net.name()}")
                        if net.isActive():
                            net.destroy()
                        if net.isPersistent():
                            net.undefine()
            finally:
                conn.close()
        except (ImportError, Exception):  # noqa: BLE001 - a sweep must not mask the test results
            pass
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # KD_NO_SWEEP=1: several pytest runs at once on one machine (a developer's parallel
    # helpers) must not sweep each other's live objects. CI runs one session and sweeps.
    if os.environ.get("PYTEST_XDIST_WORKER") or os.environ.get("KD_NO_SWEEP"):
        return
    left = _sweep()
    if left:
        session.config.stash[_LEFT] = left
        session.exitstatus = 1


_LEFT = pytest.StashKey[list]()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    left = terminalreporter.config.stash.get(_LEFT, None)
    if left:
        terminalreporter.write_line(
            f"FAILED: tests left these behind, now removed (fix the fixture): {', '.join(left)}",
            red=True,
        )
