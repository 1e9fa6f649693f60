"""Network fixtures for tests: namespaces, bridges, veths and taps made with pyroute2, a second
libvirtd living inside a namespace, and helpers that put netlink dumps, command outputs and
libvirt answers into an editable snapshot.

Every object made here carries a `kd` prefix and is removed on the way out of its `with` block,
also when the test fails: a namespace takes everything inside it along; links made in the
machine's own namespace are deleted by index. Nothing here touches an interface it did not
create, and addresses come only from 192.0.2.0/24, 198.51.100.0/24 and 203.0.113.0/24 (the
machine's eth0 uses 192.0.2.0/24, so that range is used only inside namespaces).

    with Netns("kdnet1") as ns:
        with ns.ipr() as ipr:
            bridge(ipr, "kdbr0")
        ns.run(["iptables", "-P", "FORWARD", "DROP"])
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

from kdtest import FIXTURES, KERNEL_LACKS, ROOT

# Names of objects in shared places (the machine's namespace, its libvirtd, /run/netns) end
# with this: two pytest sessions on one machine (a developer's and a helper's) must not
# meet on one name, and one session's clean-up must never remove the other's objects.
SUFFIX = f"{os.getpid() % 0x10000:04x}"
NET_FIXTURES = FIXTURES / "net"
LAB_CAPTURE = NET_FIXTURES / "lab"
DERIVED = NET_FIXTURES / "derived"
URI = "qemu:///system"


# --- namespaces and links -------------------------------------------------------------------


class Netns:
    """A kd-prefixed network namespace, deleted (with everything in it) on exit.

    Made and removed with `ip netns`, and entered with pyroute2's pushns/popns: pyroute2's
    own netns helpers fork a child and stop it with SIGTERM, and a child that inherited a
    Python SIGTERM handler (tests/kdlab.py installs one while a lab is open) would run the
    parent's clean-up code, removing namespaces and stopping daemons that are still in use.
    """

    def __init__(self, name: str) -> None:
        assert name.startswith("kd"), "test namespaces are named kd..."
        self.name = name

    def __enter__(self) -> Netns:
        assert not os.path.exists(f"/run/netns/{self.name}"), f"{self.name} exists already"
        _ip_netns("add", self.name)
        try:
            with self.ipr() as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        except BaseException:
            _ip_netns("del", self.name)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if os.path.exists(f"/run/netns/{self.name}"):
            _ip_netns("del", self.name)

    def ipr(self) -> Any:
        """An IPRoute socket opened inside the namespace (without a child process)."""
        from pyroute2 import IPRoute, netns

        netns.pushns(self.name)
        try:
            return IPRoute()
        finally:
            netns.popns()

    def run(self, argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A command inside the namespace (`ip netns exec`, which also mounts its own /sys)."""
        done = subprocess.run(
            ["ip", "netns", "exec", self.name, *argv],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check:
            assert done.returncode == 0, f"{' '.join(argv)} in {self.name}: {done.stderr}"
        return done

    def sysctl(self, name: str, value: str) -> None:
        self.run(["sysctl", "-q", "-w", f"{name}={value}"])

    def kvmdoctor(self, *args: str, prefix: Sequence[str] = ()) -> dict[str, Any]:
        """`kvmdoctor run --format json ARGS` as a process inside the namespace."""
        done = subprocess.run(
            [
                *prefix,
                "ip",
                "netns",
                "exec",
                self.name,
                sys.executable,
                "-m",
                "doctor",
                "run",
                "--format",
                "json",
                *args,
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
            check=False,
        )
        assert done.returncode in (0, 1), done.stderr
        report: dict[str, Any] = json.loads(done.stdout)
        return report


def _ip_netns(action: str, name: str) -> None:
    done = subprocess.run(
        ["ip", "netns", action, name], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"ip netns {action} {name}: {done.stderr}"


def index(ipr: Any, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    assert found, f"no link {name}"
    return int(found[0])


def bridge(ipr: Any, name: str, *, up: bool = True, **options: Any) -> int:
    """A Linux bridge; options are pyroute2's (br_stp_state=1, br_forward_delay=1500)."""
    assert name.startswith("kd")
    ipr.link("add", ifname=name, kind="bridge", **options)
    idx = index(ipr, name)
    if up:
        ipr.link("set", index=idx, state="up")
    return idx


def veth(ipr: Any, name: str, peer: str, *, master: Optional[str] = None, up: bool = True) -> int:
    assert name.startswith("kd") and peer.startswith("kd")
    ipr.link("add", ifname=name, kind="veth", peer=peer)
    idx = index(ipr, name)
    if master is not None:
        ipr.link("set", index=idx, master=index(ipr, master))
    if up:
        ipr.link("set", index=idx, state="up")
        ipr.link("set", index=index(ipr, peer), state="up")
    return idx


def tap(ipr: Any, name: str, *, master: Optional[str] = None, netns: Optional[str] = None) -> int:
    """A persistent tap that no process holds (NO-CARRIER), as libvirt's taps look without
    QEMU. The tap is made by an ioctl in the calling thread's namespace, not the socket's:
    pass the namespace `ipr` belongs to."""
    from pyroute2 import netns as namespaces

    assert name.startswith("kd")
    if netns is not None:
        namespaces.pushns(netns)
    try:
        ipr.link("add", ifname=name, kind="tuntap", mode="tap")
    finally:
        if netns is not None:
            namespaces.popns()
    idx = index(ipr, name)
    if master is not None:
        ipr.link("set", index=idx, master=index(ipr, master))
    ipr.link("set", index=idx, state="up")
    return idx


PORT_STATES = {"disabled": 0, "listening": 1, "learning": 2, "forwarding": 3, "blocking": 4}


def port_state(ipr: Any, name: str, state: str) -> None:
    """Set a bridge port's STP state (the bridge's STP must be off). pyroute2's own
    `brport("set", state=...)` would take the link down: `state` is also link()'s up/down."""
    ipr.link(
        "set",
        index=index(ipr, name),
        IFLA_LINKINFO={
            "attrs": [
                ("IFLA_INFO_SLAVE_KIND", "bridge"),
                ("IFLA_INFO_SLAVE_DATA", {"attrs": [("IFLA_BRPORT_STATE", PORT_STATES[state])]}),
            ]
        },
    )


@contextlib.contextmanager
def root_links() -> Iterator[list[str]]:
    """Names of kd links a test makes in the machine's own namespace; deleted afterwards."""
    from pyroute2 import IPRoute

    made: list[str] = []
    try:
        yield made
    finally:
        with IPRoute() as ipr:
            for name in reversed(made):
                assert name.startswith("kd")
                for idx in ipr.link_lookup(ifname=name):
                    with contextlib.suppress(Exception):  # a veth peer went with its twin
                        ipr.link("del", index=idx)


def kernel_lacks(kind: str, **options: Any) -> Optional[str]:
    """Why this kernel cannot make a link of `kind` (a reason containing "kernel lacks"), or
    None when it can. Tried in a scratch namespace, which is removed at once."""
    from pyroute2.netlink.exceptions import NetlinkError

    with Netns(f"kdprobe{SUFFIX}") as ns, ns.ipr() as ipr:
        try:
            if kind in ("macvtap", "macvlan", "vlan"):
                veth(ipr, "kdprobe0", "kdprobe1")
                options = {"link": index(ipr, "kdprobe0"), **options}
            ipr.link("add", ifname="kdprobe2", kind=kind, **options)
        except NetlinkError as exc:
            return (
                f"{KERNEL_LACKS} {kind} (creating one: {exc.args[1] if len(exc.args) > 1 else exc})"
            )
    return None


# --- libvirt --------------------------------------------------------------------------------


def virsh(*args: str, uri: str = URI) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["virsh", "-c", uri, *args], capture_output=True, text=True, timeout=120, check=False
    )


def guest_xml(name: str, interfaces: str) -> str:
    """A minimal KVM guest: 128 MiB, no disk, the given <interface> elements."""
    assert name.startswith("kd")
    return f"""<domain type='kvm'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    {interfaces}
    <graphics type='vnc' autoport='yes' listen='127.0.0.1'/>
  </devices>
</domain>
"""


def bridge_nic(bridge: str, mac: Optional[str] = None) -> str:
    mac_line = f"<mac address='{mac}'/>" if mac else ""
    return (
        f"<interface type='bridge'>{mac_line}<source bridge='{bridge}'/>"
        "<model type='virtio'/></interface>"
    )


def network_nic(network: str) -> str:
    return (
        f"<interface type='network'><source network='{network}'/><model type='virtio'/></interface>"
    )


class Domains:
    """kd domains defined through virsh; destroyed and undefined on exit, logs removed."""

    def __init__(self, tmp: Path, uri: str = URI, runner: Any = None) -> None:
        self.tmp = tmp
        self.uri = uri
        self.names: list[str] = []
        self.runner = runner  # a callable(argv) -> CompletedProcess, for a lab daemon

    def virsh(self, *args: str) -> subprocess.CompletedProcess[str]:
        if self.runner is not None:
            result: subprocess.CompletedProcess[str] = self.runner(["virsh", "-c", self.uri, *args])
            return result
        return virsh(*args, uri=self.uri)

    def define(self, name: str, xml: str) -> None:
        self.names.append(name)
        path = self.tmp / f"{name}.xml"
        path.write_text(xml)
        done = self.virsh("define", str(path))
        assert done.returncode == 0, done.stderr

    def __enter__(self) -> Domains:
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self.names:
            self.virsh("destroy", name)
            self.virsh("undefine", name, "--nvram")
            with contextlib.suppress(FileNotFoundError):
                Path(f"/var/log/libvirt/qemu/{name}.log").unlink()
        left = [n for n in self.names if self.virsh("dominfo", n).returncode == 0]
        assert left == [], f"still defined: {left}"


class NetLab:
    """A second libvirtd whose network namespace is `ns` and whose /run/libvirt, /etc/libvirt
    and /var/lib/libvirt are private (tests/kdlab.py LibvirtLab). Networks it starts exist
    only in that namespace: their bridge, dnsmasq, iptables/nft rules and ip_forward. Every
    network it was asked to define is destroyed and undefined on exit, before the daemon
    stops (dnsmasq would outlive the daemon otherwise)."""

    def __init__(self, ns: Netns, base: Path) -> None:
        self.ns = ns
        self.base = base
        self.lab: Any = None
        self.networks: list[str] = []
        self.domains: list[str] = []

    def __enter__(self) -> NetLab:
        from kdlab import LibvirtLab

        self.lab = LibvirtLab(self.base)
        self.lab.__enter__()
        try:
            self._start()
        except BaseException:
            self.lab.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        # The lab keeps the machine's libvirt configuration but none of its domain or network
        # definitions: this daemon knows only what the test defines.
        for directory in ("/etc/libvirt/qemu", "/etc/libvirt/qemu/networks"):
            for path in Path(self.lab.path(directory)).glob("*.xml"):
                path.unlink()
        net = f"--net=/run/netns/{self.ns.name}"
        # The lab's /sys shows the namespace's devices, as `ip netns exec` would mount it.
        done = self.lab.run(["nsenter", net, "--", "mount", "-t", "sysfs", "kdsys", "/sys"])
        assert done.returncode == 0, done.stderr
        pidfile = self.lab.state / "libvirtd-netns.pid"
        done = self.lab.run(["nsenter", net, "--", "libvirtd", "-d", "-p", str(pidfile)])
        assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + 30
        while not (pidfile.exists() and pidfile.read_text().strip().isdigit()):
            assert time.monotonic() < deadline, f"{pidfile} holds no pid"
            time.sleep(0.05)
        pid = int(pidfile.read_text())
        self.lab.daemons.append((pid, pidfile))  # stopped by the lab, by this pid
        while not os.path.exists(f"/proc/{pid}/root/run/libvirt/libvirt-sock"):
            assert time.monotonic() < deadline, "the lab libvirtd made no socket"
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        try:
            for name in self.domains:
                self.virsh("destroy", name)
                self.virsh("undefine", name)
            for name in self.networks:
                self.virsh("net-destroy", name)
                self.virsh("net-undefine", name)
        finally:
            self.lab.__exit__(None, None, None)

    def run(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        """A command in the lab's mount namespace and the network namespace."""
        result: subprocess.CompletedProcess[str] = self.lab.run(
            ["nsenter", f"--net=/run/netns/{self.ns.name}", "--", *argv]
        )
        return result

    def virsh(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(["virsh", "-c", URI, *args])

    def define_network(self, name: str, xml: str, *, start: bool = True) -> None:
        assert name.startswith("kd")
        self.networks.append(name)
        path = self.lab.home / f"{name}.xml"
        path.write_text(xml)
        done = self.virsh("net-define", str(path))
        assert done.returncode == 0, done.stderr
        if start:
            done = self.virsh("net-start", name)
            assert done.returncode == 0, done.stderr

    def define_domain(self, name: str, xml: str) -> None:
        assert name.startswith("kd")
        self.domains.append(name)
        path = self.lab.home / f"{name}.xml"
        path.write_text(xml)
        done = self.virsh("define", str(path))
        assert done.returncode == 0, done.stderr

    def path(self, host_path: str) -> Path:
        """Where a file of the lab's private /etc/libvirt or /var/lib/libvirt lives outside."""
        return Path(self.lab.path(host_path))

    def run_path(self, host_path: str) -> Path:
        """Where a file under the lab's private /run/libvirt is readable from outside."""
        assert host_path.startswith("/run/libvirt/")
        return Path(f"/proc/{self.lab.holder.pid}/root{host_path}")

    def kvmdoctor(self, *args: str) -> dict[str, Any]:
        """`kvmdoctor run --format json ARGS` inside the lab and the namespace."""
        done = self.lab.run(
            ["ip", "netns", "exec", self.ns.name, sys.executable, "-m", "doctor", "run"]
            + ["--format", "json", "--uri", URI, *args],
            cwd=ROOT,
        )
        assert done.returncode in (0, 1), done.stderr
        report: dict[str, Any] = json.loads(done.stdout)
        return report


def nat_network(name: str, bridge_name: str, address: str, *, mode: str = "nat") -> str:
    """A libvirt network with a documentation-range subnet and no uplink."""
    return f"""<network>
  <name>{name}</name>
  <forward mode='{mode}'/>
  <bridge name='{bridge_name}' stp='on' delay='0'/>
  <ip address='{address}' netmask='255.255.255.0'/>
</network>
"""


def host_bridge_network(name: str, bridge_name: str) -> str:
    return f"""<network>
  <name>{name}</name>
  <forward mode='bridge'/>
  <bridge name='{bridge_name}'/>
</network>
"""


def isolated_network(name: str, bridge_name: str) -> str:
    return f"""<network>
  <name>{name}</name>
  <bridge name='{bridge_name}' stp='on' delay='0'/>
</network>
"""


# --- reports --------------------------------------------------------------------------------


def findings(report: dict[str, Any], code: str) -> list[dict[str, Any]]:
    return next(c["findings"] for c in report["checks"] if c["code"] == code)


def about(report: dict[str, Any], code: str, subject: str) -> dict[str, Any]:
    """The single finding of `code` about `subject` in a JSON report."""
    found = [f for f in findings(report, code) if f["subject"] == subject]
    assert len(found) == 1, (
        code,
        subject,
        [(f["subject"], f["status"]) for f in findings(report, code)],
    )
    return found[0]


def statuses(report: dict[str, Any], code: str, prefix: str = "") -> dict[str, str]:
    """subject -> status of `code`'s findings whose subject contains `prefix`."""
    return {f["subject"]: f["status"] for f in findings(report, code) if prefix in f["subject"]}


# --- snapshots ------------------------------------------------------------------------------

LIBVIRT = {"uri": None, "params": {}}


def set_netlink(snap: Any, request: str, rows: list[dict[str, Any]]) -> Any:
    """Answer the netlink dump `request` of the default namespace with `rows`."""
    rel = f"netlink/host/{request}.json"
    target = snap.path / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(rows, indent=1))
    snap.manifest["answers"] = [
        e
        for e in snap.manifest["answers"]
        if not (e["kind"] == "netlink" and e.get("request") == request and not e.get("netns"))
    ]
    snap.manifest["answers"].append(
        {"kind": "netlink", "request": request, "netns": None, "how": "set by a test", "data": rel}
    )
    return snap


def set_command(
    snap: Any, argv: Sequence[str], stdout: str, returncode: int = 0, stderr: str = ""
) -> Any:
    """Answer the command `argv` with this output."""
    name = "_".join(argv).replace("/", "-").replace(" ", "-")
    out, err = f"commands/{name}.stdout", f"commands/{name}.stderr"
    (snap.path / "commands").mkdir(exist_ok=True)
    (snap.path / out).write_text(stdout)
    (snap.path / err).write_text(stderr)
    snap.manifest["answers"] = [
        e
        for e in snap.manifest["answers"]
        if not (e["kind"] == "command" and e["argv"] == list(argv))
    ]
    snap.manifest["answers"].append(
        {
            "kind": "command",
            "argv": list(argv),
            "how": "set by a test",
            "returncode": returncode,
            "stdout": out,
            "stderr": err,
        }
    )
    return snap


def domain_entry(xml: str, *, active: bool, name: Optional[str] = None) -> dict[str, Any]:
    """A row of the libvirt "domains" answer."""
    import re

    found = re.search(r"<name>([^<]+)</name>", xml)
    return {
        "name": name or (found.group(1) if found else "unnamed"),
        "uuid": None,
        "id": 1 if active else None,
        "state": "running" if active else "shutoff",
        "active": active,
        "persistent": True,
        "autostart": False,
        "xml": xml,
        "live_xml": xml if active else None,
    }


def network_entry(xml: str, *, active: bool, autostart: bool = False) -> dict[str, Any]:
    import re

    found = re.search(r"<name>([^<]+)</name>", xml)
    return {
        "name": found.group(1) if found else "unnamed",
        "uuid": None,
        "active": active,
        "persistent": True,
        "autostart": autostart,
        "xml": xml,
    }


def set_domains(snap: Any, entries: list[dict[str, Any]]) -> Any:
    return snap.set_value("libvirt", entries, request="domains", **LIBVIRT)


def set_networks(snap: Any, entries: list[dict[str, Any]]) -> Any:
    return snap.set_value("libvirt", entries, request="networks", **LIBVIRT)


def lab_capture(name: str) -> str:
    """A file recorded on the lab machine (tests/fixtures/net/lab/README.md)."""
    return (LAB_CAPTURE / name).read_text()


def lab_rows(name: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(lab_capture(name))
    return rows


def derived_rows(name: str) -> list[dict[str, Any]]:
    """netlink-shaped rows derived from a text capture (tests/fixtures/net/derived/README.md)."""
    rows: list[dict[str, Any]] = json.loads((DERIVED / f"{name}.json").read_text())
    return rows


def row(rows: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [r for r in rows if r["attrs"].get("IFLA_IFNAME") == name]
    assert len(found) == 1, name
    return found[0]


def copy_sysfs(names: Sequence[str], dest: Path, sysfs: Path = Path("/sys/class/net")) -> None:
    """Copy what kvmdoctor reads of /sys/class/net/NAME for each link into a tree at `dest`
    (dest/sys/class/net/NAME/...): attribute files as files, `master` as its symlink."""
    files = (
        "type",
        "ifindex",
        "iflink",
        "address",
        "mtu",
        "operstate",
        "carrier",
        "flags",
        "uevent",
        "tun_flags",
    )
    dirs = ("bridge", "brport", "bonding", "bonding_slave")
    for name in names:
        try:
            _copy_link(sysfs / name, dest / "sys/class/net" / name, files, dirs)
        except FileNotFoundError:
            shutil.rmtree(dest / "sys/class/net" / name, ignore_errors=True)  # gone meanwhile


def _copy_link(src: Path, out: Path, files: Sequence[str], dirs: Sequence[str]) -> None:
    """One link's files; raises FileNotFoundError when the link went away meanwhile."""
    out.mkdir(parents=True, exist_ok=True)
    for rel in files:
        with contextlib.suppress(OSError):  # absent, or unreadable (carrier of a down link)
            (out / rel).write_bytes((src / rel).read_bytes())
    if (src / "master").is_symlink():
        os.symlink(f"../{os.path.basename(os.readlink(src / 'master'))}", out / "master")
    if (src / "device").exists():
        (out / "device").mkdir()
    for sub in dirs:
        if not (src / sub).is_dir():
            continue
        (out / sub).mkdir()
        for entry in (src / sub).iterdir():
            if entry.is_file() and not entry.is_symlink():
                with contextlib.suppress(OSError):
                    (out / sub / entry.name).write_bytes(entry.read_bytes())


def copy_tree_files(pairs: Sequence[tuple[Path, str]], tree: Path) -> None:
    """Copy (source file, path in the tree) pairs, e.g. libvirt's XML into etc/libvirt/..."""
    for src, dest in pairs:
        target = tree / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
