"""`-o PATH` writes the report without harming what is at PATH: a new or regular file is
replaced atomically, a device, FIFO or link is written through and stays what it was, a
directory or a full device is an error (exit 2) that leaves nothing behind.

Device nodes are made only inside a private mount namespace, on a tmpfs mounted there: the
machine's own /dev is never written to."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from kdtest import HOST_SNAPSHOT, ROOT, kvmdoctor, require

SNAP = str(HOST_SNAPSHOT)


def run_to(path: Path, *extra: str) -> Any:
    return kvmdoctor("run", "--snapshot", SNAP, "-f", "json", "-o", str(path), *extra)


def test_a_new_file_gets_the_report_with_the_usual_mode(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    result = run_to(target)
    assert result.exit_code == 0, result.stderr
    assert json.loads(target.read_text())["tool"]["name"] == "kvmdoctor"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_a_regular_file_is_replaced_whole_and_keeps_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text("old " * 100_000)
    target.chmod(0o640)
    assert run_to(target).exit_code == 0
    assert json.loads(target.read_text())["tool"]["name"] == "kvmdoctor"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_a_symlink_is_written_through_and_stays_a_link(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    assert run_to(link).exit_code == 0
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert json.loads(real.read_text())["tool"]["name"] == "kvmdoctor"


def test_a_dangling_symlink_is_an_error_not_replaced(tmp_path: Path) -> None:
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "nowhere" / "x.json")
    result = run_to(link)
    assert result.exit_code == 2
    assert "cannot write" in result.stderr
    assert link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json"]


def test_a_directory_is_an_error_and_nothing_is_left_beside_it(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    result = run_to(folder)
    assert result.exit_code == 2
    assert "is a directory" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert list(folder.iterdir()) == []


def test_a_fifo_is_written_through_to_its_reader(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    assert run_to(fifo).exit_code == 0
    reader.join(30)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert json.loads(got[0])["tool"]["name"] == "kvmdoctor"


def test_fix_output_onto_a_link_keeps_the_link(tmp_path: Path) -> None:
    real = tmp_path / "plan.sh"
    real.write_text("old")
    link = tmp_path / "plan-link.sh"
    link.symlink_to(real)
    result = kvmdoctor("fix", "--snapshot", SNAP, "-o", str(link))
    assert result.exit_code == 0, result.stderr
    assert link.is_symlink()
    assert real.read_text().startswith("#!/bin/sh")


def test_collect_refuses_an_existing_file_as_its_directory(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("keep me")
    result = kvmdoctor("collect", "--root", str(tmp_path), "-o", str(plain))
    assert result.exit_code == 2
    assert "not a directory" in result.stderr
    assert plain.read_text() == "keep me"


# --- device nodes, in a private mount namespace ------------------------------------------

DEVICE_SCRIPT = r"""
import json, os, stat, subprocess, sys
dev = sys.argv[1]
subprocess.run(["mount", "-t", "tmpfs", "kdtmpfs", dev], check=True)
os.mknod(dev + "/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
os.mknod(dev + "/full", 0o666 | stat.S_IFCHR, os.makedev(1, 7))
os.symlink("/proc/self/fd/1", dev + "/stdout")
kd = [sys.executable, "-m", "doctor"]
out = {}
for name, argv in [
    ("null", ["run", "--snapshot", sys.argv[2], "-f", "json", "-o", dev + "/null"]),
    ("full", ["run", "--snapshot", sys.argv[2], "-f", "json", "-o", dev + "/full"]),
    ("fix-null", ["fix", "--snapshot", sys.argv[2], "-o", dev + "/null"]),
    ("collect-null", ["collect", "--root", dev, "-o", dev + "/null"]),
    ("stdout", ["run", "--snapshot", sys.argv[2], "-f", "json", "-o", dev + "/stdout"]),
]:
    done = subprocess.run(kd + argv, capture_output=True, text=True)
    out[name] = {"rc": done.returncode, "stderr": done.stderr, "stdout": done.stdout[:200]}
out["modes"] = {n: oct(os.lstat(dev + "/" + n).st_mode) for n in os.listdir(dev)}
print(json.dumps(out))
"""


@pytest.mark.integration
def test_devices_and_links_under_dev_are_never_replaced(tmp_path: Path) -> None:
    require(os.geteuid() == 0, "root")
    dev = tmp_path / "dev"
    dev.mkdir()
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", sys.executable, "-c"]
        + [DEVICE_SCRIPT, str(dev), SNAP],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    modes = {name: int(mode, 8) for name, mode in out["modes"].items()}
    assert sorted(modes) == ["full", "null", "stdout"]  # no temporary file left beside them
    assert stat.S_ISCHR(modes["null"]) and stat.S_ISCHR(modes["full"])
    assert stat.S_ISLNK(modes["stdout"])
    assert out["null"]["rc"] == 0, out["null"]
    assert out["fix-null"]["rc"] == 0, out["fix-null"]
    assert out["full"]["rc"] == 2
    assert "No space left on device" in out["full"]["stderr"]
    # collect -o names a directory or an archive: a device is neither
    assert out["collect-null"]["rc"] == 2
    assert "not a directory" in out["collect-null"]["stderr"]
    # through the link into this process's stdout
    assert out["stdout"]["rc"] == 0
    assert out["stdout"]["stdout"].lstrip().startswith("{")


def test_concurrent_collects_to_one_archive_leave_a_whole_archive(tmp_path: Path) -> None:
    """Each writer renames a complete archive into place: whichever lands last, the archive
    is whole, never two writers' bytes mixed."""
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/os-release").write_text('ID=debian\nPRETTY_NAME="Debian"\n')
    target = tmp_path / "host.tar.gz"
    argv = [sys.executable, "-m", "doctor", "collect", "--root", str(tree), "-o", str(target)]
    procs = [
        subprocess.Popen([*argv, "--force"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert kvmdoctor("run", "--snapshot", str(target), "-f", "json").exit_code in (0, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["host.tar.gz", "tree"]
