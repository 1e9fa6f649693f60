"""NET checks on the lab: a real KVM guest of the main libvirtd on a bridge made here, domains
libvirt refuses to start (compared with `virsh start`'s own words), and real libvirt networks
started by a second libvirtd that lives in a network namespace made here, where the tests
break forwarding, NAT and filtering the way hosts break. The same cases read through
`--root` from the files libvirt and the kernel wrote give the same findings.

Nothing here touches the machine's own interfaces, firewall or sysctls: the bridge, veth and
guests in the machine's namespace are kd-prefixed, carry this session's suffix, and are
removed by their fixtures; everything that changes forwarding or firewall rules happens
inside the kd namespace.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import kdnet
from kdnet import (
    URI,
    Domains,
    NetLab,
    Netns,
    about,
    bridge,
    bridge_nic,
    guest_xml,
    network_nic,
    root_links,
    statuses,
    veth,
    virsh,
)
from kdsnap import run_checks
from kdtest import ROOT, kvm_device, require

pytestmark = pytest.mark.integration
SOCKET = "/run/libvirt/libvirt-sock"
LIVE_CODES = ("NET001", "NET002", "NET003", "NET010", "NET011")
# Objects in the machine's namespace and its libvirtd carry this session's suffix.
S = kdnet.SUFFIX
BR = f"kdbrnet{S}"  # the guest's bridge
NOT_BR = f"kdvenb{S}"  # a veth, which is no bridge
GUEST, CLONE = f"kd-net-guest-{S}", f"kd-net-clone-{S}"
ON_NOT_BR, ON_NO_BR = f"kd-net-notbr-{S}", f"kd-net-nobr-{S}"
ON_NO_NET, ON_ISO, ISO = f"kd-net-nonet-{S}", f"kd-net-isonet-{S}", f"kd-net-iso-{S}"


@pytest.fixture(scope="module")
def lab() -> None:
    require(os.geteuid() == 0, "root")
    require(os.path.exists(SOCKET), f"libvirtd listening on {SOCKET} (make setup-lab starts it)")
    require(shutil.which("virsh") is not None, "virsh (libvirt-clients)")
    require(shutil.which("nsenter") is not None, "nsenter (util-linux)")
    kvm_device()


@dataclass(frozen=True)
class GuestHost:
    tap: str
    mac: str


def live(codes: tuple[str, ...] = LIVE_CODES) -> dict[str, list[Any]]:
    return run_checks(Path("/"), codes, uri=URI)


def subject(findings: dict[str, list[Any]], code: str, name: str) -> Any:
    found = [f for f in findings[code] if f.subject == name]
    assert len(found) == 1, (code, name, [(f.subject, f.status) for f in findings[code]])
    return found[0]


@pytest.fixture(scope="module")
def guest_host(lab: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuestHost]:
    """BR (a Linux bridge, STP off) with the running guest GUEST on it; NOT_BR, a veth; domains
    defined only, naming NOT_BR, a missing bridge, the guest's MAC again, a missing network and
    the defined but inactive (isolated) network ISO."""
    from pyroute2 import IPRoute

    tmp = tmp_path_factory.mktemp("kdnet")
    with root_links() as made, Domains(tmp) as doms:
        with IPRoute() as ipr:
            made.append(BR)
            bridge(ipr, BR)
            made.append(NOT_BR)
            veth(ipr, NOT_BR, f"{NOT_BR}p")
        iso = tmp / f"{ISO}.xml"
        iso.write_text(kdnet.isolated_network(ISO, f"kdvbr{S}"))
        assert virsh("net-define", str(iso)).returncode == 0
        try:
            doms.define(GUEST, guest_xml(GUEST, bridge_nic(BR)))
            started = virsh("start", GUEST)
            assert started.returncode == 0, started.stderr
            xml = virsh("dumpxml", GUEST).stdout
            tap = re.search(r"<target dev='(vnet\d+)'/>", xml)
            mac = re.search(r"<mac address='([0-9a-f:]+)'/>", xml)
            assert tap is not None and mac is not None
            doms.define(ON_NOT_BR, guest_xml(ON_NOT_BR, bridge_nic(NOT_BR)))
            doms.define(ON_NO_BR, guest_xml(ON_NO_BR, bridge_nic("kdbr-missing")))
            doms.define(CLONE, guest_xml(CLONE, bridge_nic(BR, mac.group(1))))
            doms.define(ON_NO_NET, guest_xml(ON_NO_NET, network_nic("kd-missing")))
            doms.define(ON_ISO, guest_xml(ON_ISO, network_nic(ISO)))
            yield GuestHost(tap.group(1), mac.group(1))
        finally:
            virsh("net-undefine", ISO)


def test_a_running_guest_on_its_bridge_passes_net001_net002_net003(guest_host: GuestHost) -> None:
    found = live()
    assert subject(found, "NET001", f"domain:{GUEST}").status == "pass"
    tap = subject(found, "NET002", f"domain:{GUEST}")
    assert tap.status == "pass"
    assert tap.message.endswith(f"{guest_host.tap} is a port of {BR}")
    bridge_finding = subject(found, "NET003", f"iface:{BR}")
    assert bridge_finding.message == f"{BR}: 1 of 1 ports forwarding; STP off"


def test_net010_warns_of_a_defined_domain_with_the_running_guests_mac(
    guest_host: GuestHost,
) -> None:
    found = live(("NET010",))
    shared = subject(found, "NET010", f"mac:{guest_host.mac}")
    assert shared.status == "warn"
    assert shared.message.startswith(f"MAC {guest_host.mac} is used by 2 interfaces: ")
    assert f"domain:{GUEST} interface 1 (running)" in shared.message
    assert f"domain:{CLONE} interface 1 (defined)" in shared.message
    assert shared.evidence["domain"] == CLONE
    # The guest's tap has libvirt's fe:... address, not the guest's own: no other problem, so
    # no finding of the guest's own beside the shared MAC's.
    assert not [f for f in found["NET010"] if f.subject == f"domain:{GUEST}"]


def test_net002_fails_once_the_guests_tap_is_detached(guest_host: GuestHost) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.link("set", index=kdnet.index(ipr, guest_host.tap), master=0)
        try:
            found = live(("NET002", "NET003"))
        finally:
            ipr.link("set", index=kdnet.index(ipr, guest_host.tap), master=kdnet.index(ipr, BR))
    tap = subject(found, "NET002", f"domain:{GUEST}")
    assert tap.status == "fail"
    assert f"tap {guest_host.tap} is not enslaved to any bridge (expected {BR})" in tap.message
    assert (
        subject(found, "NET003", f"iface:{BR}").message == f"{BR}: 0 of 0 ports forwarding; STP off"
    )
    # Re-attached: passing again.
    assert subject(live(("NET002",)), "NET002", f"domain:{GUEST}").status == "pass"


def test_net003_fails_while_stp_holds_the_guests_port_in_listening(guest_host: GuestHost) -> None:
    """STP on with a 30 s forward delay; the tap re-joins the bridge and sits in listening."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        br = kdnet.index(ipr, BR)
        tap = kdnet.index(ipr, guest_host.tap)
        ipr.link("set", index=br, kind="bridge", br_forward_delay=3000, br_stp_state=1)
        try:
            ipr.link("set", index=tap, master=0)
            ipr.link("set", index=tap, master=br)
            found = live(("NET003",))
        finally:
            ipr.link("set", index=br, kind="bridge", br_stp_state=0, br_forward_delay=1500)
    port = subject(found, "NET003", f"iface:{guest_host.tap}")
    assert port.status == "fail"
    assert port.message == (
        f"{guest_host.tap} (domain:{GUEST}) on {BR} is listening: it drops guest traffic "
        "until STP lets it forward; STP forward delay 30 s"
    )
    bridge_finding = subject(found, "NET003", f"iface:{BR}")
    assert bridge_finding.status == "warn" and "waits 60 s" in bridge_finding.message
    # STP off again: the kernel forwards at once.
    assert subject(live(("NET003",)), "NET003", f"iface:{BR}").status == "pass"


