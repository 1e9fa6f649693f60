"""`kvmdoctor fix --apply` for real, inside a kd- network namespace with its own libvirtd
(tests/kdnet.py NetLab): a NAT network is active, ip_forward is off, NET004 fails; --apply
turns forwarding on, records the previous value, re-runs NET004 and exits 0. A disruptive step
in the same plan (restarting the network to restore its NAT rules) is left alone.

kvmdoctor runs inside the lab's mount namespace with a private, empty /etc/sysctl.d bound
over the real one, so the persisted setting lands in a scratch directory, never on the host.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kdnet import URI, NetLab, Netns, nat_network
from kdtest import ROOT, require

pytestmark = pytest.mark.integration

NETWORK = "kdfixnat"
BRIDGE = "kdfixbr0"


def kvmdoctor_in(lab: NetLab, sysctl_d: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """kvmdoctor in the lab's namespaces, with `sysctl_d` mounted over /etc/sysctl.d."""
    script = 'mount --bind "$0" /etc/sysctl.d && cd "$1" && shift 2 && exec "$@"'
    argv = [
        "unshare", "--mount", "--propagation", "private",
        "sh", "-c", script, str(sysctl_d), str(ROOT), "_",
        sys.executable, "-m", "doctor", *args, "--uri", URI,
    ]  # fmt: skip
    result: subprocess.CompletedProcess[str] = lab.run(argv)
    return result


@pytest.fixture
def lab(tmp_path: Path) -> Any:
    require(os.geteuid() == 0, "root (namespaces, a second libvirtd)")
    with Netns("kdfix0") as ns, NetLab(ns, tmp_path) as lab:
        lab.define_network(NETWORK, nat_network(NETWORK, BRIDGE, "198.51.100.1"))
        yield ns, lab


def test_apply_turns_ip_forward_on_records_the_previous_value_and_verifies(
    lab: Any, tmp_path: Path
) -> None:
    ns, netlab = lab
    sysctl_d = tmp_path / "sysctl.d"
    sysctl_d.mkdir()
    record = tmp_path / "changes.json"
    ns.sysctl("net.ipv4.ip_forward", "0")

    before = kvmdoctor_in(netlab, sysctl_d, "run", "--select", "NET004", "-f", "json")
    report = json.loads(before.stdout)
    (net004,) = [f for c in report["checks"] for f in c["findings"] if c["code"] == "NET004"]
    assert net004["status"] == "fail", net004
    assert [d["playbook"] for d in report["diagnoses"]] == ["ip-forward-disabled"]

    done = kvmdoctor_in(
        netlab, sysctl_d, "fix", "--apply", "--yes", "--select", "NET004", "--record", str(record)
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "verify NET004: pass" in done.stdout
    assert ns.run(["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "1"
    written = json.loads(record.read_text())
    (change,) = written["changes"]
    assert change["action"] == "sysctl" and change["status"] == "applied"
    assert change["previous"]["runtime"] == "0"
    assert change["now"]["runtime"] == "1"
    assert change["previous"]["persisted"]["existed"] is False
    assert (sysctl_d / "90-kvmdoctor.conf").read_text() == "net.ipv4.ip_forward = 1\n"
    assert written["verify"] == {"checks": {"NET004": "pass"}, "exit_code": 0}
    # The manual step of the same playbook is listed as not applied, with its reason.
    assert [s["action"] for s in written["not_applied"]] == ["manual"]


def test_apply_leaves_a_disruptive_step_alone(lab: Any, tmp_path: Path) -> None:
    ns, netlab = lab
    sysctl_d = tmp_path / "sysctl.d"
    sysctl_d.mkdir()
    record = tmp_path / "changes.json"
    ns.sysctl("net.ipv4.ip_forward", "1")
    # What a firewall reload does to libvirt's NAT rules: gone, while the network stays up.
    flushed = ns.run(["iptables", "-t", "nat", "-F", "LIBVIRT_PRT"], check=False)
    assert flushed.returncode == 0, flushed.stderr

    done = kvmdoctor_in(
        netlab, sysctl_d, "fix", "--apply", "--yes", "--select", "NET012", "--record", str(record)
    )

    # Restarting the network (net-destroy, net-start) would restore the rules; it is
    # disruptive, so --apply did not do it, and the verifying check still fails.
    assert done.returncode == 1, done.stdout + done.stderr
    assert "nothing safe to apply" in done.stderr
    assert "not applied: [disruptive] stop kdfixnat" in done.stderr
    rules = ns.run(["iptables", "-t", "nat", "-S", "LIBVIRT_PRT"]).stdout
    assert "MASQUERADE" not in rules
    assert not record.exists()  # nothing was changed, so there is nothing to record
