"""What a command loads: `--help` none of the heavy libraries, and `run --select KVM` on this
host neither libvirt nor pyroute2 nor scapy (their checks are not selected). Each command runs
in a fresh interpreter, and the modules it loaded are read from sys.modules at its exit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kdtest import ROOT

HEAVY = ("libvirt", "pyroute2", "scapy", "psutil", "cryptography", "rich")
PROBE = """
import json, sys
from doctor.cli import main
heavy = sys.argv.pop(1)
sys.argv = ["kvmdoctor", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
HEAVY = heavy.split(",")
sys.stderr.write("\\nKDMODULES " + json.dumps(sorted(m for m in HEAVY if m in sys.modules)) + "\\n")
"""


def loaded(*args: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, ",".join(HEAVY), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    line = done.stderr.rsplit("KDMODULES ", 1)[1]
    return list(json.loads(line))


def test_help_loads_no_heavy_library() -> None:
    assert loaded("--help") == []
    assert loaded("run", "--help") == []
    assert loaded("probe", "--help") == []


@pytest.mark.integration
def test_run_select_kvm_on_this_host_loads_neither_libvirt_nor_netlink_nor_scapy() -> None:
    modules = loaded("run", "--select", "KVM", "-f", "json")
    assert not {"libvirt", "pyroute2", "scapy"} & set(modules), modules
