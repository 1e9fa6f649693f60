"""The links fact: netlink dumps recorded on the lab and made live in a namespace, the
/sys/class/net fallback on the kernel's own files, /proc/net/bonding on every real capture, and
bonds and macvtap devices (which this kernel cannot make) from rows derived from real `ip -d
link` captures."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Callable

import pytest

from doctor.facts import FactContext, FactUnavailable
from doctor.facts.links import Link, Links, links_from_netlink, parse_proc_bonding
from doctor.sources.live import LiveSource
from doctor.sources.snapshot import SnapshotSource

import kdnet
from kdnet import DERIVED, LAB_CAPTURE, NET_FIXTURES, Netns, derived_rows, lab_rows
from kdtest import KERNEL_LACKS, REALDATA, require

BONDING = REALDATA / "bonding"


def lab_links() -> Links:
    rows = links_from_netlink(lab_rows("bridges/links.json"), lab_rows("bridges/addresses.json"))
    return Links(tuple(rows), "netlink")


# --- netlink, as recorded on the lab ---------------------------------------------------------


def test_netlink_links_name_kinds_masters_and_port_states_as_the_kernel_reported() -> None:
    links = lab_links()
    summary = {
        link.name: (link.kind, link.master, link.port.state if link.port else None)
        for link in links.items
    }
    assert summary == {
        "lo": (None, None, None),
        "kdbr0": ("bridge", None, None),
        "kdve0": ("veth", "kdbr0", "forwarding"),
        "kdve0p": ("veth", None, None),
        "kdtap0": ("tap", "kdbr0", "disabled"),
        "kdbr1": ("bridge", None, None),
        "kdve1": ("veth", "kdbr1", "listening"),
        "kdve1p": ("veth", None, None),
        "kdbr2": ("bridge", None, None),
        "kdve2": ("veth", "kdbr2", "disabled"),
        "kdve2p": ("veth", None, None),
        "kdve9": ("veth", None, None),
        "kdve9p": ("veth", None, None),
    }


def test_netlink_bridges_carry_stp_state_and_forward_delay_in_seconds() -> None:
    links = lab_links()
    stp = links.get("kdbr1")
    plain = links.get("kdbr0")
    assert stp is not None and stp.bridge is not None
    assert (stp.bridge.stp, stp.bridge.forward_delay) == (True, 15.0)
    assert plain is not None and plain.bridge is not None
    assert plain.bridge.stp is False


def test_netlink_links_carry_state_carrier_mac_and_addresses() -> None:
    links = lab_links()
    kdbr0, kdtap0, kdbr2 = links.get("kdbr0"), links.get("kdtap0"), links.get("kdbr2")
    assert kdbr0 is not None and kdtap0 is not None and kdbr2 is not None
    assert kdbr0.addresses is not None and "192.0.2.1/24" in kdbr0.addresses
    assert kdbr0.host_addresses() == ["192.0.2.1/24"]  # the link-local IPv6 one is not the host's
    assert (kdtap0.admin_up, kdtap0.carrier, kdtap0.operstate) == (True, False, "down")
    assert kdbr2.admin_up is False
    assert kdbr0.mac is not None and len(kdbr0.mac.split(":")) == 6


def test_a_veth_names_its_peer_as_lower_device() -> None:
    links = lab_links()
    kdve9 = links.get("kdve9")
    assert kdve9 is not None and kdve9.lower == "kdve9p"


# --- /sys/class/net, the kernel's own files --------------------------------------------------


@pytest.fixture
def sysfs_links(facts: Callable[..., FactContext]) -> Links:
    value: Links = facts(LAB_CAPTURE / "bridges" / "tree").get("links")
    return value


def test_without_netlink_links_come_from_sys_class_net_and_say_so(sysfs_links: Links) -> None:
    assert sysfs_links.origin == "/sys/class/net"
    assert any("netlink" in p and "--root" in p for p in sysfs_links.problems)


def test_sysfs_links_agree_with_netlink_on_masters_states_stp_and_macs(sysfs_links: Links) -> None:
    """The same namespace read both ways: what sysfs can tell must equal what netlink told."""
    netlink = lab_links()

    def facts_of(link: Link) -> tuple[Any, ...]:
        bridge = link.bridge
        return (
            link.master,
            link.port.state if link.port else None,
            (bridge.stp, bridge.forward_delay) if bridge else None,
            link.mac,
            link.mtu,
            link.admin_up,
            link.lower,
        )

    assert {link.name: facts_of(link) for link in sysfs_links.items} == {
        link.name: facts_of(link) for link in netlink.items
    }


def test_sysfs_tells_bridges_and_taps_but_not_veths(sysfs_links: Links) -> None:
    kinds = {link.name: link.kind for link in sysfs_links.items}
    assert kinds["kdbr0"] == "bridge"
    assert kinds["kdtap0"] == "tap"
    assert kinds["kdve0"] == "virtual"  # sysfs has no word for a veth
    assert all(link.addresses is None for link in sysfs_links.items)  # not in sysfs


# --- live, in a namespace made here ----------------------------------------------------------


@pytest.fixture
def lab_netns() -> Any:
    require(os.geteuid() == 0, "root (to make a network namespace)")
    with Netns(f"kdlinks{kdnet.SUFFIX}") as ns:
        with ns.ipr() as ipr:
            kdnet.bridge(ipr, "kdbrl", br_stp_state=1, br_forward_delay=400)
            kdnet.veth(ipr, "kdvel0", "kdvel1", master="kdbrl")
            kdnet.tap(ipr, "kdtapl", master="kdbrl", netns=ns.name)
        yield ns


@pytest.mark.integration
def test_live_links_of_a_namespace_through_live_source_netns(lab_netns: Netns) -> None:
    links: Links = FactContext(LiveSource(netns=lab_netns.name)).get("links")
    assert links.origin == "netlink" and links.netns == lab_netns.name
    port, tap_port = links.get("kdvel0"), links.get("kdtapl")
    assert port is not None and port.port is not None and tap_port is not None
    assert (port.master, port.port.state) == ("kdbrl", "listening")  # STP on: 4 s of listening
    assert (tap_port.kind, tap_port.master, tap_port.carrier) == ("tap", "kdbrl", False)
    assert links.get("eth0") is None  # the machine's own interfaces are not in there


@pytest.mark.integration
def test_a_missing_namespace_is_unavailable_and_is_not_created() -> None:
    require(os.geteuid() == 0, "root")
    ctx = FactContext(LiveSource(netns=f"kdnosuchns{kdnet.SUFFIX}"))
    with pytest.raises(FactUnavailable, match="no such network namespace"):
        ctx.get("links")
    assert not os.path.exists(f"/run/netns/kdnosuchns{kdnet.SUFFIX}")


# --- /proc/net/bonding: every real capture ---------------------------------------------------

BOND_CAPTURES = {
    # file: (mode, {slave: mii}, partner MAC of the active aggregator, no active aggregator)
    "insights__balance-rr__bond0.txt": ("balance-rr", {"eno1": "up", "eno2": "up"}, None, False),
    "insights__balance-xor_layer2+3__bond0.txt": (
        "balance-xor",
        {"eno1": "up", "eno2": "up"},
        None,
        False,
    ),
    "insights__active-backup__bond0.txt": (
        "active-backup",
        {"enp17s0f0": "up", "enp17s0f1": "up"},
        None,
        False,
    ),
    "insights__active-backup_arp-monitor__bond0.txt": (
        "active-backup",
        {"em3": "up", "p2p3": "up"},
        None,
        False,
    ),
    "insights__802.3ad_no-partner_slave-down__bond0.txt": (
        "802.3ad",
        {"enp0s9": "up", "enp0s8": "down"},
        "00:00:00:00:00:00",
        False,
    ),
    "blackmetalz__802.3ad_no-partner_slave-mii-down__bond0.txt": (
        "802.3ad",
        {"enp1s0f0": "down", "enp1s0f1": "up"},
        "00:00:00:00:00:00",
        False,
    ),
    "baixiaozhou__802.3ad_partner-negotiated_2x100G__bond0.txt": (
        "802.3ad",
        {"enp1s0f0": "up", "enp1s0f1": "up"},
        "3c:c7:86:87:8a:21",
        False,
    ),
    "marktaguiad__balance-alb_kernel-6.8__bond0.txt": (
        "balance-alb",
        {"enp5s0": "up", "eno1": "up"},
        None,
        False,
    ),
    "telegraf__802.3ad_no-active-aggregator.txt": (
        "802.3ad",
        {"eth1": "up", "eth2": "up"},
        None,
        True,
    ),
    "telegraf__active-backup_primary_slave-down.txt": (
        "active-backup",
        {"eth3": "down", "eth2": "up"},
        None,
        False,
    ),
}


def test_every_real_bonding_capture_has_an_expectation() -> None:
    assert sorted(p.name for p in BONDING.iterdir()) == sorted(BOND_CAPTURES)


@pytest.mark.parametrize("name", sorted(BOND_CAPTURES))
def test_proc_bonding_parser_reads_mode_slaves_and_partner(name: str) -> None:
    mode, slaves, partner, no_aggregator = BOND_CAPTURES[name]
    bond = parse_proc_bonding((BONDING / name).read_text(), f"/proc/net/bonding/{name}")
    assert bond.mode == mode
    assert {s.name: s.mii_status for s in bond.slaves} == slaves
    assert (bond.aggregator.partner_mac if bond.aggregator else None) == partner
    assert bond.no_active_aggregator is no_aggregator
    assert bond.mii_status == "up"


def test_proc_bonding_reads_lacp_details_per_slave_and_the_aggregator_they_joined() -> None:
    bond = parse_proc_bonding(
        (BONDING / "blackmetalz__802.3ad_no-partner_slave-mii-down__bond0.txt").read_text()
    )
    assert bond.aggregator is not None
    assert (bond.aggregator.id, bond.aggregator.ports, bond.aggregator.partner_negotiated) == (
        2,
        1,
        False,
    )
    down, up = bond.slaves
    assert (down.aggregator_id, down.speed, down.link_failures) == (1, "Unknown", 2)
    assert up.aggregator_id == 2
    assert up.partner is not None and up.partner.system_mac == "00:00:00:00:00:00"
    assert up.actor is not None and (up.actor.key, up.actor.port_state) == (9, 79)
    assert bond.lacp_rate == "fast" and bond.hash_policy == "layer3+4"


def test_proc_bonding_with_four_tab_aggregator_lines_is_read_like_the_kernels_one_tab() -> None:
    bond = parse_proc_bonding(
        (BONDING / "insights__802.3ad_no-partner_slave-down__bond0.txt").read_text()
    )
    assert bond.aggregator is not None and (bond.aggregator.id, bond.aggregator.actor_key) == (1, 9)


def test_proc_bonding_of_the_new_driver_header_and_the_active_slave() -> None:
    bond = parse_proc_bonding(
        (BONDING / "marktaguiad__balance-alb_kernel-6.8__bond0.txt").read_text()
    )
    assert bond.driver == "v6.8.0-90-generic"
    assert bond.active_slave == "eno1"


def test_proc_bonding_empty_permanent_address_is_none() -> None:
    bond = parse_proc_bonding(
        (BONDING / "telegraf__active-backup_primary_slave-down.txt").read_text()
    )
    assert [s.perm_mac for s in bond.slaves] == [None, None]


# --- bonds and macvtap from rows derived from real `ip -d link` text ------------------------


def _derive_module() -> Any:
    spec = importlib.util.spec_from_file_location("kd_derive", NET_FIXTURES / "derive.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_derived_fixtures_are_what_derive_py_makes_of_the_captures() -> None:
    outputs = _derive_module().outputs()
    assert sorted(outputs) == sorted(p.name for p in DERIVED.glob("*.json"))
    for name, text in outputs.items():
        assert (DERIVED / name).read_text() == text, f"{name} is stale: run derive.py"


@pytest.mark.parametrize("path", sorted(DERIVED.glob("*.json")), ids=lambda p: p.stem[:40])
def test_derived_rows_are_what_pyroute2_decodes(path: Path) -> None:
    """Each row, encoded as an RTM_NEWLINK message by pyroute2 and decoded again through
    kvmdoctor's netlink source, gives back the same attributes: names and types are
    pyroute2's, not invented."""
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    from doctor.sources.netlink import plain

    def nla(attrs: dict[str, Any]) -> list[Any]:
        return [
            (k, {"attrs": nla(v["attrs"])} if isinstance(v, dict) else v) for k, v in attrs.items()
        ]

    for row in json.loads(path.read_text()):
        msg = ifinfmsg()
        msg["index"] = row["index"]
        msg["flags"] = row["flags"]
        msg["attrs"] = nla(row["attrs"])
        msg.encode()
        decoded = ifinfmsg(msg.data)
        decoded.decode()
        assert plain(decoded)["attrs"] == row["attrs"]