def _libvirt_error(name: str) -> list[str]:
    done = virsh("start", name)
    assert done.returncode != 0, f"libvirt started {name}"
    return done.stderr.strip().splitlines()


def test_net001_predicts_libvirts_refusal_of_a_nic_that_is_not_a_bridge(
    guest_host: GuestHost,
) -> None:
    finding = subject(live(("NET001",)), "NET001", f"domain:{ON_NOT_BR}")
    said = _libvirt_error(ON_NOT_BR)
    assert said[0] == f"error: Failed to start domain '{ON_NOT_BR}'"
    assert re.fullmatch(
        rf"error: Unable to add bridge {NOT_BR} port vnet\d+: Operation not supported", said[1]
    )
    assert finding.status == "fail"
    assert f"Unable to add bridge {NOT_BR} port vnetN: Operation not supported" in finding.message


def test_net001_predicts_libvirts_refusal_of_a_missing_bridge(guest_host: GuestHost) -> None:
    finding = subject(live(("NET001",)), "NET001", f"domain:{ON_NO_BR}")
    assert _libvirt_error(ON_NO_BR) == [
        f"error: Failed to start domain '{ON_NO_BR}'",
        "error: Cannot get interface MTU on 'kdbr-missing': No such device",
    ]
    assert finding.status == "fail"
    assert "Cannot get interface MTU on 'kdbr-missing': No such device" in finding.message


