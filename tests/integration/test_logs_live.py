"""LOG001 on the logs the real daemon writes: two kd- domains share one image, the second
fails to start on QEMU's image lock, and kvmdoctor finds the error in that domain's QEMU log
(/var/log/libvirt/qemu/kd-logtwo.log) with its time and playbook. The domains, the image and
the QEMU logs they caused are removed afterwards."""

from __future__ import annotations

import calendar
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kdtest import ROOT, require

pytestmark = pytest.mark.integration

SOCKET = "/run/libvirt/libvirt-sock"
IMAGE = Path("/var/lib/libvirt/images/kd-logshared.qcow2")
NAMES = ("kd-logone", "kd-logtwo")


def virsh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["virsh", "-c", "qemu:///system", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def domain(name: str) -> str:
    return textwrap.dedent(f"""
        <domain type='kvm'>
          <name>{name}</name>
          <memory unit='MiB'>128</memory>
          <vcpu>1</vcpu>
          <os><type arch='x86_64' machine='pc'>hvm</type></os>
          <devices>
            <disk type='file' device='disk'>
              <driver name='qemu' type='qcow2'/>
              <source file='{IMAGE}'/>
              <target dev='vda' bus='virtio'/>
            </disk>
          </devices>
        </domain>""")


@pytest.fixture
def shared_image(tmp_path: Path) -> Iterator[None]:
    require(os.geteuid() == 0, "root")
    require(os.path.exists(SOCKET), f"libvirtd listening on {SOCKET} (make setup-lab starts it)")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(IMAGE), "16M"], check=True)
    try:
        for name in NAMES:
            xml = tmp_path / f"{name}.xml"
            xml.write_text(domain(name))
            done = virsh("define", str(xml))
            assert done.returncode == 0, done.stderr
        yield
    finally:
        for name in NAMES:
            virsh("destroy", name)
            virsh("undefine", name)
            Path(f"/var/log/libvirt/qemu/{name}.log").unlink(missing_ok=True)
        IMAGE.unlink(missing_ok=True)


def test_log001_finds_the_lock_error_of_a_domain_that_failed_to_start(shared_image: Any) -> None:
    started = virsh("start", "kd-logone")
    assert started.returncode == 0, started.stderr
    refused = virsh("start", "kd-logtwo")
    assert refused.returncode != 0
    assert 'Failed to get "write" lock' in refused.stderr
    failed_at = time.time()

    done = subprocess.run(
        [sys.executable, "-m", "doctor", "run", "--select", "LOG001", "--format", "json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    report = json.loads(done.stdout)
    findings = [f for c in report["checks"] for f in c["findings"]]
    hit = next(f for f in findings if f["subject"] == "log:/var/log/libvirt/qemu/kd-logtwo.log")
    assert hit["status"] == "info"
    assert hit["evidence"]["playbook"] == "disk-used-twice"
    # QEMU's two lines ('Failed to get "write" lock', then "Is another process using the
    # image [...]?") are one error: counted together, the last one kept.
    assert hit["evidence"]["count"] == 2
    assert hit["evidence"]["line"] == f"Is another process using the image [{IMAGE}]?"
    when = calendar.timegm(time.strptime(hit["evidence"]["time"], "%Y-%m-%dT%H:%M:%SZ"))
    assert abs(when - failed_at) < 120
    # The hit is a diagnosis of its own (no current check confirms a lock that is gone).
    diagnoses = {d["playbook"]: d for d in report["diagnoses"]}
    assert "known-error-in-logs" in diagnoses