def test_a_derived_active_backup_bond_has_its_mode_slaves_and_their_state() -> None:
    links = links_from_netlink(
        derived_rows("insights__ip-d-s-link__bond-active-backup-with-slaves")
    )
    bond = next(link for link in links if link.name == "bond0")
    assert bond.kind == "bond" and bond.bond is not None
    assert bond.bond.mode == "active-backup" and bond.bond.active_slave == "enp1s0"
    assert [(s.name, s.state, s.mii_status) for s in bond.bond.slaves] == [
        ("enp1s0", "active", "up"),
        ("enp2s0", "backup", "up"),
    ]


def test_derived_macvtap_devices_carry_their_mode() -> None:
    links = links_from_netlink(
        derived_rows("majorhayden__ip-d-link__libvirt-direct-macvtap-guests_2015")
    )
    assert {(link.name, link.kind, link.macvlan_mode) for link in links} == {
        ("macvtap1", "macvtap", "bridge"),
        ("macvtap2", "macvtap", "bridge"),
        ("macvtap3", "macvtap", "bridge"),
    }


def test_ovs_ports_are_slaves_of_ovs_system() -> None:
    links = Links(
        tuple(links_from_netlink(derived_rows("insights__ip-d-s-link__openvswitch-ports"))),
        "netlink",
    )
    eno1, br_ex = links.get("eno1"), links.get("br-ex")
    assert eno1 is not None and (eno1.master, eno1.slave_kind) == ("ovs-system", "openvswitch")
    assert br_ex is not None and br_ex.is_ovs


