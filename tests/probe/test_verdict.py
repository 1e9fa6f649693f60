"""Predictions and verdicts on paths written by hand: no host, no packets."""

from __future__ import annotations

from dataclasses import replace

from doctor.probe.path import Counters, Forwarding, Guest, Hop, Path, RouteAnswer
from doctor.probe.predict import predict
from doctor.probe.trace import drops, parse_reasons
from doctor.probe.verdict import DropEvent, Observations, located, predicted, translation

GUEST = Guest("netns", "kdpg", "kdg0", "02:6b:64:00:00:02", ("198.51.100.2/24",), "198.51.100.1")
HOPS = (
    Hop("guest-nic", "kdg0", netns="kdpg", operstate="up", carrier=True, mtu=1500),
    Hop(
        "veth-peer",
        "kdv0",
        operstate="up",
        carrier=True,
        mtu=1500,
        master="kdbr0",
        port_state="forwarding",
    ),
    Hop("bridge", "kdbr0", operstate="up", carrier=True, mtu=1500, addresses=("198.51.100.1/24",)),
    Hop("uplink", "kdu0", operstate="up", carrier=True, mtu=1500, addresses=("203.0.113.1/24",)),
)
NAT = ({"view": "nft", "rule": "masquerade"},)


def path(*, route: RouteAnswer | None = None, hops: tuple[Hop, ...] = HOPS, **fwd: object) -> Path:
    route = route or RouteAnswer("203.0.113.2", "198.51.100.2", 2, "unicast", "kdu0")
    options = {"ip_forward": "1", "nat_rules": NAT, "nat_known": True, **fwd}
    return Path(GUEST, "203.0.113.2", hops, Forwarding("kdbr0", route, **options))  # type: ignore[arg-type]


def seen(upto: int, direction: str = "request") -> dict[str, dict[str, int]]:
    names = [h.name for h in HOPS]
    order = names if direction == "request" else list(reversed(names))
    out = {n: {"request": 3, "reply": 0} for n in names}
    for n in order[:upto]:
        out[n][direction] = 3
    if direction == "request":
        for n in order[upto:]:
            out[n]["request"] = 0
    return out


def test_a_healthy_path_predicts_nothing_and_passes() -> None:
    p = path()
    assert predict(p) == []
    assert [f.status for f in predicted(p, [])] == ["pass"]
    obs = Observations("icmp", 3, {h.name: {"request": 3, "reply": 3} for h in HOPS})
    assert [f.status for f in located(p, [], obs)] == ["pass"]


def test_ip_forward_off_is_predicted_at_the_forwarding_step_from_route_get() -> None:
    p = path(
        route=RouteAnswer("203.0.113.2", "198.51.100.2", 2, error="EHOSTUNREACH"), ip_forward="0"
    )
    [item] = predict(p)
    assert (item.hop, item.cause, item.reason, item.playbook) == (
        "forward",
        "ip-forward-off",
        "IP_INADDRERRORS",
        "ip-forward-disabled",
    )
    [finding] = predicted(p, [item])
    assert (
        finding.subject == "iface:kdbr0" and finding.evidence["playbook"] == "ip-forward-disabled"
    )


def test_route_errors_name_their_causes() -> None:
    for error, cause in (
        ("ENETUNREACH", "no-route"),
        ("EINVAL", "rp-filter"),
        ("EXDEV", "rp-filter"),
    ):
        p = path(route=RouteAnswer("203.0.113.2", "198.51.100.2", 2, error=error))
        assert [x.cause for x in predict(p)] == [cause]


def test_port_state_link_state_mtu_and_neighbour_are_predicted_on_their_hops() -> None:
    hops = (
        HOPS[0],
        replace(HOPS[1], port_state="listening"),
        replace(HOPS[2], mtu=1400),
        replace(HOPS[3], carrier=False, operstate="lowerlayerdown"),
    )
    neigh = {"ip": "203.0.113.2", "state": "failed"}
    causes = {(x.hop, x.cause) for x in predict(path(hops=hops, neighbour=neigh))}
    assert causes == {
        ("kdv0", "port-not-forwarding"),
        ("kdbr0", "mtu-mismatch"),
        ("kdu0", "link-down"),
        ("kdu0", "neighbour-failed"),
    }


