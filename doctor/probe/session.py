"""One `kvmdoctor probe`: discover the path, predict, optionally observe, and build the report
(the same report schema as `kvmdoctor run`; the PRB findings carry the path and observations)."""

from __future__ import annotations

import importlib
from dataclasses import replace
from typing import Any, Callable, Optional

from doctor.facts import FactContext, RunOptions
from doctor.probe.path import PathError
from doctor.probe.predict import predict
from doctor.probe.verdict import ProbeRun
from doctor.record import record


class ProbeError(Exception):
    """The probe cannot run as asked (no such guest, another probe running, ...)."""


@record
class Request:
    target: str
    domain: Optional[str] = None
    iface: Optional[str] = None
    netns: Optional[str] = None
    netns_iface: Optional[str] = None
    proto: str = "icmp"
    port: Optional[int] = None
    count: int = 3
    timeout: float = 2.0
    send: bool = True
    uri: Optional[str] = None
    connect_timeout: float = 10.0
    not_sent: Optional[str] = None  # why nothing is sent though sending was the default
    # what would let it send (the exit code is 2 when sending was asked for, or when this is
    # not about root: the probe could not be carried out as asked)
    not_sent_hint: str = "run as root to send marked packets"
    not_sent_needs_root: bool = True

    def static_only(
        self, why: str, *, hint: Optional[str] = None, needs_root: bool = True
    ) -> Request:
        return replace(
            self,
            send=False,
            not_sent=why,
            not_sent_hint=hint or self.not_sent_hint,
            not_sent_needs_root=needs_root,
        )


def discover(request: Request, facts: FactContext) -> Any:
    from doctor.probe import kernel, path

    try:
        if request.netns is not None:
            return path.from_netns(
                facts,
                request.netns,
                request.target,
                iface=request.netns_iface,
                route_get=kernel.route_get,
            )
        assert request.domain is not None
        return path.from_domain(
            facts, request.domain, request.target, iface=request.iface, route_get=kernel.route_get
        )
    except PathError as exc:
        raise ProbeError(str(exc)) from None
    except OSError as exc:  # entering a namespace, opening a netlink socket
        raise ProbeError(f"cannot follow the path: {exc}") from None


def _registry() -> Any:
    """The PRB checks: from the installed entry points, or from the source tree."""
    from doctor.registry import Plugin, entry_point_plugins, load_registry

    plugins = [p for p in entry_point_plugins() if "checks.probe" in p.origin]
    if not plugins:
        plugins = [
            Plugin("kvmdoctor (checks.probe)", lambda: importlib.import_module("checks.probe"))
        ]
    return load_registry(plugins)


def run(
    request: Request, *, argv: list[str]
) -> tuple[dict[str, Any], Callable[[bool], str], Request]:
    """(the report, a function rendering the text view with or without colour, the request as
    carried out: without root nothing is sent)."""
    from doctor import engine, playbooks, rules
    from doctor.report import build
    from doctor.sources import open_source

    source = open_source(
        root=None, snapshot=None, uri=request.uri, connect_timeout=request.connect_timeout
    )
    try:
        root = source.identity().euid == 0
        if request.netns is not None and not root:
            raise ProbeError(
                f"entering namespace {request.netns} needs root (CAP_SYS_ADMIN): run kvmdoctor "
                "probe as root; nothing was sent"
            )
        if request.send and not root:
            request = request.static_only("sending packets needs root")
        facts = FactContext(source, RunOptions(uri=request.uri))
        found = discover(request, facts)
        ovs = found.ovs_bridge
        if request.send and ovs is not None:
            request = request.static_only(
                f"the guest's tap {found.guest.iface} is a port of the Open vSwitch bridge "
                f"{ovs.name}: kvmdoctor does not send probes across Open vSwitch",
                hint="the static part judges the OVS path from OVSDB (run with --static)",
                needs_root=False,
            )
        domain_ip = found.guest.kind != "domain" or request.proto == "arp" or found.guest.ip
        if request.send and not domain_ip:
            request = request.static_only(
                f"the guest {request.domain} has no known IPv4 address (no DHCP lease, "
                f"no ARP or neighbour entry for {found.guest.mac}): no {request.proto} "
                "probe can be sent as the guest",
                hint="give the guest an address the host can learn, or probe an address "
                "on its bridge with --proto arp",
                needs_root=False,
            )
        predictions = tuple(predict(found))
        observations = None
        if request.send:
            from doctor.probe import active
            from doctor.probe.kernel import LinkCounters

            wanted: dict[Optional[str], set[str]] = {}
            for hop in found.hops:
                wanted.setdefault(hop.netns, set()).update(hop.devices)
            try:
                with LinkCounters(wanted) as links:
                    observations = active.observe(found, request, links.read)
            except (active.Busy, active.Unsupported) as exc:
                raise ProbeError(str(exc)) from None
        probe_run = ProbeRun(found, predictions, observations, request.not_sent)
        selected = ["PRB"] if request.send else ["PRB001"]
        result = engine.run(
            _registry(),
            source,
            selected=selected,
            options=RunOptions(uri=request.uri, probe=probe_run),
        )
    finally:
        source.close()
    result = rules.apply(result, playbooks.shipped())
    # The report draws the host's network from what the path's discovery read (host.network).
    report = build(result, source, argv=argv, fail_on="fail", selected=selected, seen=(facts,))

    def view(color: bool) -> str:
        from doctor.probe.render import text

        return text(report, probe_run, color=color)

    return report, view, request
