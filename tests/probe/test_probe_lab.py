"""The fault matrix of shared/LAB.md in namespaces the test makes: kvmdoctor probe runs inside
the host namespace, sends marked ICMP as the guest namespace, and must name the hop, the
direction, the cause and (this kernel has them) the drop reason. Static predictions are
asserted separately: they must name the same place without sending."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kdnet import index, port_state
from kdtest import ROOT, require
from probelab import (
    BRIDGE,
    GATEWAY_NIC,
    GUEST2_IP,
    GUEST_NIC,
    PEER,
    PEER2,
    TAP,
    TAP_TARGET_IP,
    TARGET,
    UPLINK,
    ProbeLab,
)

pytestmark = pytest.mark.integration

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000


@pytest.fixture
def lab() -> Any:
    require(os.geteuid() == 0, "root (namespaces, nft, tracefs)")
    with ProbeLab() as made:
        yield made


SCHEMA = json.loads((ROOT / "docs" / "report.schema.json").read_text())


def findings(report: dict[str, Any], code: str) -> list[dict[str, Any]]:
    """The findings of `code`, once the report is checked against docs/report.schema.json."""
    import jsonschema

    jsonschema.validate(report, SCHEMA)
    return [f for c in report["checks"] if c["code"] == code for f in c["findings"]]


def located(lab: ProbeLab, *extra: str, to: str = TARGET) -> dict[str, Any]:
    code, report, err = lab.kvmdoctor(*lab.probe_args(*extra, to=to))
    assert report is not None, err
    assert code == 1, err
    [drop] = [f for f in findings(report, "PRB002") if f["status"] == "fail"]
    return drop["evidence"]


def predicted(lab: ProbeLab, to: str = TARGET) -> list[tuple[str, str]]:
    code, report, err = lab.kvmdoctor(*lab.probe_args("--static", to=to))
    assert report is not None, err
    return [
        (f["evidence"]["hop"], f["evidence"]["cause"])
        for f in findings(report, "PRB001")
        if f["status"] in ("warn", "fail")
    ]


def warm_up(lab: ProbeLab) -> None:
    """One healthy probe first: the guest knows its gateway's MAC, as a running guest does."""
    code, _, err = lab.kvmdoctor(*lab.probe_args("--count", "1"))
    assert code == 0, err


def test_healthy_path_passes_both_directions(lab: ProbeLab, tmp_path: Path) -> None:
    # How long it takes is bench/bench_probe.py's to measure (docs/performance.md), not a test's.
    code, report, err = lab.kvmdoctor(*lab.probe_args())
    assert code == 0, err
    assert report is not None
    [ok] = findings(report, "PRB002")
    assert ok["status"] == "pass"
    seen = ok["evidence"]["observations"]["seen"]
    assert all(seen[h] == {"request": 3, "reply": 3} for h in (GUEST_NIC, PEER, BRIDGE, UPLINK))
    [nat] = findings(report, "PRB003")
    assert nat["status"] == "pass" and "203.0.113.1" in nat["message"]
    # --output writes the same report to a file.
    out = tmp_path / "probe.json"
    code, _, err = lab.kvmdoctor(*lab.probe_args("--count", "1", "--output", str(out)))
    assert code == 0, err
    assert findings(json.loads(out.read_text()), "PRB002")[0]["status"] == "pass"


def test_nft_forward_drop(lab: ProbeLab) -> None:
    lab.nft(f'add rule ip kdfilter kdfwd oifname "{UPLINK}" drop')
    assert ("forward", "forward-drop") in predicted(lab)
    e = located(lab)
    assert (e["direction"], e["last_seen"], e["first_missing"]) == ("request", BRIDGE, UPLINK)
    assert (e["cause"], e["reason"], e["location"]) == (
        "forward-drop",
        "NETFILTER_DROP",
        "nft_do_chain",
    )


