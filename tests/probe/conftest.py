"""tests/probe imports its lab helper (probelab.py) beside the shared ones in tests/, and checks
after every integration test that no probe left a trace instance behind (tracefs instances are
global to the machine, whatever namespace mounted them)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

_LIST_INSTANCES = (
    "mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null; ls /sys/kernel/tracing/instances"
)


def trace_instances() -> list[str]:
    """kd-probe-PID trace instances whose probe is gone, looked at through a private mount of
    tracefs."""
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", _LIST_INSTANCES],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    found = [name for name in done.stdout.split() if name.startswith("kd-probe-")]
    # A probe that still runs (another session's, on this machine) owns its instance.
    return [n for n in found if not os.path.exists(f"/proc/{n.rsplit('-', 1)[-1]}")]


@pytest.fixture(autouse=True)
def no_trace_instance_left(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("integration") is None or os.geteuid() != 0:
        yield
        return
    yield
    assert trace_instances() == [], "a probe left its trace instance behind"
