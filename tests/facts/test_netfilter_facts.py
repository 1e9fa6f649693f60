"""The sysctl and firewall facts: systemd-sysctl's precedence on trees, runtime values per
network namespace, iptables-save on real captures, nft JSON and iptables-save recorded where
libvirt wrote its rules, and rulesets made here with nft and iptables-legacy."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from doctor.facts import FactContext, FactUnavailable
from doctor.facts.netfilter import (
    Firewall,
    Sysctls,
    config_files,
    parse_iptables_save,
    parse_nft_json,
    parse_sysctl_conf,
)

from kdnet import LAB_CAPTURE, SUFFIX, Netns, lab_capture
from kdtest import REALDATA, require

FIREWALL = REALDATA / "firewall"
DOCKER_LIBVIRT = "pradeepgadde__iptables-save__docker-libvirt-kubeadm-flannel_ubuntu20.04.txt"
LIBVIRT_ONLY = "lkml-todorovac__iptables-save__libvirt-only-almalinux_filter-chains-empty.txt"
LIBVIRT_ONLY6 = "lkml-todorovac__ip6tables-save__libvirt-only-almalinux.txt"
SYSCTL = LAB_CAPTURE / "sysctl"


# --- sysctl: systemd-sysctl's order ------------------------------------------------------------


def test_config_files_are_ordered_by_name_and_etc_hides_the_same_name_elsewhere() -> None:
    files = config_files(
        {
            "/etc/sysctl.d": ["50-net.conf", "README.sysctl"],
            "/run/sysctl.d": ["60-run.conf", "50-net.conf"],
            "/usr/lib/sysctl.d": ["50-net.conf", "10-vendor.conf", "99-protect-links.conf"],
        }
    )
    assert files == [
        "/usr/lib/sysctl.d/10-vendor.conf",
        "/etc/sysctl.d/50-net.conf",
        "/run/sysctl.d/60-run.conf",
        "/usr/lib/sysctl.d/99-protect-links.conf",
    ]


def test_debians_own_sysctl_conf_sets_nothing_although_it_mentions_ip_forward() -> None:
    text = (SYSCTL / "debian12__etc-sysctl.conf").read_text()
    assert "#net.ipv4.ip_forward=1" in text
    assert parse_sysctl_conf(text, "/etc/sysctl.conf") == []
    pid_max = parse_sysctl_conf(
        (SYSCTL / "debian12__usr-lib-sysctl.d__50-pid-max.conf").read_text(), "x"
    )
    assert [(s.key, s.value) for s in pid_max] == [("kernel.pid_max", "4194304")]


def test_sysctl_conf_syntax_slashes_semicolons_dashes_and_globs() -> None:
    text = "; a comment\n-net/ipv4/ip_forward = 1\nnet.ipv4.conf.*.rp_filter=2\n"
    settings = parse_sysctl_conf(text, "/etc/sysctl.d/x.conf")
    assert [(s.key, s.value, s.line) for s in settings] == [
        ("net.ipv4.ip_forward", "1", 2),
        ("net.ipv4.conf.*.rp_filter", "2", 3),
    ]


def test_persisted_value_names_the_winning_file_and_what_it_overrides(
    make_tree: Callable[..., Path], facts: Callable[..., FactContext]
) -> None:
    tree = make_tree(
        {
            "/usr/lib/sysctl.d/50-pid-max.conf": (
                SYSCTL / "debian12__usr-lib-sysctl.d__50-pid-max.conf"
            ).read_text(),
            "/usr/lib/sysctl.d/30-net.conf": "net.ipv4.ip_forward = 1\n",  # hidden by /etc's
            "/etc/sysctl.d/30-net.conf": "net.ipv4.ip_forward = 1\nnet.ipv4.conf.*.rp_filter = 2\n",
            "/run/sysctl.d/90-hardening.conf": "net.ipv4.ip_forward = 0\n",
            "/etc/sysctl.conf": (SYSCTL / "debian12__etc-sysctl.conf").read_text(),
        }
    )
    values: Sysctls = facts(tree).get("sysctl")
    forward = values.get("net.ipv4.ip_forward")
    assert (forward.persisted, forward.persisted_in) == ("0", "/run/sysctl.d/90-hardening.conf:1")
    assert forward.overridden == ("/etc/sysctl.d/30-net.conf:1 = 1",)
    assert values.get("net.ipv4.conf.all.rp_filter").persisted == "2"  # through the glob
    assert values.files == (
        "/etc/sysctl.d/30-net.conf",
        "/usr/lib/sysctl.d/50-pid-max.conf",
        "/run/sysctl.d/90-hardening.conf",
        "/etc/sysctl.conf",
    )
    assert "holds no /proc" in (forward.runtime_error or "")


def test_etc_sysctl_conf_comes_last_and_debians_link_to_it_is_read_once(
    make_tree: Callable[..., Path], facts: Callable[..., FactContext]
) -> None:
    tree = make_tree(
        {
            "/etc/sysctl.conf": "net.ipv4.ip_forward = 0\n",
            "/etc/sysctl.d/95-forward.conf": "net.ipv4.ip_forward = 1\n",
            "/proc/sys/net/ipv4/ip_forward": "1\n",
        }
    )
    os.symlink("../sysctl.conf", tree / "etc/sysctl.d/99-sysctl.conf")
    values: Sysctls = facts(tree).get("sysctl")
    forward = values.get("net.ipv4.ip_forward")
    assert (forward.runtime, forward.persisted, forward.persisted_in) == (
        "1",
        "0",
        "/etc/sysctl.conf:1",
    )
    assert forward.overridden == ("/etc/sysctl.d/95-forward.conf:1 = 1",)
    assert values.files == ("/etc/sysctl.d/95-forward.conf", "/etc/sysctl.conf")


def test_a_missing_bridge_sysctl_means_br_netfilter_is_not_loaded(
    make_tree: Callable[..., Path], facts: Callable[..., FactContext]
) -> None:
    tree = make_tree({"/proc/sys/net/ipv4/ip_forward": "0\n", "/etc/sysctl.d/": None})
    values: Sysctls = facts(tree).get("sysctl")
    assert values.br_netfilter is False
    assert values.get("net.ipv4.ip_forward").runtime == "0"


def test_sysctl_is_unavailable_with_neither_proc_nor_configuration(
    make_tree: Callable[..., Path], facts: Callable[..., FactContext]
) -> None:
    with pytest.raises(FactUnavailable, match="no sysctl could be read"):
        facts(make_tree({"/etc/hostname": "x\n"})).get("sysctl")


@pytest.mark.integration
def test_runtime_values_are_the_namespaces_own() -> None:
    """kvmdoctor run inside a namespace (ip netns exec) reads that namespace's /proc/sys."""
    require(os.geteuid() == 0, "root (network namespaces)")
    with Netns(f"kdsysctl{SUFFIX}") as ns:
        ns.sysctl("net.ipv4.ip_forward", "1")
        ns.sysctl("net.bridge.bridge-nf-call-iptables", "0")
        inside = _fact_in(ns, "sysctl")
    assert inside["values"]["net.ipv4.ip_forward"]["runtime"] == "1"
    assert inside["values"]["net.bridge.bridge-nf-call-iptables"]["runtime"] == "0"
    with open("/proc/sys/net/ipv4/ip_forward") as handle:  # the machine's own is untouched
        assert handle.read().strip() == "0"


