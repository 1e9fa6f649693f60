"""Shared test policy and fixtures.

Skips: a test may skip only for what this kernel lacks (reason starting "kernel lacks"). In CI
(CI=true) every other skip is turned into a failure, so a missing prerequisite that the machine
can provide (root, libvirtd, a package) is caught instead of passing silently.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from kdtest import HOST_SNAPSHOT, IN_CI, KERNEL_LACKS


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if not (IN_CI and report.skipped):
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


# --- the session-end sweep: nothing a test made may outlive the run ---------------------------

PREFIX = "kd"


def _sweep() -> list[str]:
    """Remove kd-prefixed namespaces, links and libvirt domains/networks; say what was found."""
    found: list[str] = []
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
    if os.environ.get("PYTEST_XDIST_WORKER"):
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
