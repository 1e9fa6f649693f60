"""Record the lab scenarios of sample_reports/ as snapshots (root; the lab is made and removed
here): `kvmdoctor collect` inside a NetLab (tests/kdnet.py) — a private libvirtd whose network
namespace, /run/libvirt, /etc/libvirt and /var/lib/libvirt belong to the lab — after the
scenario is set up with virsh, sysctl and the files libvirt reads.

    .venv/bin/python scripts/record_lab_scenarios.py [NAME ...]

Each snapshot goes to tests/fixtures/snapshots/lab-NAME (replaced). Networks live only in the
lab's namespace and use documentation addresses; nothing of the machine's own libvirt or
network changes. Recordings hold the time they were made (the snapshot's clock), so replays
give the same report on any later day.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this tree's kvmdoctor, whatever the venv has installed
sys.path[:0] = [str(ROOT / "tests")]
SNAPSHOTS = ROOT / "tests" / "fixtures" / "snapshots"
PKI = "/etc/libvirt/pki"
LAN = "kdlan"  # an isolated network: guests reach each other and the host only


def q35_guest(name: str, interfaces: str) -> str:
    """A guest as hand-written XML gives it: q35 with one pcie-root-port, which its NIC takes
    (libvirt adds a spare port only when it adds the ports itself)."""
    return f"""<domain type='kvm'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <features><acpi/></features>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='pci' model='pcie-root'/>
    <controller type='pci' model='pcie-root-port'/>
    <controller type='usb' model='none'/>
    {interfaces}
    <memballoon model='none'/>
  </devices>