def test_net011_predicts_libvirts_refusal_of_missing_and_inactive_networks(
    guest_host: GuestHost,
) -> None:
    found = live(("NET011",))
    missing = subject(found, "NET011", f"domain:{ON_NO_NET}")
    inactive = subject(found, "NET011", f"domain:{ON_ISO}")
    assert _libvirt_error(ON_NO_NET)[-1] == (
        "error: Network not found: no network with matching name 'kd-missing'"
    )
    assert _libvirt_error(ON_ISO)[-1] == (
        f"error: Requested operation is not valid: network '{ISO}' is not active"
    )
    assert missing.status == "fail"
    assert "Network not found: no network with matching name 'kd-missing'" in missing.message
    assert inactive.status == "warn"
    assert f"Requested operation is not valid: network '{ISO}' is not active" in inactive.message


def _ours(findings: dict[str, list[Any]], names: tuple[str, ...]) -> set[tuple[str, str, str, str]]:
    return {
        (code, f.subject, f.status, f.message)
        for code, items in findings.items()
        for f in items
        if any(n in f.subject for n in names)
    }


def test_the_same_cases_through_root_on_libvirts_and_the_kernels_files(
    guest_host: GuestHost, tmp_path: Path
) -> None:
    """A tree holding only what libvirt wrote under /etc/libvirt and /run/libvirt and what the
    kernel shows in /sys/class/net gives the findings the daemon and netlink give."""
    tree = tmp_path / "tree"
    definitions = Path("/etc/libvirt/qemu")
    pairs = [(p, str(p)) for p in definitions.glob(f"kd-net-*-{S}.xml")]
    pairs += [
        (Path(f"/run/libvirt/qemu/{GUEST}.xml"), f"/run/libvirt/qemu/{GUEST}.xml"),
        (definitions / f"networks/{ISO}.xml", f"/etc/libvirt/qemu/networks/{ISO}.xml"),
    ]
    assert len(pairs) == 8
    kdnet.copy_tree_files(pairs, tree)
    kdnet.copy_sysfs(sorted(os.listdir("/sys/class/net")), tree)
    via_daemon = live()
    via_files = run_checks(tree, LIVE_CODES)
    names = (f"-{S}", BR, guest_host.tap)
    assert _ours(via_files, names) == _ours(via_daemon, names)
    assert {code for code, *_ in _ours(via_daemon, names)} == set(LIVE_CODES)
    guest = subject(via_files, "NET002", f"domain:{GUEST}")
    assert guest.evidence["origin"] == f"/run/libvirt/qemu/{GUEST}.xml"
    assert guest.evidence["links_from"] == "/sys/class/net"


# --- libvirt networks in a namespace ------------------------------------------------------------


@pytest.fixture(scope="module")
def nat_lab(lab: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetLab]:
    """Namespace kdnetlab: a host bridge kdbrh2 (with a veth port) made with pyroute2; a
    libvirtd living in it that runs the NAT network kd-nat (198.51.100.0/24 on kdvbr0) and
    the host-bridge network kd-host (kdbrh2), has kd-iso defined but inactive, and defines
    (never starts) guests on each and on a missing network."""
    tmp = tmp_path_factory.mktemp("kdnetlab")
    with Netns(f"kdnetlab{S}") as ns:
        with ns.ipr() as ipr:
            bridge(ipr, "kdbrh2")
            veth(ipr, "kdveh2", "kdveh2p", master="kdbrh2")
        with NetLab(ns, tmp) as netlab:
            netlab.define_network("kd-nat", kdnet.nat_network("kd-nat", "kdvbr0", "198.51.100.1"))
            netlab.define_network("kd-host", kdnet.host_bridge_network("kd-host", "kdbrh2"))
            netlab.define_network("kd-iso", kdnet.isolated_network("kd-iso", "kdvbr1"), start=False)
            netlab.define_domain("kd-lab-nat", guest_xml("kd-lab-nat", network_nic("kd-nat")))
            netlab.define_domain("kd-lab-iso", guest_xml("kd-lab-iso", network_nic("kd-iso")))
            netlab.define_domain("kd-lab-gone", guest_xml("kd-lab-gone", network_nic("kd-missing")))
            netlab.define_domain("kd-lab-host", guest_xml("kd-lab-host", network_nic("kd-host")))
            yield netlab


