"""`kvmdoctor report merge`: many hosts' reports as one fleet report.

The fleet report has the shape of a host's report (docs/report.schema.json), so every
renderer shows it as it shows one host: its `checks` hold every host's findings, each subject
with its host in front (doctor.facts.fleet.host_subject), and the findings only the fleet can
make: a guest MAC on two hosts (NET010, its own code run over every host's guests), a domain
UUID on two hosts (DOM020) and hosts whose libvirt, QEMU or firmware versions differ from the
rest (LIB009). The playbooks diagnose the fleet's findings as they do a host's; each host's
diagnoses come over from its report. `fleet` lists the hosts with their versions, counts and
the file each came from; `run.source` is {"kind": "fleet", ...}.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Optional

from doctor import __version__
from doctor.engine import run_check
from doctor.facts import FactContext, RunOptions
from doctor.facts.fleet import Fleet, FleetHost, Guest, host_subject
from doctor.model import SEVERITY, STATUSES, Finding, worst
from doctor.record import record
from doctor.report import FAIL_ON_LEVELS, SCHEMA_VERSION
from doctor.sources.base import Unavailable

# NET010 judges guest MACs on one host; run over every host's guests it finds the MACs that
# two hosts share. Its findings about one host's guests stay that host's (in its report).
CROSS_HOST_CODES = ("NET010",)


class FleetError(ValueError):
    """Reports that cannot be merged (the CLI turns it into a usage error, exit 2)."""


@record
class HostReport:
    name: str
    file: str
    report: dict[str, Any]


class NoHost:
    """The source of a fleet's checks: there is no one host to ask, so every question is
    unavailable. The fleet's checks read only the `fleet` fact."""

    kind = "fleet"

    def describe(self) -> dict[str, Any]:
        return {"kind": "fleet"}

    def _none(self, *args: Any, **kwargs: Any) -> Any:
        raise Unavailable("fleet", "a fleet report has no host of its own to ask")

    read_file = list_dir = stat = read_link = run = processes = identity = uname = _none
    environ = kvm_probe = read_msr = clock = key_info = libvirt = netlink = _none

    def close(self) -> None:
        return None


class _FleetFacts(FactContext):
    """Facts for the fleet's checks: the fleet, and every host's guests as `domains`."""

    def __init__(self, fleet: Fleet) -> None:
        super().__init__(NoHost(), RunOptions())
        self._given = {"fleet": fleet, "domains": fleet.domains()}

    def get(self, name: str) -> Any:
        if name in self._given:
            return self._given[name]
        return super().get(name)


def _name(report: dict[str, Any], file: str) -> str:
    import os

    hostname = (report.get("host") or {}).get("hostname")
    if isinstance(hostname, str) and hostname and "/" not in hostname:
        return hostname
    return os.path.splitext(os.path.basename(file))[0] or file


def hosts_of(reports: Sequence[tuple[str, dict[str, Any]]]) -> tuple[list[HostReport], list[str]]:
    """The hosts to merge, one report each, and what was left out and why. A report of a host
    already seen replaces it when its run finished later (a host collected twice keeps its
    newest report); an equal time keeps the one named later on the command line."""
    chosen: dict[str, HostReport] = {}
    notes: list[str] = []
    redacted = set()
    for file, report in reports:
        version = report.get("schema_version")
        if version != SCHEMA_VERSION:
            raise FleetError(
                f"{file} is a report of format {version!r}; this kvmdoctor merges format "
                f"{SCHEMA_VERSION} (re-run the newer kvmdoctor's `report merge`, or re-run "
                "kvmdoctor on that host)"
            )
        if "fleet" in report:
            raise FleetError(f"{file} is a fleet report already; merge the hosts' own reports")
        redacted.add(bool(report.get("run", {}).get("redacted")))
        name = _name(report, file)
        new = HostReport(name, file, report)
        old = chosen.get(name)
        if old is None:
            chosen[name] = new
            continue
        newer = str(report["run"].get("finished", "")) >= str(old.report["run"].get("finished", ""))
        kept, dropped = (new, old) if newer else (old, new)
        chosen[name] = kept
        notes.append(
            f"{old.file} and {file} are both host {name}: kept {kept.file} (its run finished "
            f"{kept.report['run'].get('finished')}), left out {dropped.file}"
        )
    if len(redacted) > 1:
        raise FleetError(
            "some reports are redacted (--redact) and some are not: their names and addresses "
            "cannot be compared; merge reports made alike"
        )
    if len(chosen) < 2:
        raise FleetError("a fleet needs the reports of at least two hosts")
    return list(chosen.values()), notes


