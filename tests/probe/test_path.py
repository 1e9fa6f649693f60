"""Path discovery on netlink answers written as pyroute2 gives them (plain dicts), for what
this lab's kernel cannot make: a bond and a VLAN under the uplink, a macvtap guest. The
kernel's `route get` is a stand-in function here; tests/probe/test_probe_lab.py discovers
real paths."""

from __future__ import annotations

from typing import Any, Optional

import pytest

from doctor.facts import FactContext, FactUnavailable
from doctor.facts.domains import Domain, Domains, Interface
from doctor.probe.path import RouteAnswer, from_domain, from_netns
from doctor.probe.predict import predict
from doctor.sources.base import NotFound, Unavailable


def link(index: int, name: str, kind: Optional[str] = None, **attrs: Any) -> dict[str, Any]:
    info: dict[str, Any] = {}
    if kind:
        info["IFLA_INFO_KIND"] = kind
    for key in ("IFLA_INFO_DATA", "IFLA_INFO_SLAVE_KIND", "IFLA_INFO_SLAVE_DATA"):
        if key in attrs:
            info[key] = attrs.pop(key)
    base = {"IFLA_IFNAME": name, "IFLA_OPERSTATE": "UP", "IFLA_CARRIER": 1, "IFLA_MTU": 1500}
    return {
        "index": index,
        "flags": 1,
        "attrs": {**base, **attrs, "IFLA_LINKINFO": {"attrs": info}},
    }


def addr(index: int, address: str, prefixlen: int) -> dict[str, Any]:
    return {"index": index, "prefixlen": prefixlen, "attrs": {"IFA_LOCAL": address}}


class Source:
    """Netlink answers per namespace; everything else is unavailable."""

    kind = "live"

    def __init__(
        self, links: dict[Optional[str], list[Any]], addresses: dict[Optional[str], list[Any]]
    ) -> None:
        self.links = links
        self.addresses = addresses

    def netlink(self, request: str, netns: Optional[str] = None) -> list[dict[str, Any]]:
        if request == "links":
            return self.links[netns]
        if request == "addresses":
            return self.addresses.get(netns, [])
        return []

    def read_file(self, path: str, **kw: Any) -> bytes:
        raise NotFound(path, "not in this test")

    def run(self, argv: Any, **kw: Any) -> Any:
        raise Unavailable(" ".join(argv), "no commands in this test")

    def __getattr__(self, name: str) -> Any:
        raise Unavailable(name, "not in this test")


class Facts(FactContext):
    def __init__(self, source: Any, domains: Optional[Domains] = None) -> None:
        super().__init__(source)
        self.domains = domains

    def get(self, name: str) -> Any:
        if name == "domains" and self.domains is not None:
            return self.domains
        if name == "firewall":
            raise FactUnavailable("not in this test")
        return super().get(name)


def test_a_vlan_on_a_bond_under_the_uplink_is_followed_and_an_unsuited_bond_mode_is_predicted() -> (
    None
):
    guest = [link(1, "lo"), link(2, "eth0", "veth", IFLA_LINK=5, IFLA_ADDRESS="02:6b:64:00:00:02")]
    host = [
        link(1, "lo"),
        link(2, "bond0", "bond", IFLA_INFO_DATA={"attrs": {"IFLA_BOND_MODE": 0}}),
        link(3, "bond0.100", "vlan", IFLA_LINK=2, IFLA_INFO_DATA={"attrs": {"IFLA_VLAN_ID": 100}}),
        link(4, "br0", "bridge", IFLA_INFO_DATA={"attrs": {"IFLA_BR_STP_STATE": 0}}),
        link(5, "vethg", "veth", IFLA_LINK=2, IFLA_MASTER=4, IFLA_INFO_SLAVE_KIND="bridge",
             IFLA_INFO_SLAVE_DATA={"attrs": {"IFLA_BRPORT_STATE": 3}}),
    ]  # fmt: skip
    source = Source(
        {"kdg": guest, None: host},
        {
            "kdg": [addr(2, "198.51.100.2", 24)],
            None: [addr(4, "198.51.100.1", 24), addr(3, "203.0.113.1", 24)],
        },
    )

    def route_get(dst: str, *, src: Any = None, iif: Any = None, netns: Any = None) -> RouteAnswer:
        if netns:
            return RouteAnswer(
                dst, type="unicast", oif="eth0", gateway="198.51.100.1", prefsrc="198.51.100.2"
            )
        return RouteAnswer(
            dst, src, iif, "unicast", "br0" if dst.startswith("198.51") else "bond0.100"
        )

    path = from_netns(Facts(source), "kdg", "203.0.113.2", route_get=route_get)
    assert [(h.role, h.name) for h in path.hops] == [
        ("guest-nic", "eth0"),
        ("veth-peer", "vethg"),
        ("bridge", "br0"),
        ("uplink", "bond0.100"),
        ("lower", "bond0"),
    ]
    assert path.hops[-1].bond_mode == "balance-rr"
    found = [(p.hop, p.cause, p.playbook) for p in predict(path)]
    assert ("bond0", "bond-mode", "bond-mode-unsuited-for-bridge") in found