def test_a_missing_masquerade_is_predicted_for_a_private_guest_subnet() -> None:
    [item] = predict(path(nat_rules=()))
    assert (item.hop, item.cause, item.playbook) == (
        "kdu0",
        "nat-missing",
        "nat-masquerade-missing",
    )


def test_br_netfilter_drop_between_guests_on_one_bridge() -> None:
    p = Path(
        GUEST,
        "198.51.100.3",
        HOPS[:3],
        Forwarding(
            "kdbr0",
            RouteAnswer("198.51.100.3", "198.51.100.2", 2, "unicast", "kdbr0"),
            bridge_nf_call_iptables="1",
            bridge_verdict={"view": "nft", "by": "policy DROP"},
        ),
        target_on_bridge=True,
    )
    [item] = predict(p)
    assert (item.hop, item.cause, item.playbook) == (
        "kdbr0",
        "bridge-netfilter-drop",
        "bridge-netfilter-drops-guests",
    )


def test_the_drop_lies_between_the_last_hop_that_saw_it_and_the_first_that_did_not() -> None:
    p = path(
        route=RouteAnswer("203.0.113.2", "198.51.100.2", 2, error="EHOSTUNREACH"), ip_forward="0"
    )
    obs = Observations(
        "icmp", 3, seen(3), drops=(DropEvent("IP_INADDRERRORS", "ip_error", "kdbr0"),)
    )
    [finding] = located(p, predict(p), obs)
    e = finding.evidence
    assert (e["direction"], e["last_seen"], e["first_missing"]) == ("request", "kdbr0", "kdu0")
    assert (e["cause"], e["reason"], e["confidence"]) == (
        "ip-forward-off",
        "IP_INADDRERRORS",
        "high",
    )
    assert e["playbook"] == "ip-forward-disabled" and finding.status == "fail"


def test_a_kernel_reason_without_a_prediction_still_names_the_cause() -> None:
    obs = Observations(
        "icmp", 3, seen(3), drops=(DropEvent("NETFILTER_DROP", "nft_do_chain", "kdbr0"),)
    )
    [finding] = located(path(), [], obs)
    assert (finding.evidence["cause"], finding.evidence["confidence"]) == ("forward-drop", "medium")


def test_a_reply_that_never_returns_with_an_untranslated_source_is_blamed_on_nat() -> None:
    p = path(nat_rules=())
    counts = {h.name: {"request": 3, "reply": 0} for h in HOPS}
    obs = Observations("icmp", 3, counts, sources={"kdu0": ["198.51.100.2"]})
    [finding] = located(p, predict(p), obs)
    assert (finding.evidence["direction"], finding.evidence["cause"]) == ("reply", "nat-missing")
    [nat] = translation(p, obs)
    assert nat.status == "fail" and nat.evidence["playbook"] == "nat-masquerade-missing"


def test_counter_drops_are_reported_at_the_hop() -> None:
    obs = Observations("icmp", 3, seen(3), counters={"kdu0": Counters(0, 0, 0, 3)})
    [finding] = located(path(), [], obs)
    assert finding.evidence["counters"] == {
        "kdu0": {"rx_packets": 0, "tx_packets": 0, "rx_dropped": 0, "tx_dropped": 3}
    }


FORMAT = 'print fmt: "skbaddr=%p reason: %s", REC->skbaddr, __print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, { 12, "NETFILTER_DROP" }, { 119, "BRIDGE_INGRESS_STP_STATE" })'


def test_reason_names_come_from_the_format_file() -> None:
    assert parse_reasons(FORMAT) == {
        2: "NOT_SPECIFIED",
        12: "NETFILTER_DROP",
        119: "BRIDGE_INGRESS_STP_STATE",
    }