def _guests(host: dict[str, Any]) -> Optional[tuple[Guest, ...]]:
    listed = host.get("guests")
    if not isinstance(listed, list):
        return None
    return tuple(
        Guest(
            name=str(g.get("name")),
            uuid=g.get("uuid"),
            active=bool(g.get("active")),
            persistent=bool(g.get("persistent", True)),
            interfaces=tuple(
                (i.get("mac") if isinstance(i.get("mac"), str) else None, str(i.get("type")))
                for i in g.get("interfaces", [])
                if isinstance(i, dict)
            ),
        )
        for g in listed
        if isinstance(g, dict) and g.get("name")
    )


def _versions(report: dict[str, Any]) -> dict[str, Optional[str]]:
    """The versions the report's host section gives; for reports made before it gave them,
    libvirt's and QEMU's from the connection check's evidence (LIB002)."""
    host = report.get("host") or {}
    versions = {
        "libvirt": host.get("libvirt_version"),
        "qemu": host.get("qemu_version"),
        "firmware": host.get("firmware_version"),
    }
    if versions["libvirt"] is None or versions["qemu"] is None:
        from doctor.report import _version

        for chk in report.get("checks", []):
            if chk.get("code") != "LIB002":
                continue
            for finding in chk.get("findings", []):
                info = (finding.get("evidence") or {}).get("info") or {}
                if not isinstance(info, dict):
                    continue
                versions["libvirt"] = versions["libvirt"] or _version(info.get("daemon_version"))
                if info.get("hypervisor") == "QEMU":
                    versions["qemu"] = versions["qemu"] or _version(info.get("hypervisor_version"))
    return {k: (v if isinstance(v, str) and v else None) for k, v in versions.items()}


def fleet_of(hosts: Sequence[HostReport]) -> Fleet:
    return Fleet(
        tuple(
            FleetHost(h.name, h.file, _versions(h.report), _guests(h.report.get("host") or {}))
            for h in hosts
        )
    )


def fleet_findings(fleet: Fleet) -> list[tuple[Any, list[Finding]]]:
    """(check spec, findings) of the fleet's checks: those tagged `fleet`, and NET010 over
    every host's guests, keeping only the MACs that two hosts share."""
    from doctor.registry import load_registry

    registry = load_registry()
    ctx = _FleetFacts(fleet)
    out = []
    for spec in registry:
        if "fleet" not in spec.tags and spec.code not in CROSS_HOST_CODES:
            continue
        found = list(run_check(spec, ctx).findings)
        if spec.code in CROSS_HOST_CODES:
            found = _across_hosts(fleet, found)
        out.append((spec, found))
    return out


def _owner_host(owner: str) -> str:
    """The host of a NET010 owner ("host:NAME/domain:web1#1")."""
    return owner[len("host:") :].split("/", 1)[0]


def _across_hosts(fleet: Fleet, found: list[Finding]) -> list[Finding]:
    running = {
        f"{dom.subject}#{number}": dom.active
        for dom in fleet.domains().items
        for number in range(1, len(dom.interfaces) + 1)
    }
    kept = []
    for finding in found:
        owners = finding.evidence.get("owners") if finding.subject.startswith("mac:") else None
        if not isinstance(owners, list):
            continue
        hosts = list(dict.fromkeys(_owner_host(str(o)) for o in owners))
        if len(hosts) < 2:
            continue  # one host's own duplicate: that host's report has it
        # The interface to change, as NET010 chose it: the last defined one, else the last;
        # its host goes beside its domain's name, which other hosts may have too.
        change = next((str(o) for o in reversed(owners) if not running.get(str(o))), owners[-1])
        kept.append(
            replace(
                finding,
                evidence={**finding.evidence, "hosts": hosts, "host": _owner_host(str(change))},
            )
        )
    unknown = fleet.without_guests()
    kept += [
        Finding(
            "skip",
            f"the report of {name} does not list its guests (made by an older kvmdoctor, or "
            "without the domain checks)",
            subject=f"report:{fleet.report_of(name)}",
            code=found[0].code if found else "",
        )
        for name in unknown
    ]
    if not any(f.status != "skip" for f in kept):
        compared = len(fleet.hosts) - len(unknown)
        kept.append(
            Finding(
                "pass",
                f"no guest MAC is on two hosts ({compared} hosts' guests compared)",
                subject="fleet",
                evidence=fleet.as_dict(),
                code=found[0].code if found else "",
            )
        )
    return kept