def test_ip_forward_off(lab: ProbeLab) -> None:
    lab.host.sysctl("net.ipv4.ip_forward", "0")
    assert predicted(lab) == [("forward", "ip-forward-off")]
    e = located(lab)
    assert (e["direction"], e["last_seen"], e["first_missing"]) == ("request", BRIDGE, UPLINK)
    assert (e["cause"], e["reason"], e["playbook"]) == (
        "ip-forward-off",
        "IP_INADDRERRORS",
        "ip-forward-disabled",
    )


def test_no_route(lab: ProbeLab) -> None:
    # 192.0.2.0/24 exists only inside the test's namespaces; the host namespace has no route.
    assert predicted(lab, to="192.0.2.99") == [("forward", "no-route")]
    e = located(lab, to="192.0.2.99")
    assert (e["direction"], e["last_seen"], e["first_missing"]) == ("request", BRIDGE, "forward")
    assert (e["cause"], e["reason"]) == ("no-route", "IP_INNOROUTES")


def test_stp_listening_port(lab: ProbeLab) -> None:
    warm_up(lab)
    with lab.host.ipr() as ipr:
        port_state(ipr, PEER, "listening")
    assert predicted(lab) == [(PEER, "port-not-forwarding")]
    e = located(lab)
    assert (e["direction"], e["last_seen"], e["first_missing"]) == ("request", PEER, BRIDGE)
    assert (e["cause"], e["reason"], e["playbook"]) == (
        "port-not-forwarding",
        "BRIDGE_INGRESS_STP_STATE",
        "bridge-port-not-forwarding",
    )


def test_strict_rp_filter_with_an_asymmetric_route(lab: ProbeLab) -> None:
    warm_up(lab)
    lab.host.run(["ip", "route", "add", "198.51.100.2/32", "dev", UPLINK])
    lab.host.sysctl("net.ipv4.conf.all.rp_filter", "1")
    lab.host.sysctl(f"net.ipv4.conf.{BRIDGE}.rp_filter", "1")
    assert predicted(lab) == [("forward", "rp-filter")]
    e = located(lab)
    assert (e["direction"], e["last_seen"], e["first_missing"]) == ("request", BRIDGE, UPLINK)
    assert (e["cause"], e["reason"]) == ("rp-filter", "IP_RPFILTER")


def test_nat_rule_removed(lab: ProbeLab) -> None:
    lab.nft("delete table ip kdnat")
    assert predicted(lab) == [(UPLINK, "nat-missing")]
    code, report, err = lab.kvmdoctor(*lab.probe_args())
    assert code == 1 and report is not None, err
    [drop] = findings(report, "PRB002")
    e = drop["evidence"]
    assert (e["direction"], e["last_seen"], e["first_missing"]) == ("reply", None, UPLINK)
    assert (e["cause"], e["reason"]) == ("nat-missing", None)
    [nat] = findings(report, "PRB003")
    assert nat["status"] == "fail" and nat["evidence"]["sources_on_uplink"] == ["198.51.100.2"]


def test_uplink_peer_down(lab: ProbeLab) -> None:
    with lab.world.ipr() as ipr:
        ipr.link("set", index=index(ipr, GATEWAY_NIC), state="down")
    assert (UPLINK, "link-down") in predicted(lab)
    e = located(lab)
    assert (e["direction"], e["last_seen"], e["first_missing"]) == ("request", BRIDGE, UPLINK)
    # The requests wait for ARP; the ARP requests themselves die in the uplink's queue.
    assert (e["cause"], e["reason"], e["location"]) == (
        "link-down",
        "QDISC_DROP",
        "__dev_queue_xmit",
    )
    assert e["counters"][UPLINK]["tx_dropped"] >= 1


def _leftovers(lab: ProbeLab) -> list[str]:
    found = []
    done = lab.host.run(["tc", "qdisc", "show"], check=False)
    found += [line for line in done.stdout.splitlines() if "clsact" in line]
    done = lab.host.run(["sh", "-c", "ls /sys/kernel/tracing/instances 2>/dev/null"], check=False)
    found += [n for n in done.stdout.split() if n.startswith("kd-probe")]
    return found