def test_drops_are_joined_with_the_device_the_packet_was_last_seen_on() -> None:
    lines = [
        "  <idle>-0  [001] ..s2.  100.1: netif_receive_skb: dev=kdv0 skbaddr=00000000aa len=84",
        "  <idle>-0  [001] ..s2.  100.2: netif_receive_skb: dev=kdbr0 skbaddr=00000000aa len=84",
        "  <idle>-0  [001] ..s2.  100.3: kfree_skb: skbaddr=00000000aa rx_sk=0000000000000000 protocol=2048 location=nft_do_chain+0x45c/0x6b0 [nf_tables] reason: NETFILTER_DROP",
        "  <idle>-0  [001] ..s2.  100.4: kfree_skb: skbaddr=00000000bb rx_sk=0000000000000000 protocol=2048 location=ip_rcv+0x1/0x2 reason: NETFILTER_DROP",
        "  <idle>-0  [001] ..s2.  100.5: kfree_skb: skbaddr=00000000aa rx_sk=0000000000000000 protocol=2048 location=x+0x1 reason: NOT_SPECIFIED",
    ]
    assert drops(lines, ["kdv0", "kdbr0"]) == [
        DropEvent("NETFILTER_DROP", "nft_do_chain", "kdbr0", "0x0800", 1)
    ]


def test_the_marker_recognises_the_runs_packets_and_their_answers() -> None:
    from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror
    from scapy.layers.l2 import ARP, Ether

    from doctor.probe.capture import PROBE_PORT, Marker, classify
    from doctor.probe.inject import arp_request, echo_request, tcp_syn

    token = b"kvmdoctor-probe:0011223344556677"
    eth = Ether(src="02:6b:64:00:00:02", dst="02:6b:64:00:00:01")
    icmp = Marker("icmp", token, "203.0.113.2")
    request = bytes(
        eth / IP(src="198.51.100.2", dst="203.0.113.2", proto=1) / echo_request(2, token)
    )
    assert classify(request, icmp) == {
        "direction": "request",
        "seq": 2,
        "src": "198.51.100.2",
        "dst": "203.0.113.2",
    }
    other = Marker("icmp", b"kvmdoctor-probe:ffffffffffffffff", "203.0.113.2")
    assert classify(request, other) is None  # another run's packet

    udp = Marker("udp", token, "203.0.113.2", port=9)
    sent = bytes(
        eth
        / IP(src="198.51.100.2", dst="203.0.113.2")
        / UDP(sport=PROBE_PORT, dport=9)
        / (token + b":1")
    )
    assert classify(sent, udp)["direction"] == "request"  # type: ignore[index]
    closed = bytes(
        eth / IP(src="203.0.113.2", dst="198.51.100.2") / ICMP(type=3, code=3)
        / IPerror(src="198.51.100.2", dst="203.0.113.2") / UDPerror(sport=PROBE_PORT, dport=9)
    )  # fmt: skip
    assert classify(closed, udp)["direction"] == "reply"  # type: ignore[index]

    tcp = Marker("tcp", token, "203.0.113.2", port=9, tcp_base=1000)
    syn = bytes(eth / IP(tcp_syn(tcp, "198.51.100.2", 3)))
    assert classify(syn, tcp)["seq"] == 3  # type: ignore[index]
    rst = bytes(
        eth
        / IP(src="203.0.113.2", dst="198.51.100.2")
        / TCP(sport=9, dport=PROBE_PORT, flags="RA", ack=1004)
    )
    assert classify(rst, tcp) == {
        "direction": "reply",
        "seq": 3,
        "src": "203.0.113.2",
        "dst": "198.51.100.2",
    }

    arp = Marker("arp", token, "198.51.100.1", guest_mac="02:6b:64:00:00:02")
    who_has = arp_request("02:6b:64:00:00:02", None, "198.51.100.1", token, 1)
    assert classify(who_has, arp)["seq"] == 1  # type: ignore[index]
    is_at = bytes(
        Ether(dst="02:6b:64:00:00:02") / ARP(op=2, psrc="198.51.100.1", hwdst="02:6b:64:00:00:02")
    )
    assert classify(is_at, arp)["direction"] == "reply"  # type: ignore[index]