def _prefixed(name: str, ref: dict[str, Any]) -> dict[str, Any]:
    return {**ref, "subject": host_subject(name, str(ref.get("subject", "host")))}


def merge(
    reports: Sequence[tuple[str, dict[str, Any]]],
    *,
    fail_on: str = "fail",
    argv: Sequence[str] = ("kvmdoctor", "report", "merge"),
) -> tuple[dict[str, Any], list[str]]:
    """The fleet report of these (file, report) pairs, and notes for the user (hosts left out
    and why). Raises FleetError when they cannot be merged."""
    from doctor import playbooks, rules
    from doctor.render.views import gates

    hosts, notes = hosts_of(reports)
    fleet = fleet_of(hosts)
    checks: dict[str, dict[str, Any]] = {}

    def entry(code: str, like: dict[str, Any]) -> dict[str, Any]:
        if code not in checks:
            checks[code] = {
                "code": code,
                "name": like["name"],
                "title": like["title"],
                "tags": list(like.get("tags", [])),
                "origin": like.get("origin", ""),
                "status": "skip",
                "duration_ms": 0.0,
                "findings": [],
            }
        return checks[code]

    fleet_run = fleet_findings(fleet)
    found = [f for _, fs in fleet_run for f in fs]
    book = playbooks.shipped()
    fleet_diagnoses, marked = rules.diagnose(found, book)
    position = 0
    for spec, fs in fleet_run:
        chk = entry(
            spec.code,
            {"name": spec.name, "title": spec.title, "tags": spec.tags, "origin": spec.origin},
        )
        chk["findings"] += [f.as_dict() for f in marked[position : position + len(fs)]]
        position += len(fs)

    diagnoses = [
        on_hosts(d.as_dict(rank), fix_hosts(d), fleet_wide=True)
        for rank, d in enumerate(fleet_diagnoses, start=1)
    ]
    load_errors = [
        {"origin": f"playbook {e.file}", "check": None, "message": e.message} for e in book.errors
    ]
    for host in hosts:
        report = host.report
        for chk in report["checks"]:
            merged = entry(chk["code"], chk)
            merged["duration_ms"] = round(merged["duration_ms"] + chk.get("duration_ms", 0), 3)
            merged["findings"] += [_prefixed(host.name, f) for f in chk["findings"]]
        offset = len(diagnoses)
        for diag in report["diagnoses"]:
            moved = _prefixed(host.name, diag)
            moved["rank"] = diag["rank"] + offset
            moved["findings"] = [_prefixed(host.name, r) for r in diag["findings"]]
            moved["explains"] = [_prefixed(host.name, r) for r in diag["explains"]]
            if "consequence_of" in diag:
                moved["consequence_of"] = diag["consequence_of"] + offset
            if "consequences" in diag:
                moved["consequences"] = [r + offset for r in diag["consequences"]]
            diagnoses.append(on_hosts(moved, [host.name], fleet_wide=False))
        load_errors += [
            {**e, "origin": f"host {host.name}: {e.get('origin')}"}
            for e in report.get("load_errors", [])
        ]

    ordered = [checks[code] for code in sorted(checks)]
    summary = {status: 0 for status in STATUSES}
    ignored = 0
    for chk in ordered:
        chk["status"] = worst([f["status"] for f in chk["findings"]])
        for finding in chk["findings"]:
            if finding.get("ignored"):
                ignored += 1
            else:
                summary[finding["status"]] += 1

    started = min(str(h.report["run"]["started"]) for h in hosts)
    finished = max(str(h.report["run"]["finished"]) for h in hosts)
    out: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "kvmdoctor", "version": __version__},
        "host": {
            key: None
            for key in ("hostname", "kernel", "os", "arch", "hypervisor", "libvirt_version", "uri")
        },
        "run": {
            "started": started,
            "finished": finished,
            "duration_s": max(float(h.report["run"].get("duration_s", 0)) for h in hosts),
            "argv": list(argv),
            "profile": "default",
            "source": {
                "kind": "fleet",
                "reports": [{"host": h.name, "file": h.file} for h in hosts],
            },
            "user": None,
            "redacted": any(bool(h.report["run"].get("redacted")) for h in hosts),
            "fail_on": fail_on,
            "selected": [],
            "ignores": [],
        },
        "checks": ordered,
        "diagnoses": diagnoses,
        "load_errors": load_errors,
        "summary": {**summary, "ignored": ignored, "checks": len(ordered)},
        "exit_code": 0,
    }
    level = FAIL_ON_LEVELS[fail_on]
    gated = bool(load_errors) or any(gates(out, f) for chk in ordered for f in chk["findings"])
    out["exit_code"] = 1 if gated else 0
    out["fleet"] = {
        "hosts": [_host_row(h, fleet.hosts[i], level) for i, h in enumerate(hosts)],
        "left_out": notes,
    }
    return out, notes


