"""The report: one versioned JSON document built from a run; every output format is a view of it.

The schema is docs/report.schema.json.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Optional

from doctor import __version__
from doctor.engine import RunResult
from doctor.model import SEVERITY, STATUSES, FailOn, Finding
from doctor.sources.base import Source

SCHEMA_VERSION = "1.0"
FAIL_ON_LEVELS: dict[str, int] = {
    "info": SEVERITY["info"],
    "warn": SEVERITY["warn"],
    "fail": SEVERITY["fail"],
}

EXIT_OK = 0
EXIT_GATED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3


def gates(finding: Finding, fail_on: FailOn) -> bool:
    """Whether a finding fails the run at this --fail-on level. Errors always do: a check that
    could not run cannot vouch for the host."""
    if finding.ignored is not None:
        return False
    return SEVERITY[finding.status] >= FAIL_ON_LEVELS[fail_on]


def exit_code(result: RunResult, fail_on: FailOn) -> int:
    if result.load_errors:
        return EXIT_GATED
    return EXIT_GATED if any(gates(f, fail_on) for f in result.findings()) else EXIT_OK


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def _fact(result: RunResult, name: str) -> Any:
    """A fact for the report's host summary. A fact that fails here has already failed the
    checks that need it, as `error` findings; the summary just leaves it out."""
    try:
        return result.facts.optional(name)
    except Exception:  # noqa: BLE001 - reported through the checks, see above
        return None


def _version(number: Any) -> Optional[str]:
    """libvirt's encoding of a version (major * 1,000,000 + minor * 1,000 + micro) as text."""
    if not isinstance(number, int) or isinstance(number, bool) or number <= 0:
        return None
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


class _Known:
    """The facts a report may show: those the run computed, else those another context of
    the same run computed (the probe's path discovery). Asks the source nothing."""

    def __init__(self, result: RunResult, seen: Sequence[Any] = ()) -> None:
        self.contexts = (result.facts, *seen)

    def known(self, name: str) -> Any:
        for ctx in self.contexts:
            value = ctx.known(name)
            if value is not None:
                return value
        return None


def _inventory(result: RunResult, facts: _Known) -> dict[str, Any]:
    """What a fleet compares across hosts (`kvmdoctor report merge`), from the facts the
    checks already computed (nothing more is asked of the host): the versions of libvirt,
    QEMU and the UEFI firmware package, and the guests with their UUIDs and MACs. A value
    the run did not look at is null."""
    conn = facts.known("libvirt_conn")
    info = (conn.info or {}) if conn is not None and conn.ok else {}
    firmware = facts.known("firmware")
    package = firmware.package if firmware is not None else None
    domains = facts.known("domains")
    guests = None
    if domains is not None:
        guests = [
            {
                "name": dom.name,
                "uuid": dom.uuid,
                "active": dom.active,
                "persistent": dom.persistent,
                "interfaces": [{"mac": iface.mac, "type": iface.type} for iface in dom.interfaces],
            }
            for dom in domains.items
        ]
    return {
        "libvirt_version": _version(info.get("daemon_version")),
        "qemu_version": (
            _version(info.get("hypervisor_version")) if info.get("hypervisor") == "QEMU" else None
        ),
        "firmware_version": package.version if package is not None else None,
        "guests": guests,
    }


def _host(result: RunResult, facts: _Known) -> dict[str, Any]:
    host = _fact(result, "host")
    virt = _fact(result, "virt")
    uri = _fact(result, "uri")
    inventory = _inventory(result, facts)
    return {
        "hostname": host.hostname if host else None,
        "kernel": host.kernel if host else None,
        "os": host.os if host else None,
        "arch": host.arch if host else None,
        "hypervisor": (virt.name if virt and virt.hypervisor else None),
        "libvirt_version": inventory.pop("libvirt_version"),
        "uri": uri.uri if uri else None,
        **inventory,
        "network": _network(facts),
    }