</domain>
"""


def network(name: str, bridge: str, address: str, *, nat: bool = False) -> str:
    """A libvirt network on a documentation subnet, STP off (a new port forwards at once)."""
    from kdnet import nat_network

    xml = nat_network(name, bridge, address).replace("stp='on'", "stp='off'")
    return xml if nat else xml.replace("<forward mode='nat'/>\n", "")


def guest(name: str, interfaces: str) -> str:
    """A minimal i440fx guest (tests/kdnet.py) with ACPI, so that it can take hot-plugs."""
    from kdnet import guest_xml

    return guest_xml(name, interfaces).replace(
        "<devices>", "<features><acpi/></features>\n  <devices>"
    )


def lan(lab: Any) -> None:
    lab.define_network(LAN, network(LAN, "kdbr0", "192.0.2.1"))


def cgroup_mounts() -> list[list[str]]:
    """Commands that mount the machine's cgroup hierarchies again on a fresh /sys/fs/cgroup, as
    /proc/self/mounts lists them (a v1 hierarchy mounted with the same options is the same
    hierarchy)."""
    out = []
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            _, path, kind, options = line.split()[:4]
            if path == "/sys/fs/cgroup" and kind == "tmpfs":
                out.insert(0, ["mount", "-t", "tmpfs", "-o", "mode=755", "kdcg", path])
            elif path.startswith("/sys/fs/cgroup/") and kind in ("cgroup", "cgroup2"):
                keep = ",".join(o for o in options.split(",") if o not in ("rw", "relatime"))
                mount = ["mount", "-t", kind, *(["-o", keep] if keep else []), kind, path]
                out += [["mkdir", "-p", path], mount]
    return out


def start(lab: Any, name: str) -> None:
    """Start a guest."""
    done = lab.virsh("start", name)
    assert done.returncode == 0, done.stderr


def virtlogd(lab: Any) -> None:
    """The lab's virtlogd (QEMU's output goes through it; kvmdoctor misses it otherwise)."""
    import time

    pidfile = lab.lab.state / "virtlogd.pid"
    if not pidfile.exists():
        # The lab's /sys is the namespace's own sysfs, without the machine's cgroup mounts
        # that QEMU's placement needs: bind them in (inside the lab's mount namespace only).
        for argv in cgroup_mounts():
            done = lab.lab.run(argv)
            assert done.returncode == 0, f"{argv}: {done.stderr}"
        done = lab.run(["virtlogd", "-d", "-p", str(pidfile)])
        assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + 30
        while not (pidfile.exists() and pidfile.read_text().strip().isdigit()):
            assert time.monotonic() < deadline, f"{pidfile} holds no pid"
            time.sleep(0.05)
        lab.lab.daemons.insert(0, (int(pidfile.read_text()), pidfile))  # stopped last
        sock = f"/proc/{lab.lab.holder.pid}/root/run/libvirt/virtlogd-sock"
        while not Path(sock).exists():
            assert time.monotonic() < deadline, "the lab's virtlogd made no socket"
            time.sleep(0.05)


def healthy(lab: Any) -> None:
    """An isolated network and a running guest on it."""
    from kdnet import network_nic

    lan(lab)
    lab.define_domain("kdweb1", guest("kdweb1", network_nic(LAN)))
    start(lab, "kdweb1")


def ip_forward_off(lab: Any) -> None:
    """A NAT network started (libvirt turns forwarding on), then ip_forward set to 0, as a
    firewall script or a `sysctl --system` with a stale file does."""
    from kdnet import network_nic

    lab.define_network("kdnat", network("kdnat", "kdbr1", "198.51.100.1", nat=True))
    lab.define_domain("kdweb1", guest("kdweb1", network_nic("kdnat")))
    start(lab, "kdweb1")
    done = lab.run(["sysctl", "-w", "net.ipv4.ip_forward=0"])
    assert done.returncode == 0, done.stderr


def tls_expired(lab: Any) -> None:
    """libvirtd.conf listens for TLS with a server certificate that expired yesterday."""
    from kdlab import Pki, free_port, write_file

    pki = Pki()
    ca = pki.ca("kd lab CA")
    names = {"localhost", os.uname().nodename, socket.getfqdn()}
    expired = pki.issue(ca, "localhost", dns=sorted(names), valid=(-90, -1))
    write_file(lab.path(f"{PKI}/cacert.pem"), ca.cert_pem)
    write_file(lab.path(f"{PKI}/servercert.pem"), expired.cert_pem)
    write_file(lab.path(f"{PKI}/serverkey.pem"), expired.key_pem(), 0o600)
    lab.lab.configure(
        "libvirtd.conf",
        listen_tls=1,
        listen_tcp=0,
        listen_addr="127.0.0.1",
        tls_port=str(free_port()),
        ca_file=f"{PKI}/cacert.pem",
        cert_file=f"{PKI}/servercert.pem",
        key_file=f"{PKI}/serverkey.pem",
    )


def pci_slots_full(lab: Any) -> None:
    """A q35 guest defined from hand-written XML: libvirt gives its NIC the only root port."""
    from kdnet import network_nic

    lan(lab)
    lab.define_domain("kddb1", q35_guest("kddb1", network_nic(LAN)))


def duplicate_mac(lab: Any) -> None:
    """Two running guests with one MAC (a cloned definition) on one bridge."""
    from kdnet import bridge_nic

    lan(lab)
    mac = "52:54:00:00:02:01"
    for name in ("kdweb1", "kdweb2"):
        lab.define_domain(name, guest(name, bridge_nic("kdbr0", mac)))
        start(lab, name)


SCENARIOS: dict[str, tuple[Callable[[Any], None], str]] = {
    "healthy": (healthy, "an isolated network with one running guest"),
    "ip-forward-off": (ip_forward_off, "a NAT network and its guest, ip_forward then set to 0"),
    "tls-expired": (tls_expired, "libvirtd.conf listens for TLS; the server certificate expired"),
    "pci-slots-full": (pci_slots_full, "a q35 guest with no empty pcie-root-port"),
    "duplicate-mac": (duplicate_mac, "two running guests with one MAC on one bridge"),
}


def record(name: str) -> Path:
    from kdnet import SUFFIX, NetLab, Netns

    setup, _ = SCENARIOS[name]
    out = SNAPSHOTS / f"lab-{name}"
    with contextlib.ExitStack() as stack:  # Python 3.9: no parenthesised `with`
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="kdrec"))
        ns = stack.enter_context(Netns(f"kdrec{SUFFIX}"))
        lab = stack.enter_context(NetLab(ns, Path(tmp)))
        virtlogd(lab)
        setup(lab)
        target = Path(tmp) / "snapshot"
        done = lab.lab.run(
            ["ip", "netns", "exec", ns.name, sys.executable, "-m", "doctor", "collect",
             "-o", str(target)],
            cwd=ROOT, timeout=300,
        )  # fmt: skip
        if done.returncode not in (0, 1) or not (target / "manifest.json").exists():
            raise SystemExit(f"kvmdoctor collect failed for {name}: {done.stderr.strip()}")
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(target, out)
    return out


def main(argv: list[str]) -> int:
    for name in argv or list(SCENARIOS):
        print(f"{name}: {record(name)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