# How a fleet's checks are seen again once a fix is done: every host's report anew, merged.
RECOLLECT = (
    "kvmdoctor run -f json -o HOST.json; then, with every host's report: "
    "kvmdoctor report merge *.json -o fleet.json"
)


def fix_hosts(diagnosis: Any) -> list[str]:
    """The hosts a fleet diagnosis's fix is carried out on, from the evidence of the finding it
    rests on: the one host to change (`host`: NET010's pick of the interface to change), else
    the hosts that differ from the rest (`odd_hosts`: LIB009), else every host involved
    (`hosts`: DOM020, where a person picks the one that keeps the domain)."""
    for finding in diagnosis.findings[:1]:
        evidence = finding.evidence
        if isinstance(evidence.get("host"), str):
            return [evidence["host"]]
        for key in ("odd_hosts", "hosts"):
            named = evidence.get(key)
            if isinstance(named, list) and named:
                return [str(h) for h in named]
    return []


def where(hosts: Sequence[str]) -> str:
    """ "on host a" / "on hosts a, b"."""
    if len(hosts) == 1:
        return f"on host {hosts[0]}"
    return "on hosts " + ", ".join(hosts)


def on_hosts(diag: dict[str, Any], hosts: Sequence[str], *, fleet_wide: bool) -> dict[str, Any]:
    """The diagnosis as a fleet report carries it: `hosts` says where its fix is carried out,
    each fix step's text starts with that ("on host a: ..."), and `rerun` says how to see the
    verifying checks again: on that host with `kvmdoctor run` for one host's checks, by
    collecting and merging every host's report again for the fleet's own."""
    out = dict(diag)
    if hosts:
        out["hosts"] = list(hosts)
        out["fix"] = [{**step, "text": f"{where(hosts)}: {step['text']}"} for step in diag["fix"]]
    codes = ",".join(diag.get("verify", []))
    if codes and fleet_wide:
        out["rerun"] = {"where": "on every host", "command": RECOLLECT}
    elif codes:
        out["rerun"] = {"where": where(hosts), "command": f"kvmdoctor run --select {codes}"}
    return out


def _host_row(host: HostReport, info: FleetHost, level: int) -> dict[str, Any]:
    report = host.report
    section = report.get("host") or {}
    gated = bool(report.get("load_errors")) or any(
        not f.get("ignored") and SEVERITY.get(f["status"], 0) >= level
        for chk in report["checks"]
        for f in chk["findings"]
    )
    return {
        "name": host.name,
        "file": host.file,
        "hostname": section.get("hostname"),
        "os": section.get("os"),
        "kernel": section.get("kernel"),
        "libvirt_version": info.versions["libvirt"],
        "qemu_version": info.versions["qemu"],
        "firmware_version": info.versions["firmware"],
        "guests": None if info.guests is None else len(info.guests),
        "source": (report["run"].get("source") or {}).get("kind"),
        "finished": report["run"].get("finished"),
        "summary": dict(report["summary"]),
        "diagnoses": len(report["diagnoses"]),
        "exit_code": 1 if gated else 0,
        # Its network as its report drew it, for the fleet's HTML (one drawing per host).
        "network": section.get("network"),
    }
