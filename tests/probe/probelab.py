"""The probe's lab: a guest namespace, a host namespace with a bridge and NAT, and a gateway
namespace, all made by the test and removed on exit (also when the test fails).

    guest ns (kdpgSUFFIX)           host ns (kdphSUFFIX)                          gateway ns (kdpwSUFFIX)
    GUEST_NIC 198.51.100.2/24 ⇄ PEER ─ BRIDGE 198.51.100.1/24   NAT   UPLINK 203.0.113.1/24 ⇄ GATEWAY_NIC 203.0.113.2/24

Device names carry the session's SUFFIX too (kdvSUFFIX, kdbSUFFIX, ...): the kernel's drop
events name devices, not namespaces, and two sessions probing their labs at once must not
read each other's. The "host" is a namespace of its own: nothing touches the machine's own namespace, its
interfaces or its firewall. kvmdoctor runs inside the host namespace (`ip netns exec`), as it
would run on a host whose guest is the namespace. The gateway has no route back to the
guest's subnet, so replies return only through the NAT. Addresses come from 198.51.100.0/24
and 203.0.113.0/24 only.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any, Optional

from kdnet import SUFFIX, Netns, bridge, index
from kdtest import ROOT

GUEST_IP = "198.51.100.2"
GUEST2_IP = "198.51.100.3"
BRIDGE_IP = "198.51.100.1"
UPLINK_IP = "203.0.113.1"
TARGET = "203.0.113.2"
GUEST_MAC = "02:6b:64:00:00:02"
GUEST2_MAC = "02:6b:64:00:00:03"
GUEST_NIC = f"kdg{SUFFIX}"
PEER = f"kdv{SUFFIX}"
BRIDGE = f"kdb{SUFFIX}"
UPLINK = f"kdu{SUFFIX}"
GATEWAY_NIC = f"kdw{SUFFIX}"
GUEST2_NIC = f"kdh{SUFFIX}"
PEER2 = f"kdx{SUFFIX}"
TAP = f"kdt{SUFFIX}"
TAP_TARGET_IP = "198.51.100.4"
TAP_TARGET_MAC = "02:6b:64:00:00:04"
NAT_TABLE = "kdnat"
FILTER_TABLE = "kdfilter"


def _veth_into(ipr: Any, name: str, peer: str, peer_ns: str) -> None:
    ipr.link("add", ifname=name, kind="veth", peer={"ifname": peer, "net_ns_fd": peer_ns})


class ProbeLab:
    def __init__(self, *, second_guest: bool = False, tag: str = "") -> None:
        self.guest = Netns(f"kdpg{tag}{SUFFIX}")
        self.host = Netns(f"kdph{tag}{SUFFIX}")
        self.world = Netns(f"kdpw{tag}{SUFFIX}")
        self.guest2: Optional[Netns] = Netns(f"kdpq{tag}{SUFFIX}") if second_guest else None
        self._entered: list[Netns] = []

    def __enter__(self) -> ProbeLab:
        try:
            for ns in (self.guest, self.host, self.world, self.guest2):
                if ns is not None:
                    ns.__enter__()
                    self._entered.append(ns)
            self._build()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for ns in reversed(self._entered):
            ns.__exit__(None, None, None)
        self._entered.clear()

    def _build(self) -> None:
        with self.host.ipr() as ipr:
            bridge(ipr, BRIDGE, br_stp_state=0, br_forward_delay=0)
            ipr.addr("add", index=index(ipr, BRIDGE), address=BRIDGE_IP, prefixlen=24)
            _veth_into(ipr, PEER, GUEST_NIC, self.guest.name)
            ipr.link("set", index=index(ipr, PEER), master=index(ipr, BRIDGE), state="up")
            _veth_into(ipr, UPLINK, GATEWAY_NIC, self.world.name)
            ipr.link("set", index=index(ipr, UPLINK), state="up")
            ipr.addr("add", index=index(ipr, UPLINK), address=UPLINK_IP, prefixlen=24)
            if self.guest2 is not None:
                _veth_into(ipr, PEER2, GUEST2_NIC, self.guest2.name)
                ipr.link("set", index=index(ipr, PEER2), master=index(ipr, BRIDGE), state="up")
        self._guest_side(self.guest, GUEST_NIC, GUEST_MAC, GUEST_IP)
        if self.guest2 is not None:
            self._guest_side(self.guest2, GUEST2_NIC, GUEST2_MAC, GUEST2_IP)
        with self.world.ipr() as ipr:
            ipr.link("set", index=index(ipr, GATEWAY_NIC), state="up")
            ipr.addr("add", index=index(ipr, GATEWAY_NIC), address=TARGET, prefixlen=24)
        self.host.sysctl("net.ipv4.ip_forward", "1")
        self.nft(
            f"add table ip {NAT_TABLE}",
            f"add chain ip {NAT_TABLE} kdpost {{ type nat hook postrouting priority 100 ; }}",
            f'add rule ip {NAT_TABLE} kdpost ip saddr 198.51.100.0/24 oifname "{UPLINK}" masquerade',
            f"add table ip {FILTER_TABLE}",
            f"add chain ip {FILTER_TABLE} kdfwd {{ type filter hook forward priority 0 ; policy accept ; }}",
        )

    def _guest_side(self, ns: Netns, name: str, mac: str, ip: str) -> None:
        with ns.ipr() as ipr:
            idx = index(ipr, name)
            ipr.link("set", index=idx, address=mac)
            ipr.link("set", index=idx, state="up")
            ipr.addr("add", index=idx, address=ip, prefixlen=24)
            ipr.route("add", dst="0.0.0.0/0", gateway=BRIDGE_IP)

    def guest_behind_tap(self, tap_name: str = TAP) -> None:
        """A tap on the bridge standing for a guest at TAP_TARGET_IP whose MAC the bridge and
        the other guest know (as they do while QEMU runs; static here, so they last)."""
        from kdnet import tap

        with self.host.ipr() as ipr:
            tap(ipr, tap_name, master=BRIDGE, netns=self.host.name)
        self.host.run(
            ["bridge", "fdb", "replace", TAP_TARGET_MAC, "dev", tap_name, "master", "static"]
        )
        self.guest.run(
            ["ip", "neigh", "replace", TAP_TARGET_IP, "lladdr", TAP_TARGET_MAC, "dev", GUEST_NIC,
             "nud", "permanent"]
        )  # fmt: skip

    def nft(self, *commands: str) -> None:
        """nft commands in the host namespace (its own tables, prefixed kd)."""
        done = subprocess.run(
            ["ip", "netns", "exec", self.host.name, "nft", "-f", "-"],
            input="\n".join(commands) + "\n",
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, f"nft in {self.host.name}: {done.stderr}"

    def kvmdoctor(
        self, *args: str, timeout: float = 90, wait_turn: bool = True
    ) -> tuple[int, Optional[dict[str, Any]], str]:
        """`kvmdoctor probe ARGS --format json` inside the host namespace: (exit code, the
        JSON report or None, stderr). A probe refused because another runs on this machine
        (another test session's) is tried again for a minute, unless `wait_turn` is False."""
        deadline = time.monotonic() + 60
        while True:
            code, report, err = self._kvmdoctor(args, timeout)
            busy = code == 2 and "another kvmdoctor probe is running" in err
            if not (busy and wait_turn and time.monotonic() < deadline):
                return code, report, err
            time.sleep(0.5)

    def _kvmdoctor(
        self, args: tuple[str, ...], timeout: float
    ) -> tuple[int, Optional[dict[str, Any]], str]:
        done = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                self.host.name,
                sys.executable,
                "-m",
                "doctor",
                "probe",
                *args,
                "--format",
                "json",
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=timeout,
            check=False,
        )
        report = json.loads(done.stdout) if done.stdout.strip().startswith("{") else None
        return done.returncode, report, done.stderr

    def probe_args(self, *extra: str, to: str = TARGET) -> list[str]:
        return ["--from-netns", self.guest.name, "--to", to, *extra]