# The drawing's inputs are kept small: a host with more is drawn in part and says so.
NETWORK_LIMIT = 200


def _network(facts: _Known) -> Optional[dict[str, Any]]:
    """The host's virtual network as the checks saw it (links, libvirt networks, guests and
    their NICs), for views that draw it; None when no check looked at the links. Only facts
    the run already computed are read: drawing never asks the host anything."""
    links = facts.known("links")
    if links is None:
        return None
    keep = ("name", "kind", "master", "lower", "operstate", "mac")
    items = [
        {
            **{k: getattr(link, k) for k in keep},
            "port_state": link.port.state if link.port is not None else None,
        }
        for link in links.items[:NETWORK_LIMIT]
    ]
    networks = facts.known("networks")
    domains = facts.known("domains")
    return {
        "origin": links.origin,
        "truncated": len(links.items) > NETWORK_LIMIT,
        "links": items,
        "networks": [
            {"name": n.name, "forward": n.forward_mode, "bridge": n.bridge, "active": n.active}
            for n in (networks.items if networks is not None else ())[:NETWORK_LIMIT]
        ],
        "guests": [
            {
                "name": d.name,
                "active": d.active,
                "nics": [
                    {"type": i.type, "mac": i.mac, "source": dict(i.source), "target": i.target}
                    for i in d.interfaces
                ],
            }
            for d in (domains.items if domains is not None and domains.local else ())[
                :NETWORK_LIMIT
            ]
        ],
    }


def _user(result: RunResult) -> Optional[str]:
    """Who ran kvmdoctor on the host the facts describe (for a snapshot: who recorded it)."""
    principals = _fact(result, "principals")
    if principals is None:
        return None
    return next((p.name for p in principals.items if p.role == "invoking user"), None)


def build(
    result: RunResult,
    source: Source,
    *,
    argv: Sequence[str],
    fail_on: FailOn,
    selected: Sequence[str] = (),
    profile: str = "default",
    files: Optional[Sequence[str]] = None,
    seen: Sequence[Any] = (),
) -> dict[str, Any]:
    """The report of a run; `files`: the definition files `kvmdoctor lint` read; `seen`:
    other FactContexts of the same run whose computed facts the host section may show too
    (`kvmdoctor probe` passes its path discovery's)."""
    summary = {status: 0 for status in STATUSES}
    ignored = 0
    for item in result.findings():
        if item.ignored is not None:
            ignored += 1
        else:
            summary[item.status] += 1
    checks = []
    for run in result.checks:
        checks.append(
            {
                "code": run.spec.code,
                "name": run.spec.name,
                "title": run.spec.title,
                "tags": list(run.spec.tags),
                "origin": run.spec.origin,
                "status": run.status,
                "duration_ms": round((run.duration + run.facts_duration) * 1000, 3),
                "findings": [f.as_dict() for f in run.findings],
            }
        )
    code = exit_code(result, fail_on)
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "kvmdoctor", "version": __version__},
        "host": _host(result, _Known(result, seen)),
        "run": {
            "started": _iso(result.started),
            "finished": _iso(result.finished),
            "duration_s": round(result.finished - result.started, 4),
            "argv": list(argv),
            "profile": profile,
            "source": source.describe(),
            "user": _user(result),
            "redacted": False,
            "fail_on": fail_on,
            "selected": list(selected),
            "ignores": [
                {"check": r.token, "subject": r.subject, "reason": r.reason, "by": r.by}
                for r in result.ignores
            ],
            **({"files": list(files)} if files is not None else {}),
        },
        "checks": checks,
        "diagnoses": [d.as_dict(rank) for rank, d in enumerate(result.diagnoses, start=1)],
        "load_errors": [e.as_dict() for e in result.load_errors],
        "summary": {**summary, "ignored": ignored, "checks": len(checks)},
        "exit_code": code,
    }
