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


def _host(result: RunResult) -> dict[str, Any]:
    host = _fact(result, "host")
    virt = _fact(result, "virt")
    uri = _fact(result, "uri")
    return {
        "hostname": host.hostname if host else None,
        "kernel": host.kernel if host else None,
        "os": host.os if host else None,
        "arch": host.arch if host else None,
        "hypervisor": (virt.name if virt and virt.hypervisor else None),
        "libvirt_version": None,
        "uri": uri.uri if uri else None,
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
) -> dict[str, Any]:
    """The report of a run; `files`: the definition files `kvmdoctor lint` read."""
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
        "host": _host(result),
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
