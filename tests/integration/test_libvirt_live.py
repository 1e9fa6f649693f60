"""LIB checks against the real libvirtd of the lab: running, stopped (seen from a private
mount namespace where /run/libvirt is empty), hung (a socket that accepts and never answers),
and compared with what libvirt itself says when it refuses a domain."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kdlab import LibvirtLab
from kdtest import ROOT, answers, require

pytestmark = pytest.mark.integration
SOCKET = "/run/libvirt/libvirt-sock"


@pytest.fixture(scope="module")
def lab() -> None:
    require(os.geteuid() == 0, "root")
    require(answers(SOCKET), f"libvirtd answering on {SOCKET} (make setup-lab starts it)")
    require(shutil.which("unshare") is not None, "unshare (util-linux)")


def kvmdoctor_json(*args: str, prefix: tuple[str, ...] = ()) -> dict[str, Any]:
    done = subprocess.run(
        [*prefix, sys.executable, "-m", "doctor", "run", "--format", "json", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout)


def by_code(report: dict[str, Any], code: str) -> list[dict[str, Any]]:
    return next(c["findings"] for c in report["checks"] if c["code"] == code)


def in_private_run_libvirt(
    script: str, *, hide_processes: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a shell script in a new mount namespace whose /run/libvirt is an empty tmpfs (and,
    by default, a new PID namespace with its own /proc): what a host with its daemons stopped
    looks like, without stopping the lab's daemons."""
    wrapped = "mount -t tmpfs kd-run-libvirt /run/libvirt && " + script
    pid = ["--pid", "--fork", "--mount-proc"] if hide_processes else []
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", *pid, "sh", "-c", wrapped],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def test_lib_checks_pass_with_the_lab_daemons_running(lab: None) -> None:
    report = kvmdoctor_json("--select", "LIB001,LIB002,LIB003")
    statuses = {c["code"]: c["status"] for c in report["checks"]}
    assert statuses == {"LIB001": "pass", "LIB002": "pass", "LIB003": "pass"}


def test_a_stopped_daemon_fails_lib001_and_lib002_and_names_what_to_start(lab: None) -> None:
    done = in_private_run_libvirt(
        f"{sys.executable} -m doctor run --select LIB001,LIB002,LIB003 --format json"
    )
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    (lib001,) = by_code(report, "LIB001")
    assert lib001["status"] == "fail"
    assert "libvirtd is not running" in lib001["message"]
    assert "libvirtd -d" in lib001["message"]
    (lib002,) = by_code(report, "LIB002")
    assert lib002["status"] == "fail"
    assert lib002["evidence"]["error_kind"] == "daemon-not-running"
    # libvirt's own words, kept in the evidence:
    assert "Failed to connect socket to '/var/run/libvirt/libvirt-sock'" in lib002["message"]
    (lib003,) = by_code(report, "LIB003")
    assert lib003["status"] == "fail"
    # ...and the real daemon outside the namespace was never disturbed.
    assert os.path.exists(SOCKET)


def test_a_running_daemon_whose_socket_is_gone_is_told_apart(lab: None) -> None:
    done = in_private_run_libvirt(
        f"{sys.executable} -m doctor run --select LIB001 --format json", hide_processes=False
    )
    (lib001,) = by_code(json.loads(done.stdout), "LIB001")
    assert lib001["status"] == "fail"
    assert "although libvirtd runs" in lib001["message"]
    assert "its socket was removed" in lib001["message"]


