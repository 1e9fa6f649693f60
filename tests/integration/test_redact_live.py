"""`--redact` on the lab's real libvirtd: two defined domains sharing a MAC, each with a VNC
password. A live `collect --redact` archive (contents and member names) and a live
`run --redact` in every format hold neither the guests' names nor their MAC nor the
passwords; NET010 names the shared MAC's one token with both guests' tokens; the replay of the
redacted snapshot gives the diagnoses its own recorded report gives.

(The machine's own address is in a documentation range, which redaction keeps:
docs/redaction.md. Addresses are covered by tests/test_redaction.py.)"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import tarfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from kdnet import SUFFIX
from kdtest import ROOT, answers, require

pytestmark = pytest.mark.integration
SOCKET = "/run/libvirt/libvirt-sock"
GUESTS = (f"kdredact{SUFFIX}a", f"kdredact{SUFFIX}b")
MAC = f"52:54:00:7e:{SUFFIX[:2]}:{SUFFIX[2:]}"
PASSWORD = f"kdpw{SUFFIX}"  # VNC takes 8 characters at most


def virsh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["virsh", "-c", "qemu:///system", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def domain(name: str) -> str:
    return f"""<domain type='kvm'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <interface type='network'><mac address='{MAC}'/><source network='kd{SUFFIX}net'/>
      <model type='virtio'/></interface>
    <graphics type='vnc' autoport='yes' listen='127.0.0.1' passwd='{PASSWORD}'/>
  </devices>
</domain>
"""


@pytest.fixture
def guests(tmp_path: Path) -> Iterator[None]:
    require(os.geteuid() == 0, "root")
    require(answers(SOCKET), f"libvirtd answering on {SOCKET} (make setup-lab starts it)")
    try:
        for name in GUESTS:
            path = tmp_path / f"{name}.xml"
            path.write_text(domain(name))
            done = virsh("define", str(path))
            assert done.returncode == 0, done.stderr
        yield
    finally:
        for name in GUESTS:
            virsh("undefine", name)


def kvmdoctor(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "doctor", *args],
        capture_output=True,
        cwd=ROOT,
        timeout=300,
        check=False,
        env=env,
    )


def assert_clean(blob: bytes, where: str) -> None:
    for value in (*GUESTS, MAC, MAC.upper(), PASSWORD):
        for form in (value, base64.b64encode(value.encode()).decode(), urllib.parse.quote(value)):
            assert form.encode() not in blob, f"{value} ({form}) in {where}"


def test_a_live_redacted_collect_and_run_hold_no_guest_name_mac_or_password(
    guests: None, tmp_path: Path
) -> None:
    env = {**os.environ, "KVMDOCTOR_STATE_DIR": str(tmp_path / "state"), "NO_COLOR": "1"}
    plain = kvmdoctor("run", "-f", "json", "--select", "NET010,DOM", env=env)
    assert MAC in plain.stdout.decode() and GUESTS[0] in plain.stdout.decode()  # it sees them
    map_file = str(tmp_path / "map.json")
    archive = tmp_path / "live.tar.gz"
    done = kvmdoctor("collect", "--redact-map", map_file, "-o", str(archive), env=env)
    assert done.returncode == 0, done.stderr.decode()
    with tarfile.open(archive) as tar:
        assert_clean("\n".join(tar.getnames()).encode(), "member names")
        for member in tar.getmembers():
            handle = tar.extractfile(member) if member.isfile() else None
            if handle is not None:
                assert_clean(handle.read(), member.name)
        handle = tar.extractfile("./report.json")
        assert handle is not None
        recorded = json.loads(handle.read())
    replay = kvmdoctor("run", "--snapshot", str(archive), "-f", "json", env=env)
    replayed = json.loads(replay.stdout)
    assert sorted((d["playbook"], d["status"], d["subject"]) for d in replayed["diagnoses"]) == (
        sorted((d["playbook"], d["status"], d["subject"]) for d in recorded["diagnoses"])
    )
    for fmt in ("text", "json", "junit", "sarif", "prometheus", "markdown", "html"):
        out = kvmdoctor("run", "--redact-map", map_file, "-f", fmt, "-v", env=env)
        assert out.returncode in (0, 1), out.stderr.decode()
        assert_clean(out.stdout + out.stderr, f"run --redact -f {fmt}")
    report = json.loads(
        kvmdoctor(
            "run", "--redact-map", map_file, "-f", "json", "--select", "NET010", env=env
        ).stdout
    )
    mine = [
        f
        for c in report["checks"]
        for f in c["findings"]
        if c["code"] == "NET010" and f["status"] != "pass"
    ]
    tokens = json.loads(Path(map_file).read_text())["tokens"]
    token_of = {(e["kind"], e["value"]): e["token"] for e in tokens}
    ours = [f for f in mine if token_of[("guest", GUESTS[0])] in json.dumps(f)]
    assert len(ours) == 1 and token_of[("guest", GUESTS[1])] in json.dumps(ours[0])
    (mac_token,) = re.findall(r"mac:(\S+)", ours[0]["subject"])
    assert mac_token.startswith("52:54:00:") and mac_token != MAC
