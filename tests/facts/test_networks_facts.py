"""The networks fact: libvirt's network XML as libvirt wrote it (definitions and status files
recorded on the lab), from the connection and from the files when the daemon is down."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest

from doctor.facts import FactContext, FactUnavailable
from doctor.facts.networks import Networks, parse_network

from kdnet import lab_capture
from kdtest import HOST_SNAPSHOT

DEFAULT_XML = (HOST_SNAPSHOT / "libvirt" / "networks" / "default.xml").read_text()


def parse(xml: str, **state: Any) -> Any:
    options = {"active": False, "persistent": True, "autostart": False, "origin": "test"}
    return parse_network(xml, **{**options, **state})


def test_libvirts_default_network_is_nat_on_virbr0_with_its_subnet() -> None:
    net = parse(DEFAULT_XML)
    assert (net.name, net.forward_mode, net.bridge, net.stp, net.delay) == (
        "default",
        "nat",
        "virbr0",
        "on",
        "0",
    )
    assert net.subnets() == ["192.168.122.0/24"]
    assert net.libvirt_bridge and not net.uses_macvtap


def test_a_status_file_is_read_through_its_networkstatus_wrapper() -> None:
    net = parse(lab_capture("nat/run-libvirt-network__kd-nat.xml"), active=True)
    assert (net.name, net.forward_mode, net.bridge) == ("kd-nat", "nat", "kdvbr0")
    assert net.subnets() == ["198.51.100.0/24"]


def test_a_host_bridge_network_and_an_isolated_one() -> None:
    host = parse(lab_capture("nat/etc-libvirt-qemu-networks__kd-host.xml"))
    iso = parse(lab_capture("nat/etc-libvirt-qemu-networks__kd-iso.xml"))
    assert (host.forward_mode, host.bridge, host.libvirt_bridge) == ("bridge", "kdbrh", False)
    assert (iso.forward_mode, iso.bridge, iso.libvirt_bridge, iso.ips) == (None, "kdvbr1", True, ())


@pytest.mark.parametrize(
    ("ip", "subnet"),
    [
        ("<ip address='10.1.2.1'/>", "10.0.0.0/8"),  # libvirt's classful default
        ("<ip address='172.16.5.1'/>", "172.16.0.0/16"),
        ("<ip address='203.0.113.1' prefix='25'/>", "203.0.113.0/25"),
        ("<ip family='ipv6' address='2001:db8::1' prefix='64'/>", "2001:db8::/64"),
    ],
)
def test_subnets_from_netmask_prefix_or_libvirts_default(ip: str, subnet: str) -> None:
    net = parse(f"<network><name>kd</name><forward/>{ip}</network>")
    assert net.forward_mode == "nat"  # <forward/> without a mode is NAT
    assert [i.subnet for i in net.ips] == [subnet]


def test_a_macvtap_network_names_its_devices() -> None:
    """libvirt's "direct" network form (formatnetwork.html#using-a-macvtap-direct-connection)."""
    net = parse(
        "<network><name>kd-macvtap</name><forward mode='bridge'>"
        "<interface dev='eth0'/><interface dev='eth1'/></forward></network>"
    )
    assert net.uses_macvtap and net.forward_interfaces == ("eth0", "eth1")


def test_networks_from_the_libvirt_connection(facts: Callable[..., FactContext]) -> None:
    from doctor.sources.snapshot import SnapshotSource

    networks: Networks = facts(SnapshotSource(str(HOST_SNAPSHOT))).get("networks")
    assert networks.origin == "libvirt qemu:///system"
    (default,) = networks.items
    assert (default.name, default.active, default.autostart, default.origin) == (
        "default",
        False,
        False,
        "libvirt",
    )


@pytest.fixture
def libvirt_tree(make_tree: Callable[..., Path]) -> Path:
    """libvirt's files as the lab's daemon wrote them: three definitions, two status files,
    kd-nat autostarted (libvirt's autostart link points at the definition)."""
    tree = make_tree(
        {
            "/etc/libvirt/qemu/networks/kd-nat.xml": lab_capture(
                "nat/etc-libvirt-qemu-networks__kd-nat.xml"
            ),
            "/etc/libvirt/qemu/networks/kd-iso.xml": lab_capture(
                "nat/etc-libvirt-qemu-networks__kd-iso.xml"
            ),
            "/etc/libvirt/qemu/networks/autostart/": None,
            "/run/libvirt/network/kd-nat.xml": lab_capture("nat/run-libvirt-network__kd-nat.xml"),
            "/run/libvirt/network/kd-host.xml": lab_capture("nat/run-libvirt-network__kd-host.xml"),
            "/run/libvirt/network/kd-nat.pid": "4242\n",
        }
    )
    os.symlink(
        "/etc/libvirt/qemu/networks/kd-nat.xml",
        tree / "etc/libvirt/qemu/networks/autostart/kd-nat.xml",
    )
    return tree


def test_without_a_daemon_networks_come_from_definitions_and_status_files(
    libvirt_tree: Path, facts: Callable[..., FactContext]
) -> None:
    networks: Networks = facts(libvirt_tree).get("networks")
    assert networks.origin == "definition and status files"
    state = {n.name: (n.active, n.persistent, n.autostart, n.origin) for n in networks.items}
    assert state == {
        "kd-nat": (True, True, True, "/run/libvirt/network/kd-nat.xml"),
        "kd-iso": (False, True, False, "/etc/libvirt/qemu/networks/kd-iso.xml"),
        # a status file without a definition: a transient network
        "kd-host": (True, False, False, "/run/libvirt/network/kd-host.xml"),
    }


def test_a_tree_without_libvirt_files_has_no_networks_fact(
    make_tree: Callable[..., Path], facts: Callable[..., FactContext]
) -> None:
    with pytest.raises(FactUnavailable, match="/etc/libvirt/qemu/networks"):
        facts(make_tree({"/etc/hostname": "x\n"})).get("networks")


def test_an_unparsable_definition_is_a_problem_not_a_crash(
    make_tree: Callable[..., Path], facts: Callable[..., FactContext]
) -> None:
    tree = make_tree(
        {
            "/etc/libvirt/qemu/networks/kd-broken.xml": "<network><name>kd-broken",
            "/etc/libvirt/qemu/networks/default.xml": DEFAULT_XML,
        }
    )
    networks: Networks = facts(tree).get("networks")
    assert [n.name for n in networks.items] == ["default"]
    assert networks.problems and "kd-broken.xml" in networks.problems[0]
