"""The report in Prometheus' text exposition format, for node_exporter's textfile collector
(write it to e.g. /var/lib/prometheus/node-exporter/kvmdoctor.prom).

    kvmdoctor_check_status{code,name,subject,status,ignored} 1   one per check and subject
    kvmdoctor_check_severity{code,name,subject}                  0 skip .. 5 error (doctor.model)
    kvmdoctor_diagnosis{playbook,subject,status} 1               one per diagnosis
    kvmdoctor_findings{status}                                   the summary counts
    kvmdoctor_run_duration_seconds, kvmdoctor_run_timestamp_seconds, kvmdoctor_exit_code,
    kvmdoctor_info{version,fail_on,source} 1

A fleet report (`kvmdoctor report merge`) adds a `host` label to the series of checks and
diagnoses (the host of a `host:NAME/...` subject; empty for what the fleet sees across hosts),
and per host kvmdoctor_host_findings{host,status} and kvmdoctor_host_exit_code{host}.

An alert on `kvmdoctor_check_status{status=~"fail|error",ignored="false"} == 1` fires per
failing check and subject; docs/ci.md gives the rule.
"""

from __future__ import annotations

from typing import Any

from doctor.model import SEVERITY, STATUSES
from doctor.render.views import epoch, findings
from doctor.textsafe import one_line


def _label(value: Any) -> str:
    """A label value: one line, control characters as \\xNN, then the format's own escapes."""
    text = one_line(str(value))
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _labels(**labels: Any) -> str:
    return "{" + ",".join(f'{k}="{_label(v)}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    return repr(float(value)) if value != int(value) else str(int(value))


def _host_of(subject: str) -> str:
    """The host a fleet report's subject names ("host:a/domain:x" -> "a"); "" for none."""
    if not subject.startswith("host:"):
        return ""
    return subject[len("host:") :].split("/", 1)[0]


def render(report: dict[str, Any]) -> str:
    lines: list[str] = []
    fleet = report.get("fleet") if isinstance(report.get("fleet"), dict) else None

    def where(subject: str) -> dict[str, str]:
        return {"host": _host_of(subject)} if fleet is not None else {}

    def family(name: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} gauge")
        lines.extend(f"{name}{labels} {_number(value)}" for labels, value in samples)

    # One series per check and subject; should a check say two things about one subject, the
    # worse stands (two samples with the same labels would make the file unreadable).
    worst: dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]] = {}
    for chk, finding in findings(report):
        key = (chk["code"], finding["subject"])
        if key not in worst or SEVERITY.get(finding["status"], 0) > SEVERITY.get(
            worst[key][1]["status"], 0
        ):
            worst[key] = (chk, finding)
    status: list[tuple[str, float]] = []
    severity: list[tuple[str, float]] = []
    for chk, finding in worst.values():
        common = {
            "code": chk["code"],
            "name": chk["name"],
            "subject": finding["subject"],
            **where(str(finding["subject"])),
        }
        ignored = "true" if finding.get("ignored") else "false"
        status.append((_labels(**common, status=finding["status"], ignored=ignored), 1))
        severity.append((_labels(**common), SEVERITY.get(finding["status"], 0)))
    family(
        "kvmdoctor_check_status",
        "A check's status for one subject (the status label), 1 per check and subject.",
        status,
    )
    family(
        "kvmdoctor_check_severity",
        "A check's status for one subject as a number: 0 skip, 1 pass, 2 info, 3 warn, "
        "4 fail, 5 error.",
        severity,
    )
    family(
        "kvmdoctor_diagnosis",
        "A diagnosis from the playbooks (the problem's id in the playbook label), 1 each.",
        [
            (
                _labels(
                    playbook=d["playbook"],
                    subject=d["subject"],
                    status=d["status"],
                    rank=d["rank"],
                    **where(str(d["subject"])),
                ),
                1,
            )
            for d in report.get("diagnoses", [])
        ],
    )
    summary = report.get("summary", {})
    family(
        "kvmdoctor_findings",
        "Findings of the run by status (ignored findings counted apart).",
        [(_labels(status=s), summary.get(s, 0)) for s in (*STATUSES, "ignored")],
    )
    if fleet is not None:
        hosts = [h for h in fleet.get("hosts", []) if isinstance(h, dict)]
        family(
            "kvmdoctor_host_findings",
            "A fleet's host: its own report's findings by status (ignored counted apart).",
            [
                (_labels(host=h.get("name", ""), status=s), (h.get("summary") or {}).get(s, 0))
                for h in hosts
                for s in (*STATUSES, "ignored")
            ],
        )
        family(
            "kvmdoctor_host_exit_code",
            "A fleet's host: what its findings give at the fleet's --fail-on (0 or 1).",
            [(_labels(host=h.get("name", "")), h.get("exit_code", 0)) for h in hosts],
        )
    run = report.get("run", {})
    family(
        "kvmdoctor_run_duration_seconds",
        "How long the run took.",
        [("", float(run.get("duration_s") or 0.0))],
    )
    finished = epoch(run.get("finished"))
    if finished is not None:
        family(
            "kvmdoctor_run_timestamp_seconds",
            "When the run finished, in seconds since the epoch.",
            [("", finished)],
        )
    family(
        "kvmdoctor_exit_code",
        "The run's exit code: 0 nothing at or above --fail-on, 1 gated findings.",
        [("", report.get("exit_code", 0))],
    )
    family(
        "kvmdoctor_info",
        "The kvmdoctor version, gate and source of the run, 1.",
        [
            (
                _labels(
                    version=report.get("tool", {}).get("version", ""),
                    fail_on=run.get("fail_on", ""),
                    source=run.get("source", {}).get("kind", ""),
                ),
                1,
            )
        ],
    )
    return "\n".join(lines) + "\n"
