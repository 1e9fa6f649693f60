"""Only doctor/sources/ touches the host. Enforced two ways: statically (what the other modules
import and call) and at run time (an audit hook watching a snapshot replay)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Any

import pytest

from kdtest import ROOT

# Modules that read the host, and builtins that do.
HOST_MODULES = {
    "subprocess",
    "socket",
    "fcntl",
    "ctypes",
    "psutil",
    "libvirt",
    "pyroute2",
    "scapy",
    "shutil",
    "glob",
    "pwd",
    "grp",
    "getpass",
    "platform",
    "tarfile",
}
HOST_CALLS = {"open"}
OS_READS = {
    "stat",
    "lstat",
    "listdir",
    "scandir",
    "readlink",
    "getxattr",
    "open",
    "uname",
    "getuid",
    "geteuid",
    "getgid",
    "getgroups",
    "environ",
    "getenv",
    "walk",
    "access",
    "popen",
    "system",
}
# Outside sources/, only these may do I/O, and not to read the host: the config file, the
# output file, the generated docs, the CLI's own environment (NO_COLOR, KVMDOCTOR_DEBUG), and
# the plugin discovery, which reads the Python installation's entry_points.txt files, and the
# playbooks shipped as package data, and --redact's own key and map files (doctor/redaction.py).
# doctor/repair.py is the one module that changes the host
# (`kvmdoctor fix --apply`); test_only_fix_apply_reaches_the_repair_module holds that line.
REPAIR = "doctor/repair.py"
ALLOWED = {
    "doctor/playbooks.py",
    REPAIR,
    "doctor/config.py",
    "doctor/cli/common.py",
    "doctor/output.py",
    "doctor/cli/collect.py",
    "doctor/docs.py",
    "doctor/registry.py",
    "doctor/cli/__init__.py",
    "doctor/cli/version.py",
    "doctor/redaction.py",
}
# `kvmdoctor probe` asks the kernel what the Source API cannot (`route get` with an input
# interface), and as root, when asked to send, changes the host (qdisc, filter, trace
# instance) through doctor/probe/lab.py, observes it (trace, capture) and sends (inject).
# test_only_the_probe_command_reaches_the_probe_host_modules holds that line.
PROBE_IO = {
    "doctor/probe/active.py",
    "doctor/probe/kernel.py",
    "doctor/probe/lab.py",
    "doctor/probe/trace.py",
    "doctor/probe/capture.py",
    "doctor/probe/inject.py",
}


def python_files() -> list[Path]:
    files = sorted((ROOT / "doctor").rglob("*.py")) + sorted((ROOT / "checks").rglob("*.py"))
    return [
        f
        for f in files
        if "sources" not in f.relative_to(ROOT).parts
        and str(f.relative_to(ROOT)) not in ALLOWED | PROBE_IO
    ]


def violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module.split(".")[0]]
        else:
            names = []
        found += [f"line {node.lineno}: imports {n}" for n in names if n in HOST_MODULES]
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in HOST_CALLS
        ):
            found.append(f"line {node.lineno}: calls {node.func.id}()")
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in ("os", "os.path")
            and node.attr in OS_READS
        ):
            found.append(f"line {node.lineno}: uses os.{node.attr}")
        if isinstance(node, ast.Attribute) and node.attr in (
            "read_text",
            "read_bytes",
            "iterdir",
            "glob",
        ):
            found.append(f"line {node.lineno}: uses .{node.attr}()")
    return found


@pytest.mark.parametrize("path", python_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_host_io_outside_the_sources(path: Path) -> None:
    rel = str(path.relative_to(ROOT))
    assert violations(path) == [], f"{rel} reads the host outside doctor/sources/"


def test_the_allowed_list_names_existing_files_that_do_no_host_reads() -> None:
    for rel in ALLOWED - {REPAIR}:  # the one module that changes the host runs commands
        found = [
            v
            for v in violations(ROOT / rel)
            if "imports" in v
            and any(m in v for m in ("subprocess", "socket", "psutil", "libvirt", "pyroute2"))
        ]
        assert found == [], rel


def test_the_static_rule_would_catch_a_check_that_opens_a_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import subprocess\n\ndef c():\n    return open('/proc/cpuinfo').read()\n")
    assert violations(bad) == ["line 1: imports subprocess", "line 4: calls open()"]


_watch: dict[str, Any] = {"on": False, "allowed": (), "seen": []}


def _hook(event: str, args: tuple) -> None:
    if not _watch["on"]:
        return
    if event == "open":
        if isinstance(args[0], int):
            return  # fdopen of a descriptor whose own open(2) was seen here already
        path = str(args[0])
        if not path.startswith(_watch["allowed"]):
            _watch["seen"].append(f"open {path}")
    elif event in (
        "subprocess.Popen",
        "os.listdir",
        "os.scandir",
        "socket.connect",
        "os.system",
        "fcntl.ioctl",
    ):
        _watch["seen"].append(f"{event} {args[:2]}")


def test_a_snapshot_replay_reads_nothing_but_the_snapshot(host_snapshot: Path) -> None:
    from doctor import engine
    from doctor.registry import load_registry
    from doctor.report import build
    from doctor.sources.snapshot import SnapshotSource

    registry = load_registry()

    def replay() -> Any:
        source = SnapshotSource(str(host_snapshot))
        result = engine.run(registry, source)
        return build(result, source, argv=[], fail_on="fail")

    replay()  # import everything once, so module loading is not counted below
    sys.addaudithook(_hook)  # cannot be removed; it only records while `on` is set
    _watch.update(on=True, allowed=(str(host_snapshot),), seen=[])
    try:
        with open("/proc/cpuinfo", "rb"):  # the hook sees host reads: this one must show
            pass
        assert _watch["seen"] == ["open /proc/cpuinfo"]
        _watch["seen"] = []
        report = replay()
    finally:
        _watch["on"] = False
    assert report["checks"], "the replay ran no check"
    assert _watch["seen"] == []


def test_only_fix_apply_reaches_the_repair_module() -> None:
    """Nothing imports doctor/repair.py but the `fix` command, and it only inside --apply."""
    importers = []
    for path in sorted((ROOT / "doctor").rglob("*.py")) + sorted((ROOT / "checks").rglob("*.py")):
        if str(path.relative_to(ROOT)) == REPAIR:
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in tree.body:
            assert not _imports_repair(node), f"{path.relative_to(ROOT)} imports it at the top"
        for func in ast.walk(tree):
            if isinstance(func, ast.FunctionDef) and any(
                _imports_repair(inner) for inner in ast.walk(func)
            ):
                importers.append(f"{path.relative_to(ROOT)}:{func.name}")
    assert importers == ["doctor/cli/fix.py:_apply"]


def _imports_repair(node: ast.AST) -> bool:
    if isinstance(node, ast.Import):
        return any(alias.name == "doctor.repair" for alias in node.names)
    if isinstance(node, ast.ImportFrom):
        return node.module == "doctor.repair" or (
            node.module == "doctor" and any(a.name == "repair" for a in node.names)
        )
    return False


def test_only_the_probe_command_reaches_the_probe_host_modules() -> None:
    """The probe's modules that touch the host are imported by the probe's own modules and by
    `kvmdoctor probe`, always inside a function (so `kvmdoctor --help` and `run` load none)."""
    names = {p.removesuffix(".py").replace("/", ".") for p in PROBE_IO}
    for path in sorted((ROOT / "doctor").rglob("*.py")) + sorted((ROOT / "checks").rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in names:
                assert rel.startswith("doctor/probe/") or rel == "doctor/cli/probe.py", rel
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module in names:
                assert rel in PROBE_IO, f"{rel} imports {node.module} at the top"