def test_a_bond_takes_proc_net_bonding_over_netlink_and_keeps_the_slave_roles(
    edit_snapshot: Any,
) -> None:
    """netlink rows of a real active-backup bond, /proc/net/bonding of the same host type with
    a slave down: the fact reads both and says which it used."""
    snap = edit_snapshot()
    kdnet.set_netlink(
        snap, "links", derived_rows("insights__ip-d-s-link__bond-active-backup-with-slaves")
    )
    kdnet.set_netlink(snap, "addresses", [])
    text = (BONDING / "insights__active-backup__bond0.txt").read_text()
    snap.set_file("/proc/net/bonding/bond0", text)
    links: Links = FactContext(SnapshotSource(str(snap.save()))).get("links")
    bond = links.get("bond0")
    assert bond is not None and bond.bond is not None
    assert bond.bond.source == "/proc/net/bonding/bond0"
    assert [s.name for s in bond.bond.slaves] == ["enp17s0f0", "enp17s0f1"]


def test_a_bond_is_read_live_where_the_kernel_has_bonding_else_from_derived_rows() -> None:
    """This kernel lacks bonding: that, and only that, is why the bond cases use rows derived
    from a real capture. On a kernel with bonding the same expectations hold for a live bond."""
    require(os.geteuid() == 0, "root (to try making a bond in a namespace)")
    reason = kdnet.kernel_lacks("bond")
    if reason is None:
        with Netns(f"kdbondlive{kdnet.SUFFIX}") as ns:
            with ns.ipr() as ipr:
                ipr.link("add", ifname="kdbond0", kind="bond", bond_mode=1)
                for name in ("kdbs0", "kdbs1"):
                    kdnet.veth(ipr, name, f"{name}p", up=False)
                    ipr.link(
                        "set", index=kdnet.index(ipr, name), master=kdnet.index(ipr, "kdbond0")
                    )
            links: Links = FactContext(LiveSource(netns=ns.name)).get("links")
        bond = links.get("kdbond0")
        slaves = ["kdbs0", "kdbs1"]
    else:
        assert KERNEL_LACKS in reason
        rows = derived_rows("insights__ip-d-s-link__bond-active-backup-with-slaves")
        bond = Links(tuple(links_from_netlink(rows)), "netlink").get("bond0")
        slaves = ["enp1s0", "enp2s0"]
    assert bond is not None and bond.bond is not None
    assert bond.bond.mode == "active-backup"
    assert [s.name for s in bond.bond.slaves] == slaves


def test_a_macvtap_is_read_live_where_the_kernel_has_it_else_from_derived_rows() -> None:
    require(os.geteuid() == 0, "root (to try making a macvtap in a namespace)")
    reason = kdnet.kernel_lacks("macvtap")
    if reason is None:
        with Netns(f"kdmacvtaplive{kdnet.SUFFIX}") as ns:
            with ns.ipr() as ipr:
                kdnet.veth(ipr, "kdmvl0", "kdmvl1")
                ipr.link(
                    "add",
                    ifname="kdmvt0",
                    kind="macvtap",
                    link=kdnet.index(ipr, "kdmvl0"),
                    macvtap_mode="bridge",
                )
            links: Links = FactContext(LiveSource(netns=ns.name)).get("links")
        device = links.get("kdmvt0")
        lower = "kdmvl0"
    else:
        assert KERNEL_LACKS in reason
        rows = derived_rows("gladiston__ip-d-link-show__macvtap0-bridge-mode_debian13")
        device = Links(tuple(links_from_netlink(rows)), "netlink").get("macvtap0")
        lower = None  # the capture does not show enp8s0 (derived/README.md)
    assert device is not None
    assert (device.kind, device.macvlan_mode, device.lower) == ("macvtap", "bridge", lower)
