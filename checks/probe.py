"""PRB: what `kvmdoctor probe` found along a guest's path. The judgement is in
doctor/probe/verdict.py (pure); these checks declare the codes and documentation and hand the
`probe` fact to it. `kvmdoctor run` does not select them: only `kvmdoctor probe` provides the
fact."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from doctor.model import Finding
from doctor.registry import check

if TYPE_CHECKING:  # the probe's modules load when a probe ran: `kvmdoctor run` has none
    from doctor.probe.verdict import ProbeRun


@check(
    "PRB001",
    "probe-predicted-drop",
    title="The state of a hop on the guest's path predicts that its traffic dies there",
    tags=("network", "probe"),
)
def probe_predicted_drop(probe: ProbeRun) -> Iterator[Finding]:
    """What it checks: every hop on the path from the guest (a libvirt domain's tap, or a
    namespace's veth) to the address asked for: link and carrier state, the bridge port's STP
    state, MTUs along the path; on Open vSwitch (from OVSDB) the guest port's VLAN tag against
    the uplinks of its bridge (access tag, trunks), interfaces ovs-vswitchd could not set up
    (`error`) or whose `link_state` is down, a bridge with no way out, and a bridge left only
    through patch or tunnel ports (told, not predicted as a drop); for routed and NAT traffic
    the kernel's `route get` answer for a packet arriving from the guest (EHOSTUNREACH when
    forwarding is off, ENETUNREACH without a route, EINVAL when reverse-path filtering
    refuses the source), the FORWARD
    verdict of the firewall (and with br_netfilter, for traffic across the bridge), the
    MASQUERADE rules covering the guest's source, and the next hop's neighbour state. Nothing
    is sent.

    Why it matters: each of these drops the guest's packets without a message anywhere; the
    operator sees only "the guest has no network". Naming the hop before sending anything
    tells where to look first.

    How to fix: follow the playbook the finding names; otherwise fix the state it quotes
    (bring the link up, let the port forward, allow the traffic in FORWARD, turn forwarding
    on, add the route or the MASQUERADE rule). Confirm with `kvmdoctor probe` as root.

    References: https://docs.kernel.org/networking/ip-sysctl.html
    https://wiki.libvirt.org/Networking.html
    """
    from doctor.probe.verdict import predicted

    yield from predicted(probe.path, probe.predictions)


@check(
    "PRB002",
    "probe-traffic-dropped",
    title="Marked packets from the guest died at a hop of its path",
    tags=("network", "probe"),
)
def probe_traffic_dropped(probe: ProbeRun) -> Iterator[Finding]:
    """What it checks: marked packets (a fixed ICMP id and a per-run token) sent as the guest
    to the address asked for, captured on every hop of the path in both directions: the
    drop lies between the last hop that saw them and the first that did not. The kernel's
    drop reason (skb:kfree_skb in a private trace instance, joined with the device the packet
    was last seen on), counter deltas and the static predictions name the cause and set the
    confidence.

    Why it matters: the static view can miss what only traffic shows (a rule matching on
    addresses, a peer that does not answer, a queue that overflows); a located drop with the
    kernel's own reason ends the guessing.

    How to fix: follow the playbook the finding names, or fix the cause it gives at the hop
    it names; then probe again.

    References: https://docs.kernel.org/trace/events.html
    https://man7.org/linux/man-pages/man8/tc-mirred.8.html
    """
    if probe.observations is None:
        yield Finding("skip", f"no packets were sent: {probe.not_sent or 'static run'}")
        return
    from doctor.probe.verdict import located

    yield from located(probe.path, probe.predictions, probe.observations)


@check(
    "PRB003",
    "probe-source-not-translated",
    title="The guest's packets left the host with their private source address",
    tags=("network", "probe"),
)
def probe_source_not_translated(probe: ProbeRun) -> Iterator[Finding]:
    """What it checks: the source address the probe's requests carried when the uplink capture
    saw them leave the host: the guest's own address means no MASQUERADE/SNAT rule applied.

    Why it matters: nothing on the host drops these packets, so no drop counter or kernel
    reason shows the fault; the answers go to a private address and never return.

    How to fix: restore the NAT rules (for a libvirt NAT network: restart the network so
    libvirt writes them again), or route the guest's subnet back to the host.

    References: https://libvirt.org/firewall.html
    """
    if probe.observations is None:
        yield Finding("skip", f"no packets were sent: {probe.not_sent or 'static run'}")
        return
    from doctor.probe.verdict import translation

    found = translation(probe.path, probe.observations)
    if not found:
        yield Finding("pass", "no request reached the uplink, or the path has none")
    yield from found