def test_a_socket_left_by_a_killed_libvirtd_fails_lib001_and_starting_libvirtd_cures_it(
    lab: None, tmp_path: Path
) -> None:
    """A second libvirtd in a private mount namespace, killed with SIGKILL: its socket file
    stays in /run/libvirt and virsh gets "Connection refused". kvmdoctor, run there with the
    host's processes hidden, fails LIB001 (the file exists, nothing listens) and diagnoses a
    stopped libvirtd; starting libvirtd again replaces the file, as the fix says."""
    with LibvirtLab(tmp_path) as libvirt_lab:
        started = libvirt_lab.start_libvirtd()
        assert started.ok and started.pid, started.errors
        os.kill(started.pid, signal.SIGKILL)
        _wait_gone(started.pid)
        assert libvirt_lab.run(["test", "-S", SOCKET]).returncode == 0  # the file is still there
        refused = libvirt_lab.run(["virsh", "-c", "qemu:///system", "version"])
        assert "Connection refused" in refused.stderr, refused.stderr

        report = _kvmdoctor_hiding_processes(libvirt_lab)
        (lib001,) = by_code(report, "LIB001")
        assert lib001["status"] == "fail"
        assert "exists but nothing listens on it" in lib001["message"]
        assert "libvirtd is not running and left its socket behind" in lib001["message"]
        assert report["diagnoses"][0]["playbook"] == "libvirtd-not-running"
        # virsh's own words lead to the same playbook:
        line = next(x for x in refused.stderr.splitlines() if "Connection refused" in x)
        explained = libvirt_lab.run([sys.executable, "-m", "doctor", "explain", line], cwd=ROOT)
        assert "libvirtd-not-running" in explained.stdout, explained.stdout + explained.stderr

        again = libvirt_lab.start_libvirtd()
        assert again.ok, again.errors
        (lib001,) = by_code(_kvmdoctor_hiding_processes(libvirt_lab), "LIB001")
        assert lib001["status"] == "pass", lib001["message"]


def _wait_gone(pid: int, timeout: float = 15) -> None:
    """Until `pid` has exited (a zombie holds no socket)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(") ", 1)[1].startswith("Z"):
                    return
        except FileNotFoundError:
            return
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} did not exit within {timeout} s")


def _kvmdoctor_hiding_processes(libvirt_lab: LibvirtLab) -> dict[str, Any]:
    done = libvirt_lab.run(
        [
            "unshare", "--pid", "--fork", "--mount-proc",
            sys.executable, "-m", "doctor", "run", "--select", "LIB001,LIB002", "--format", "json",
        ],
        cwd=ROOT,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


SILENT = textwrap.dedent("""
    import socket, subprocess, sys
    server = socket.socket(socket.AF_UNIX)
    server.bind("/run/libvirt/libvirt-sock")
    server.listen(8)
    held = []
    import threading
    def accept():
        while True:
            held.append(server.accept()[0])   # accept, never answer
    threading.Thread(target=accept, daemon=True).start()
    done = subprocess.run([sys.executable, "-m", "doctor", "run", "--select", "LIB002",
                           "--format", "json", "--connect-timeout", "2"],
                          capture_output=True, text=True, timeout=60)
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    sys.exit(done.returncode)
""")


def test_a_socket_that_never_answers_gives_lib002_instead_of_a_hang(
    lab: None, tmp_path: Path
) -> None:
    script = tmp_path / "kd_silent.py"
    script.write_text(SILENT)
    done = in_private_run_libvirt(f"{sys.executable} {script}")
    assert done.returncode == 1, done.stderr
    (lib002,) = by_code(json.loads(done.stdout), "LIB002")
    assert lib002["status"] == "fail"
    assert lib002["evidence"]["error_kind"] == "timeout"
    assert "did not answer within 2 s" in lib002["message"]


# --- compared with libvirt's own refusals -----------------------------------------------------


def virsh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["virsh", "-c", "qemu:///system", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def kd_domain() -> Iterator[list[str]]:
    """Names of kd- domains a test defines; destroyed and undefined afterwards, even on failure."""
    names: list[str] = []
    yield names
    for name in names:
        virsh("destroy", name)
        virsh("undefine", name, "--nvram")


def test_lib004_names_the_emulator_libvirt_refuses(
    lab: None, tmp_path: Path, kd_domain: list[str]
) -> None:
    """A definition written on RHEL names /usr/libexec/qemu-kvm, which Debian does not have."""
    xml_path = tmp_path / "kd-lib004.xml"
    xml_path.write_text(
        small_domain(
            "kd-lib004", "/var/lib/libvirt/images/kd-lib004.qcow2", emulator="/usr/libexec/qemu-kvm"
        )
    )
    kd_domain.append("kd-lib004")
    refused = virsh("define", str(xml_path))
    assert refused.returncode != 0
    assert (
        "Cannot check QEMU binary /usr/libexec/qemu-kvm: No such file or directory"
        in refused.stderr
    )
    # kvmdoctor sees the same definition as a file (the daemon would not take it):
    tree = tmp_path / "tree"
    (tree / "etc/libvirt/qemu").mkdir(parents=True)
    shutil.copy(xml_path, tree / "etc/libvirt/qemu/kd-lib004.xml")
    for rel in ("usr/bin", "etc/passwd", "etc/group"):
        src = Path("/") / rel
        if src.is_file():
            (tree / rel).write_bytes(src.read_bytes())
    (tree / "usr/bin").mkdir(parents=True, exist_ok=True)
    findings = by_code(kvmdoctor_json("--root", str(tree), "--select", "LIB004"), "LIB004")
    assert [f["subject"] for f in findings if f["status"] == "fail"] == [
        "emulator:/usr/libexec/qemu-kvm"
    ]


def small_domain(name: str, image: str, emulator: str = "/usr/bin/qemu-system-x86_64") -> str:
    return textwrap.dedent(f"""
        <domain type='kvm'>
          <name>{name}</name>
          <memory unit='MiB'>128</memory>
          <vcpu>1</vcpu>
          <os><type arch='x86_64' machine='pc'>hvm</type></os>
          <devices>
            <emulator>{emulator}</emulator>
            <disk type='file' device='disk'>
              <driver name='qemu' type='qcow2'/>
              <source file='{image}'/>
              <target dev='vda' bus='virtio'/>
            </disk>
            <graphics type='vnc' autoport='yes' listen='127.0.0.1'/>
          </devices>
        </domain>""")


@pytest.fixture
def private_image_dir() -> Iterator[Path]:
    """/root/kd-lib007: a directory in root's private home (/root is 0700 on Debian)."""
    path = Path("/root/kd-lib007")
    path.mkdir(mode=0o755, exist_ok=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make_image(path: Path) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True)