def _fact_in(ns: Netns, name: str, extra: str = "") -> Any:
    """A fact computed by a kvmdoctor process inside the namespace, as JSON."""
    code = (
        "import json; from doctor.facts import FactContext; "
        "from doctor.sources.live import LiveSource; "
        f"value = FactContext(LiveSource()).get({name!r}); {extra}"
        "print(json.dumps(value.as_dict()))"
    )
    done = ns.run([sys.executable, "-c", code])
    return json.loads(done.stdout)


# --- iptables-save, real captures -----------------------------------------------------------


def test_iptables_save_of_a_docker_and_libvirt_host() -> None:
    rules = parse_iptables_save((FIREWALL / DOCKER_LIBVIRT).read_text())
    forward = rules.chain("ip", "filter", "FORWARD")
    assert forward is not None and (forward.hook, forward.policy) == ("forward", "ACCEPT")
    assert len(forward.rules) == 14
    assert rules.backend is None  # iptables 1.8.4 does not say nf_tables or legacy
    assert rules.header == "Generated by iptables-save v1.8.4 on Mon Apr  4 22:19:25 2022"
    first = forward.rules[0]
    assert first.target == "KUBE-FORWARD"
    assert [m.field for m in first.matches] == []  # a comment is no condition


def test_libvirt_bridge_traffic_is_accepted_by_libvirts_fwx_even_behind_docker_chains() -> None:
    rules = parse_iptables_save((FIREWALL / DOCKER_LIBVIRT).read_text())
    verdict = rules.verdict("forward", ("ip",), "virbr0", "virbr0")
    assert verdict is not None and verdict.verdict == "accept"
    assert verdict.by == "LIBVIRT_FWX: -A LIBVIRT_FWX -i virbr0 -o virbr0 -j ACCEPT"
    assert verdict.path == ("ip/filter/FORWARD", "LIBVIRT_FWX")
    # KUBE-FORWARD's mark and conntrack rules accept only some of it:
    assert any("--ctstate RELATED,ESTABLISHED" in c for c in verdict.conditional)


