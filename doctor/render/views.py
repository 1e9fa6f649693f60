"""What several renderers read off a report the same way: the findings with their checks, the
diagnoses that explain a finding, whether a finding gates, times as numbers."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from typing import Any, Optional

from doctor.model import SEVERITY

_FAIL_ON = {"info": SEVERITY["info"], "warn": SEVERITY["warn"], "fail": SEVERITY["fail"]}
# Subjects that name a file on the host: "file:/etc/libvirt/qemu.conf", "cert:/etc/pki/x.pem#2",
# "log:/var/log/libvirt/libvirtd.log".
_FILE_SUBJECT = re.compile(r"^(?:file|cert|log):(/[^#]*)(?:#\d+)?$")
_LINE_IN_ERROR = re.compile(r"\bline (\d+)\b")


def findings(report: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(check, finding) for every finding of the report, in the report's order."""
    for chk in report.get("checks", []):
        for finding in chk.get("findings", []):
            yield chk, finding


def gates(report: dict[str, Any], finding: dict[str, Any]) -> bool:
    """Whether the finding fails the run at the report's own --fail-on level (as its exit code
    says): ignored findings never do, errors always do."""
    if finding.get("ignored"):
        return False
    level = _FAIL_ON.get(report.get("run", {}).get("fail_on", "fail"), SEVERITY["fail"])
    return SEVERITY.get(finding["status"], 0) >= level


def diagnoses_for(report: dict[str, Any], code: str, subject: str) -> list[dict[str, Any]]:
    """The diagnoses that rest on or explain the finding of `code` about `subject`."""
    out = []
    for diag in report.get("diagnoses", []):
        refs = [*diag.get("findings", []), *diag.get("explains", [])]
        if any(r.get("code") == code and r.get("subject") == subject for r in refs):
            out.append(diag)
    return out


def fix_steps(report: dict[str, Any], diag: dict[str, Any]) -> list[dict[str, Any]]:
    """A diagnosis's fix steps; for a consequence, its cause's (fixing the cause fixes it)."""
    if diag.get("fix"):
        return list(diag["fix"])
    cause = diag.get("consequence_of")
    for other in report.get("diagnoses", []):
        if cause is not None and other.get("rank") == cause:
            return list(other.get("fix", []))
    return []


def rerun(report: dict[str, Any], diag: dict[str, Any]) -> Optional[tuple[str, str]]:
    """(where, command) that shows a diagnosis's verifying checks again once it is fixed:
    `kvmdoctor run` (or `lint`) `--select CODES` as the report was made; in a fleet report
    what the merge wrote (on which host, or every host's report collected and merged again
    for the fleet's own checks)."""
    given = diag.get("rerun")
    if isinstance(given, dict) and given.get("command"):
        return str(given.get("where") or ""), str(given["command"])
    if diag.get("verify"):
        return "", rerun_command(report, list(diag["verify"]))
    return None


def then(report: dict[str, Any], diag: dict[str, Any]) -> Optional[str]:
    """The re-run hint as one line of text: "then: COMMAND", "then on host a: COMMAND"."""
    hint = rerun(report, diag)
    if hint is None:
        return None
    place, command = hint
    return f"then{' ' + place if place else ''}: {command}"


def file_location(subject: str, evidence: Any) -> Optional[tuple[str, Optional[int]]]:
    """(path, line or None) when the finding is about a file: a subject naming a file on the
    host (absolute path), else evidence naming one (`file` or `path`: a checked file such as
    one `kvmdoctor lint` reads, absolute or relative to where it ran). The line from the
    evidence (`line` as a number, or "line N" in its `error`)."""
    match = _FILE_SUBJECT.match(subject)
    if match:
        path = match.group(1)
    elif isinstance(evidence, dict) and "line" in evidence:
        named = evidence.get("file", evidence.get("path"))
        if not isinstance(named, str) or not named.strip() or "\0" in named:
            return None
        path = named
    else:
        return None
    line: Optional[int] = None
    if isinstance(evidence, dict):
        raw = evidence.get("line")
        if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0:
            line = raw
        elif isinstance(evidence.get("error"), str):
            found = _LINE_IN_ERROR.search(evidence["error"])
            if found and int(found.group(1)) > 0:
                line = int(found.group(1))
    return path, line


def definition_location(finding: dict[str, Any]) -> Optional[tuple[str, Optional[int], str]]:
    """(file, line or None, element path) of a `kvmdoctor lint` finding; None for others."""
    loc = finding.get("location")
    if not isinstance(loc, dict) or not loc.get("file"):
        return None
    line = loc.get("line")
    ok = isinstance(line, int) and not isinstance(line, bool) and line > 0
    return str(loc["file"]), line if ok else None, str(loc.get("element", ""))


def location_text(finding: dict[str, Any]) -> str:
    """ " at vms/web1.xml:14 /domain/devices/disk[2]" for a lint finding (the file, the line
    and the element); " at /domain/devices/disk[2]" for a finding that names an element only;
    else ""."""
    loc = finding.get("location")
    if not isinstance(loc, dict):
        return ""
    found = definition_location(finding)
    if found is None:
        return f" at {loc.get('element')}" if loc.get("element") else ""
    path, line, element = found
    return f" at {path}{f':{line}' if line else ''} {element}".rstrip()


def ref_location(report: dict[str, Any], ref: dict[str, Any]) -> str:
    """location_text of the finding a diagnosis refers to (by code and subject)."""
    for chk, finding in findings(report):
        same = chk["code"] == ref.get("code") and finding["subject"] == ref.get("subject")
        if same and finding.get("location"):
            return location_text(finding)
    return ""


def rerun_command(report: dict[str, Any], codes: list[str]) -> str:
    """The command that re-runs these checks as the report was made: lint or run."""
    argv = report.get("run", {}).get("argv", [])
    command = "run"
    if len(argv) > 1 and argv[1] == "lint":
        command = "lint --host" if "--host" in argv else "lint"
    return f"kvmdoctor {command} --select {','.join(codes)}"


def epoch(stamp: Optional[str]) -> Optional[float]:
    """A report time ("2026-11-26T08:00:00.123Z") as seconds since the epoch."""
    if not stamp:
        return None
    whole, _, frac = stamp.rstrip("Z").partition(".")
    # The fields by position, checked by datetime: strptime would import _strptime (and its
    # locale machinery) into every run that renders a report.
    if len(whole) != 19 or whole[4] + whole[7] + whole[10] + whole[13] + whole[16] != "--T::":
        return None
    digits = [whole[a:b] for a, b in ((0, 4), (5, 7), (8, 10), (11, 13), (14, 16), (17, 19))]
    if not all(d.isascii() and d.isdigit() for d in digits):
        return None
    try:
        year, month, day, hour, minute, second = (int(d) for d in digits)
        when = dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.timezone.utc)
        seconds = when.timestamp()
    except ValueError:
        return None
    return seconds + (float(f"0.{frac}") if frac.isdigit() else 0.0)


def area(code: str) -> str:
    """The area of a check code: its letters (KVM002 -> KVM)."""
    return code.rstrip("0123456789") or code