def test_lib007_predicts_the_start_failure_of_an_image_under_root(
    lab: None, tmp_path: Path, kd_domain: list[str], private_image_dir: Path
) -> None:
    require(oct(Path("/root").stat().st_mode & 0o777) == "0o700", "/root with mode 0700")
    image = private_image_dir / "disk.qcow2"
    make_image(image)
    xml = tmp_path / "kd-lib007.xml"
    xml.write_text(small_domain("kd-lib007", str(image)))
    kd_domain.append("kd-lib007")
    assert virsh("define", str(xml)).returncode == 0
    findings = [
        f
        for f in by_code(kvmdoctor_json("--select", "LIB007"), "LIB007")
        if f["subject"] == "domain:kd-lib007"
    ]
    assert [f["status"] for f in findings] == ["fail"]
    assert "no search (x) permission on /root" in findings[0]["message"]
    started = virsh("start", "kd-lib007")
    assert started.returncode != 0
    assert str(image) in started.stderr
    assert "Permission denied" in started.stderr


def test_lib007_passes_where_libvirt_starts_the_domain(
    lab: None, tmp_path: Path, kd_domain: list[str]
) -> None:
    image = Path("/var/lib/libvirt/images/kd-lib007-ok.qcow2")
    make_image(image)
    try:
        xml = tmp_path / "kd-lib007-ok.xml"
        xml.write_text(small_domain("kd-lib007-ok", str(image)))
        kd_domain.append("kd-lib007-ok")
        assert virsh("define", str(xml)).returncode == 0
        findings = [
            f
            for f in by_code(kvmdoctor_json("--select", "LIB007"), "LIB007")
            if f["subject"] == "domain:kd-lib007-ok"
        ]
        assert [f["status"] for f in findings] == ["pass"]
        started = virsh("start", "kd-lib007-ok")
        assert started.returncode == 0, started.stderr
    finally:
        virsh("destroy", "kd-lib007-ok")
        image.unlink(missing_ok=True)