def _trace_instances() -> list[str]:
    """The probe's trace instances on the machine (instances are the kernel's, not a mount
    namespace's), read through a tracefs mounted in a private mount namespace."""
    done = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t tracefs nodev /sys/kernel/tracing && ls /sys/kernel/tracing/instances",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return [n for n in done.stdout.split() if n.startswith("kd-probe")]


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "SIGINT to a background job"])
def test_a_probe_killed_mid_run_leaves_nothing_behind(lab: ProbeLab, how: str) -> None:
    lab.host.sysctl("net.ipv4.ip_forward", "0")  # so that it would wait out its timeout
    signum = signal.SIGTERM if how == "SIGTERM" else signal.SIGINT
    before = set(_trace_instances())
    # `ip netns exec` execs the probe itself: the signal goes to the probe's own process. A
    # shell starts a background job with SIGINT ignored; the probe must still stop.
    probe = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            lab.host.name,
            sys.executable,
            "-m",
            "doctor",
            "probe",
            *lab.probe_args("--count", "5", "--timeout", "10", "--format", "json"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        preexec_fn=_ignore_sigint if how.endswith("background job") else None,
    )
    try:
        # The moment it has changed the host: its trace instance exists (seen in its own
        # mount namespace, where it mounted tracefs).
        made = Path(f"/proc/{probe.pid}/root/sys/kernel/tracing/instances/kd-probe-{probe.pid}")
        deadline = time.monotonic() + 120  # a guard against a hung probe, not a measure
        while not made.is_dir() and probe.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if not made.is_dir():
            probe.kill()
            out, err = probe.communicate()
            pytest.fail(f"the probe made no trace instance (exit {probe.returncode}): {err}")
        assert made.name in _trace_instances()
        os.kill(probe.pid, signum)
        out, err = probe.communicate(timeout=60)
    finally:
        if probe.poll() is None:
            probe.kill()
            probe.communicate()
    expected = 130 if signum == signal.SIGINT else 128 + signal.SIGTERM
    assert probe.returncode == expected, err
    # One line, from the probe itself (not from helper processes it forked).
    said = "interrupted" if signum == signal.SIGINT else "terminated"
    assert err.splitlines() == [f"kvmdoctor: {said}"], err
    assert "could not undo" not in err
    assert set(_trace_instances()) == before
    assert _leftovers(lab) == []


def test_without_root_the_message_is_clear_the_exit_code_2_and_nothing_is_sent(
    lab: ProbeLab, test_ids: tuple[int, tuple[int, ...]]
) -> None:
    from typer.testing import CliRunner

    # Everything the command imports is loaded before the child drops root: the test
    # identity cannot read this Python's installation.
    import doctor.engine
    import doctor.playbooks
    import doctor.probe.session
    import doctor.report
    import doctor.rules
    import doctor.sources.live  # noqa: F401
    from doctor.cli import app

    from kdtest import as_user

    uid, gids = test_ids
    args = ["probe", "--from-netns", lab.guest.name, "--to", TARGET, "--count", "3"]

    def probe() -> tuple[int, str]:
        result = CliRunner().invoke(app, args)
        return result.exit_code, result.output + getattr(result, "stderr", "")

    # The guest sends nothing of its own (no IPv6 autoconfiguration) while the count is taken.
    lab.guest.sysctl(f"net.ipv6.conf.{GUEST_NIC}.disable_ipv6", "1")
    time.sleep(0.5)
    before = lab.host.run(["cat", f"/sys/class/net/{PEER}/statistics/rx_packets"]).stdout
    code, output = as_user(probe, uid, gids[0], gids)
    assert code == 2, output
    assert "needs root" in output and "nothing was sent" in output
    after = lab.host.run(["cat", f"/sys/class/net/{PEER}/statistics/rx_packets"]).stdout
    assert before == after


