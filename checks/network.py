"""Host networking checks: the bridges, taps, macvtap devices and bonds guests sit on, the
forwarding and filtering between them, duplicate MACs and libvirt's virtual networks."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from typing import Any, Optional

from doctor.facts.domains import Domain, Domains, Interface
from doctor.facts.links import Link, Links
from doctor.facts.netfilter import Firewall, Sysctls, Verdict
from doctor.facts.networks import Network, Networks
from doctor.model import SEVERITY, Finding, Location, Status, worst
from doctor.record import record
from doctor.registry import check

# What libvirt 9.0 says when it starts a domain whose bridge is wrong (virsh start).
LIBVIRT_NO_BRIDGE = "Cannot get interface MTU on '{bridge}': No such device"
LIBVIRT_NOT_BRIDGE = "Unable to add bridge {bridge} port {tap}: Operation not supported"
LIBVIRT_NO_NETWORK = "Network not found: no network with matching name '{network}'"
LIBVIRT_NET_INACTIVE = "Requested operation is not valid: network '{network}' is not active"
MACVTAP_BUSY = "Device or resource busy"
UNSUITED_BOND_MODES = ("balance-rr", "balance-tlb", "balance-alb")
# Below this a bridge with STP on forwards a new port soon enough: the kernel's minimum
# forward delay with STP is 2 s, and libvirt's own networks (delay='0') end up there.
STP_DELAY_OK = 2.0


# --- how guests attach ----------------------------------------------------------------------


@record
class GuestNic:
    """One guest interface and what it attaches to, resolved through its network."""

    domain: Domain
    number: int  # 1-based, in the domain's order
    iface: Interface
    network: Optional[Network] = None
    bridge: Optional[str] = None  # the bridge it should be a port of
    macvtap_devs: tuple[str, ...] = ()  # the devices it gets a macvtap on
    macvtap_mode: Optional[str] = None

    @property
    def label(self) -> str:
        return f"interface {self.number} ({self.iface.mac or self.iface.type})"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "interface": self.number,
            "type": self.iface.type,
            "mac": self.iface.mac,
            "source": dict(self.iface.source),
            "target": self.iface.target,
        }
        if self.iface.virtualport:
            out["virtualport"] = self.iface.virtualport
        if self.bridge:
            out["bridge"] = self.bridge
        if self.macvtap_devs:
            out["macvtap_on"] = list(self.macvtap_devs)
            out["macvtap_mode"] = self.macvtap_mode
        return out


def guest_nics(domains: Optional[Domains], networks: Optional[Networks]) -> list[GuestNic]:
    found: list[GuestNic] = []
    for dom in domains.items if domains is not None else ():
        for number, iface in enumerate(dom.interfaces, 1):
            src = iface.source
            if iface.type == "bridge":
                found.append(GuestNic(dom, number, iface, bridge=src.get("bridge")))
            elif iface.type == "direct":
                devs: tuple[str, ...] = (src["dev"],) if src.get("dev") else ()
                found.append(
                    GuestNic(dom, number, iface, macvtap_devs=devs, macvtap_mode=_mode(src))
                )
            elif iface.type == "network":
                net = networks.get(src.get("network")) if networks is not None else None
                if net is not None and net.uses_macvtap:
                    devs = net.forward_interfaces or ((net.forward_dev,) if net.forward_dev else ())
                    mode = "passthru" if net.forward_mode == "passthrough" else net.forward_mode
                    found.append(
                        GuestNic(dom, number, iface, net, macvtap_devs=devs, macvtap_mode=mode)
                    )
                else:
                    bridge = src.get("bridge") or (net.bridge if net is not None else None)
                    found.append(GuestNic(dom, number, iface, net, bridge=bridge))
            else:
                found.append(GuestNic(dom, number, iface))
    return found


def _mode(source: dict[str, str]) -> str:
    return source.get("mode") or "vepa"  # libvirt's default for type='direct'


def guest_bridges(nics: Iterable[GuestNic], networks: Optional[Networks]) -> dict[str, list[str]]:
    """bridge -> who uses it (domain:NAME, network:NAME)."""
    users: dict[str, list[str]] = {}
    for nic in nics:
        net = nic.network
        if net is not None and net.libvirt_bridge and not net.active:
            continue  # libvirt makes that bridge only when the network starts
        if nic.bridge:
            users.setdefault(nic.bridge, [])
            if nic.domain.subject not in users[nic.bridge]:
                users[nic.bridge].append(nic.domain.subject)
    for net in networks.items if networks is not None else ():
        if net.bridge and (net.active or not net.libvirt_bridge):
            users.setdefault(net.bridge, []).append(net.subject)
    return users


def _by_domain(nics: Iterable[GuestNic]) -> dict[str, list[GuestNic]]:
    grouped: dict[str, list[GuestNic]] = {}
    for nic in nics:
        grouped.setdefault(nic.domain.name, []).append(nic)
    return grouped


def _domain_evidence(dom: Domain, links: Optional[Links] = None) -> dict[str, Any]:
    out: dict[str, Any] = {"domain": dom.name, "active": dom.active, "origin": dom.origin}
    if links is not None:
        out["links_from"] = links.origin
    return out


def _aggregate(
    dom: Domain,
    results: list[tuple[Status, str, dict[str, Any]]],
    evidence: dict[str, Any],
) -> Finding:
    """One finding per domain: the worst status; the problems first in the message."""
    status = worst([s for s, _, _ in results])
    shown = [m for s, m, _ in results if s == status] or [m for _, m, _ in results]
    evidence = {**evidence, "interfaces": [e for _, _, e in results]}
    return Finding(status, "; ".join(shown), subject=dom.subject, evidence=evidence)


def _worst_first(results: list[tuple[Status, str]]) -> list[str]:
    """The messages of a subject's problems, the worst first; the passing ones only when
    nothing is wrong."""
    problems = [(s, m) for s, m in results if s not in ("pass", "skip")]
    if not problems:
        status = worst([s for s, _ in results])
        return [m for s, m in results if s == status]
    return [m for _, m in sorted(problems, key=lambda p: -SEVERITY[p[0]])]


def _not_here(domains: Domains) -> Finding:
    return Finding(
        "pass",
        f"the domains of {domains.origin} do not run on this host: their "
        "bridges, taps and devices are not compared with this host's links",
        evidence={"domains": domains.origin},
    )


def _link(links: Links, name: Optional[str]) -> Optional[dict[str, Any]]:
    link = links.get(name)
    return link.summary() if link is not None else None


# --- NET001 ---------------------------------------------------------------------------------


def _bridge_problem(
    links: Links, bridge: str, virtualport: Optional[str], tap: str
) -> tuple[Status, str]:
    link = links.get(bridge)
    if link is None:
        said = LIBVIRT_NO_BRIDGE.format(bridge=bridge)
        return "fail", f"bridge '{bridge}' does not exist (libvirt: \"{said}\")"
    if link.is_ovs:
        if virtualport == "openvswitch":
            return "pass", f"'{bridge}' is an Open vSwitch bridge, used with virtualport"
        said = LIBVIRT_NOT_BRIDGE.format(bridge=bridge, tap=tap)
        return "fail", (
            f"'{bridge}' is an Open vSwitch bridge but the XML lacks "
            f"<virtualport type='openvswitch'/> (libvirt: \"{said}\")"
        )
    if link.is_bridge:
        if virtualport == "openvswitch":
            return "fail", (
                f"'{bridge}' is a Linux bridge but the XML asks for Open vSwitch "
                "(<virtualport type='openvswitch'/>): ovs-vsctl cannot add the port"
            )
        return "pass", f"'{bridge}' is a Linux bridge"
    said = LIBVIRT_NOT_BRIDGE.format(bridge=bridge, tap=tap)
    return "fail", f"'{bridge}' is not a bridge (libvirt: \"{said}\")"


@check(
    "NET001",
    "bridge-source-invalid",
    title="A domain or network names a bridge that is missing or not a bridge",
    tags=("network", "domain", "libvirt"),
)
def bridge_source_invalid(
    links: Links, domains: Optional[Domains] = None, networks: Optional[Networks] = None
) -> Iterator[Finding]:
    """What it checks: every `<interface type='bridge'><source bridge='NAME'/>` of every
    domain (defined or running) and every libvirt network that uses a host bridge
    (`<forward mode='bridge'/><bridge name='NAME'/>`), and the bridge of every active
    libvirt-managed network: that NAME exists and is a Linux bridge, or an Open vSwitch bridge
    together with `<virtualport type='openvswitch'/>`. The link's kind comes from netlink, or
    from /sys/class/net when kvmdoctor reads a tree.

    Why it matters: libvirt refuses to start the domain. A missing bridge gives "Cannot get
    interface MTU on 'br0': No such device"; a NIC that is not a bridge (the physical eth0
    named instead of the bridge on it) gives "Unable to add bridge eth0 port vnet0: Operation
    not supported"; an OVS bridge without virtualport fails the same way.

    How to fix: create the bridge and move the host's address onto it (NetworkManager:
    `nmcli con add type bridge ifname br0` and `nmcli con add type bridge-slave ifname eth0
    master br0`; ifupdown: a `bridge_ports eth0` stanza), or point the domain at the right
    name with `virsh edit`. For Open vSwitch add `<virtualport type='openvswitch'/>` to the
    interface.

    References: https://libvirt.org/formatdomain.html#bridge-to-lan
    https://docs.openvswitch.org/en/latest/howto/libvirt/
    """
    if domains is not None and not domains.local:
        yield _not_here(domains)
        return
    nics = guest_nics(domains, networks)
    seen = False
    for group in _by_domain(nics).values():
        results: list[tuple[Status, str, dict[str, Any]]] = []
        for nic in group:
            if nic.iface.type != "bridge":
                continue
            if not nic.bridge:
                results.append(
                    (
                        "fail",
                        f"{nic.label}: type='bridge' without <source bridge=...>",
                        nic.as_dict(),
                    )
                )
                continue
            tap = nic.iface.target or "vnetN"
            status, text = _bridge_problem(links, nic.bridge, nic.iface.virtualport, tap)
            evidence = {**nic.as_dict(), "link": _link(links, nic.bridge)}
            results.append((status, f"{nic.label}: {text}", evidence))
        if results:
            seen = True
            dom = group[0].domain
            yield _aggregate(dom, results, _domain_evidence(dom, links))
    for net in networks.items if networks is not None else ():
        if not net.bridge:
            continue
        if net.libvirt_bridge and not net.active:
            continue  # libvirt creates it when the network starts
        seen = True
        evidence = {"network": net.as_dict(), "link": _link(links, net.bridge)}
        if net.libvirt_bridge:
            link = links.get(net.bridge)
            if link is None:
                status, text = (
                    "fail",
                    f"the network is active but its bridge '{net.bridge}' is gone: its guests "
                    "are cut off (virsh net-destroy and net-start recreate it)",
                )
            elif not link.is_bridge:
                status, text = "fail", f"'{net.bridge}' is {link.kind or 'a NIC'}, not a bridge"
            else:
                status, text = "pass", f"bridge '{net.bridge}' exists"
        else:
            status, text = _bridge_problem(links, net.bridge, net.virtualport, "vnetN")
        yield Finding(
            status, text, subject=net.subject, evidence={**evidence, "links_from": links.origin}
        )
    if not seen:
        yield Finding(
            "pass",
            "no domain or network names a bridge",
            evidence={"links_from": links.origin, "domains": domains is not None},
        )


# --- NET002 ---------------------------------------------------------------------------------


@check(
    "NET002",
    "tap-not-on-bridge",
    title="A running guest's tap is not on the bridge its XML names",
    tags=("network", "domain"),
)
def tap_not_on_bridge(
    links: Links, domains: Domains, networks: Optional[Networks] = None
) -> Iterator[Finding]:
    """What it checks: for every running domain, that each bridge-backed interface's tap
    (`<target dev='vnetN'/>` in the live XML) exists and is enslaved to the bridge the XML
    names (the live `<source bridge=...>`, or the network's bridge). A tap on an Open vSwitch
    bridge is enslaved to the datapath device `ovs-system`.

    Why it matters: the guest runs and its link is up, but its frames go nowhere: a tap that
    was detached (by a network restart, `ip link set vnet0 nomaster`, a bridge that was
    deleted and re-created, NetworkManager taking the bridge over) silently cuts it off.

    How to fix: re-attach the tap (`ip link set vnetN master br0`) or detach and re-attach the
    interface (`virsh domif-setlink DOMAIN vnetN down` then `up` does not re-enslave; use
    `virsh detach-interface` / `attach-interface`, or restart the guest). Find what removed
    it: a network manager that owns the bridge is the usual cause.

    References: https://libvirt.org/formatdomain.html#bridge-to-lan
    https://man7.org/linux/man-pages/man8/ip-link.8.html
    """
    if domains is not None and not domains.local:
        yield _not_here(domains)
        return
    nics = [n for n in guest_nics(domains, networks) if n.domain.active and n.bridge]
    for group in _by_domain(nics).values():
        results: list[tuple[Status, str, dict[str, Any]]] = []
        for nic in group:
            tap = nic.iface.target
            evidence = {**nic.as_dict(), "tap": _link(links, tap), "expected_bridge": nic.bridge}
            if not tap:
                results.append(("skip", f"{nic.label}: the live XML names no tap", evidence))
                continue
            link = links.get(tap)
            expected = nic.bridge
            if link is None:
                results.append(("fail", f"{nic.label}: tap {tap} does not exist", evidence))
            elif nic.iface.virtualport == "openvswitch":
                if link.slave_kind == "openvswitch" or link.master == "ovs-system":
                    results.append(
                        ("pass", f"{nic.label}: {tap} is an Open vSwitch port", evidence)
                    )
                else:
                    results.append(
                        (
                            "fail",
                            f"{nic.label}: {tap} is not an Open vSwitch port "
                            f"(master: {link.master or 'none'}; expected {expected})",
                            evidence,
                        )
                    )
            elif link.master is None:
                results.append(
                    (
                        "fail",
                        f"{nic.label}: tap {tap} is not enslaved to any bridge "
                        f"(expected {expected}): the guest is cut off",
                        evidence,
                    )
                )
            elif link.master != expected:
                results.append(
                    (
                        "fail",
                        f"{nic.label}: tap {tap} is on {link.master}, not on {expected}",
                        evidence,
                    )
                )
            else:
                results.append(("pass", f"{nic.label}: {tap} is a port of {expected}", evidence))
        dom = group[0].domain
        yield _aggregate(dom, results, _domain_evidence(dom, links))
    if not nics:
        yield Finding(
            "pass",
            "no running domain has a bridge-backed interface",
            evidence={"domains": domains.as_dict(), "links_from": links.origin},
        )


# --- NET003 ---------------------------------------------------------------------------------


@check(
    "NET003",
    "bridge-port-not-forwarding",
    title="A bridge port does not forward, or STP delays new guests",
    tags=("network",),
)
def bridge_port_not_forwarding(
    links: Links, domains: Optional[Domains] = None, networks: Optional[Networks] = None
) -> Iterator[Finding]:
    """What it checks: the state of every port of every Linux bridge (disabled, listening,
    learning, forwarding, blocking) and each bridge's STP settings. A port in listening,
    learning or blocking drops guest traffic; a running guest's tap that is disabled (the
    bridge is down, or the tap has no carrier because no QEMU holds it) too. A bridge with STP
    on and a forward delay above 2 s keeps every new port silent for twice that delay.

    Why it matters: the guest boots, its DHCP requests time out and it has no network, while
    everything looks connected: the kernel drops the frames at the bridge
    (BRIDGE_INGRESS_STP_STATE). With STP on and the default 15 s delay a new guest waits 30 s
    before its first frame passes.

    How to fix: bring the bridge up (`ip link set br0 up`). Unless the bridge joins loops
    that need STP, turn it off or shorten the delay: `ip link set br0 type bridge stp_state 0`
    (or `forward_delay 200`), in NetworkManager `nmcli con mod br0 bridge.stp no`, for a
    libvirt network `<bridge stp='off' delay='0'/>`. A port stuck in blocking is STP doing
    its job: find the loop.

    References: https://docs.kernel.org/networking/bridge.html
    https://libvirt.org/formatnetwork.html#connectivity
    """
    nics = guest_nics(domains, networks)
    guest_taps = {
        n.iface.target: n.domain.subject for n in nics if n.domain.active and n.iface.target
    }
    users = guest_bridges(nics, networks)
    bridges = links.by_kind("bridge")
    for bridge in bridges:
        info = bridge.bridge
        ports = links.ports(bridge.name)
        evidence: dict[str, Any] = {
            "bridge": bridge.summary(),
            "stp": info.stp if info else None,
            "stp_state": info.stp_state if info else None,
            "forward_delay_s": info.forward_delay if info else None,
            "ports": {p.name: p.port.state if p.port else None for p in ports},
            "used_by": users.get(bridge.name, []),
            "links_from": links.origin,
        }
        status: Status = "pass"
        problems = []
        if not bridge.admin_up and any(p.name in guest_taps for p in ports):
            status = "fail"
            problems.append(
                f"bridge {bridge.name} is down: its ports are disabled (ip link set "
                f"{bridge.name} up)"
            )
        if info and info.stp and (info.forward_delay or 0) > STP_DELAY_OK:
            status = worst([status, "warn"])
            problems.append(
                f"STP is on with a forward delay of {info.forward_delay:g} s: every new port "
                f"(a starting guest) waits {2 * (info.forward_delay or 0):g} s before it forwards"
            )
        for port in ports:
            state = port.port.state if port.port else None
            guest = guest_taps.get(port.name)
            port_evidence = {
                "port": port.summary(),
                "bridge": bridge.name,
                "state": state,
                "guest": guest,
                "stp": info.stp if info else None,
                "forward_delay_s": info.forward_delay if info else None,
                "links_from": links.origin,
            }
            subject = f"iface:{port.name}"
            owner = f" ({guest})" if guest else ""
            if state in ("listening", "learning"):
                wait = f"; STP forward delay {info.forward_delay:g} s" if info and info.stp else ""
                yield Finding(
                    "fail",
                    f"{port.name}{owner} on {bridge.name} is {state}: it drops guest traffic "
                    f"until STP lets it forward{wait}",
                    subject=subject,
                    evidence=port_evidence,
                )
            elif state == "blocking":
                yield Finding(
                    "fail",
                    f"{port.name}{owner} on {bridge.name} is blocking: STP found a loop through it",
                    subject=subject,
                    evidence=port_evidence,
                )
            elif state == "disabled" and guest:
                why = (
                    f"the bridge {bridge.name} is down"
                    if not bridge.admin_up
                    else "the tap has no carrier (no QEMU attached?)"
                    if port.carrier is False
                    else "it is down"
                )
                yield Finding(
                    "fail",
                    f"{port.name} of {guest} on {bridge.name} is disabled: {why}",
                    subject=subject,
                    evidence=port_evidence,
                )
            elif state == "disabled":
                yield Finding(
                    "info",
                    f"{port.name} on {bridge.name} is disabled (the port is down)",
                    subject=subject,
                    evidence=port_evidence,
                )
        forwarding = sum(1 for p in ports if p.port and p.port.state == "forwarding")
        text = "; ".join(problems) or (
            f"{forwarding} of {len(ports)} ports forwarding; STP "
            + ("off" if not (info and info.stp) else f"on, forward delay {info.forward_delay:g} s")
        )
        yield Finding(
            status, f"{bridge.name}: {text}", subject=f"iface:{bridge.name}", evidence=evidence
        )
    if not bridges:
        yield Finding("pass", "no Linux bridge on this host", evidence={"links_from": links.origin})


# --- NET004 ---------------------------------------------------------------------------------


@check(
    "NET004",
    "ip-forward-disabled",
    title="A NAT or routed network is active but IP forwarding is off",
    tags=("network", "libvirt"),
)
def ip_forward_disabled(networks: Networks, sysctl: Sysctls) -> Iterator[Finding]:
    """What it checks: for every active libvirt network in `nat` or `route` mode, that
    net.ipv4.ip_forward is 1 (and net.ipv6.conf.all.forwarding when the network has IPv6
    addresses), at runtime and in the configuration applied at boot: the sysctl.d files in
    systemd-sysctl's order and /etc/sysctl.conf, naming the file and line that wins.

    Why it matters: guests reach the host but nothing beyond it; pings to the outside get
    "Destination Host Unreachable" from the host (the kernel drops with IP_INADDRERRORS).
    libvirt sets ip_forward=1 when it starts the network, so a 0 means something reset it
    afterwards: `sysctl --system` with a file that says 0, a firewall or container tool, or a
    hardening profile.

    How to fix: `sysctl -w net.ipv4.ip_forward=1` now, and remove or change the persisted
    `net.ipv4.ip_forward = 0` in the file the finding names (or add a later file, e.g.
    /etc/sysctl.d/99-libvirt-forward.conf, with `net.ipv4.ip_forward = 1`).

    References: https://libvirt.org/firewall.html
    https://docs.kernel.org/networking/ip-sysctl.html
    https://www.freedesktop.org/software/systemd/man/latest/sysctl.d.html
    """
    routed = [n for n in networks.items if n.active and n.forward_mode in ("nat", "route")]
    for net in routed:
        results: list[tuple[Status, str]] = []
        evidence: dict[str, Any] = {
            "network": net.name,
            "forward_mode": net.forward_mode,
            "subnets": [ip.subnet for ip in net.ips],
            "config_files": list(sysctl.files),
        }
        wanted = ["net.ipv4.ip_forward"] if net.subnets("ipv4") or not net.ips else []
        if net.subnets("ipv6"):
            wanted.append("net.ipv6.conf.all.forwarding")
        for name in wanted:
            value = sysctl.get(name)
            evidence[name] = value.as_dict()
            if value.runtime is None:
                results.append(
                    ("skip", f"{name} cannot be read at runtime ({value.runtime_error})")
                )
            elif value.runtime != "1":
                results.append(
                    (
                        "fail",
                        f"{name} = {value.runtime}: the host does not route for {net.name}'s "
                        "guests; they reach the host and nothing beyond it",
                    )
                )
            if value.persisted is not None and value.persisted != "1":
                results.append(
                    (
                        "warn",
                        f"{value.persisted_in} sets {name} = {value.persisted}: the next "
                        "`sysctl --system` or boot turns forwarding off again",
                    )
                )
            elif value.runtime == "1":
                results.append(("pass", f"{name} = 1"))
        status = worst([s for s, _ in results])
        shown = _worst_first(results)
        yield Finding(
            status, f"{net.name}: " + "; ".join(shown), subject=net.subject, evidence=evidence
        )
    if not routed:
        yield Finding(
            "pass",
            "no active NAT or routed libvirt network needs IP forwarding",
            evidence={
                "networks": networks.as_dict(),
                "net.ipv4.ip_forward": sysctl.get("net.ipv4.ip_forward").as_dict(),
            },
        )


# --- NET005 ---------------------------------------------------------------------------------


def _families(tool: str, ipv6: bool) -> tuple[str, ...]:
    if tool == "nft":
        return ("ip6", "inet") if ipv6 else ("ip", "inet")
    if tool.startswith("ip6"):
        return ("ip6",) if ipv6 else ()
    return () if ipv6 else ("ip",)


@check(
    "NET005",
    "bridge-netfilter-drops-guests",
    title="br_netfilter sends bridged guest traffic into a FORWARD chain that drops it",
    tags=("network",),
)
def bridge_netfilter_drops_guests(
    sysctl: Sysctls,
    firewall: Optional[Firewall] = None,
    links: Optional[Links] = None,
    domains: Optional[Domains] = None,
    networks: Optional[Networks] = None,
) -> Iterator[Finding]:
    """What it checks: whether br_netfilter is loaded and passes bridged frames to iptables
    (net.bridge.bridge-nf-call-iptables = 1, or the bridge's own nf_call_iptables), and if so
    what the FORWARD hook does with traffic from each guest bridge to itself: the rules of
    every view of the firewall (nft's base chains on the forward hook, iptables-save's
    FORWARD chain) are followed, jumps included, until a rule or the policy decides. Rules
    that match only some of the traffic (connection state, addresses) are listed but do not
    decide.

    Why it matters: guests on a host bridge lose their network (ARP still works, IP does
    not) as soon as Docker or a firewall sets the FORWARD policy to DROP: with br_netfilter,
    frames between two ports of one bridge traverse FORWARD as if they were routed. libvirt's
    NAT networks add their own ACCEPT rules, host bridges get none.

    How to fix: accept the bridge's traffic before the drop, e.g. `iptables -I FORWARD -i br0
    -o br0 -j ACCEPT` (with Docker, in the DOCKER-USER chain), or stop bridged frames from
    reaching iptables: `sysctl -w net.bridge.bridge-nf-call-iptables=0` (persist it in
    /etc/sysctl.d) unless something on the host needs it (Kubernetes does).

    References: https://wiki.libvirt.org/Net.bridge.bridge-nf-call_and_sysctl.conf.html
    https://docs.docker.com/engine/network/packet-filtering-firewalls/
    """
    loaded = sysctl.br_netfilter
    call4 = sysctl.get("net.bridge.bridge-nf-call-iptables")
    call6 = sysctl.get("net.bridge.bridge-nf-call-ip6tables")
    base: dict[str, Any] = {
        "br_netfilter_loaded": loaded,
        "net.bridge.bridge-nf-call-iptables": call4.as_dict(),
        "net.bridge.bridge-nf-call-ip6tables": call6.as_dict(),
    }
    if loaded is False:
        yield Finding(
            "pass",
            "br_netfilter is not loaded: bridged frames do not traverse iptables",
            evidence=base,
        )
        return
    nics = guest_nics(domains, networks)
    users = guest_bridges(nics, networks)
    if domains is None and networks is None and links is not None:
        users = {b.name: [] for b in links.by_kind("bridge")}
    if not users:
        yield Finding("pass", "no bridge carries guests", evidence=base)
        return
    for bridge, used_by in sorted(users.items()):
        link = links.get(bridge) if links is not None else None
        info = link.bridge if link is not None else None
        evidence = {**base, "bridge": bridge, "used_by": used_by}
        if link is not None:
            evidence["bridge_nf_call_iptables"] = info.nf_call_iptables if info else None
        families = []
        if call4.runtime == "1" or (info and info.nf_call_iptables):
            families.append(False)
        if call6.runtime == "1" or (info and info.nf_call_ip6tables):
            families.append(True)
        if not families:
            if call4.runtime is None and loaded is None:
                yield Finding(
                    "skip",
                    f"{bridge}: bridge-nf-call-iptables cannot be read ({call4.runtime_error})",
                    subject=f"iface:{bridge}",
                    evidence=evidence,
                )
            else:
                yield Finding(
                    "pass",
                    f"{bridge}: bridged frames do not go through iptables "
                    "(bridge-nf-call-iptables and -ip6tables are 0)",
                    subject=f"iface:{bridge}",
                    evidence=evidence,
                )
            continue
        if firewall is None:
            yield Finding(
                "skip",
                f"{bridge}: bridged frames go through iptables but the rules cannot be read",
                subject=f"iface:{bridge}",
                evidence=evidence,
            )
            continue
        verdicts: list[tuple[str, Verdict]] = []
        for view in firewall.views:
            for ipv6 in families:
                fams = _families(view.tool, ipv6)
                if not fams:
                    continue
                verdict = view.verdict("forward", fams, bridge, bridge)
                if verdict is not None:
                    label = f"{view.tool} ({'IPv6' if ipv6 else 'IPv4'})"
                    verdicts.append((label, verdict))
        evidence["verdicts"] = {label: v.as_dict() for label, v in verdicts}
        evidence["firewall_errors"] = dict(firewall.errors)
        drops = [(label, v) for label, v in verdicts if v.verdict == "drop"]
        if drops:
            label, verdict = drops[0]
            some = (
                f"; only these accept some of it: {', '.join(verdict.conditional)}"
                if (verdict.conditional)
                else ""
            )
            yield Finding(
                "fail",
                f"{bridge}: br_netfilter passes traffic between its guests to FORWARD, and "
                f"{label} drops it ({verdict.by}){some}",
                subject=f"iface:{bridge}",
                evidence=evidence,
            )
        else:
            how = ", ".join(f"{label}: {v.by}" for label, v in verdicts) or "no FORWARD rules"
            yield Finding(
                "pass",
                f"{bridge}: FORWARD accepts traffic between its ports ({how})",
                subject=f"iface:{bridge}",
                evidence=evidence,
            )


# --- NET006 / NET007 ------------------------------------------------------------------------

WAYS_OUT = (
    "put the host's address on a bridge and attach guests to the bridge instead; give the host "
    "a macvlan in bridge mode on the same device and move its address there; or add a second "
    "guest NIC on an isolated libvirt network for host-guest traffic"
)


def _macvtap_groups(
    domains: Domains, networks: Optional[Networks], links: Links
) -> list[tuple[Domain, list[tuple[GuestNic, str, Optional[Link], dict[str, Any]]]]]:
    """Per domain with macvtap NICs: each (NIC, macvtap source device, the device's link or
    None, the evidence NET006 and NET007 both start from)."""
    nics = [n for n in guest_nics(domains, networks) if n.macvtap_devs]
    groups = []
    for group in _by_domain(nics).values():
        uses = []
        for nic in group:
            for dev in nic.macvtap_devs:
                link = links.get(dev)
                evidence = {**nic.as_dict(), "device": link.summary() if link else None}
                uses.append((nic, dev, link, evidence))
        groups.append((group[0].domain, uses))
    return groups


@check(
    "NET006",
    "macvtap-host-isolation",
    title="macvtap guests cannot reach the host over the device they sit on",
    tags=("network", "domain"),
)
def macvtap_host_isolation(
    links: Links, domains: Domains, networks: Optional[Networks] = None
) -> Iterator[Finding]:
    """What it checks: every guest interface that uses macvtap (`type='direct'`, or a libvirt
    network in bridge, private, vepa or passthrough mode without a bridge) and whether the
    device under it carries the host's own IP address. VEPA mode is flagged too: it sends
    guest-to-guest traffic to the external switch and back.

    Why it matters: by design a macvtap device cannot talk to its own lower device: the guest
    reaches the LAN and the LAN reaches the guest, but host and guest cannot reach each other
    over that device, however the firewall is set. In VEPA mode even guests on the same
    device see each other only if the switch port does hairpin ("reflective relay").

    How to fix: nothing is broken; pick a design that gives the host a path: a host bridge
    instead of macvtap, a macvlan interface in bridge mode for the host on the same device
    (`ip link add macvlan0 link eth0 type macvlan mode bridge`, with the host's address moved
    to it), or a second guest interface on an isolated libvirt network. For VEPA, enable
    reflective relay on the switch port or use `mode='bridge'`.

    References: https://libvirt.org/formatdomain.html#direct-attachment-to-physical-interface
    https://wiki.libvirt.org/TroubleshootMacvtapHostFail.html
    """
    if domains is not None and not domains.local:
        yield _not_here(domains)
        return
    groups = _macvtap_groups(domains, networks, links)
    for dom, uses in groups:
        results: list[tuple[Status, str, dict[str, Any]]] = []
        for nic, dev, link, evidence in uses:
            if link is None:
                results.append(
                    ("skip", f"{nic.label}: {dev} does not exist (see NET007)", evidence)
                )
                continue
            addresses = link.host_addresses()
            notes = []
            status: Status = "pass"
            if link.addresses is None:
                status = "skip"
                notes.append(f"the addresses of {dev} are not known ({links.origin})")
            elif addresses:
                status = "warn"
                notes.append(
                    f"{dev} carries the host's address {', '.join(addresses)}: by design "
                    f"the guest and the host cannot reach each other over it (macvtap "
                    f"mode {nic.macvtap_mode}); {WAYS_OUT}"
                )
            if nic.macvtap_mode == "vepa":
                status = worst([status, "warn"])
                notes.append(
                    f"VEPA mode sends guest-to-guest traffic out of {dev}: the switch port "
                    "must hairpin (reflective relay), or use mode='bridge'"
                )
            if not notes:
                notes.append(f"{dev} carries no host address; mode {nic.macvtap_mode}")
            results.append((status, f"{nic.label}: " + "; ".join(notes), evidence))
        yield _aggregate(dom, results, _domain_evidence(dom, links))
    if not groups:
        yield Finding("pass", "no guest uses macvtap", evidence={"domains": domains.as_dict()})


@check(
    "NET007",
    "macvtap-on-enslaved-device",
    title="A macvtap guest sits on a bridge port or bond slave",
    tags=("network", "domain"),
)
def macvtap_on_enslaved_device(
    links: Links, domains: Domains, networks: Optional[Networks] = None
) -> Iterator[Finding]:
    """What it checks: that the device under each macvtap guest interface exists and is not
    itself enslaved: not a port of a bridge, a bond or Open vSwitch.

    Why it matters: the kernel refuses a macvtap on an enslaved device, so the domain does not
    start: "error creating macvtap interface macvtap0@eth0 (52:54:00:...): Device or resource
    busy". It happens after eth0 was put into a bridge or bond and old definitions still
    name it.

    How to fix: attach the guest to what now owns the device: `<interface type='bridge'>
    <source bridge='br0'/>` when eth0 is a bridge port, or `<source dev='bond0'
    mode='bridge'/>` when it is a bond slave.

    References: https://libvirt.org/formatdomain.html#direct-attachment-to-physical-interface
    https://docs.kernel.org/networking/bonding.html
    """
    if domains is not None and not domains.local:
        yield _not_here(domains)
        return
    groups = _macvtap_groups(domains, networks, links)
    for dom, uses in groups:
        results: list[tuple[Status, str, dict[str, Any]]] = []
        for nic, dev, link, evidence in uses:
            if link is None:
                results.append(
                    ("fail", f"{nic.label}: the macvtap device {dev} does not exist", evidence)
                )
            elif link.master is not None:
                what = link.slave_kind or "master"
                use = (
                    f"<interface type='bridge'><source bridge='{link.master}'/>"
                    if what == "bridge"
                    else f"<source dev='{link.master}' mode='bridge'/>"
                )
                results.append(
                    (
                        "fail",
                        f"{nic.label}: {dev} is enslaved to {link.master} ({what}): "
                        f'the macvtap cannot be created ("{MACVTAP_BUSY}"); use {use}',
                        evidence,
                    )
                )
            else:
                results.append(("pass", f"{nic.label}: {dev} is not enslaved", evidence))
        yield _aggregate(dom, results, _domain_evidence(dom, links))
    if not groups:
        yield Finding("pass", "no guest uses macvtap", evidence={"domains": domains.as_dict()})


# --- NET008 / NET009 ------------------------------------------------------------------------


def _bond_bridges(links: Links, bond: Link) -> list[str]:
    """Bridges the bond carries: as a port itself, or through a VLAN on it."""
    found = []
    master = links.get(bond.master)
    if master is not None and master.is_bridge:
        found.append(master.name)
    for link in links.items:
        if link.lower == bond.name and link.master:
            master = links.get(link.master)
            if master is not None and master.is_bridge:
                found.append(master.name)
    return found


@check(
    "NET008",
    "bond-mode-unsuited-for-bridge",
    title="A bond in balance-rr, balance-tlb or balance-alb carries a bridge with guests",
    tags=("network",),
)
def bond_mode_unsuited_for_bridge(
    links: Links, domains: Optional[Domains] = None, networks: Optional[Networks] = None
) -> Iterator[Finding]:
    """What it checks: the mode of every bond that is a port of a Linux bridge (directly or
    through a VLAN on it), and whether guests use that bridge.

    Why it matters: balance-rr (mode 0) sends one flow over several links, so the switch sees
    guest MACs flap between ports and frames arrive out of order or twice; balance-tlb and
    balance-alb (modes 5 and 6) rewrite source MACs and answer ARP with the slaves' MACs,
    which guests behind a bridge do not survive: they lose connectivity intermittently or
    receive nothing at all.

    How to fix: use active-backup (mode 1) for a bond under a bridge, or 802.3ad (mode 4) with
    LACP configured on the switch; balance-xor (mode 2) works with a static switch
    aggregation. Change it in the bond's configuration (NetworkManager `nmcli con mod bond0
    bond.options mode=active-backup,miimon=100`).

    References: https://docs.kernel.org/networking/bonding.html
    https://access.redhat.com/solutions/67546
    """
    users = guest_bridges(guest_nics(domains, networks), networks)
    bonds = links.by_kind("bond")
    for bond in bonds:
        info = bond.bond
        mode = info.mode if info else None
        bridges = _bond_bridges(links, bond)
        guests = {b: users.get(b, []) for b in bridges}
        evidence = {
            "bond": bond.name,
            "mode": mode,
            "mode_from": info.source if info else None,
            "bridges": guests,
            "links_from": links.origin,
        }
        subject = f"iface:{bond.name}"
        if not bridges:
            yield Finding(
                "pass",
                f"{bond.name} ({mode}) carries no bridge",
                subject=subject,
                evidence=evidence,
            )
        elif mode in UNSUITED_BOND_MODES:
            used = [u for us in guests.values() for u in us]
            if used:
                yield Finding(
                    "fail",
                    f"{bond.name} is in {mode} mode and carries {', '.join(bridges)}, used by "
                    f"{', '.join(used)}: guests behind it lose frames or connectivity; use "
                    "active-backup or 802.3ad",
                    subject=subject,
                    evidence=evidence,
                )
            else:
                yield Finding(
                    "warn",
                    f"{bond.name} is in {mode} mode and carries {', '.join(bridges)}: guests "
                    "put on it will lose frames; use active-backup or 802.3ad",
                    subject=subject,
                    evidence=evidence,
                )
        else:
            yield Finding(
                "pass",
                f"{bond.name} ({mode}) suits the bridge {', '.join(bridges)}",
                subject=subject,
                evidence=evidence,
            )
    if not bonds:
        yield Finding("pass", "no bond on this host", evidence={"links_from": links.origin})


@check(
    "NET009",
    "bond-degraded",
    title="A bond has slaves down or no LACP partner",
    tags=("network", "host"),
)
def bond_degraded(links: Links) -> Iterator[Finding]:
    """What it checks: every bond's slaves (MII status) and, for 802.3ad, the active
    aggregator: whether a partner answered LACP (a partner MAC other than 00:00:00:00:00:00)
    and whether every slave joined the active aggregator. /proc/net/bonding is read where it
    exists; otherwise netlink's bond data, or /sys/class/net/BOND/bonding.

    Why it matters: a bond with a slave down has lost its redundancy and half its bandwidth,
    usually unnoticed until the other link fails. An 802.3ad bond without a partner runs on
    one link (or none) because the switch ports are not configured for LACP; slaves left in
    another aggregator carry no traffic.

    How to fix: check cabling and the switch ports of the down slaves (`ethtool SLAVE`);
    configure the switch ports as one LACP group (port-channel / LAG, mode active); make the
    bond's lacp_rate match the switch's.

    References: https://docs.kernel.org/networking/bonding.html
    """
    bonds = links.by_kind("bond")
    for bond in bonds:
        info = bond.bond
        subject = f"iface:{bond.name}"
        evidence: dict[str, Any] = {"bond": bond.name, "links_from": links.origin}
        if info is None:
            yield Finding("skip", f"{bond.name}: no bond data", subject=subject, evidence=evidence)
            continue
        evidence["bonding"] = asdict(info)
        results: list[tuple[Status, str]] = []
        slaves = info.slaves
        down = [s.name for s in slaves if s.mii_status not in (None, "up")]
        unknown = [s.name for s in slaves if s.mii_status is None]
        if not slaves:
            results.append(("fail", "it has no slaves"))
        elif len(down) == len(slaves):
            results.append(("fail", f"all slaves are down ({', '.join(down)})"))
        elif down:
            results.append(
                (
                    "warn",
                    f"{len(down)} of {len(slaves)} slaves down ({', '.join(down)}): "
                    "no redundancy left",
                )
            )
        if info.mii_status not in (None, "up"):
            results.append(("fail", f"the bond's MII status is {info.mii_status}"))
        if info.mode == "802.3ad":
            agg = info.aggregator
            if info.no_active_aggregator:
                results.append(("fail", "802.3ad: the bond has no active aggregator"))
            elif agg is not None and agg.partner_negotiated is False:
                results.append(
                    (
                        "fail",
                        "802.3ad: no LACP partner (partner MAC 00:00:00:00:00:00): the "
                        "switch ports do not speak LACP",
                    )
                )
            if agg is not None and agg.id is not None:
                outside = [
                    f"{s.name} (aggregator {s.aggregator_id})"
                    for s in slaves
                    if s.aggregator_id is not None and s.aggregator_id != agg.id
                ]
                if outside:
                    results.append(
                        (
                            "warn",
                            f"802.3ad: not in the active aggregator {agg.id}: {', '.join(outside)}",
                        )
                    )
        if not results:
            text = f"{len(slaves)} slaves up"
            if unknown:
                text = f"{len(slaves) - len(unknown)} slaves up, {len(unknown)} of unknown state"
            if info.mode == "802.3ad" and info.aggregator and info.aggregator.partner_mac:
                text += f"; LACP partner {info.aggregator.partner_mac}"
            results.append(("pass", text))
        status = worst([s for s, _ in results])
        shown = _worst_first(results)
        evidence["problems"] = [m for s, m in results if s != "pass"]
        yield Finding(
            status,
            f"{bond.name} ({info.mode}, from {info.source or links.origin}): " + "; ".join(shown),
            subject=subject,
            evidence=evidence,
        )
    if not bonds:
        yield Finding("pass", "no bond on this host", evidence={"links_from": links.origin})


# --- NET010 ---------------------------------------------------------------------------------


_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def _is_multicast(mac: str) -> bool:
    try:
        return bool(int(mac.split(":")[0], 16) & 1)
    except ValueError:
        return False


@check(
    "NET010",
    "duplicate-mac",
    title="Two guests, or a guest and the host, share a MAC; or a MAC is multicast",
    tags=("network", "domain", "definition"),
)
def duplicate_mac(domains: Domains, links: Optional[Links] = None) -> Iterator[Finding]:
    """What it checks: the MAC of every guest interface of every domain (defined and
    running) against every other guest interface, against the MACs of the host's interfaces
    (other than the guests' own taps and macvtap devices), whether a guest's tap carries the
    guest's own MAC (libvirt gives taps fe:xx:... so the bridge never sees the guest's MAC
    as its own), and whether a MAC is multicast (lowest bit of the first octet set). A MAC
    that several interfaces carry is one finding about `mac:ADDRESS`, naming its domains (the
    first few in the message, up to 50 in the evidence, and how many in all), not one finding
    per domain. User-mode NICs (`type='user'`) are segments of their own and share with
    nothing. One pass over a dictionary of MACs: the cost and the report grow with the
    number of interfaces, not its square.

    Why it matters: two running guests with one MAC steal each other's frames on the bridge
    and the switch; one defined and one running clash when the second starts (cloned
    definitions keep the MAC). A guest MAC that is also a host MAC, or a tap carrying the
    guest's MAC, makes the bridge treat the guest's frames as its own and drop them
    ("received packet on vnet0 with own address as source address"). A multicast MAC is
    refused by QEMU or breaks ARP.

    How to fix: give the interface a new unicast MAC (`virsh edit`: delete the `<mac>` line
    and libvirt generates one in 52:54:00:xx:xx:xx; or `virt-clone`, which does that), restart
    the guest. For a tap with the guest's MAC, let libvirt manage the tap (do not set its
    address by hand or from a script).

    References: https://libvirt.org/formatdomain.html#network-interfaces
    https://standards.ieee.org/products-programs/regauth/
    """
    if not domains.local:
        links = None  # another host's guests: this host's interfaces are not theirs
    owners: dict[str, list[tuple[str, Domain, int, Interface]]] = {}
    targets: set[str] = set()
    for dom in domains.items:
        for number, iface in enumerate(dom.interfaces, 1):
            if iface.target:
                targets.add(iface.target)
            if iface.mac:
                owners.setdefault(iface.mac.lower(), []).append(("guest", dom, number, iface))
    host: dict[str, list[str]] = {}
    for link in links.items if links is not None else ():
        if link.mac and link.name not in targets and link.mac != "00:00:00:00:00:00":
            host.setdefault(link.mac, []).append(link.name)
    problems: dict[str, list[tuple[Status, str, dict[str, Any]]]] = {}

    def add(dom: Domain, status: Status, text: str, evidence: dict[str, Any]) -> None:
        problems.setdefault(dom.name, []).append((status, text, evidence))

    shared: list[Finding] = []
    sharing: set[str] = set()  # domains whose MAC another interface uses too
    for mac, users in owners.items():
        # A user-mode NIC (type='user') is a segment of its own inside QEMU: its MAC meets no
        # other interface's, so it shares with nothing.
        segment = [(d, n) for _, d, n, iface in users if iface.type != "user"]
        if len(segment) > 1:
            shared.append(_shared_mac(mac, segment))
            sharing.update(d.name for d, _ in segment)
        if mac in host:
            for _, dom, number, _iface in users:
                add(
                    dom,
                    "fail",
                    f"interface {number}: MAC {mac} is also the host interface "
                    f"{', '.join(host[mac])}'s",
                    {"mac": mac, "host_interfaces": host[mac]},
                )
        if not _MAC.match(mac):
            for _, dom, number, _iface in users:
                add(
                    dom,
                    "fail",
                    f"interface {number}: {mac} is not a valid MAC (libvirt refuses it)",
                    {"mac": mac},
                )
        elif _is_multicast(mac):
            for _, dom, number, _iface in users:
                add(dom, "fail", f"interface {number}: MAC {mac} is multicast", {"mac": mac})
    if links is not None:
        for dom in domains.items:
            if not dom.active:
                continue
            for number, iface in enumerate(dom.interfaces, 1):
                if iface.type == "direct" or not iface.target or not iface.mac:
                    continue
                tap = links.get(iface.target)
                if tap is not None and tap.mac == iface.mac.lower():
                    add(
                        dom,
                        "fail",
                        f"interface {number}: its tap {tap.name} carries the guest's own MAC "
                        f"{tap.mac} (libvirt sets fe:{tap.mac[3:]}): the bridge drops the "
                        "guest's frames as its own",
                        {"mac": iface.mac, "tap": tap.summary()},
                    )
    yield from shared
    for dom in domains.items:
        macs = [i.mac for i in dom.interfaces if i.mac]
        evidence: dict[str, Any] = {"domain": dom.name, "active": dom.active, "macs": macs}
        found = problems.get(dom.name)
        if not found and dom.name in sharing:
            continue  # its problem is the shared MAC's finding, which names it
        if found:
            overall = worst([s for s, _, _ in found])
            evidence["problems"] = [e for _, _, e in found]
            text = "; ".join(t for s, t, _ in found if s == overall)
            yield Finding(overall, text, subject=dom.subject, evidence=evidence)
        elif macs:
            yield Finding(
                "pass",
                f"{len(macs)} MAC(s) unique and unicast",
                subject=dom.subject,
                evidence=evidence,
            )
    if not owners:
        yield Finding(
            "pass", "no guest interface has a MAC", evidence={"domains": domains.as_dict()}
        )


# How many interfaces a shared MAC's message and evidence name; the count says how many more.
# One finding per shared MAC, of bounded size: 2,000 guests on one MAC give one finding, not
# 2,000 findings that each list the other 1,999.
_NAMED_IN_MESSAGE = 5
_NAMED_IN_EVIDENCE = 50


def _shared_mac(mac: str, users: list[tuple[Domain, int]]) -> Finding:
    """The finding for one MAC that several guest interfaces carry: it fails when two of them
    run, warns when a defined clone would clash on its start, and warns of a domain that
    gives it to two of its own interfaces (libvirt 9.0 and QEMU 7.2 define and start such a
    domain; its frames then clash on a shared segment); the guest to change is a defined one
    if there is one."""
    running = [d for d, _ in users if d.active]
    status: Status = "fail" if len(running) > 1 else "warn"
    names = [
        f"{d.subject} interface {n} ({'running' if d.active else 'defined'})" for d, n in users
    ]
    more = len(names) - _NAMED_IN_MESSAGE
    listed = ", ".join(names[:_NAMED_IN_MESSAGE]) + (f" and {more} more" if more > 0 else "")
    change, number = next(((d, n) for d, n in reversed(users) if not d.active), users[-1])
    domains = list(dict.fromkeys(d.name for d, _ in users))
    path = change.interfaces[number - 1].path if number <= len(change.interfaces) else ""
    return Finding(
        status,
        f"MAC {mac} is used by {len(users)} interfaces: {listed}",
        subject=f"mac:{mac}",
        evidence={
            "mac": mac,
            "count": len(users),
            "running": len(running),
            "owners": [f"{d.subject}#{n}" for d, n in users[:_NAMED_IN_EVIDENCE]],
            "domains": domains[:_NAMED_IN_EVIDENCE],
            "domains_count": len(domains),
            "domain": change.name,
        },
        # the interface to change (`kvmdoctor lint` puts the finding on its file and line)
        location=Location(path) if path else None,
    )


# --- NET011 ---------------------------------------------------------------------------------


@check(
    "NET011",
    "libvirt-network-inactive",
    title="A domain uses a libvirt network that is missing or inactive",
    tags=("network", "libvirt", "domain"),
)
def libvirt_network_inactive(domains: Domains, networks: Networks) -> Iterator[Finding]:
    """What it checks: every `<interface type='network'><source network='NAME'/>` of every
    domain: that the network NAME is defined and active (and whether it starts with the
    daemon: autostart).

    Why it matters: a domain on an inactive network does not start: "Requested operation is
    not valid: network 'default' is not active"; on a missing one: "Network not found: no
    network with matching name 'default'". A network that is not set to autostart is
    inactive after every reboot, so guests that autostart fail with it.

    How to fix: `virsh net-start NAME` and `virsh net-autostart NAME`; define a missing
    network (`virsh net-define`), or point the interface at an existing one with `virsh edit`.

    References: https://libvirt.org/formatnetwork.html
    https://libvirt.org/manpages/virsh.html#net-start
    """
    seen = False
    for dom in domains.items:
        results: list[tuple[Status, str, dict[str, Any]]] = []
        for number, iface in enumerate(dom.interfaces, 1):
            if iface.type != "network":
                continue
            name = iface.source.get("network")
            net = networks.get(name)
            label = f"interface {number} ({iface.mac or 'network'})"
            evidence: dict[str, Any] = {"interface": number, "network": name}
            if net is None:
                said = LIBVIRT_NO_NETWORK.format(network=name)
                results.append(
                    (
                        "fail",
                        f"{label}: network '{name}' does not exist (libvirt: \"{said}\")",
                        evidence,
                    )
                )
                continue
            evidence.update(active=net.active, autostart=net.autostart, origin=net.origin)
            if net.active:
                auto = "" if net.autostart else " (not autostarted: inactive after a reboot)"
                results.append(("pass", f"{label}: network '{name}' is active{auto}", evidence))
            else:
                said = LIBVIRT_NET_INACTIVE.format(network=name)
                auto = "autostart on" if net.autostart else "autostart off"
                # A running guest has lost its network; an autostarted one will fail at boot.
                status: Status = "fail" if dom.active or dom.autostart else "warn"
                cut = (
                    "the running guest has lost it"
                    if dom.active
                    else "the domain will not start (it is autostarted: at the next boot)"
                    if dom.autostart
                    else "the domain will not start"
                )
                results.append(
                    (
                        status,
                        f"{label}: network '{name}' is inactive ({auto}): {cut} "
                        f'(libvirt: "{said}")',
                        evidence,
                    )
                )
        if results:
            seen = True
            yield _aggregate(
                dom, results, _domain_evidence(dom) | {"networks_from": networks.origin}
            )
    if not seen:
        yield Finding(
            "pass",
            "no domain uses a libvirt network",
            evidence={"domains": domains.as_dict(), "networks": networks.as_dict()},
        )


# --- NET012 ---------------------------------------------------------------------------------


@check(
    "NET012",
    "nat-masquerade-missing",
    title="An active NAT network has no MASQUERADE rule for its subnet",
    tags=("network", "libvirt"),
)
def nat_masquerade_missing(networks: Networks, firewall: Firewall) -> Iterator[Finding]:
    """What it checks: for each IPv4 subnet of every active libvirt network in `nat` mode,
    that a MASQUERADE (or SNAT) rule reachable from the postrouting hook covers it, in any
    view of the firewall (nft's base chains, iptables-save's nat POSTROUTING and the chains it
    jumps to, such as libvirt's LIBVIRT_PRT).

    Why it matters: the guests' packets leave the host with their private source address and
    the answers never come back: DNS and pings to the outside time out while the host itself
    is fine. It happens when a firewall reload (firewalld, ufw, `iptables-restore`, `nft
    flush ruleset`) wipes libvirt's rules while the network stays active.

    How to fix: have libvirt write its rules again: restart the network (`virsh net-destroy
    NAME; virsh net-start NAME`; running guests must re-attach) or restart the network daemon
    (libvirtd or virtnetworkd), which reloads them. Keep firewall reloads from flushing
    tables they do not own.

    References: https://libvirt.org/firewall.html
    https://wiki.nftables.org/wiki-nftables/index.php/Performing_Network_Address_Translation_(NAT)
    """
    nat = [n for n in networks.items if n.active and n.forward_mode == "nat"]
    views = firewall.views
    for net in nat:
        evidence: dict[str, Any] = {
            "network": net.name,
            "subnets": net.subnets("ipv4"),
            "views": [v.tool for v in views],
            "firewall_errors": dict(firewall.errors),
        }
        results: list[tuple[Status, str]] = []
        for subnet in net.subnets("ipv4"):
            covering = []
            for view in views:
                if view.tool.startswith("ip6"):
                    continue
                fams = ("ip", "inet") if view.tool == "nft" else ("ip",)
                covering += [(view.tool, r) for r in view.nat_rules(fams) if r.covers(subnet)]
            evidence[subnet] = [{"view": tool, **r.as_dict()} for tool, r in covering]
            if covering:
                tool, rule = covering[0]
                results.append(("pass", f"{subnet} is masqueraded ({tool}: {rule.rule.text})"))
            else:
                results.append(
                    (
                        "fail",
                        f"no MASQUERADE or SNAT rule covers {subnet}: guests' packets "
                        "leave with private addresses and replies never return",
                    )
                )
        if not results:
            results.append(("pass", "the network has no IPv4 subnet to masquerade"))
        status = worst([s for s, _ in results])
        shown = [m for s, m in results if s == status]
        yield Finding(
            status, f"{net.name}: " + "; ".join(shown), subject=net.subject, evidence=evidence
        )
    if not nat:
        yield Finding(
            "pass",
            "no active NAT network",
            evidence={"networks": networks.as_dict(), "views": [v.tool for v in views]},
        )