def test_a_macvtap_guest_cannot_reach_its_hosts_address_on_the_lower_device() -> None:
    host = [
        link(1, "lo"),
        link(2, "eth1"),
        link(7, "macvtap0", "macvtap", IFLA_LINK=2, IFLA_ADDRESS="52:54:00:6b:64:07",
             IFLA_INFO_DATA={"attrs": {"IFLA_MACVLAN_MODE": 4}}),
    ]  # fmt: skip
    source = Source({None: host}, {None: [addr(2, "198.51.100.1", 24)]})
    nic = Interface(
        "direct", "52:54:00:6b:64:07", {"dev": "eth1", "mode": "bridge"}, "macvtap0", "virtio", None
    )
    dom = Domain("kdmv", None, "kvm", True, True, "libvirt", interfaces=(nic,))
    facts = Facts(source, Domains((dom,), "libvirt test"))

    def route_get(dst: str, **kw: Any) -> RouteAnswer:
        raise AssertionError("a macvtap guest is not routed by its host")

    path = from_domain(facts, "kdmv", "198.51.100.1", route_get=route_get)
    assert [(h.role, h.name) for h in path.hops] == [("tap", "macvtap0"), ("lower", "eth1")]
    assert path.hops[0].macvlan_mode == "bridge"
    [item] = predict(path)
    assert (item.hop, item.cause, item.playbook) == (
        "macvtap0",
        "macvtap-host",
        "macvtap-host-isolation",
    )
    # Another address on that network is fine.
    assert predict(from_domain(facts, "kdmv", "198.51.100.9", route_get=route_get)) == []


def test_a_guests_address_comes_from_libvirts_leases_before_its_arp_view() -> None:
    from doctor.probe.path import address_from_libvirt

    mac = "52:54:00:6B:64:01"
    answer = {
        "lease": {
            "interfaces": [
                {"name": "vnet0", "hwaddr": "52:54:00:6b:64:02", "addrs": []},
                {
                    "name": "vnet1",
                    "hwaddr": "52:54:00:6b:64:01",
                    "addrs": [
                        {"addr": "2001:db8::7", "prefix": 64, "type": 1},
                        {"addr": "198.51.100.77", "prefix": 24, "type": 0},
                    ],
                },
            ]
        },
        "arp": {
            "interfaces": [
                {
                    "name": "vnet1",
                    "hwaddr": "52:54:00:6b:64:01",
                    "addrs": [{"addr": "198.51.100.78", "prefix": 0, "type": 0}],
                }
            ]
        },
    }
    assert address_from_libvirt(answer, mac) == ("198.51.100.77", "libvirt lease")
    no_lease = {"lease": {"error": "no leases"}, "arp": answer["arp"]}
    assert address_from_libvirt(no_lease, mac) == ("198.51.100.78", "libvirt arp")
    assert address_from_libvirt({"lease": {"interfaces": []}}, mac) is None


@pytest.mark.parametrize("proto, port", [("icmp", None), ("udp", 53), ("tcp", 22)])
def test_the_frame_a_guest_sends_carries_the_marks_the_captures_look_for(
    proto: str, port: Optional[int]
) -> None:
    from doctor.probe.capture import Marker, classify
    from doctor.probe.inject import guest_frame

    marker = Marker(proto, b"kvmdoctor-probe:0123", "203.0.113.2", port=port,
                    guest_mac="52:54:00:6b:64:01", tcp_base=4000)  # fmt: skip
    frame = guest_frame(marker, "52:54:00:6b:64:01", "02:6b:64:00:00:01", "198.51.100.77", 2)
    assert frame[:6] == bytes.fromhex("026b64000001")  # to the next hop
    assert frame[6:12] == bytes.fromhex("5254006b6401")  # from the guest's own MAC
    found = classify(frame, marker)
    assert found == {"direction": "request", "seq": 2, "src": "198.51.100.77", "dst": "203.0.113.2"}
    other = Marker(proto, b"kvmdoctor-probe:9999", "203.0.113.2", port=port, tcp_base=8000)
    assert classify(frame, other) is None  # another run's packet is not this run's