NETWORK_CODES = "NET001,NET003,NET004,NET005,NET011,NET012"


def test_libvirts_own_nat_setup_passes(nat_lab: NetLab) -> None:
    report = nat_lab.kvmdoctor("--select", NETWORK_CODES)
    assert statuses(report, "NET004", "kd-") == {"network:kd-nat": "pass"}
    assert statuses(report, "NET012", "kd-") == {"network:kd-nat": "pass"}
    assert statuses(report, "NET005", "kd") == {"iface:kdbrh2": "pass", "iface:kdvbr0": "pass"}
    assert statuses(report, "NET001", "kd-") == {
        "network:kd-nat": "pass",
        "network:kd-host": "pass",
    }
    assert statuses(report, "NET011", "kd-lab") == {
        "domain:kd-lab-nat": "pass",
        "domain:kd-lab-host": "pass",
        "domain:kd-lab-iso": "warn",
        "domain:kd-lab-gone": "fail",
    }
    sysctl = about(report, "NET004", "network:kd-nat")["evidence"]["net.ipv4.ip_forward"]
    assert sysctl["runtime"] == "1"  # libvirt turned it on, in this namespace only


def test_net004_fails_when_ip_forward_is_reset_to_0(nat_lab: NetLab) -> None:
    nat_lab.ns.sysctl("net.ipv4.ip_forward", "0")
    try:
        report = nat_lab.kvmdoctor("--select", "NET004")
    finally:
        nat_lab.ns.sysctl("net.ipv4.ip_forward", "1")
    finding = about(report, "NET004", "network:kd-nat")
    assert finding["status"] == "fail"
    assert finding["message"].startswith("kd-nat: net.ipv4.ip_forward = 0: the host does not route")


def test_net005_fails_the_host_bridge_behind_a_forward_drop_policy(nat_lab: NetLab) -> None:
    """What Docker does (policy DROP), with br_netfilter's bridge-nf-call-iptables = 1."""
    nat_lab.ns.run(["iptables", "-P", "FORWARD", "DROP"])
    try:
        dropped = nat_lab.kvmdoctor("--select", "NET005")
        nat_lab.ns.sysctl("net.bridge.bridge-nf-call-iptables", "0")
        try:
            bypassed = nat_lab.kvmdoctor("--select", "NET005")
        finally:
            nat_lab.ns.sysctl("net.bridge.bridge-nf-call-iptables", "1")
    finally:
        nat_lab.ns.run(["iptables", "-P", "FORWARD", "ACCEPT"])
    bad = about(dropped, "NET005", "iface:kdbrh2")
    assert bad["status"] == "fail"
    assert "drops it (policy DROP of ip/filter/FORWARD)" in bad["message"]
    assert bad["evidence"]["used_by"] == ["domain:kd-lab-host", "network:kd-host"]
    assert about(dropped, "NET005", "iface:kdvbr0")["status"] == "pass"  # libvirt's FWX rule
    assert statuses(bypassed, "NET005", "kd") == {"iface:kdbrh2": "pass", "iface:kdvbr0": "pass"}


def test_net012_fails_after_a_reload_flushes_the_nat_rules_and_passes_after_a_restart(
    nat_lab: NetLab,
) -> None:
    nat_lab.ns.run(["iptables", "-t", "nat", "-F", "LIBVIRT_PRT"])
    flushed = nat_lab.kvmdoctor("--select", "NET012")
    # The fix the check gives: restart the network, libvirt writes its rules again.
    assert nat_lab.virsh("net-destroy", "kd-nat").returncode == 0
    assert nat_lab.virsh("net-start", "kd-nat").returncode == 0
    restarted = nat_lab.kvmdoctor("--select", "NET012")
    finding = about(flushed, "NET012", "network:kd-nat")
    assert finding["status"] == "fail"
    assert "no MASQUERADE or SNAT rule covers 198.51.100.0/24" in finding["message"]
    assert about(restarted, "NET012", "network:kd-nat")["status"] == "pass"