def test_br_netfilter_with_a_forward_drop_between_two_guests_on_one_bridge() -> None:
    require(os.geteuid() == 0, "root (namespaces, nft, tracefs)")
    with ProbeLab(second_guest=True) as lab:
        to = GUEST2_IP
        code, report, err = lab.kvmdoctor(*lab.probe_args(to=to))
        assert code == 0, err  # healthy first: the bridge forwards between its ports
        assert report is not None
        [ok] = findings(report, "PRB002")
        assert ok["status"] == "pass"
        assert (
            lab.host.run(["sysctl", "-n", "net.bridge.bridge-nf-call-iptables"]).stdout.strip()
            == "1"
        )
        lab.nft("add rule ip kdfilter kdfwd drop")
        assert predicted(lab, to=to) == [(BRIDGE, "bridge-netfilter-drop")]
        e = located(lab, to=to)
        assert (e["direction"], e["last_seen"]) == ("request", PEER)
        assert e["first_missing"] in (PEER2, f"{BRIDGE}:ports")
        assert (e["cause"], e["reason"], e["playbook"]) == (
            "bridge-netfilter-drop",
            "NETFILTER_DROP",
            "bridge-netfilter-drops-guests",
        )


def test_next_hop_does_not_answer_arp(lab: ProbeLab) -> None:
    # 203.0.113.9 is on the uplink's subnet, inside the test's namespaces, and nobody has it.
    e = located(lab, "--count", "2", "--timeout", "4", to="203.0.113.9")
    assert (e["direction"], e["last_seen"], e["first_missing"]) == ("request", BRIDGE, UPLINK)
    assert (e["cause"], e["reason"]) == ("neighbour-failed", "NEIGH_FAILED")
    # Now the host's neighbour entry is FAILED: the static view names the same place.
    assert (UPLINK, "neighbour-failed") in predicted(lab, to="203.0.113.9")


def test_a_second_probe_is_refused_while_one_runs(lab: ProbeLab) -> None:
    from doctor.probe.lab import LOCK_PATH, Lab

    with Lab(LOCK_PATH):  # as a running probe holds it
        code, report, err = lab.kvmdoctor(*lab.probe_args(), wait_turn=False)
    assert code == 2 and report is None
    assert "another kvmdoctor probe is running" in err


