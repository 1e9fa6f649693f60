"""A real KVM guest on a test bridge: its path is discovered from libvirt and netlink (the
domain's live XML names the tap; the tap's master is the bridge). The guest runs under a
second libvirtd inside a namespace the test makes (tests/kdnet.py NetLab): its network, its
bridge and the guest's tap exist only there. As root, the guest's frames (ARP, or ICMP, UDP
and TCP from its address) written on the tap enter the bridge through a temporary mirred
filter, as if the guest sent them: to a namespace on the same bridge, and through the NAT
libvirt set up to a gateway namespace beyond the host's forwarding; the replies come back to
the tap."""

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


GUEST_IP = "198.51.100.77"
UPLINK = f"kdpu{SUFFIX}"
GATEWAY_NIC = f"kdpv{SUFFIX}"
UPLINK_IP = "203.0.113.1"
TARGET = "203.0.113.2"


@pytest.fixture
def addressed(guest: NetLab) -> NetLab:
    """The guest holds GUEST_IP, as the host's neighbour table (and so libvirt's ARP view)
    knows it. The lab's guest boots no system that could answer ARP for it: the entry is
    permanent."""
    done = guest.run(
        ["ip", "neigh", "replace", GUEST_IP, "lladdr", MAC, "dev", BRIDGE, "nud", "permanent"]
    )
    assert done.returncode == 0, done.stderr
    return guest


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
        # Its answers to the guest's address go to the guest's MAC (the guest answers no ARP).
        ns.run(
            ["ip", "neigh", "replace", GUEST_IP, "lladdr", MAC, "dev", NEIGHBOUR_NIC,
             "nud", "permanent"]
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while "3" not in guest.run(["cat", f"/sys/class/net/{PORT}/brport/state"]).stdout:
            assert time.monotonic() < deadline, "the neighbour's port never forwarded"
            time.sleep(0.2)
        yield ns


@pytest.fixture
def gateway(addressed: NetLab) -> Any:
    """A namespace beyond the host's forwarding step: the lab's host reaches TARGET through
    UPLINK, with the NAT libvirt set up for the guest's network; the gateway has no route
    back to the guest's subnet, so replies return only through that NAT."""
    with Netns(f"kdpr{SUFFIX}") as ns:
        with addressed.ns.ipr() as ipr:
            ipr.link(
                "add",
                ifname=UPLINK,
                kind="veth",
                peer={"ifname": GATEWAY_NIC, "net_ns_fd": ns.name},
            )
            ipr.link("set", index=index(ipr, UPLINK), state="up")
            ipr.addr("add", index=index(ipr, UPLINK), address=UPLINK_IP, prefixlen=24)
        with ns.ipr() as ipr:
            ipr.link("set", index=index(ipr, GATEWAY_NIC), state="up")
            ipr.addr("add", index=index(ipr, GATEWAY_NIC), address=TARGET, prefixlen=24)
        yield ns


def probe(lab: NetLab, *args: str) -> tuple[int, Any, str]:
    done = lab.lab.run(
        ["ip", "netns", "exec", lab.ns.name, "sh", "-c", 'cd "$0" && exec "$@"', str(ROOT),
         sys.executable, "-m", "doctor", "probe",
         "--domain", DOMAIN, "--uri", "qemu:///system", "--format", "json", *args],
    )  # fmt: skip
    report = json.loads(done.stdout) if done.stdout.startswith("{") else None
    return done.returncode, report, done.stderr


SCHEMA = json.loads((ROOT / "docs" / "report.schema.json").read_text())


def prb(report: dict[str, Any], code: str) -> list[dict[str, Any]]:
    """The findings of `code`, once the report is checked against docs/report.schema.json."""
    import jsonschema

    jsonschema.validate(report, SCHEMA)
    return [f for c in report["checks"] if c["code"] == code for f in c["findings"]]


def path_of(report: dict[str, Any]) -> dict[str, Any]:
    """The path as discovered (the evidence of PRB001's pass)."""
    [ok] = [f for f in prb(report, "PRB001") if f["status"] == "pass"]
    found: dict[str, Any] = ok["evidence"]["path"]
    return found


def messages(report: dict[str, Any]) -> list[str]:
    """What the PRB findings said, and what each hop saw (for a failing assertion)."""
    out = [f["message"] for c in report["checks"] for f in c["findings"]]
    out += [json.dumps(f["evidence"].get("observations")) for f in prb(report, "PRB002")]
    return out


def test_the_path_of_a_running_guest_is_its_tap_and_the_bridge_libvirt_put_it_on(
    guest: NetLab,
) -> None:
    code, report, err = probe(guest, "--to", "198.51.100.50", "--static")
    assert report is not None, err
    [finding] = [f for f in prb(report, "PRB001") if f["status"] == "pass"]
    path = finding["evidence"]["path"]
    assert path["guest"]["kind"] == "domain" and path["guest"]["mac"] == MAC
    roles = [(h["role"], h["name"]) for h in path["hops"]]
    assert roles[0] == ("tap", TAP)
    assert roles[1] == ("bridge", BRIDGE)
    tap = path["hops"][0]
    assert tap["master"] == BRIDGE and tap["port_state"] == "forwarding" and tap["carrier"] is True
    assert code == 0


def test_an_arp_probe_injected_with_mirred_reaches_a_namespace_on_the_bridge_and_back(
    guest: NetLab, neighbour: Netns
) -> None:
    code, report, err = probe(guest, "--to", NEIGHBOUR_IP, "--count", "3", "--proto", "arp")
    assert report is not None, err
    assert code == 0, err
    [ok] = prb(report, "PRB002")
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


def test_an_icmp_probe_as_the_guest_reaches_a_namespace_on_the_bridge_and_back(
    addressed: NetLab, neighbour: Netns
) -> None:
    code, report, err = probe(addressed, "--to", NEIGHBOUR_IP)
    assert report is not None, err
    assert code == 0, (err, messages(report))
    [ok] = prb(report, "PRB002")
    assert ok["status"] == "pass", ok["message"]
    obs = ok["evidence"]["observations"]
    assert obs["proto"] == "icmp"
    assert obs["seen"][TAP] == {"request": 3, "reply": 3}
    assert obs["seen"][PORT] == {"request": 3, "reply": 3}
    # Sent from the guest's address, as the host knows it.
    guest_facts = path_of(report)["guest"]
    assert guest_facts["addresses"] == [f"{GUEST_IP}/32"]
    # libvirt 9.0's ARP source passes over the permanent entry; the host's table answers.
    assert guest_facts["address_source"] == "host neighbour table", path_of(report)["problems"]
    assert obs["sources"][PORT] == [GUEST_IP]
    assert "clsact" not in addressed.run(["tc", "qdisc", "show", "dev", TAP]).stdout


@pytest.mark.parametrize("proto", ["icmp", "tcp:7"])
def test_a_probe_as_the_guest_crosses_the_nat_to_a_routed_address_and_its_reply_the_tap(
    addressed: NetLab, gateway: Netns, proto: str
) -> None:
    code, report, err = probe(addressed, "--to", TARGET, "--proto", proto)
    assert report is not None, err
    assert code == 0, (err, messages(report))
    [ok] = prb(report, "PRB002")
    assert ok["status"] == "pass", ok["message"]
    obs = ok["evidence"]["observations"]
    assert ok["evidence"]["hops"] == [TAP, BRIDGE, UPLINK]
    assert obs["proto"] == proto.partition(":")[0]
    assert all(obs["seen"][h] == {"request": 3, "reply": 3} for h in (TAP, BRIDGE, UPLINK))
    # Through the host's bridge address as the guest's gateway, translated on the uplink.
    assert path_of(report)["guest"]["gateway"] == "198.51.100.1"
    assert obs["sources"][UPLINK] == [UPLINK_IP]
    [nat] = prb(report, "PRB003")
    assert nat["status"] == "pass" and UPLINK_IP in nat["message"]


def test_forwarding_off_stops_the_guests_probe_after_the_bridge(
    addressed: NetLab, gateway: Netns
) -> None:
    assert addressed.run(["sysctl", "-qw", "net.ipv4.ip_forward=0"]).returncode == 0
    code, report, err = probe(addressed, "--to", TARGET)
    assert report is not None, err
    assert code == 1, err
    [drop] = [f for f in prb(report, "PRB002") if f["status"] == "fail"]
    e = drop["evidence"]
    assert (e["direction"], e["last_seen"], e["first_missing"]) == ("request", BRIDGE, UPLINK)
    assert (e["cause"], e["reason"], e["location"]) == (
        "ip-forward-off",
        "IP_INADDRERRORS",
        "ip_error",
    )
    assert "ip-forward-disabled" in {d["playbook"] for d in report["diagnoses"]}


def test_a_guest_without_a_known_address_is_judged_statically_and_refused_icmp(
    guest: NetLab,
) -> None:
    code, report, err = probe(guest, "--to", "203.0.113.9")
    assert code == 2
    assert "has no known IPv4 address" in err and "only the static part ran" in err
    assert report is not None
    assert {c["code"] for c in report["checks"]} == {"PRB001"}


def test_arp_to_a_routed_target_is_refused_as_a_libvirt_guest_with_the_reason(
    addressed: NetLab,
) -> None:
    code, report, err = probe(addressed, "--to", "203.0.113.9", "--proto", "arp")
    assert code == 2 and report is None
    assert "ARP asks for an address on the guest's own bridge" in err


# A UDP echo service for the gateway namespace: says "ready" once bound, then answers every
# datagram with its payload and prints the sender's address.
UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(data, peer)
    print(peer[0], flush=True)
"""


@pytest.mark.parametrize("answer", ["port unreachable", "listener"])
def test_a_udp_probe_as_the_guest_crosses_the_nat_and_the_answer_comes_back_to_the_tap(
    addressed: NetLab, gateway: Netns, answer: str
) -> None:
    import subprocess

    port = 33434 if answer == "port unreachable" else 7007
    listener = None
    if answer == "listener":
        listener = subprocess.Popen(
            ["ip", "netns", "exec", gateway.name, sys.executable, "-c", UDP_ECHO, TARGET,
             str(port)],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == "ready"
    try:
        code, report, err = probe(addressed, "--to", TARGET, "--proto", f"udp:{port}")
    finally:
        heard = ""
        if listener is not None:
            listener.kill()
            heard, _ = listener.communicate()
    assert report is not None, err
    assert code == 0, (err, messages(report))
    [ok] = prb(report, "PRB002")
    assert ok["status"] == "pass", ok["message"]
    obs = ok["evidence"]["observations"]
    assert ok["evidence"]["hops"] == [TAP, BRIDGE, UPLINK]
    assert obs["proto"] == "udp"
    # Out through the bridge and the NAT, and the answer (the gateway's ICMP port unreachable,
    # or the listener's datagram) back through both to the guest's tap.
    assert all(obs["seen"][h] == {"request": 3, "reply": 3} for h in (TAP, BRIDGE, UPLINK))
    assert obs["sources"][UPLINK] == [UPLINK_IP]
    if listener is not None:
        # The listener got the three datagrams, translated to the host's uplink address.
        assert heard.split() == [UPLINK_IP] * 3
    assert "clsact" not in addressed.run(["tc", "qdisc", "show", "dev", TAP]).stdout
