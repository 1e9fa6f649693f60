"""Paths and the skip policy shared by tests (import this, not conftest: conftest modules of
test subdirectories shadow each other on sys.path)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
REALDATA = FIXTURES / "realdata"
HOST_SNAPSHOT = FIXTURES / "snapshots" / "host-kvm-pvm"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
KERNEL_LACKS = "kernel lacks"


def require(condition: bool, what: str) -> None:
    """Skip when a prerequisite is missing, except in CI, where it is a failure."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI machine must provide: {what}")
    pytest.skip(f"needs {what}")
