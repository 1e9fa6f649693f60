"""The real libvirtd of the lab refuses the configuration files LIB008 fails, with the message
the playbook's signature recognises. `libvirtd -f FILE` parses FILE before anything else and
exits on a syntax error, so no second daemon starts."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from kdconfs import BAD, GOOD

from doctor import playbooks

from kdsnap import one, run_checks
from kdtest import require, write_tree

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("case", sorted(BAD))
def test_libvirtd_refuses_what_lib008_fails(tmp_path: Path, case: str) -> None:
    require(shutil.which("libvirtd") is not None, "libvirtd (package libvirt-daemon-system)")
    text, error = BAD[case]
    tree = write_tree(tmp_path / "tree", {**GOOD, "/etc/libvirt/libvirtd.conf": text})
    conf = tree / "etc/libvirt/libvirtd.conf"
    done = subprocess.run(["libvirtd", "-f", str(conf)], capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    said = done.stderr + done.stdout
    assert "configuration file syntax error" in said, said
    line = error.split(":")[0].replace("line ", "")
    assert f"{conf}:{line}:" in said  # libvirt stops at the same line
    finding = one(run_checks(tree, ("LIB008",)), "LIB008", "file:/etc/libvirt/libvirtd.conf")
    assert finding.status == "fail"
    (playbook,) = [p for p in playbooks.shipped() if p.id == "libvirt-conf-syntax-error"]
    assert any(sig.search(said) for sig in playbook.signatures)


def test_the_files_the_running_libvirtd_loaded_pass(tmp_path: Path) -> None:
    """This machine's libvirtd runs, so it parsed /etc/libvirt/libvirtd.conf and qemu.conf:
    LIB008 must pass them."""
    from kdtest import answers

    require(answers("/run/libvirt/libvirt-sock"), "a running libvirtd (make setup-lab)")
    found = run_checks(Path("/"), ("LIB008",))
    statuses = {f.subject: f.status for f in found["LIB008"]}
    assert statuses["file:/etc/libvirt/libvirtd.conf"] == "pass"
    assert statuses["file:/etc/libvirt/qemu.conf"] == "pass"
