"""The probe's lab: a guest namespace, a host namespace with a bridge and NAT, and a gateway
namespace, all made by the test and removed on exit (also when the test fails).

    guest ns (kdpgSUFFIX)        host ns (kdphSUFFIX)                         gateway ns (kdpwSUFFIX)
    kdg0 198.51.100.2/24 ⇄ kdv0 ─ kdbr0 198.51.100.1/24   NAT   kdu0 203.0.113.1/24 ⇄ kdw0 203.0.113.2/24

The "host" is a namespace of its own: nothing touches the machine's own namespace, its
interfaces or its firewall. kvmdoctor runs inside the host namespace (`ip netns exec`), as it
would run on a host whose guest is the namespace. The gateway has no route back to the
guest's subnet, so replies return only through the NAT. Addresses come from 198.51.100.0/24
and 203.0.113.0/24 only.
"""

from __future__ import annotations

import json
import subprocess
import sys
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
            bridge(ipr, "kdbr0", br_stp_state=0, br_forward_delay=0)
            ipr.addr("add", index=index(ipr, "kdbr0"), address=BRIDGE_IP, prefixlen=24)
            _veth_into(ipr, "kdv0", "kdg0", self.guest.name)
            ipr.link("set", index=index(ipr, "kdv0"), master=index(ipr, "kdbr0"), state="up")
            _veth_into(ipr, "kdu0", "kdw0", self.world.name)
            ipr.link("set", index=index(ipr, "kdu0"), state="up")
            ipr.addr("add", index=index(ipr, "kdu0"), address=UPLINK_IP, prefixlen=24)
            if self.guest2 is not None:
                _veth_into(ipr, "kdv1", "kdg1", self.guest2.name)
                ipr.link("set", index=index(ipr, "kdv1"), master=index(ipr, "kdbr0"), state="up")
        self._guest_side(self.guest, "kdg0", GUEST_MAC, GUEST_IP)
        if self.guest2 is not None:
            self._guest_side(self.guest2, "kdg1", GUEST2_MAC, GUEST2_IP)
        with self.world.ipr() as ipr:
            ipr.link("set", index=index(ipr, "kdw0"), state="up")
            ipr.addr("add", index=index(ipr, "kdw0"), address=TARGET, prefixlen=24)
        self.host.sysctl("net.ipv4.ip_forward", "1")
        self.nft(
            f"add table ip {NAT_TABLE}",
            f"add chain ip {NAT_TABLE} kdpost {{ type nat hook postrouting priority 100 ; }}",
            f'add rule ip {NAT_TABLE} kdpost ip saddr 198.51.100.0/24 oifname "kdu0" masquerade',
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

    def guest_behind_tap(self, tap_name: str = "kdt0") -> None:
        """A tap on the bridge standing for a guest at TAP_TARGET_IP whose MAC the bridge and
        the other guest know (as they do while QEMU runs; static here, so they last)."""
        from kdnet import tap

        with self.host.ipr() as ipr:
            tap(ipr, tap_name, master="kdbr0", netns=self.host.name)
        self.host.run(
            ["bridge", "fdb", "replace", TAP_TARGET_MAC, "dev", tap_name, "master", "static"]
        )
        self.guest.run(
            ["ip", "neigh", "replace", TAP_TARGET_IP, "lladdr", TAP_TARGET_MAC, "dev", "kdg0",
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
        self, *args: str, timeout: float = 90, prefix: tuple[str, ...] = ()
    ) -> tuple[int, Optional[dict[str, Any]], str]:
        """`kvmdoctor probe ARGS --format json` inside the host namespace: (exit code, the
        JSON report or None, stderr)."""
        done = subprocess.run(
            [
                *prefix,
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
