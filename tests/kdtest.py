"""Paths, the skip policy and plain helpers shared by tests (import this, not conftest: conftest
modules of test subdirectories shadow each other on sys.path)."""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Optional, Union

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
REALDATA = FIXTURES / "realdata"
HOST_SNAPSHOT = FIXTURES / "snapshots" / "host-kvm-pvm"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
KERNEL_LACKS = "kernel lacks"
# Unprivileged ids that no account on the machine uses (checked by the `test_ids` fixture).
TEST_UID = 61001
TEST_GIDS = (61002, 61003)


def require(condition: bool, what: str) -> None:
    """Skip when a prerequisite is missing, except in CI, where it is a failure."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI machine must provide: {what}")
    pytest.skip(f"needs {what}")


def write_tree(root: Path, files: Mapping[str, Optional[Union[str, bytes]]]) -> Path:
    """Lay out a host tree under `root`: {"/etc/passwd": text, "/dev/": None, ...}; a path
    ending in "/" is an empty directory."""
    root.mkdir(parents=True, exist_ok=True)
    for path, content in files.items():
        target = root / path.lstrip("/")
        if path.endswith("/"):
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content or "")
    return root


def answers(path: str) -> bool:
    """Something accepts connections on the UNIX socket `path` (a socket file alone may be
    left over from a daemon that is gone)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(2)
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


def kvm_device() -> str:
    """/dev/kvm, or a skip (allowed in CI) when this kernel has none."""
    if not os.path.exists("/dev/kvm"):
        pytest.skip(f"{KERNEL_LACKS} KVM: /dev/kvm does not exist")
    return "/dev/kvm"


def as_user(fn: Callable[[], Any], uid: int, gid: int, groups: tuple[int, ...]) -> Any:
    """Run fn() in a forked child with those credentials and return what it returned (it must
    be picklable); an exception in the child fails the test. Changing credentials needs root."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        try:
            os.close(read_end)
            os.setgroups(list(groups))
            os.setgid(gid)
            os.setuid(uid)
            try:
                payload = pickle.dumps(("ok", fn()))
            except BaseException as exc:  # reported to the parent, which fails the test
                payload = pickle.dumps(("raised", f"{type(exc).__name__}: {exc}"))
            with os.fdopen(write_end, "wb") as out:
                out.write(payload)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as handle:
        data = handle.read()
    os.waitpid(pid, 0)
    assert data, "the child process died before answering"
    status, value = pickle.loads(data)
    assert status == "ok", f"in the child: {value}"
    return value


class Facl:
    """setfacl to write ACLs and getfacl to read them back: the reference implementation."""

    @staticmethod
    def set(path: Path, spec: str) -> None:
        subprocess.run(["setfacl", "--set", spec, str(path)], check=True, capture_output=True)

    @staticmethod
    def entries(path: Path, *, default: bool = False) -> list[tuple[str, Optional[int], str]]:
        """(tag, qualifier, perms) in getfacl's order, numeric ids, comments dropped."""
        out = subprocess.run(
            ["getfacl", "--omit-header", "--numeric", "--absolute-names", str(path)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        entries = []
        for line in out.splitlines():
            line = line.split("#", 1)[0].strip()
            if not line or line.startswith("default:") != default:
                continue
            tag, qualifier, perms = line[len("default:") if default else 0 :].split(":")
            entries.append((tag, int(qualifier) if qualifier else None, perms))
        return entries


def lines_executed(func: Any) -> int:
    """How many Python lines `func()` executes: a measure of work that, unlike a clock, does
    not depend on the machine or its load (tests assert growth with it, never durations)."""
    import sys

    count = 0

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return tracer

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        func()
    finally:
        sys.settrace(previous)
    return count


# Real QEMU firmware descriptors (tests/fixtures/realdata/firmware): the name each has in a
# distribution's /usr/share/qemu/firmware -> its fixture file.
DEBIAN_X86 = {
    "40-edk2-x86_64-secure-enrolled.json": "debian12-ovmf__40-edk2-x86_64-secure-enrolled.json",
    "50-edk2-x86_64-secure.json": "debian12-ovmf__50-edk2-x86_64-secure.json",
    "60-edk2-x86_64.json": "debian12-ovmf__60-edk2-x86_64.json",
}

DEBIAN_AARCH64 = {
    "40-edk2-aarch64-secure-enrolled.json": "debian12-qemu-efi-aarch64__40-edk2-aarch64-secure-enrolled.json",
    "50-edk2-aarch64-secure.json": "debian12-qemu-efi-aarch64__50-edk2-aarch64-secure.json",
    "60-edk2-aarch64.json": "debian12-qemu-efi-aarch64__60-edk2-aarch64.json",
}

ARCH_X86 = {
    "50-edk2-ovmf-x86_64-secure-4m.json": "archlinux-edk2-ovmf__50-edk2-ovmf-x86_64-secure-4m.json",
    "70-edk2-ovmf-x86_64-csm-4m.json": "archlinux-edk2-ovmf__70-edk2-ovmf-x86_64-csm-4m.json",
}


def kvmdoctor(*args: str, **kw: Any) -> Any:
    """Run the kvmdoctor command line in this process (typer's CliRunner), stderr apart."""
    from typer.testing import CliRunner

    from doctor.cli import app

    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
    except TypeError:
        runner = CliRunner()
    return runner.invoke(app, list(args), **kw)


class AnsibleUnsafe(str):
    """A value a plan writes with Ansible's `!unsafe` tag (never templated by Ansible)."""


def load_ansible(text: str) -> Any:
    """An Ansible plan read as Ansible reads its YAML: `!unsafe` values come back as
    AnsibleUnsafe strings, so a test can tell them from the plan's own expressions."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def unsafe(loader: Any, node: Any) -> AnsibleUnsafe:
        return AnsibleUnsafe(loader.construct_scalar(node))

    Loader.add_constructor("!unsafe", unsafe)
    return yaml.load(text, Loader=Loader)  # noqa: S506  # a SafeLoader with one more tag