def test_the_text_view_draws_the_path_and_where_it_stopped(lab: ProbeLab) -> None:
    lab.host.sysctl("net.ipv4.ip_forward", "0")
    done = subprocess.run(
        ["ip", "netns", "exec", lab.host.name, sys.executable, "-m", "doctor", "probe",
         *lab.probe_args("--count", "2", "--timeout", "1")],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    hops = next(line for line in lines if PEER in line and BRIDGE in line and UPLINK in line)
    assert hops.split() == [f"{GUEST_NIC}@{lab.guest.name}", PEER, BRIDGE, UPLINK]
    request = next(line for line in lines if line.strip().startswith("request"))
    assert request.split()[2:6] == ["2", "2", "2", "0"]
    assert f"stopped after {BRIDGE}: ip-forward-off (IP_INADDRERRORS)" in request
    assert "fix: kvmdoctor explain ip-forward-disabled" in done.stdout


def test_tap_without_reader(lab: ProbeLab) -> None:
    lab.guest_behind_tap()  # a persistent tap that no process holds: NO-CARRIER
    assert predicted(lab, to=TAP_TARGET_IP) == [(TAP, "no-carrier")]
    e = located(lab, to=TAP_TARGET_IP)
    assert (e["direction"], e["last_seen"], e["first_missing"]) == ("request", PEER, TAP)
    assert e["cause"] == "no-carrier", (
        e["observations"]["drops"],
        e["observations"]["seen"],
        e["reason"],
    )
    # This kernel frees the frame without a specific reason here (NOT_SPECIFIED is not
    # reported): the cause comes from the tap's state, at medium confidence.
    assert (e["reason"], e["confidence"]) == (None, "medium")


def test_tap_whose_reader_stalls(lab: ProbeLab) -> None:
    from pyroute2 import netns

    lab.guest_behind_tap()
    # The tap sends nothing of its own when its carrier comes up (IPv6 autoconfiguration:
    # router solicitations, DAD, MLD reports): dropped on the full queue during the probe's
    # idle window, they would make the baseline the probe's own drops are counted against.
    lab.host.sysctl(f"net.ipv6.conf.{TAP}.disable_ipv6", "1")
    netns.pushns(lab.host.name)
    try:  # a reader that attaches to the tap and never reads, like a hung QEMU
        reader = os.open("/dev/net/tun", os.O_RDWR)
        fcntl.ioctl(reader, TUNSETIFF, struct.pack("16sH", TAP.encode(), IFF_TAP | IFF_NO_PI))
        filler = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    finally:
        netns.popns()
    try:
        filler.bind((TAP, 0))

        def tap(what: str) -> str:
            return lab.host.run(["cat", f"/sys/class/net/{TAP}/{what}"]).stdout.strip()

        # The carrier comes up with the reader, and the tap's queue only once the kernel
        # has noticed it (linkwatch, up to a second later): fill it after that.
        deadline = time.monotonic() + 5
        while tap("operstate") != "up":
            assert time.monotonic() < deadline, "the tap did not come up with its reader"
            time.sleep(0.05)
        time.sleep(0.2)
        frame = bytes.fromhex("ffffffffffff026b64000099") + b"\x88\xb5" + b"kd" * 25
        for _ in range(1200):  # more than the tap's queue holds
            filler.send(frame)
        assert int(tap("statistics/tx_dropped")) > 0, "the tap's queue is not full"
        assert predicted(lab, to=TAP_TARGET_IP) == []  # carrier up: nothing to see statically
        e = located(lab, to=TAP_TARGET_IP)
        where = (e["direction"], e["last_seen"], e["first_missing"])
        assert where == ("request", TAP, None), e["observations"]
        assert (e["cause"], e["reason"], e["location"]) == (
            "tap-stalled",
            "FULL_RING",
            "tun_net_xmit",
        )
        assert e["counters"][TAP]["tx_dropped"] >= 1
    finally:
        filler.close()
        os.close(reader)


@pytest.mark.parametrize(
    ("proto", "to"), [("udp:9", TARGET), ("tcp:9", TARGET), ("arp", "198.51.100.1")]
)
def test_udp_tcp_and_arp_probes_cross_the_healthy_path(lab: ProbeLab, proto: str, to: str) -> None:
    # A closed port answers too: ICMP port unreachable for UDP, RST for TCP.
    code, report, err = lab.kvmdoctor(*lab.probe_args("--proto", proto, to=to))
    assert code == 0 and report is not None, err
    [ok] = findings(report, "PRB002")
    assert ok["status"] == "pass", ok["message"]
    assert ok["evidence"]["observations"]["proto"] == proto.split(":")[0]
    assert ok["evidence"]["observations"]["seen"][GUEST_NIC] == {"request": 3, "reply": 3}


def test_a_udp_port_dropped_in_forward_is_located(lab: ProbeLab) -> None:
    lab.nft("add rule ip kdfilter kdfwd udp dport 5353 drop")
    # The rule matches on the port: the static view, which follows interfaces, cannot tell.
    assert predicted(lab) == []
    e = located(lab, "--proto", "udp:5353")
    assert (e["direction"], e["last_seen"], e["first_missing"]) == ("request", BRIDGE, UPLINK)
    assert (e["cause"], e["reason"], e["confidence"]) == (
        "forward-drop",
        "NETFILTER_DROP",
        "medium",
    )
