"""Snapshots from strangers: archives are read within limits (disk, memory, members), clean up
on every way out, and a bad archive is a bad input (exit 2); snapshot directories are confined
like --root trees (links stay inside, regular files only)."""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from doctor.sources.snapshot import MAX_HEADER_BYTES, MAX_MEMBER_BYTES, SnapshotSource

from kdtest import HOST_SNAPSHOT, ROOT, kvmdoctor


def kd(*args: str, tmpdir: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """kvmdoctor in its own process, with its temporary files in `tmpdir`."""
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    return subprocess.run(
        [sys.executable, "-m", "doctor", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
    )


@pytest.fixture
def tmpdir_(tmp_path: Path) -> Path:
    path = tmp_path / "tmp"
    path.mkdir()
    return path


def test_a_truncated_archive_is_a_bad_input_not_an_interruption(
    tmp_path: Path, tmpdir_: Path
) -> None:
    whole = tmp_path / "whole.tar.gz"
    with tarfile.open(whole, "w:gz") as tar:
        tar.add(HOST_SNAPSHOT, arcname=".")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(whole.read_bytes()[:100])
    done = kd("run", "--snapshot", str(cut), tmpdir=tmpdir_)
    assert done.returncode == 2, done.stderr
    assert "cannot unpack the archive" in done.stderr
    assert list(tmpdir_.iterdir()) == []


def test_a_sparse_member_of_20_gb_is_refused_before_it_is_written(
    tmp_path: Path, tmpdir_: Path
) -> None:
    src = tmp_path / "src"
    (src / "files/proc").mkdir(parents=True)
    with open(src / "files/proc/cpuinfo", "wb") as handle:
        handle.truncate(20 * 1024**3)  # sparse: no disk used
    (src / "manifest.json").write_text('{"format": "kvmdoctor-snapshot", "format_version": 1}')
    archive = tmp_path / "bomb.tar.gz"
    subprocess.run(["tar", "--sparse", "-czf", str(archive), "-C", str(src), "."], check=True)
    assert archive.stat().st_size < 1024 * 1024
    done = kd("run", "--snapshot", str(archive), tmpdir=tmpdir_)
    assert done.returncode == 2, done.stderr
    assert f"at most {MAX_MEMBER_BYTES >> 20} MiB" in done.stderr
    assert list(tmpdir_.iterdir()) == []


def pax_bomb(path: Path, size: int) -> None:
    """A gzipped tar whose first block is a pax header of `size` bytes (zeros)."""
    header = tarfile.TarInfo("././@PaxHeader")
    header.type = tarfile.XHDTYPE
    header.size = size
    with gzip.open(path, "wb", compresslevel=1) as out:
        out.write(header.tobuf(format=tarfile.USTAR_FORMAT))
        chunk = bytes(1 << 20)
        for _ in range(size // len(chunk)):
            out.write(chunk)
        out.write(bytes(512 * 4))


def test_a_huge_pax_header_is_refused_without_holding_it(tmp_path: Path, tmpdir_: Path) -> None:
    archive = tmp_path / "pax.tar.gz"
    pax_bomb(archive, 256 * 1024 * 1024)
    # A fresh parent whose only child is kvmdoctor: its children's peak is kvmdoctor's.
    probe = (
        "import resource, subprocess, sys\n"
        "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "sys.stderr.write(done.stderr)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.exit(done.returncode)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, sys.executable, "-m", "doctor", "run", "--snapshot"]
        + [str(archive)],
        capture_output=True,
        text=True,
        env={**os.environ, "TMPDIR": str(tmpdir_)},
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert f"at most {MAX_HEADER_BYTES}" in done.stderr
    peak_mib = int(done.stdout) / 1024
    assert peak_mib < 150, f"kvmdoctor peaked at {peak_mib:.0f} MiB on a 256 MiB header"
    assert list(tmpdir_.iterdir()) == []


@pytest.mark.parametrize(
    ("signum", "code", "said"),
    [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")],
    ids=["SIGTERM", "SIGINT"],
)
def test_a_signal_while_unpacking_leaves_nothing_behind(
    tmp_path: Path, tmpdir_: Path, signum: int, code: int, said: str
) -> None:
    archive = tmp_path / "big.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=0) as tar:  # stored: quick to make
        manifest = b'{"format": "kvmdoctor-snapshot", "format_version": 1, "answers": []}'
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
        block = os.urandom(1 << 20)  # 300 MiB to unpack: long enough to be interrupted
        for n in range(5):
            info = tarfile.TarInfo(f"files/var/log/big{n}.log")
            info.size = 60 * (1 << 20)
            tar.addfile(info, io.BytesIO(block * 60))
    env = {**os.environ, "TMPDIR": str(tmpdir_)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "doctor", "run", "--snapshot", str(archive)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as in a terminal
    )
    try:
        deadline = time.monotonic() + 60
        while not list(tmpdir_.glob("kvmdoctor-snapshot-*/*")):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "unpacking never started"
            time.sleep(0.02)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, err
    assert f"kvmdoctor: {said}" in err
    assert list(tmpdir_.iterdir()) == []


# --- directory snapshots are confined -----------------------------------------------------


def copy_snapshot(tmp_path: Path) -> Path:
    import shutil

    dest = tmp_path / "snap"
    shutil.copytree(HOST_SNAPSHOT, dest, symlinks=True)
    return dest


def file_entry(snap: Path, path: str) -> dict[str, Any]:
    manifest = json.loads((snap / "manifest.json").read_text())
    return next(a for a in manifest["answers"] if a["kind"] == "file" and a["path"] == path)


def test_a_link_out_of_a_snapshot_directory_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("kdoutsidemarker\n")
    snap = copy_snapshot(tmp_path)
    data = snap / file_entry(snap, "/etc/os-release")["data"]
    data.unlink()
    data.symlink_to(outside)
    source = SnapshotSource(str(snap))
    with pytest.raises(Exception, match="outside the snapshot"):
        source.read_file("/etc/os-release")
    result = kvmdoctor("run", "--snapshot", str(snap), "-f", "json")
    assert result.exit_code in (0, 1), result.stderr
    assert "kdoutsidemarker" not in result.stdout


@pytest.mark.parametrize("kind", ["fifo", "dev-zero-link"])
def test_a_snapshot_file_that_is_not_regular_is_refused_not_read(tmp_path: Path, kind: str) -> None:
    snap = copy_snapshot(tmp_path)
    # A link to /dev/zero stays "inside" only through a link inside the snapshot: make one.
    data = snap / file_entry(snap, "/proc/cpuinfo")["data"]
    data.unlink()
    if kind == "fifo":
        os.mkfifo(data)
    else:
        (snap / "files" / "zero").symlink_to("/dev/zero")
        data.symlink_to(snap / "files" / "zero")
    source = SnapshotSource(str(snap))
    with pytest.raises(Exception, match="outside the snapshot|not a regular file"):
        source.read_file("/proc/cpuinfo")
    result = kvmdoctor("run", "--snapshot", str(snap), "--check-timeout", "5", "-f", "json")
    assert result.exit_code in (0, 1), result.stderr