def test_docker_isolation_rules_do_not_decide_for_another_bridge() -> None:
    rules = parse_iptables_save((FIREWALL / DOCKER_LIBVIRT).read_text())
    verdict = rules.verdict("forward", ("ip",), "br0", "br0")
    assert verdict is not None and verdict.by == "policy ACCEPT of ip/filter/FORWARD"


def test_masquerade_rules_reachable_from_postrouting_with_their_sources() -> None:
    rules = parse_iptables_save((FIREWALL / DOCKER_LIBVIRT).read_text())
    found = {(r.source, r.source_negated, r.rule.chain) for r in rules.nat_rules(("ip",))}
    assert found == {
        ("172.17.0.0/16", False, "POSTROUTING"),
        (None, False, "POSTROUTING"),  # -o eth0 -j MASQUERADE: any source
        ("10.244.0.0/16", False, "POSTROUTING"),
        ("10.244.0.0/16", True, "POSTROUTING"),
        (None, False, "KUBE-POSTROUTING"),
        ("192.168.122.0/24", False, "LIBVIRT_PRT"),
    }


def test_a_libvirt_only_host_whose_filter_chains_are_empty_still_masquerades() -> None:
    rules = parse_iptables_save((FIREWALL / LIBVIRT_ONLY).read_text())
    nat = [r for r in rules.nat_rules(("ip",)) if r.covers("192.168.122.0/24")]
    assert [r.path for r in nat] == [("POSTROUTING", "LIBVIRT_PRT")] * 3
    assert not any(r.covers("198.51.100.0/24") for r in nat)
    fwx = rules.chain("ip", "filter", "LIBVIRT_FWX")
    assert fwx is not None and fwx.rules == () and fwx.hook is None


def test_ip6tables_save_is_the_ip6_family() -> None:
    rules = parse_iptables_save((FIREWALL / LIBVIRT_ONLY6).read_text(), "ip6tables-save")
    forward = rules.chain("ip6", "filter", "FORWARD")
    assert forward is not None and [r.target for r in forward.rules] == [
        "LIBVIRT_FWX",
        "LIBVIRT_FWI",
        "LIBVIRT_FWO",
    ]


# --- nft -j and iptables-save where libvirt wrote its rules (lab capture) --------------------


@pytest.mark.parametrize(
    ("stem", "guest_bridge", "host_bridge", "masqueraded"),
    [
        ("libvirt", "accept", "accept", True),
        ("forward-drop", "accept", "drop", True),
        ("masquerade-flushed", "accept", "accept", False),
    ],
)
def test_nft_and_iptables_views_of_one_ruleset_agree(
    stem: str, guest_bridge: str, host_bridge: str, masqueraded: bool
) -> None:
    nft = parse_nft_json(lab_capture(f"nat/{stem}__nft-j-list-ruleset.json"))
    ipt = parse_iptables_save(lab_capture(f"nat/{stem}__iptables-save.txt"))
    assert ipt.backend == "nf_tables"
    for view, families in ((nft, ("ip", "inet")), (ipt, ("ip",))):
        nat_bridge = view.verdict("forward", families, "kdvbr0", "kdvbr0")
        other = view.verdict("forward", families, "kdbrh", "kdbrh")
        assert nat_bridge is not None and other is not None
        assert (nat_bridge.verdict, other.verdict) == (guest_bridge, host_bridge), view.tool
        covered = any(r.covers("198.51.100.0/24") for r in view.nat_rules(families))
        assert covered is masqueraded, view.tool


