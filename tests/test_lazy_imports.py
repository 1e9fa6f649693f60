"""What a command loads: `--help` none of the heavy libraries, and `run --select KVM` on this
host neither libvirt nor pyroute2 nor scapy (their checks are not selected), nor psutil, nor
the other areas' check and fact modules. Each command runs in a fresh interpreter, and the modules it
loaded are read from sys.modules at its exit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kdtest import HOST_SNAPSHOT, ROOT

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
ours = [m for m in sys.modules if m.startswith(("checks.", "doctor.facts.", "doctor.cli."))]
sys.stderr.write("\\nKDMODULES " + json.dumps(sorted(m for m in HEAVY if m in sys.modules)))
sys.stderr.write("\\nKDOURS " + json.dumps(sorted(ours)) + "\\n")
"""
# The fact modules the KVM checks read (doctor.facts.util is a helper, not a fact).
KVM_FACTS = {"accounts", "cpu", "host", "kernel", "kvm", "libvirt", "util"}


def modules(*args: str) -> tuple[list[str], list[str]]:
    """The heavy libraries and kvmdoctor's check and fact modules that the command loaded."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, ",".join(HEAVY), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    heavy = done.stderr.rsplit("KDMODULES ", 1)[1].splitlines()[0]
    ours = done.stderr.rsplit("KDOURS ", 1)[1].splitlines()[0]
    return list(json.loads(heavy)), list(json.loads(ours))


def loaded(*args: str) -> list[str]:
    return modules(*args)[0]


def test_help_loads_no_heavy_library() -> None:
    assert loaded("--help") == []
    assert loaded("run", "--help") == []
    assert loaded("probe", "--help") == []


def test_a_selection_loads_only_its_checks_and_their_facts() -> None:
    heavy, ours = modules("run", "--select", "KVM", "--snapshot", str(HOST_SNAPSHOT), "-f", "json")
    assert [m for m in ours if m.startswith("checks.")] == ["checks.kvm"]
    facts = {m.split(".")[-1] for m in ours if m.startswith("doctor.facts.")}
    assert facts == KVM_FACTS
    assert not {"libvirt", "pyroute2", "scapy", "cryptography"} & set(heavy), heavy


def test_a_command_builds_only_itself_and_help_lists_every_command() -> None:
    _, ours = modules("run", "--select", "KVM", "--snapshot", str(HOST_SNAPSHOT), "-f", "json")
    commands = {m.split(".")[-1] for m in ours if m.startswith("doctor.cli.")} - {"common"}
    assert commands == {"run"}
    _, ours = modules("--help")
    commands = {m.split(".")[-1] for m in ours if m.startswith("doctor.cli.")} - {"common"}
    assert commands == {
        "run",
        "lint",
        "checks",
        "explain",
        "fix",
        "probe",
        "collect",
        "version",
        "report",
    }
    _, ours = modules("nosuch")  # an unknown command is answered by the whole command line
    assert "doctor.cli.report" in ours


def test_a_run_without_selection_loads_every_area() -> None:
    _, ours = modules("run", "--snapshot", str(HOST_SNAPSHOT), "-f", "json")
    areas = {m.split(".")[-1] for m in ours if m.startswith("checks.")}
    assert {"kvm", "libvirt", "tls", "firmware", "network", "logs", "domain"} <= areas
    assert {"doctor.facts.links", "doctor.facts.domains", "doctor.facts.tls"} <= set(ours)


@pytest.mark.integration
def test_run_select_kvm_on_this_host_loads_neither_libvirt_nor_netlink_nor_scapy() -> None:
    # nor psutil: the KVM checks want only the daemons' and QEMU's processes, read from /proc
    heavy, ours = modules("run", "--select", "KVM", "-f", "json")
    assert not {"libvirt", "pyroute2", "scapy", "psutil"} & set(heavy), heavy
    assert [m for m in ours if m.startswith("checks.")] == ["checks.kvm"]
    assert {m.split(".")[-1] for m in ours if m.startswith("doctor.facts.")} == KVM_FACTS


@pytest.mark.integration
def test_a_full_run_on_this_host_loads_libvirt_and_netlink() -> None:
    # The counterpart of the test above: the libraries are there to load when checks need them.
    heavy, _ = modules("run", "-f", "json")
    # psutil too, though the checks read the few processes they want from /proc: pyroute2's
    # package imports it (pyroute2.netlink.diag.ss2)
    assert {"libvirt", "pyroute2", "psutil"} <= set(heavy), heavy


@pytest.mark.integration
def test_collect_records_the_whole_process_list_with_psutil(tmp_path: Path) -> None:
    heavy, _ = modules("collect", "--select", "KVM", "-o", str(tmp_path / "snap"))
    assert "psutil" in heavy, heavy


def test_a_command_ends_with_its_objects_frozen_for_the_exit() -> None:
    """doctor.cli.main sets the collector's threshold, and freezes the objects when the
    command returns, so that the interpreter's last collection does not walk them: the
    output is complete, the exit code kept."""
    script = (
        "import gc, sys\n"
        "from doctor.cli import main\n"
        "sys.argv = ['kvmdoctor', 'run', '--snapshot', sys.argv[1], '--select', 'KVM001']\n"
        "before = gc.get_freeze_count()\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "sys.stderr.write(f'KDGC {before} {gc.get_freeze_count()} {gc.get_threshold()[0]}"
        " {code}\\n')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(HOST_SNAPSHOT)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    before, after, threshold, code = done.stderr.rsplit("KDGC ", 1)[1].split()
    assert (int(before), int(after) > 10_000, int(threshold)) == (0, True, 100_000)
    assert "1 check, findings: 1 passed" in done.stdout and code == "0"
