"""A real KVM guest on a test bridge: its path is discovered from libvirt and netlink (the
domain's live XML names the tap; the tap's master is the bridge). The guest runs under a
second libvirtd inside a namespace the test makes (tests/kdnet.py NetLab): its network, its
bridge and the guest's tap exist only there. Nothing is sent (--static): sending as a libvirt
guest (mirred ingress on the tap) is not implemented yet, and the probe says so."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kdnet import SUFFIX, NetLab, Netns, guest_xml, nat_network, network_nic
from kdtest import ROOT, kvm_device, require

pytestmark = pytest.mark.integration

NETWORK = f"kdpn{SUFFIX}"
BRIDGE = "kdpbr0"
DOMAIN = f"kdpd{SUFFIX}"
MAC = "52:54:00:6b:64:01"


class GuestLab(NetLab):
    """A NetLab whose QEMU logs to files (the lab runs no virtlogd) and uses no cgroups (the
    lab's /sys is the namespace's sysfs, without /sys/fs/cgroup)."""

    def _start(self) -> None:
        self.lab.configure("qemu.conf", stdio_handler="file", cgroup_controllers=[])
        super()._start()


@pytest.fixture
def guest(tmp_path: Path) -> Any:
    require(os.geteuid() == 0, "root (namespaces, a second libvirtd)")
    kvm_device()
    with Netns(f"kdpl{SUFFIX}") as ns, GuestLab(ns, tmp_path) as lab:
        lab.define_network(NETWORK, nat_network(NETWORK, BRIDGE, "198.51.100.1"))
        nic = network_nic(NETWORK).replace(
            "<interface type='network'>", f"<interface type='network'><mac address='{MAC}'/>"
        )
        lab.define_domain(DOMAIN, guest_xml(DOMAIN, nic))
        done = lab.virsh("start", DOMAIN)
        assert done.returncode == 0, done.stderr
        # The network's bridge runs STP (delay 0): the new port listens, then forwards.
        deadline = time.monotonic() + 20
        while "3" not in lab.run(["sh", "-c", "cat /sys/class/net/vnet*/brport/state"]).stdout:
            assert time.monotonic() < deadline, "the guest's port never forwarded"
            time.sleep(0.2)
        yield lab


def probe(lab: NetLab, *args: str) -> tuple[int, Any, str]:
    done = lab.lab.run(
        ["ip", "netns", "exec", lab.ns.name, "sh", "-c", 'cd "$0" && exec "$@"', str(ROOT),
         sys.executable, "-m", "doctor", "probe",
         "--domain", DOMAIN, "--uri", "qemu:///system", "--format", "json", *args],
    )  # fmt: skip
    report = json.loads(done.stdout) if done.stdout.startswith("{") else None
    return done.returncode, report, done.stderr


def test_the_path_of_a_running_guest_is_its_tap_and_the_bridge_libvirt_put_it_on(
    guest: NetLab,
) -> None:
    code, report, err = probe(guest, "--to", "198.51.100.50", "--static")
    assert report is not None, err
    [finding] = [
        f
        for c in report["checks"]
        for f in c["findings"]
        if c["code"] == "PRB001" and f["status"] == "pass"
    ]
    path = finding["evidence"]["path"]
    assert path["guest"]["kind"] == "domain" and path["guest"]["mac"] == MAC
    roles = [(h["role"], h["name"]) for h in path["hops"]]
    assert roles[0][0] == "tap" and roles[0][1].startswith("vnet")
    assert roles[1] == ("bridge", BRIDGE)
    tap = path["hops"][0]
    assert tap["master"] == BRIDGE and tap["port_state"] == "forwarding" and tap["carrier"] is True
    assert code == 0


def test_sending_as_a_libvirt_guest_is_refused_with_the_reason(guest: NetLab) -> None:
    code, report, err = probe(guest, "--to", "198.51.100.50")
    assert code == 2 and report is None
    assert "not implemented yet" in err and "--static" in err