def test_nft_json_shows_iptables_nft_targets_as_xt_expressions() -> None:
    nft = parse_nft_json(lab_capture("nat/libvirt__nft-j-list-ruleset.json"))
    fwi = nft.chain("ip", "filter", "LIBVIRT_FWI")
    assert fwi is not None
    assert [r.target for r in fwi.rules] == ["ACCEPT", "REJECT"]
    assert fwi.rules[0].text == (
        'oifname "kdvbr0" ip daddr 198.51.100.0/24 xt match conntrack counter accept'
    )
    assert nft.header == "nftables 1.0.6 (json_schema_version 1)"


def test_a_drop_names_the_policy_and_the_rules_that_only_accept_some() -> None:
    ipt = parse_iptables_save(lab_capture("nat/forward-drop__iptables-save.txt"))
    verdict = ipt.verdict("forward", ("ip",), "kdbrh", "kdbrh")
    assert verdict is not None
    assert (verdict.verdict, verdict.by) == ("drop", "policy DROP of ip/filter/FORWARD")


# --- rulesets made here ----------------------------------------------------------------------

NFT_RULESET = """
table inet kdfilter {
    chain forward {
        type filter hook forward priority 0; policy drop;
        ct state established,related accept
        iifname "kdbr*" oifname "kdbr*" accept
        iifname "kdguest0" jump kdguests
    }
    chain kdguests {
        ip saddr 203.0.113.0/24 return
        drop
    }
}
table ip kdnat {
    chain postrouting {
        type nat hook postrouting priority 100; policy accept;
        ip saddr 203.0.113.0/24 ip daddr != 203.0.113.0/24 masquerade
    }
}
"""


@pytest.fixture
def rules_ns(tmp_path: Path) -> Any:
    require(os.geteuid() == 0, "root (network namespaces)")
    with Netns(f"kdrules{SUFFIX}") as ns:
        path = tmp_path / "kd.nft"
        path.write_text(NFT_RULESET)
        ns.run(["nft", "-f", str(path)])
        yield ns


@pytest.mark.integration
def test_a_native_nft_ruleset_made_here(rules_ns: Netns) -> None:
    nft = parse_nft_json(rules_ns.run(["nft", "-j", "list", "ruleset"]).stdout)
    inet = ("ip", "inet")
    bridged = nft.verdict("forward", inet, "kdbr0", "kdbr0")
    assert bridged is not None and bridged.verdict == "accept"
    assert bridged.by == 'forward: iifname "kdbr*" oifname "kdbr*" accept'
    assert bridged.conditional == ("forward: ct state { established, related } accept",)
    other = nft.verdict("forward", inet, "br0", "br0")
    assert other is not None and other.by == "policy DROP of inet/kdfilter/forward"
    guest = nft.verdict("forward", inet, "kdguest0", "eth0")
    assert guest is not None and (guest.verdict, guest.by) == ("drop", "kdguests: drop")
    assert guest.conditional == (
        "forward: ct state { established, related } accept",
        "kdguests: ip saddr 203.0.113.0/24 return (returns for some)",
    )
    assert guest.path == ("inet/kdfilter/forward", "kdguests")
    (masq,) = nft.nat_rules(inet)
    assert masq.covers("203.0.113.0/24") and not masq.covers("198.51.100.0/24")