def test_net003_fails_a_port_put_in_listening_with_pyroute2(nat_lab: NetLab) -> None:
    """STP off, the port state set directly (IFLA_BRPORT_STATE), as bridge link set does."""
    with nat_lab.ns.ipr() as ipr:
        kdnet.port_state(ipr, "kdveh2", "listening")
        try:
            report = nat_lab.kvmdoctor("--select", "NET003")
        finally:
            kdnet.port_state(ipr, "kdveh2", "forwarding")
    finding = about(report, "NET003", "iface:kdveh2")
    assert finding["status"] == "fail"
    assert finding["message"] == (
        "kdveh2 on kdbrh2 is listening: it drops guest traffic until STP lets it forward"
    )


def test_net011_agrees_with_the_lab_libvirts_own_refusals(nat_lab: NetLab) -> None:
    report = nat_lab.kvmdoctor("--select", "NET011")
    gone = nat_lab.virsh("start", "kd-lab-gone")
    iso = nat_lab.virsh("start", "kd-lab-iso")
    assert gone.returncode != 0 and iso.returncode != 0
    assert gone.stderr.strip().splitlines()[-1] == (
        "error: Network not found: no network with matching name 'kd-missing'"
    )
    assert iso.stderr.strip().splitlines()[-1] == (
        "error: Requested operation is not valid: network 'kd-iso' is not active"
    )
    assert (
        "no network with matching name 'kd-missing'"
        in about(report, "NET011", "domain:kd-lab-gone")["message"]
    )
    assert (
        "network 'kd-iso' is not active" in about(report, "NET011", "domain:kd-lab-iso")["message"]
    )


def test_the_network_cases_through_root_on_the_lab_libvirts_files(
    nat_lab: NetLab, tmp_path: Path
) -> None:
    """The lab daemon's definition, autostart and status files and the namespace's
    /sys/class/net in a tree: NET001 and NET011 say what they said through the daemon."""
    tree = tmp_path / "tree"
    pairs = []
    for name in ("kd-nat", "kd-host", "kd-iso"):
        pairs.append(
            (
                nat_lab.path(f"/etc/libvirt/qemu/networks/{name}.xml"),
                f"/etc/libvirt/qemu/networks/{name}.xml",
            )
        )
    for name in ("kd-nat", "kd-host"):
        pairs.append(
            (
                nat_lab.run_path(f"/run/libvirt/network/{name}.xml"),
                f"/run/libvirt/network/{name}.xml",
            )
        )
    for name in ("kd-lab-nat", "kd-lab-iso", "kd-lab-gone", "kd-lab-host"):
        pairs.append(
            (nat_lab.path(f"/etc/libvirt/qemu/{name}.xml"), f"/etc/libvirt/qemu/{name}.xml")
        )
    kdnet.copy_tree_files(pairs, tree)
    code = (
        f"import os, sys; from pathlib import Path; sys.path.insert(0, {str(ROOT / 'tests')!r}); import kdnet; "
        f"kdnet.copy_sysfs(sorted(os.listdir('/sys/class/net')), Path({str(tree)!r}))"
    )
    copied = nat_lab.lab.run(
        ["ip", "netns", "exec", nat_lab.ns.name, sys.executable, "-c", code], cwd=ROOT
    )
    assert copied.returncode == 0, copied.stderr
    via_daemon = nat_lab.kvmdoctor("--select", "NET001,NET011")
    via_files = run_checks(tree, ("NET001", "NET011"))

    def ours(report: dict[str, Any]) -> set[tuple[str, str, str, str]]:
        return {
            (c["code"], f["subject"], f["status"], f["message"])
            for c in report["checks"]
            for f in c["findings"]
            if "kd-" in f["subject"]
        }

    files = {
        (code, f.subject, f.status, f.message)
        for code, items in via_files.items()
        for f in items
        if "kd-" in f.subject
    }
    assert files == ours(via_daemon)
    assert len(files) == 6
