"""NET001-NET012: a passing and a failing case each, on the lab host's recorded snapshot with
the network answers replaced by real ones: netlink dumps, libvirt XML, nft and iptables-save
output recorded on the lab (tests/fixtures/net/lab/), rows derived from real `ip -d link`
captures for bonds and macvtap, which this kernel cannot make (tests/fixtures/net/derived/),
and real /proc/net/bonding and iptables-save captures (tests/fixtures/realdata/). What a test
changes in those inputs is written in the test."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import pytest

from checks.network import duplicate_mac
from doctor.facts.domains import Domains, parse_domain
from doctor.facts.links import Links, links_from_netlink

import kdnet
from kdnet import derived_rows, lab_capture, lab_rows, row
from kdsnap import one, realdata, run_checks
from kdtest import lines_executed

GUEST_DEF = lab_capture("guest/etc-libvirt-qemu__kd-cap-guest.xml")
GUEST_LIVE = lab_capture("guest/run-libvirt-qemu__kd-cap-guest.xml")
GUEST_MAC = "52:54:00:8e:d6:ee"
Q35_RUNNING = "domains/lkml-danmoulding__virsh-dumpxml__q35-running_fedora-virt-manager_libvirt-pcie-root-ports.xml"
RHEL_DEFINED = "domains/insights__etc-libvirt-qemu__i440fx_rhel7.4_virt-manager-persistent.xml"
KD_NAT = lab_capture("nat/run-libvirt-network__kd-nat.xml")
KD_HOST = lab_capture("nat/run-libvirt-network__kd-host.xml")
BOND_AB = "insights__ip-d-s-link__bond-active-backup-with-slaves"
MACVTAPS = "majorhayden__ip-d-link__libvirt-direct-macvtap-guests_2015"
DEFAULT_NET = (
    Path(__file__).resolve().parent.parent
    / "fixtures/snapshots/host-kvm-pvm/libvirt/networks/default.xml"
).read_text()


def guest(
    xml: str = GUEST_DEF,
    *,
    name: Optional[str] = None,
    interface: Optional[str] = None,
    active: bool = False,
) -> dict[str, Any]:
    """A libvirt "domains" row of the captured guest; `interface` replaces its <interface>
    element (the rest of libvirt's XML stays as libvirt wrote it)."""
    if interface is not None:
        start = xml.index("<interface")
        end = xml.index("</interface>") + len("</interface>")
        xml = xml[:start] + interface + xml[end:]
    if name is not None:
        xml = xml.replace("<name>kd-cap-guest</name>", f"<name>{name}</name>")
    return kdnet.domain_entry(xml, active=active)


def network(xml: str, *, active: bool = True, autostart: bool = False) -> dict[str, Any]:
    return kdnet.network_entry(xml, active=active, autostart=autostart)


def host(
    edit_snapshot: Any,
    *,
    links: list[dict[str, Any]],
    addresses: Optional[list[dict[str, Any]]] = None,
    domains: tuple[dict[str, Any], ...] = (),
    networks: Optional[list[dict[str, Any]]] = None,
    files: Optional[dict[str, str]] = None,
    dirs: Optional[dict[str, list[str]]] = None,
    missing: tuple[str, ...] = (),
    commands: Optional[dict[str, str]] = None,
) -> Path:
    snap = edit_snapshot()
    kdnet.set_netlink(snap, "links", links)
    kdnet.set_netlink(snap, "addresses", addresses or [])
    kdnet.set_domains(snap, list(domains))
    if networks is not None:
        kdnet.set_networks(snap, networks)
    for path, text in (files or {}).items():
        snap.set_file(path, text)
    for path, entries in (dirs or {}).items():
        snap.set_value("dir", entries, path=path)
    for path in missing:
        snap.missing("file", path=path)
    for argv, text in (commands or {}).items():
        kdnet.set_command(snap, argv.split(), text)
    saved: Path = snap.save()
    return saved


def with_row(rows: list[dict[str, Any]], name: str, **attrs: Any) -> list[dict[str, Any]]:
    """A copy of `rows` where link `name` has these attributes (None removes one)."""
    rows = copy.deepcopy(rows)
    target = row(rows, name)["attrs"]
    for key, value in attrs.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
    return rows


def bridge_row(name: str, index: int) -> dict[str, Any]:
    """The lab's kdbr0 row under another name and index (a Linux bridge, STP off, up)."""
    source = copy.deepcopy(row(lab_rows("bridges/links.json"), "kdbr0"))
    source["index"] = index
    source["attrs"]["IFLA_IFNAME"] = name
    return source


def address(index: int, addr: str, prefix: int) -> dict[str, Any]:
    """An RTM_GETADDR row as the lab's dumps have them (kdbr0's, with another address)."""
    base = next(
        r for r in lab_rows("bridges/addresses.json") if r["attrs"].get("IFA_LABEL") == "kdbr0"
    )
    out = copy.deepcopy(base)
    out["index"] = index
    out["prefixlen"] = prefix
    out["attrs"].update(IFA_ADDRESS=addr, IFA_LOCAL=addr, IFA_LABEL=None)
    return out


def firewall(stem: str) -> dict[str, str]:
    return {
        "nft -j list ruleset": lab_capture(f"nat/{stem}__nft-j-list-ruleset.json"),
        "iptables-save": lab_capture(f"nat/{stem}__iptables-save.txt"),
        "ip6tables-save": "",
    }


FORWARD_ON = {"/proc/sys/net/ipv4/ip_forward": "1\n"}
BRIDGE_NF_ON = {"/proc/sys/net/bridge/bridge-nf-call-iptables": "1\n"}

# --- NET001 bridge-source-invalid ------------------------------------------------------------


def test_net001_passes_for_a_guest_on_an_existing_linux_bridge(edit_snapshot: Any) -> None:
    path = host(edit_snapshot, links=lab_rows("guest/links.json"), domains=(guest(),))
    finding = one(run_checks(path, ("NET001",)), "NET001", "domain:kd-cap-guest")
    assert finding.status == "pass"
    assert finding.message == "interface 1 (52:54:00:8e:d6:ee): 'kdbrcap' is a Linux bridge"
    assert finding.evidence["interfaces"][0]["link"]["kind"] == "bridge"


def test_net001_predicts_libvirts_error_for_a_missing_bridge(edit_snapshot: Any) -> None:
    nic = "<interface type='bridge'><mac address='52:54:00:8e:d6:ee'/><source bridge='kdbr-missing'/><model type='virtio'/></interface>"
    path = host(edit_snapshot, links=lab_rows("guest/links.json"), domains=(guest(interface=nic),))
    finding = one(run_checks(path, ("NET001",)), "NET001", "domain:kd-cap-guest")
    assert finding.status == "fail"
    assert "Cannot get interface MTU on 'kdbr-missing': No such device" in finding.message
    assert finding.evidence["interfaces"][0]["link"] is None
    assert finding.evidence["links_from"] == "netlink"


def test_net001_predicts_libvirts_error_for_a_nic_that_is_not_a_bridge(edit_snapshot: Any) -> None:
    nic = "<interface type='bridge'><source bridge='kdve9'/><model type='virtio'/></interface>"
    path = host(
        edit_snapshot, links=lab_rows("bridges/links.json"), domains=(guest(interface=nic),)
    )
    finding = one(run_checks(path, ("NET001",)), "NET001", "domain:kd-cap-guest")
    assert finding.status == "fail"
    assert "'kdve9' is not a bridge" in finding.message
    assert finding.evidence["interfaces"][0]["link"]["kind"] == "veth"
    assert "Unable to add bridge kdve9 port vnetN: Operation not supported" in finding.message


def test_net001_fails_an_ovs_bridge_without_virtualport_and_passes_it_with(
    edit_snapshot: Any,
) -> None:
    rows = derived_rows("insights__ip-d-s-link__openvswitch-ports")
    plain = "<interface type='bridge'><source bridge='br-ex'/><model type='virtio'/></interface>"
    ovs = "<interface type='bridge'><source bridge='br-ex'/><virtualport type='openvswitch'/><model type='virtio'/></interface>"
    path = host(
        edit_snapshot,
        links=rows,
        domains=(guest(interface=plain), guest(name="kd-ovs", interface=ovs)),
    )
    found = run_checks(path, ("NET001",))
    bad = one(found, "NET001", "domain:kd-cap-guest")
    assert bad.status == "fail" and "<virtualport type='openvswitch'/>" in bad.message
    assert one(found, "NET001", "domain:kd-ovs").status == "pass"


def test_net001_checks_the_bridge_of_a_host_bridge_network_and_of_an_active_nat_network(
    edit_snapshot: Any,
) -> None:
    """The lab's kd-host network names kdbrh, kd-nat's bridge is kdvbr0; on the lab's bridges
    namespace neither exists."""
    nets = [network(KD_HOST), network(KD_NAT)]
    good = run_checks(
        host(edit_snapshot, links=lab_rows("nat/links.json"), networks=nets), ("NET001",)
    )
    assert {f.subject: f.status for f in good["NET001"]} == {
        "network:kd-host": "pass",
        "network:kd-nat": "pass",
    }
    bad = run_checks(
        host(edit_snapshot, links=lab_rows("bridges/links.json"), networks=nets), ("NET001",)
    )
    assert one(bad, "NET001", "network:kd-host").status == "fail"
    gone = one(bad, "NET001", "network:kd-nat")
    assert gone.status == "fail" and "its bridge 'kdvbr0' is gone" in gone.message


# --- NET002 tap-not-on-bridge ----------------------------------------------------------------


def test_net002_passes_when_the_running_guests_tap_is_on_its_bridge(edit_snapshot: Any) -> None:
    path = host(
        edit_snapshot, links=lab_rows("guest/links.json"), domains=(guest(GUEST_LIVE, active=True),)
    )
    finding = one(run_checks(path, ("NET002",)), "NET002", "domain:kd-cap-guest")
    assert finding.status == "pass"
    assert finding.message == "interface 1 (52:54:00:8e:d6:ee): vnet3 is a port of kdbrcap"


def test_net002_fails_when_the_tap_was_detached(edit_snapshot: Any) -> None:
    """`ip link set vnet3 nomaster`: the kernel drops IFLA_MASTER and the bridge-port data."""
    links = with_row(lab_rows("guest/links.json"), "vnet3", IFLA_MASTER=None)
    info = row(links, "vnet3")["attrs"]["IFLA_LINKINFO"]["attrs"]
    del info["IFLA_INFO_SLAVE_KIND"], info["IFLA_INFO_SLAVE_DATA"]
    path = host(edit_snapshot, links=links, domains=(guest(GUEST_LIVE, active=True),))
    finding = one(run_checks(path, ("NET002",)), "NET002", "domain:kd-cap-guest")
    assert finding.status == "fail"
    assert "tap vnet3 is not enslaved to any bridge (expected kdbrcap)" in finding.message
    assert finding.evidence["interfaces"][0]["tap"]["name"] == "vnet3"


def test_net002_fails_when_the_tap_is_gone(edit_snapshot: Any) -> None:
    links = [r for r in lab_rows("guest/links.json") if r["attrs"]["IFLA_IFNAME"] != "vnet3"]
    path = host(edit_snapshot, links=links, domains=(guest(GUEST_LIVE, active=True),))
    finding = one(run_checks(path, ("NET002",)), "NET002", "domain:kd-cap-guest")
    assert (finding.status, finding.message) == (
        "fail",
        "interface 1 (52:54:00:8e:d6:ee): tap vnet3 does not exist",
    )


def test_net002_resolves_a_network_interface_through_its_live_bridge(edit_snapshot: Any) -> None:
    """The real running q35 guest: <source network='default' bridge='virbr0'/>, vnet47; here
    vnet47 is missing: it is reported against the bridge the live XML names."""
    path = host(
        edit_snapshot,
        links=lab_rows("guest/links.json"),
        domains=(kdnet.domain_entry(realdata(Q35_RUNNING), active=True),),
    )
    (finding,) = run_checks(path, ("NET002",))["NET002"]
    assert finding.status == "fail"
    assert finding.evidence["interfaces"][0]["expected_bridge"] == "virbr0"


# --- NET003 bridge-port-not-forwarding --------------------------------------------------------


def test_net003_passes_a_bridge_whose_guest_port_forwards(edit_snapshot: Any) -> None:
    path = host(
        edit_snapshot, links=lab_rows("guest/links.json"), domains=(guest(GUEST_LIVE, active=True),)
    )
    found = run_checks(path, ("NET003",))
    assert [(f.subject, f.status) for f in found["NET003"]] == [("iface:kdbrcap", "pass")]
    assert one(found, "NET003").message == "kdbrcap: 1 of 1 ports forwarding; STP off"


def test_net003_fails_a_listening_port_and_warns_of_a_long_stp_delay(edit_snapshot: Any) -> None:
    path = host(edit_snapshot, links=lab_rows("bridges/links.json"))
    found = run_checks(path, ("NET003",))
    port = one(found, "NET003", "iface:kdve1")
    assert port.status == "fail"
    assert port.message == (
        "kdve1 on kdbr1 is listening: it drops guest traffic until STP lets it forward; "
        "STP forward delay 15 s"
    )
    stp = one(found, "NET003", "iface:kdbr1")
    assert stp.status == "warn" and "waits 30 s before it forwards" in stp.message
    assert stp.evidence["forward_delay_s"] == 15.0
    # Ports that are merely down and carry no guest are information, not failures:
    assert one(found, "NET003", "iface:kdtap0").status == "info"
    assert one(found, "NET003", "iface:kdbr0").status == "pass"


def test_net003_fails_a_running_guests_tap_without_carrier(edit_snapshot: Any) -> None:
    """The guest's live XML names kdtap0 on kdbr0: a tap no QEMU holds (disabled port)."""
    nic = "<interface type='bridge'><mac address='52:54:00:8e:d6:ee'/><source bridge='kdbr0'/><target dev='kdtap0'/><model type='virtio'/></interface>"
    path = host(
        edit_snapshot,
        links=lab_rows("bridges/links.json"),
        domains=(guest(GUEST_LIVE, interface=nic, active=True),),
    )
    finding = one(run_checks(path, ("NET003",)), "NET003", "iface:kdtap0")
    assert finding.status == "fail"
    assert finding.message == (
        "kdtap0 of domain:kd-cap-guest on kdbr0 is disabled: the tap has no carrier (no QEMU attached?)"
    )


def test_net003_fails_a_bridge_left_down_under_a_running_guest(edit_snapshot: Any) -> None:
    nic = "<interface type='bridge'><source bridge='kdbr2'/><target dev='kdve2'/><model type='virtio'/></interface>"
    path = host(
        edit_snapshot,
        links=lab_rows("bridges/links.json"),
        domains=(guest(GUEST_LIVE, interface=nic, active=True),),
    )
    found = run_checks(path, ("NET003",))
    assert one(found, "NET003", "iface:kdbr2").message.startswith("kdbr2: bridge kdbr2 is down")
    assert "the bridge kdbr2 is down" in one(found, "NET003", "iface:kdve2").message


# --- NET004 ip-forward-disabled ---------------------------------------------------------------


def test_net004_passes_an_active_nat_network_with_forwarding_on(edit_snapshot: Any) -> None:
    path = host(edit_snapshot, links=[], networks=[network(KD_NAT)], files=FORWARD_ON)
    finding = one(run_checks(path, ("NET004",)), "NET004", "network:kd-nat")
    assert (finding.status, finding.message) == ("pass", "kd-nat: net.ipv4.ip_forward = 1")


def test_net004_fails_an_active_nat_network_with_forwarding_off(edit_snapshot: Any) -> None:
    path = host(
        edit_snapshot,
        links=[],
        networks=[network(KD_NAT)],
        files={"/proc/sys/net/ipv4/ip_forward": "0\n"},
    )
    finding = one(run_checks(path, ("NET004",)), "NET004", "network:kd-nat")
    assert finding.status == "fail"
    assert finding.message.startswith("kd-nat: net.ipv4.ip_forward = 0: the host does not route")
    assert finding.evidence["net.ipv4.ip_forward"]["runtime"] == "0"


def test_net004_warns_when_the_persisted_configuration_turns_forwarding_off(
    edit_snapshot: Any,
) -> None:
    path = host(
        edit_snapshot,
        links=[],
        networks=[network(KD_NAT)],
        files={**FORWARD_ON, "/etc/sysctl.d/90-hardening.conf": "net.ipv4.ip_forward = 0\n"},
        dirs={"/etc/sysctl.d": ["90-hardening.conf"]},
    )
    finding = one(run_checks(path, ("NET004",)), "NET004", "network:kd-nat")
    assert finding.status == "warn"
    assert "/etc/sysctl.d/90-hardening.conf:1 sets net.ipv4.ip_forward = 0" in finding.message


def test_net004_ignores_inactive_and_isolated_networks(edit_snapshot: Any) -> None:
    path = host(
        edit_snapshot,
        links=[],
        networks=[
            network(DEFAULT_NET, active=False),
            network(lab_capture("nat/etc-libvirt-qemu-networks__kd-iso.xml")),
        ],
        files={"/proc/sys/net/ipv4/ip_forward": "0\n"},
    )
    (finding,) = run_checks(path, ("NET004",))["NET004"]
    assert (finding.status, finding.subject) == ("pass", "host")


# --- NET005 bridge-netfilter-drops-guests ------------------------------------------------------


def net005(edit_snapshot: Any, stem: str, files: dict[str, str]) -> dict[str, Any]:
    path = host(
        edit_snapshot,
        links=lab_rows("nat/links.json"),
        networks=[network(KD_NAT), network(KD_HOST)],
        files=files,
        commands=firewall(stem),
    )
    return {f.subject: f for f in run_checks(path, ("NET005",))["NET005"]}


def test_net005_fails_a_host_bridge_when_docker_style_forward_drop_meets_br_netfilter(
    edit_snapshot: Any,
) -> None:
    found = net005(edit_snapshot, "forward-drop", BRIDGE_NF_ON)
    bad = found["iface:kdbrh"]
    assert bad.status == "fail"
    assert "drops it (policy DROP of ip/filter/FORWARD)" in bad.message
    assert bad.evidence["used_by"] == ["network:kd-host"]
    assert bad.evidence["verdicts"]["nft (IPv4)"]["verdict"] == "drop"
    # libvirt's own FWX rule accepts its NAT bridge's traffic despite the policy:
    ok = found["iface:kdvbr0"]
    assert ok.status == "pass" and "LIBVIRT_FWX" in ok.message


def test_net005_passes_with_the_forward_policy_accept(edit_snapshot: Any) -> None:
    found = net005(edit_snapshot, "libvirt", BRIDGE_NF_ON)
    assert {s: f.status for s, f in found.items()} == {
        "iface:kdbrh": "pass",
        "iface:kdvbr0": "pass",
    }


def test_net005_passes_when_bridged_frames_skip_iptables(edit_snapshot: Any) -> None:
    found = net005(
        edit_snapshot,
        "forward-drop",
        {
            "/proc/sys/net/bridge/bridge-nf-call-iptables": "0\n",
            "/proc/sys/net/bridge/bridge-nf-call-ip6tables": "0\n",
        },
    )
    assert found["iface:kdbrh"].status == "pass"
    assert "bridge-nf-call-iptables and -ip6tables are 0" in found["iface:kdbrh"].message


def test_net005_passes_without_br_netfilter(edit_snapshot: Any) -> None:
    path = host(
        edit_snapshot,
        links=lab_rows("nat/links.json"),
        networks=[network(KD_HOST)],
        files=FORWARD_ON,
        missing=("/proc/sys/net/bridge/bridge-nf-call-iptables",),
        commands=firewall("forward-drop"),
    )
    (finding,) = run_checks(path, ("NET005",))["NET005"]
    assert finding.status == "pass" and "br_netfilter is not loaded" in finding.message


def test_net005_on_the_real_docker_libvirt_host_accepts_virbr0(edit_snapshot: Any) -> None:
    path = host(
        edit_snapshot,
        links=[],
        networks=[network(DEFAULT_NET)],
        files=BRIDGE_NF_ON,
        commands={
            "iptables-save": realdata(
                "firewall/pradeepgadde__iptables-save__docker-libvirt-kubeadm-flannel_ubuntu20.04.txt"
            )
        },
    )
    finding = one(run_checks(path, ("NET005",)), "NET005", "iface:virbr0")
    assert finding.status == "pass"
    assert "-A LIBVIRT_FWX -i virbr0 -o virbr0 -j ACCEPT" in finding.message


# --- NET006 macvtap-host-isolation / NET007 macvtap-on-enslaved-device ---------------------------


LOWER_INDEX = 900  # no capture uses it


def macvtap_host(
    edit_snapshot: Any,
    source: str,
    *,
    host_address: bool = True,
    links: Optional[list[dict[str, Any]]] = None,
) -> Path:
    """The real macvtap guests' host: macvtap1-3 on enp4s0 (derived rows). The capture does
    not show enp4s0 itself: its row is the lab's kdve9 (a veth) renamed, carrying
    198.51.100.7/24 when `host_address`."""
    rows = links if links is not None else derived_rows(MACVTAPS)
    lower = copy.deepcopy(row(lab_rows("bridges/links.json"), "kdve9"))
    lower["index"], lower["attrs"]["IFLA_IFNAME"] = LOWER_INDEX, "enp4s0"
    lower["attrs"].pop("IFLA_LINK", None)
    rows = [*rows, lower]
    addresses = [address(LOWER_INDEX, "198.51.100.7", 24)] if host_address else []
    nic = f"<interface type='direct'><mac address='{GUEST_MAC}'/>{source}<model type='virtio'/></interface>"
    return host(edit_snapshot, links=rows, addresses=addresses, domains=(guest(interface=nic),))


@pytest.mark.parametrize("mode", ["bridge", "private", "passthrough"])
def test_net006_warns_that_a_macvtap_guest_cannot_reach_the_host_on_its_address(
    edit_snapshot: Any, mode: str
) -> None:
    path = macvtap_host(edit_snapshot, f"<source dev='enp4s0' mode='{mode}'/>")
    finding = one(run_checks(path, ("NET006",)), "NET006", "domain:kd-cap-guest")
    assert finding.status == "warn"
    assert "enp4s0 carries the host's address 198.51.100.7/24: by design" in finding.message
    assert "put the host's address on a bridge" in finding.message
    assert "macvlan in bridge mode" in finding.message
    assert "isolated libvirt network" in finding.message


def test_net006_warns_that_vepa_needs_a_hairpin_switch(edit_snapshot: Any) -> None:
    """No mode attribute: libvirt's default for type='direct' is vepa."""
    path = macvtap_host(edit_snapshot, "<source dev='enp4s0'/>", host_address=False)
    finding = one(run_checks(path, ("NET006",)), "NET006", "domain:kd-cap-guest")
    assert finding.status == "warn"
    assert "VEPA mode sends guest-to-guest traffic out of enp4s0" in finding.message


def test_net006_passes_a_macvtap_on_a_device_without_a_host_address(edit_snapshot: Any) -> None:
    path = macvtap_host(edit_snapshot, "<source dev='enp4s0' mode='bridge'/>", host_address=False)
    finding = one(run_checks(path, ("NET006",)), "NET006", "domain:kd-cap-guest")
    assert (finding.status, finding.message) == (
        "pass",
        "interface 1 (52:54:00:8e:d6:ee): enp4s0 carries no host address; mode bridge",
    )


def test_net006_follows_a_network_that_hands_out_macvtap_devices(edit_snapshot: Any) -> None:
    rows = derived_rows(MACVTAPS)
    lower = copy.deepcopy(row(lab_rows("bridges/links.json"), "kdve9"))
    lower["index"], lower["attrs"]["IFLA_IFNAME"] = LOWER_INDEX, "enp4s0"
    macvtap_net = "<network><name>kd-direct</name><forward mode='bridge'><interface dev='enp4s0'/></forward></network>"
    nic = (
        "<interface type='network'><source network='kd-direct'/><model type='virtio'/></interface>"
    )
    path = host(
        edit_snapshot,
        links=[*rows, lower],
        addresses=[address(LOWER_INDEX, "198.51.100.7", 24)],
        domains=(guest(interface=nic),),
        networks=[network(macvtap_net)],
    )
    assert one(run_checks(path, ("NET006",)), "NET006", "domain:kd-cap-guest").status == "warn"


def test_net007_fails_a_macvtap_on_a_bond_slave(edit_snapshot: Any) -> None:
    """The real active-backup bond's slave enp1s0 named as a macvtap source."""
    rows = derived_rows(BOND_AB)
    path = macvtap_host(edit_snapshot, "<source dev='enp1s0' mode='bridge'/>", links=rows)
    finding = one(run_checks(path, ("NET007",)), "NET007", "domain:kd-cap-guest")
    assert finding.status == "fail"
    assert "enp1s0 is enslaved to bond0 (bond)" in finding.message
    assert "Device or resource busy" in finding.message
    assert "<source dev='bond0' mode='bridge'/>" in finding.message


def test_net007_fails_a_macvtap_on_a_bridge_port(edit_snapshot: Any) -> None:
    path = macvtap_host(
        edit_snapshot, "<source dev='kdve0' mode='bridge'/>", links=lab_rows("bridges/links.json")
    )
    finding = one(run_checks(path, ("NET007",)), "NET007", "domain:kd-cap-guest")
    assert finding.status == "fail"
    assert "<interface type='bridge'><source bridge='kdbr0'/>" in finding.message


def test_net007_passes_a_macvtap_on_the_bond_itself(edit_snapshot: Any) -> None:
    path = macvtap_host(
        edit_snapshot, "<source dev='bond0' mode='bridge'/>", links=derived_rows(BOND_AB)
    )
    assert one(run_checks(path, ("NET007",)), "NET007", "domain:kd-cap-guest").status == "pass"


# --- NET008 bond-mode-unsuited-for-bridge / NET009 bond-degraded ---------------------------------


def bonded_bridge(edit_snapshot: Any, proc: Optional[str], *, guests: bool = True) -> Path:
    """The real active-backup bond (derived rows) made a port of a bridge br0 (the lab's kdbr0
    row renamed); /proc/net/bonding/bond0 is the real capture `proc`; a guest uses br0."""
    rows = derived_rows(BOND_AB) + [bridge_row("br0", 9)]
    rows = with_row(rows, "bond0", IFLA_MASTER=9)
    info = row(rows, "bond0")["attrs"]["IFLA_LINKINFO"]["attrs"]
    info["IFLA_INFO_SLAVE_KIND"] = "bridge"
    info["IFLA_INFO_SLAVE_DATA"] = copy.deepcopy(
        row(lab_rows("bridges/links.json"), "kdve0")["attrs"]["IFLA_LINKINFO"]["attrs"][
            "IFLA_INFO_SLAVE_DATA"
        ]
    )
    nic = "<interface type='bridge'><source bridge='br0'/><model type='virtio'/></interface>"
    files = {"/proc/net/bonding/bond0": realdata(f"bonding/{proc}")} if proc else {}
    return host(
        edit_snapshot,
        links=rows,
        domains=(guest(interface=nic),) if guests else (),
        files=files,
    )


def test_net008_fails_a_balance_rr_bond_under_a_bridge_with_guests(edit_snapshot: Any) -> None:
    path = bonded_bridge(edit_snapshot, "insights__balance-rr__bond0.txt")
    finding = one(run_checks(path, ("NET008",)), "NET008", "iface:bond0")
    assert finding.status == "fail"
    assert finding.message.startswith(
        "bond0 is in balance-rr mode and carries br0, used by domain:kd-cap-guest"
    )
    assert finding.evidence["mode_from"] == "/proc/net/bonding/bond0"


def test_net008_warns_of_balance_alb_under_a_bridge_without_guests_yet(edit_snapshot: Any) -> None:
    path = bonded_bridge(
        edit_snapshot, "marktaguiad__balance-alb_kernel-6.8__bond0.txt", guests=False
    )
    assert one(run_checks(path, ("NET008",)), "NET008", "iface:bond0").status == "warn"


def test_net008_passes_an_active_backup_bond_under_a_bridge(edit_snapshot: Any) -> None:
    path = bonded_bridge(edit_snapshot, None)  # the mode netlink reported
    finding = one(run_checks(path, ("NET008",)), "NET008", "iface:bond0")
    assert (finding.status, finding.message) == (
        "pass",
        "bond0 (active-backup) suits the bridge br0",
    )
    assert finding.evidence["mode_from"] == "netlink"


@pytest.mark.parametrize(
    ("number", "mode", "status"),
    [
        (0, "balance-rr", "fail"),
        (1, "active-backup", "pass"),
        (2, "balance-xor", "pass"),
        (3, "broadcast", "pass"),
        (4, "802.3ad", "pass"),
        (5, "balance-tlb", "fail"),
        (6, "balance-alb", "fail"),
    ],
)
def test_net008_judges_every_bond_mode_netlink_can_report(
    edit_snapshot: Any, number: int, mode: str, status: str
) -> None:
    """The real bond's rows with IFLA_BOND_MODE set to each mode number the kernel defines
    (no /proc/net/bonding: the mode comes from netlink); a guest uses the bridge."""
    path = bonded_bridge(edit_snapshot, None)
    rows = json.loads((path / "netlink/host/links.json").read_text())
    row(rows, "bond0")["attrs"]["IFLA_LINKINFO"]["attrs"]["IFLA_INFO_DATA"]["attrs"][
        "IFLA_BOND_MODE"
    ] = number
    (path / "netlink/host/links.json").write_text(json.dumps(rows))
    finding = one(run_checks(path, ("NET008",)), "NET008", "iface:bond0")
    assert finding.evidence["mode"] == mode
    assert finding.status == status


NET009_EXPECTED = {
    "insights__balance-rr__bond0.txt": ("pass", "2 slaves up"),
    "insights__balance-xor_layer2+3__bond0.txt": ("pass", "2 slaves up"),
    "insights__active-backup__bond0.txt": ("pass", "2 slaves up"),
    "insights__active-backup_arp-monitor__bond0.txt": ("pass", "2 slaves up"),
    "marktaguiad__balance-alb_kernel-6.8__bond0.txt": ("pass", "2 slaves up"),
    "baixiaozhou__802.3ad_partner-negotiated_2x100G__bond0.txt": (
        "pass",
        "2 slaves up; LACP partner 3c:c7:86:87:8a:21",
    ),
    "telegraf__active-backup_primary_slave-down.txt": (
        "warn",
        "1 of 2 slaves down (eth3): no redundancy left",
    ),
    "insights__802.3ad_no-partner_slave-down__bond0.txt": (
        "fail",
        "802.3ad: no LACP partner (partner MAC 00:00:00:00:00:00): the switch ports do not speak LACP",
    ),
    "blackmetalz__802.3ad_no-partner_slave-mii-down__bond0.txt": (
        "fail",
        "802.3ad: no LACP partner (partner MAC 00:00:00:00:00:00): the switch ports do not speak LACP",
    ),
    "telegraf__802.3ad_no-active-aggregator.txt": (
        "fail",
        "802.3ad: the bond has no active aggregator",
    ),
}


@pytest.mark.parametrize("capture", sorted(NET009_EXPECTED))
def test_net009_on_every_real_bonding_capture(edit_snapshot: Any, capture: str) -> None:
    status, text = NET009_EXPECTED[capture]
    finding = one(
        run_checks(bonded_bridge(edit_snapshot, capture), ("NET009",)), "NET009", "iface:bond0"
    )
    assert finding.status == status
    assert finding.message.split(": ", 1)[1].startswith(text), finding.message
    assert finding.evidence["bonding"]["source"] == "/proc/net/bonding/bond0"


def test_net009_reports_slaves_outside_the_active_aggregator(edit_snapshot: Any) -> None:
    path = bonded_bridge(edit_snapshot, "insights__802.3ad_no-partner_slave-down__bond0.txt")
    finding = one(run_checks(path, ("NET009",)), "NET009", "iface:bond0")
    assert finding.status == "fail"  # no partner: the worst, shown in the message
    assert finding.evidence["problems"] == [
        "1 of 2 slaves down (enp0s8): no redundancy left",
        "802.3ad: no LACP partner (partner MAC 00:00:00:00:00:00): the switch ports do not speak LACP",
        "802.3ad: not in the active aggregator 1: enp0s8 (aggregator 2)",
    ]


def test_net009_reads_netlink_bond_data_without_proc(edit_snapshot: Any) -> None:
    finding = one(
        run_checks(bonded_bridge(edit_snapshot, None), ("NET009",)), "NET009", "iface:bond0"
    )
    assert (finding.status, finding.message) == (
        "pass",
        "bond0 (active-backup, from netlink): 2 slaves up",
    )


# --- NET010 duplicate-mac -----------------------------------------------------------------------


def test_net010_passes_a_guest_with_a_unique_unicast_mac(edit_snapshot: Any) -> None:
    path = host(
        edit_snapshot, links=lab_rows("guest/links.json"), domains=(guest(GUEST_LIVE, active=True),)
    )
    finding = one(run_checks(path, ("NET010",)), "NET010", "domain:kd-cap-guest")
    assert (finding.status, finding.message) == ("pass", "1 MAC(s) unique and unicast")


def test_net010_warns_of_one_mac_on_two_interfaces_of_a_defined_domain() -> None:
    """libvirt 9.0 and QEMU 7.2 on the lab define and start such a domain (two `ethernet`
    NICs, one MAC): a warning, not a failure; the finding points at the second interface."""
    nic = "<interface type='network'><mac address='52:54:00:aa:bb:cc'/><source network='n'/></interface>"
    xml = f"<domain type='kvm'><name>kd-two-nics</name><devices>{nic}{nic}</devices></domain>"
    dom = parse_domain(xml, active=False, persistent=True, origin="test")
    (finding,) = [f for f in duplicate_mac(Domains((dom,), "test")) if f.subject.startswith("mac:")]
    assert finding.status == "warn"
    assert finding.message == (
        "MAC 52:54:00:aa:bb:cc is used by 2 interfaces: domain:kd-two-nics interface 1 "
        "(defined), domain:kd-two-nics interface 2 (defined)"
    )
    # read as lint reads a file, it points at the interface to change
    linted = parse_domain(xml, active=False, persistent=True, origin="t", file="kd.xml")
    (shared,) = [f for f in duplicate_mac(Domains((linted,), "t")) if f.subject.startswith("mac:")]
    assert shared.location is not None
    assert shared.location.element == "/domain/devices/interface[2]"


def test_net010_fails_two_running_guests_with_one_mac_and_warns_for_a_defined_clone(
    edit_snapshot: Any,
) -> None:
    path = host(
        edit_snapshot,
        links=lab_rows("guest/links.json"),
        domains=(
            guest(GUEST_LIVE, active=True),
            guest(GUEST_LIVE, name="kd-twin", active=True),
            guest(name="kd-clone"),
        ),
    )
    found = run_checks(path, ("NET010",))
    shared = one(found, "NET010", "mac:52:54:00:8e:d6:ee")
    assert shared.status == "fail"  # two of them run
    assert shared.message == (
        "MAC 52:54:00:8e:d6:ee is used by 3 interfaces: domain:kd-cap-guest interface 1 "
        "(running), domain:kd-twin interface 1 (running), domain:kd-clone interface 1 (defined)"
    )
    assert shared.evidence["domain"] == "kd-clone"  # the one to change: a defined clone
    # one finding for the shared cause: none per domain for it
    assert {f.subject for f in found["NET010"]} == {"mac:52:54:00:8e:d6:ee"}


def test_net010_does_not_pair_user_mode_nics_which_are_segments_of_their_own(
    edit_snapshot: Any,
) -> None:
    """Two guests whose type='user' NICs carry one MAC (QEMU's slirp: a network of its own in
    each guest) share nothing; a bridged NIC beside one of them does not either."""
    user = f"<interface type='user'><mac address='{GUEST_MAC}'/><model type='virtio'/></interface>"
    path = host(
        edit_snapshot,
        links=lab_rows("guest/links.json"),
        domains=(
            guest(name="kd-user-a", interface=user),
            guest(name="kd-user-b", interface=user),
            guest(name="kd-bridged"),  # its bridge NIC has the same MAC
        ),
    )
    found = run_checks(path, ("NET010",))
    assert {f.subject: f.status for f in found["NET010"]} == {
        "domain:kd-user-a": "pass",
        "domain:kd-user-b": "pass",
        "domain:kd-bridged": "pass",
    }


def test_net010_warns_when_only_a_defined_clone_shares_the_mac(edit_snapshot: Any) -> None:
    path = host(
        edit_snapshot,
        links=lab_rows("guest/links.json"),
        domains=(guest(GUEST_LIVE, active=True), guest(name="kd-clone")),
    )
    found = run_checks(path, ("NET010",))
    assert one(found, "NET010", "mac:52:54:00:8e:d6:ee").status == "warn"


def test_net010_fails_a_guest_mac_that_a_host_interface_has(edit_snapshot: Any) -> None:
    links = with_row(lab_rows("bridges/links.json"), "kdve9", IFLA_ADDRESS=GUEST_MAC)
    path = host(edit_snapshot, links=links, domains=(guest(),))
    finding = one(run_checks(path, ("NET010",)), "NET010", "domain:kd-cap-guest")
    assert finding.status == "fail"
    assert "is also the host interface kdve9's" in finding.message


def test_net010_fails_a_tap_that_carries_its_guests_mac(edit_snapshot: Any) -> None:
    links = with_row(lab_rows("guest/links.json"), "vnet3", IFLA_ADDRESS=GUEST_MAC)
    path = host(edit_snapshot, links=links, domains=(guest(GUEST_LIVE, active=True),))
    finding = one(run_checks(path, ("NET010",)), "NET010", "domain:kd-cap-guest")
    assert finding.status == "fail"
    assert (
        "its tap vnet3 carries the guest's own MAC 52:54:00:8e:d6:ee (libvirt sets fe:54:00:8e:d6:ee)"
        in finding.message
    )


def test_net010_fails_a_multicast_mac_and_a_malformed_one(edit_snapshot: Any) -> None:
    multicast = guest(GUEST_DEF.replace(GUEST_MAC, "53:54:00:8e:d6:ee"), name="kd-multicast")
    malformed = kdnet.domain_entry(realdata(RHEL_DEFINED), active=False)  # aa:ss:bb:ff:ee:mm
    path = host(edit_snapshot, links=[], domains=(multicast, malformed))
    found = run_checks(path, ("NET010",))
    assert (
        "MAC 53:54:00:8e:d6:ee is multicast" in one(found, "NET010", "domain:kd-multicast").message
    )
    bad = one(found, "NET010", "domain:rhel7.4")
    assert bad.status == "fail" and "aa:ss:bb:ff:ee:mm is not a valid MAC" in bad.message


def test_net010_stays_linear_for_a_host_with_thousands_of_guests() -> None:
    """One dictionary pass: the work for 2,000 domains with 4 NICs each (8,000 MACs, two of them
    shared) is about four times the work for 500, not sixteen."""
    template = parse_domain(GUEST_DEF, active=True, persistent=True, origin="libvirt")
    nic = template.interfaces[0]

    def make(count: int) -> Domains:
        items = []
        for d in range(count):
            nics = tuple(
                replace(nic, mac=f"52:54:{d >> 16:02x}:{(d >> 8) & 255:02x}:{d & 255:02x}:{n:02x}")
                for n in range(4)
            )
            items.append(replace(template, name=f"kd-{d}", interfaces=nics))
        items[-1] = replace(items[-1], interfaces=items[0].interfaces)  # one clone
        return Domains(tuple(items), "libvirt test")

    links = Links(tuple(links_from_netlink(lab_rows("guest/links.json"))), "netlink")
    work = {}
    for count in (500, 2000):
        domains = make(count)
        results: list[Any] = []
        work[count] = lines_executed(
            lambda doms=domains, out=results: out.extend(duplicate_mac(doms, links))
        )
        failing = [f for f in results if f.status != "pass"]
        assert [f.subject for f in failing] == [f"mac:52:54:00:00:00:0{n}" for n in range(4)]
        assert {tuple(f.evidence["domains"]) for f in failing} == {("kd-0", f"kd-{count - 1}")}
        assert len(results) == count - 2 + 4
    # 4x the guests: linear work grows 4x, pairwise comparison 16x.
    assert work[2000] / work[500] < 6, work


def test_net010_reports_thousands_of_guests_on_one_mac_in_one_bounded_finding() -> None:
    """2,000 guests sharing one MAC: one finding of bounded size naming how many, not 2,000
    findings that each list the other 1,999 (a 600 MB report)."""
    template = parse_domain(GUEST_DEF, active=True, persistent=True, origin="libvirt")
    items = tuple(replace(template, name=f"kd-{d}") for d in range(2000))
    results = list(duplicate_mac(Domains(items, "libvirt test"), None))
    (finding,) = results
    assert finding.subject == f"mac:{GUEST_MAC}" and finding.status == "fail"
    assert finding.evidence["count"] == 2000 and finding.evidence["domains_count"] == 2000
    assert len(finding.evidence["owners"]) == 50
    assert finding.message.endswith("and 1995 more")
    assert len(json.dumps(finding.as_dict())) < 10_000


# --- NET011 libvirt-network-inactive ------------------------------------------------------------


def test_net011_passes_a_domain_on_an_active_network(edit_snapshot: Any) -> None:
    path = host(
        edit_snapshot,
        links=[],
        domains=(kdnet.domain_entry(realdata(Q35_RUNNING), active=True),),
        networks=[network(DEFAULT_NET, active=True, autostart=True)],
    )
    (finding,) = run_checks(path, ("NET011",))["NET011"]
    assert (finding.status, finding.message) == (
        "pass",
        "interface 1 (52:54:00:01:a7:85): network 'default' is active",
    )


def test_net011_fails_a_running_domain_and_warns_a_defined_one_on_an_inactive_network(
    edit_snapshot: Any,
) -> None:
    """The recorded host's own `default` network is defined and inactive."""
    path = host(
        edit_snapshot,
        links=[],
        domains=(
            kdnet.domain_entry(realdata(Q35_RUNNING), active=True),
            kdnet.domain_entry(realdata(RHEL_DEFINED), active=False),
        ),
    )
    found = {f.subject: f for f in run_checks(path, ("NET011",))["NET011"]}
    running = next(f for s, f in found.items() if s != "domain:rhel7.4")
    assert running.status == "fail"
    assert "Requested operation is not valid: network 'default' is not active" in running.message
    defined = found["domain:rhel7.4"]
    assert defined.status == "warn" and "the domain will not start" in defined.message
    assert defined.evidence["interfaces"][0]["autostart"] is False


def test_net011_fails_an_autostarted_domain_on_an_inactive_network(edit_snapshot: Any) -> None:
    """It does not run now, but it will fail to start at the next boot."""
    entry = {**kdnet.domain_entry(realdata(RHEL_DEFINED), active=False), "autostart": True}
    path = host(edit_snapshot, links=[], domains=(entry,))
    finding = one(run_checks(path, ("NET011",)), "NET011", "domain:rhel7.4")
    assert finding.status == "fail"
    assert "autostarted: at the next boot" in finding.message


def test_an_autostart_link_in_libvirts_files_marks_the_domain_autostarted(tmp_path: Path) -> None:
    from doctor.facts import FactContext
    from doctor.sources.live import LiveSource

    tree = tmp_path / "tree"
    (tree / "etc/libvirt/qemu/autostart").mkdir(parents=True)
    (tree / "etc/libvirt/qemu/rhel7.4.xml").write_text(realdata(RHEL_DEFINED))
    (tree / "etc/libvirt/qemu/autostart/rhel7.4.xml").symlink_to("/etc/libvirt/qemu/rhel7.4.xml")
    (dom,) = FactContext(LiveSource(str(tree))).get("domains").items
    assert dom.autostart is True


def test_net011_fails_a_domain_on_a_network_that_does_not_exist(edit_snapshot: Any) -> None:
    nic = (
        "<interface type='network'><source network='kd-missing'/><model type='virtio'/></interface>"
    )
    path = host(edit_snapshot, links=[], domains=(guest(interface=nic),))
    finding = one(run_checks(path, ("NET011",)), "NET011", "domain:kd-cap-guest")
    assert finding.status == "fail"
    assert "Network not found: no network with matching name 'kd-missing'" in finding.message


# --- NET012 nat-masquerade-missing ----------------------------------------------------------------


def test_net012_passes_when_libvirts_masquerade_rules_cover_the_subnet(edit_snapshot: Any) -> None:
    path = host(edit_snapshot, links=[], networks=[network(KD_NAT)], commands=firewall("libvirt"))
    finding = one(run_checks(path, ("NET012",)), "NET012", "network:kd-nat")
    assert finding.status == "pass"
    assert finding.message.startswith("kd-nat: 198.51.100.0/24 is masqueraded (nft:")
    assert len(finding.evidence["198.51.100.0/24"]) == 6  # 3 rules, seen by nft and iptables-save


def test_net012_fails_when_a_reload_flushed_libvirts_nat_chain(edit_snapshot: Any) -> None:
    path = host(
        edit_snapshot, links=[], networks=[network(KD_NAT)], commands=firewall("masquerade-flushed")
    )
    finding = one(run_checks(path, ("NET012",)), "NET012", "network:kd-nat")
    assert finding.status == "fail"
    assert "no MASQUERADE or SNAT rule covers 198.51.100.0/24" in finding.message


def test_net012_on_the_real_libvirt_only_host_covers_the_default_network(
    edit_snapshot: Any,
) -> None:
    path = host(
        edit_snapshot,
        links=[],
        networks=[network(DEFAULT_NET)],
        commands={
            "iptables-save": realdata(
                "firewall/lkml-todorovac__iptables-save__libvirt-only-almalinux_filter-chains-empty.txt"
            )
        },
    )
    finding = one(run_checks(path, ("NET012",)), "NET012", "network:default")
    assert finding.status == "pass" and "-A LIBVIRT_PRT -s 192.168.122.0/24" in finding.message


# --- all of them on the recorded host -------------------------------------------------------------


def test_on_the_recorded_lab_host_every_net_check_passes(host_snapshot: Path) -> None:
    """The lab machine: no bridge, no bond, no domain, the default network inactive, no
    firewall rules, ip_forward 0 (nothing needs it)."""
    found = run_checks(host_snapshot, ("NET",))
    assert sorted(found) == [f"NET{n:03d}" for n in range(1, 13)]
    assert {code: [(f.subject, f.status) for f in items] for code, items in found.items()} == {
        f"NET{n:03d}": [("host", "pass")] for n in range(1, 13)
    }
    assert one(found, "NET003").message == "no Linux bridge on this host"
    assert one(found, "NET012").evidence["views"] == ["nft", "iptables-save", "ip6tables-save"]


def test_without_network_answers_net_checks_skip_with_the_reason(edit_snapshot: Any) -> None:
    snap = edit_snapshot()
    for request in ("links", "addresses"):
        snap.drop("netlink", request=request)
    for argv in (["nft", "-j", "list", "ruleset"], ["iptables-save"], ["ip6tables-save"]):
        snap.drop("command", argv=argv)
    found = run_checks(snap.save(), ("NET",))
    statuses = {code: {f.status for f in items} for code, items in found.items()}
    assert statuses["NET001"] == statuses["NET009"] == statuses["NET012"] == {"skip"}
    assert "not recorded in the snapshot" in one(found, "NET001").message
    assert statuses["NET011"] == {"pass"}  # domains and networks were recorded