LEFT_BEHIND = textwrap.dedent("""
    import socket
    sock = socket.socket(socket.AF_UNIX)
    sock.bind("/run/libvirt/virtqemud-sock")   # a socket file, and nothing listening on it
    sock.close()
""")
QEMUD_REFUSED = "Failed to connect socket to '/var/run/libvirt/virtqemud-sock': Connection refused"


def test_a_virtqemud_socket_left_on_a_libvirtd_host_is_removed_not_started(
    lab: None, tmp_path: Path
) -> None:
    """A monolithic libvirtd in a private namespace, and a virtqemud-sock file that nothing
    listens on (bound, then closed: connect gets ECONNREFUSED). libvirt's client prefers that
    file, so `virsh -c qemu:///system` is refused while libvirtd runs; kvmdoctor fails LIB001
    with the advice to remove the file (not to start virtqemud), `kvmdoctor fix --apply` runs
    that safe step, and virsh connects again."""
    with LibvirtLab(tmp_path) as libvirt_lab:
        started = libvirt_lab.start_libvirtd()
        assert started.ok, started.errors()
        made = libvirt_lab.run([sys.executable, "-c", LEFT_BEHIND])
        assert made.returncode == 0, made.stderr
        assert libvirt_lab.run(["test", "-S", "/run/libvirt/virtqemud-sock"]).returncode == 0
        refused = libvirt_lab.run(["virsh", "-c", "qemu:///system", "version"])
        assert refused.returncode != 0
        assert QEMUD_REFUSED in refused.stderr
        # Without a URI libvirt's probe takes libvirt-sock: libvirtd itself is fine.
        probed = libvirt_lab.run(["virsh", "version"])
        assert probed.returncode == 0, probed.stderr

        argv = [sys.executable, "-m", "doctor", "run", "--format", "json"]
        argv += ["--uri", "qemu:///system", "--select", "LIB001,LIB002"]
        done = libvirt_lab.run(argv, cwd=ROOT)
        assert done.returncode == 1, done.stderr
        report = json.loads(done.stdout)
        (lib001,) = by_code(report, "LIB001")
        assert lib001["status"] == "fail"
        assert lib001["subject"] == "socket:/run/libvirt/virtqemud-sock"
        assert "left behind by virtqemud (the connection to it is refused)" in lib001["message"]
        assert "served by the monolithic libvirtd" in lib001["message"]
        assert "rm -f /run/libvirt/virtqemud-sock" in lib001["message"]
        assert "virtqemud -d" not in lib001["message"]
        first = report["diagnoses"][0]
        assert first["playbook"] == "libvirt-stale-modular-socket"
        assert [(s["action"], s["safety"]) for s in first["fix"]] == [
            ("command", "safe"),
            ("manual", "safe"),
            ("manual", "disruptive"),
        ]
        (lib002,) = by_code(report, "LIB002")
        assert lib002["explained_by"] == ["libvirt-stale-modular-socket"]
        # virsh's own words lead to the same playbook:
        line = next(x for x in refused.stderr.splitlines() if "Connection refused" in x)
        explained = libvirt_lab.run([sys.executable, "-m", "doctor", "explain", line], cwd=ROOT)
        assert "libvirt-stale-modular-socket" in explained.stdout, explained.stderr

        record = tmp_path / "kd-changes.json"
        fixed = libvirt_lab.run(
            [
                sys.executable, "-m", "doctor", "fix", "--apply", "--yes",
                "--uri", "qemu:///system", "--select", "LIB001,LIB002",
                "--record", str(record),
            ],
            cwd=ROOT,
        )  # fmt: skip
        assert fixed.returncode == 0, fixed.stdout + fixed.stderr
        assert libvirt_lab.run(["test", "-e", "/run/libvirt/virtqemud-sock"]).returncode == 1
        again = libvirt_lab.run(["virsh", "-c", "qemu:///system", "version"])
        assert again.returncode == 0, again.stderr
        assert "Running hypervisor: QEMU" in again.stdout
        # The daemon that served the host all along was never restarted.
        assert libvirt_lab.run(["kill", "-0", str(started.pid)]).returncode == 0
