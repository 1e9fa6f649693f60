"""A real KVM guest on a test bridge: its path is discovered from libvirt and netlink (the
domain's live XML names the tap; the tap's master is the bridge). The guest runs under a
second libvirtd inside a namespace the test makes (tests/kdnet.py NetLab): its network, its
bridge and the guest's tap exist only there. As root, ARP requests written on the tap enter
the bridge through a temporary mirred filter, as if the guest sent them, and the answer of a
namespace on the same bridge comes back to the tap."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kdnet import SUFFIX, NetLab, Netns, guest_xml, index, nat_network, network_nic
from kdtest import ROOT, kvm_device, require

pytestmark = pytest.mark.integration

NETWORK = f"kdpn{SUFFIX}"
BRIDGE = f"kdpb{SUFFIX}"
TAP = f"kdtv{SUFFIX}"  # libvirt would pick vnetN, the same in every lab
PORT = f"kdn{SUFFIX}"
NEIGHBOUR_NIC = f"kdm{SUFFIX}"
DOMAIN = f"kdpd{SUFFIX}"
MAC = "52:54:00:6b:64:01"
NEIGHBOUR_IP = "198.51.100.60"


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
            "<interface type='network'>",
            f"<interface type='network'><mac address='{MAC}'/><target dev='{TAP}'/>",
        )
        lab.define_domain(DOMAIN, guest_xml(DOMAIN, nic))
        done = lab.virsh("start", DOMAIN)
        assert done.returncode == 0, done.stderr
        # The network's bridge runs STP (delay 0): the new port listens, then forwards.
        deadline = time.monotonic() + 20
        while "3" not in lab.run(["cat", f"/sys/class/net/{TAP}/brport/state"]).stdout:
            assert time.monotonic() < deadline, "the guest's port never forwarded"
            time.sleep(0.2)
        yield lab


@pytest.fixture
def neighbour(guest: NetLab) -> Any:
    """A namespace on the guest's bridge that answers for NEIGHBOUR_IP."""
    with Netns(f"kdpt{SUFFIX}") as ns:
        with guest.ns.ipr() as ipr:
            ipr.link(
                "add",
                ifname=PORT,
                kind="veth",
                peer={"ifname": NEIGHBOUR_NIC, "net_ns_fd": ns.name},
            )
            ipr.link("set", index=index(ipr, PORT), master=index(ipr, BRIDGE), state="up")
        with ns.ipr() as ipr:
            ipr.link("set", index=index(ipr, NEIGHBOUR_NIC), state="up")
            ipr.addr("add", index=index(ipr, NEIGHBOUR_NIC), address=NEIGHBOUR_IP, prefixlen=24)
        deadline = time.monotonic() + 20
        while "3" not in guest.run(["cat", f"/sys/class/net/{PORT}/brport/state"]).stdout:
            assert time.monotonic() < deadline, "the neighbour's port never forwarded"
            time.sleep(0.2)
        yield ns


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
    assert roles[0] == ("tap", TAP)
    assert roles[1] == ("bridge", BRIDGE)
    tap = path["hops"][0]
    assert tap["master"] == BRIDGE and tap["port_state"] == "forwarding" and tap["carrier"] is True
    assert code == 0


def test_a_probe_injected_with_mirred_reaches_a_namespace_on_the_bridge_and_the_reply_the_tap(
    guest: NetLab, neighbour: Netns
) -> None:
    code, report, err = probe(guest, "--to", NEIGHBOUR_IP, "--count", "3")
    assert report is not None, err
    assert code == 0, err
    [ok] = [f for c in report["checks"] for f in c["findings"] if c["code"] == "PRB002"]
    assert ok["status"] == "pass", ok["message"]
    obs = ok["evidence"]["observations"]
    assert obs["proto"] == "arp"
    tap = ok["evidence"]["hops"][0]
    assert tap == TAP
    assert obs["seen"][tap] == {"request": 3, "reply": 3}  # in from the guest's port, back to it
    assert obs["seen"][PORT]["request"] == 3 and obs["seen"][PORT]["reply"] >= 3
    # The qdisc and filter are gone again.
    shown = guest.run(["tc", "qdisc", "show", "dev", tap]).stdout
    assert "clsact" not in shown


def test_a_routed_target_is_refused_as_a_libvirt_guest_with_the_reason(guest: NetLab) -> None:
    code, report, err = probe(guest, "--to", "203.0.113.9")
    assert code == 2 and report is None
    assert "only an address on the guest's own bridge" in err and "--static" in err