@pytest.mark.integration
def test_the_firewall_fact_inside_a_namespace_also_reads_legacy_tables(rules_ns: Netns) -> None:
    """iptables-legacy rules are invisible to nft; iptables-save (nft) warns about them and the
    fact then reads iptables-legacy-save too."""
    require(_which("iptables-legacy"), "iptables-legacy (Debian package iptables)")
    rules_ns.run(["iptables-legacy", "-P", "FORWARD", "DROP"])
    rules_ns.run(["iptables", "-A", "FORWARD", "-i", "kdbr0", "-o", "kdbr0", "-j", "ACCEPT"])
    code = (
        "import json; from doctor.facts import FactContext; from doctor.sources.live import "
        "LiveSource; fw = FactContext(LiveSource()).get('firewall'); "
        "print(json.dumps({v.tool: [v.backend, v.warnings, "
        "(v.verdict('forward', ('ip', 'inet') if v.tool == 'nft' else ('ip',), 'kdbr0', 'kdbr0')"
        " or None) and v.verdict('forward', ('ip', 'inet') if v.tool == 'nft' else ('ip',), "
        "'kdbr0', 'kdbr0').by] for v in fw.views}))"
    )
    views = json.loads(rules_ns.run([sys.executable, "-c", code]).stdout)
    assert set(views) == {"nft", "iptables-save", "ip6tables-save", "iptables-legacy-save"}
    assert views["iptables-save"][0] == "nf_tables"
    assert any("iptables-legacy tables present" in w for w in views["iptables-save"][1])
    assert views["iptables-legacy-save"][0] == "legacy"
    assert views["iptables-legacy-save"][2] == "policy DROP of ip/filter/FORWARD"
    assert views["iptables-save"][2] == "FORWARD: -A FORWARD -i kdbr0 -o kdbr0 -j ACCEPT"


def _which(name: str) -> bool:
    import shutil

    return shutil.which(name) is not None


def test_no_firewall_view_at_all_is_unavailable_with_each_reason(
    make_tree: Callable[..., Path], facts: Callable[..., FactContext]
) -> None:
    with pytest.raises(FactUnavailable) as raised:
        facts(make_tree({"/etc/hostname": "x\n"})).get("firewall")
    assert "nft: only files are read under --root" in raised.value.reason
    assert "iptables-save:" in raised.value.reason


def test_the_lab_snapshot_host_has_empty_rulesets(edit_snapshot: Any) -> None:
    """On the lab machine itself nothing filters: every view answers, with no chains."""
    from doctor.sources.snapshot import SnapshotSource

    from kdnet import set_command

    snap = edit_snapshot()
    set_command(
        snap,
        ["nft", "-j", "list", "ruleset"],
        '{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}]}\n',
    )
    set_command(snap, ["iptables-save"], "")
    set_command(snap, ["ip6tables-save"], "")
    fw: Firewall = FactContext(SnapshotSource(str(snap.save()))).get("firewall")
    assert [(v.tool, v.chains) for v in fw.views] == [
        ("nft", ()),
        ("iptables-save", ()),
        ("ip6tables-save", ()),
    ]
    assert fw.errors == {}


def test_a_guests_own_source_address_decides_libvirts_nat_forward_rules() -> None:
    """libvirt's LIBVIRT_FWO accepts only its network's sources and rejects the rest: for the
    whole class of traffic out of virbr0 the rejection decides, for a guest's own address the
    acceptance does."""
    rules = parse_iptables_save((FIREWALL / DOCKER_LIBVIRT).read_text())
    whole = rules.verdict("forward", ("ip",), "virbr0", "eth0")
    assert whole is not None and whole.verdict == "drop"
    assert (
        whole.by
        == "LIBVIRT_FWO: -A LIBVIRT_FWO -i virbr0 -j REJECT --reject-with icmp-port-unreachable"
    )
    guest = rules.verdict(
        "forward", ("ip",), "virbr0", "eth0", saddr="192.168.122.50", daddr="198.51.100.9"
    )
    assert guest is not None and guest.verdict == "accept"
    assert guest.by == "LIBVIRT_FWO: -A LIBVIRT_FWO -s 192.168.122.0/24 -i virbr0 -j ACCEPT"
    stranger = rules.verdict(
        "forward", ("ip",), "virbr0", "eth0", saddr="198.51.100.7", daddr="198.51.100.9"
    )
    assert stranger is not None and stranger.verdict == "drop"
