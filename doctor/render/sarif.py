"""The report as SARIF 2.1.0 (OASIS), for code-scanning views and SARIF viewers.

One rule per check code (reportingDescriptor), its help the check's own documentation (the
docstring sections `kvmdoctor checks CODE` prints); one result per finding that is a problem
(fail/error -> error, warn -> warning, info -> note; passes and skips are not results; ignored
findings are results with a suppression that gives the reason). Every result has a physical
location, as GitHub code scanning requires (see `_artifact`): the file a finding is about
(file:, cert:, log: subjects, or a file and line in its evidence) at its line, else the path
of its subject on the host, else kvmdoctor-subjects/KIND/NAME; and names its subject as a
logical location. A location whose line is not known starts at line 1 and says so
(properties.lineKnown false). partialFingerprints keep a finding's alerts together across runs.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any, Optional
from urllib.parse import quote

from doctor.render.views import (
    definition_location,
    diagnoses_for,
    file_location,
    findings,
    fix_steps,
)
from doctor.textsafe import escape_controls

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
LEVEL = {"fail": "error", "error": "error", "warn": "warning", "info": "note"}
# Line ends other than \n, which escape_controls leaves alone.
_BREAKS = re.compile("[\r\x0b\x0c]")
_SECTIONS = ("What it checks", "Why it matters", "How to fix", "References")


def _clean(text: Any) -> str:
    """Host text for SARIF's plain `text` properties: control characters shown as \\xNN."""
    return _BREAKS.sub(lambda m: f"\\x{ord(m.group()):02x}", escape_controls(str(text)))


def _rule(code: str, chk: dict[str, Any], doc: Optional[Mapping[str, str]]) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "id": code,
        "name": _pascal(chk.get("name") or code),
        "shortDescription": {"text": _clean(chk.get("title") or code)},
        "defaultConfiguration": {"level": "error"},
        "properties": {"tags": list(chk.get("tags", [])), "kvmdoctorName": chk.get("name")},
    }
    if doc:
        what = doc.get("What it checks", "")
        if what:
            rule["fullDescription"] = {"text": _clean(" ".join(what.split()))}
        text = "\n\n".join(f"{s}: {doc[s]}" for s in _SECTIONS if doc.get(s))
        markdown = "\n\n".join(f"**{s}**\n\n{doc[s]}" for s in _SECTIONS if doc.get(s))
        rule["help"] = {"text": _clean(text), "markdown": _clean(markdown)}
        refs = doc.get("References", "").split()
        if refs and refs[0].startswith(("https://", "http://")):
            rule["helpUri"] = refs[0]
    else:
        rule["help"] = {
            "text": _clean(f"{chk.get('title') or code}: see `kvmdoctor checks {code}`")
        }
    return rule


def _pascal(name: str) -> str:
    """A rule's `name` in the form SARIF tools expect (kvm-device-missing -> KvmDeviceMissing)."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("-") if part)


def _message(report: dict[str, Any], chk: dict[str, Any], finding: dict[str, Any]) -> str:
    parts = [finding["message"]]
    for diag in diagnoses_for(report, chk["code"], finding["subject"]):
        steps = "; ".join(
            f"({n}) [{s['safety']}] {s['text']}"
            for n, s in enumerate(fix_steps(report, diag), start=1)
        )
        parts.append(
            f"Diagnosis: {diag['title']}. {diag['cause']}" + (f" Fix: {steps}" if steps else "")
        )
    text = " ".join(parts)
    return text if text.endswith((".", "!", "?")) else text + "."


def render(report: dict[str, Any], docs: Mapping[str, Mapping[str, str]]) -> str:
    import json

    rules: list[dict[str, Any]] = []
    index: dict[str, int] = {}
    for chk in report.get("checks", []):
        if chk["code"] not in index:
            index[chk["code"]] = len(rules)
            rules.append(_rule(chk["code"], chk, docs.get(chk["code"])))

    results = []
    report_uri = report.get("host", {}).get("uri")
    for chk, finding in findings(report):
        level = LEVEL.get(finding["status"])
        if level is None:
            continue
        subject = finding["subject"]
        result: dict[str, Any] = {
            "ruleId": chk["code"],
            "ruleIndex": index[chk["code"]],
            "level": level,
            "kind": "fail",
            "message": {"text": _clean(_message(report, chk, finding))},
            "locations": [_location(subject, finding.get("evidence"), report_uri, finding)],
            "partialFingerprints": {
                "kvmdoctorFinding/v1": hashlib.sha256(
                    f"{chk['code']}\0{subject}".encode("utf-8", "surrogatepass")
                ).hexdigest()
            },
            "properties": {"status": finding["status"], "subject": _clean(subject)},
        }
        if finding.get("explained_by"):
            result["properties"]["explainedBy"] = list(finding["explained_by"])
        ignored = finding.get("ignored")
        if ignored:
            result["suppressions"] = [
                {
                    "kind": "external",
                    "status": "accepted",
                    "justification": _clean(f"{ignored['reason']} ({ignored['by']})"),
                }
            ]
        results.append(result)

    host = report.get("host", {})
    run: dict[str, Any] = {
        "tool": {
            "driver": {
                "name": "kvmdoctor",
                "version": report.get("tool", {}).get("version", "unknown"),
                "rules": rules,
            }
        },
        "originalUriBaseIds": _bases(report),
        "results": results,
        "invocations": [_invocation(report)],
        "columnKind": "unicodeCodePoints",
        "properties": {
            "host": {k: _clean(v) if isinstance(v, str) else v for k, v in host.items()},
            "summary": report.get("summary", {}),
            "exitCode": report.get("exit_code"),
        },
    }
    document = {"$schema": SCHEMA, "version": "2.1.0", "runs": [run]}
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


# Subjects that are things on the host with a path of their own ("device:/dev/kvm").
_PATH_SUBJECT = re.compile(r"^(?:device|socket|emulator|dir|path):(/[^#]*)$")
_PROCESS = re.compile(r"^process:.*\[(\d+)\]$")
SUBJECTS = "kvmdoctor-subjects"  # where subjects that are no file are placed, e.g. "user:alice"


def _artifact(subject: str, evidence: Any, uri: Optional[str]) -> tuple[dict[str, Any], int, bool]:
    """(artifactLocation, start line, whether the line is known) for a finding. Files and
    things with a path are placed under HOSTROOT (a relative path from the evidence, such as a
    file `kvmdoctor lint` read, stays relative: to where it ran); domains and networks at the
    definition files of the system daemon; interfaces under /sys/class/net; processes under
    /proc. A subject that is none of these (the host, a user, a MAC) is placed at
    kvmdoctor-subjects/KIND/NAME, so that every result has the physical location GitHub code
    scanning requires. Without a known line the region is the file's first line."""
    where = file_location(subject, evidence)
    line: Optional[int] = None
    kind, _, name = subject.partition(":")
    system = uri is None or uri.startswith("qemu:///system")
    if where is not None:
        path, line = where
    elif _PATH_SUBJECT.match(subject):
        path = _PATH_SUBJECT.match(subject).group(1)  # type: ignore[union-attr]
    elif kind == "domain" and name and system and "/" not in name:
        path = f"/etc/libvirt/qemu/{name}.xml"
    elif kind == "network" and name and system and "/" not in name:
        path = f"/etc/libvirt/qemu/networks/{name}.xml"
    elif kind == "iface" and name and "/" not in name:
        path = f"/sys/class/net/{name}"
    elif _PROCESS.match(subject):
        path = f"/proc/{_PROCESS.match(subject).group(1)}"  # type: ignore[union-attr]
    else:
        parts = [kind or "host", *([name] if name else [])]
        return (
            {"uri": "/".join([SUBJECTS, *(quote(_clean(p), safe="") for p in parts)])},
            1,
            False,
        )
    artifact: dict[str, Any] = {"uri": quote(_clean(path).lstrip("/"), safe="/-._~")}
    if path.startswith("/"):
        artifact["uriBaseId"] = "HOSTROOT"
    return artifact, line or 1, line is not None


def _location(
    subject: str, evidence: Any, uri: Optional[str], finding: dict[str, Any]
) -> dict[str, Any]:
    linted = definition_location(finding)
    if linted is not None:  # `kvmdoctor lint`: a definition file, as given on its command line
        path, line, element = linted
        physical: dict[str, Any] = (
            _linted_file(path, line)
            if path != "<stdin>"
            else {"artifactLocation": {"uri": f"{SUBJECTS}/stdin"}}
        )
        physical.setdefault("region", {"startLine": 1})
        return {
            "physicalLocation": physical,
            "logicalLocations": [
                {"fullyQualifiedName": _clean(f"{path}#{element}"), "kind": "element"}
            ],
        }
    artifact, line, known = _artifact(subject, evidence, uri)
    location: dict[str, Any] = {
        "physicalLocation": {"artifactLocation": artifact, "region": {"startLine": line}},
        "logicalLocations": [{"fullyQualifiedName": _clean(subject), "kind": "object"}],
    }
    if not known:
        location["properties"] = {"lineKnown": False}
    return location


def _bases(report: dict[str, Any]) -> dict[str, Any]:
    bases: dict[str, Any] = {
        "HOSTROOT": {
            "uri": "file:///",
            "description": {"text": "The root of the host (or tree, or snapshot) examined."},
        }
    }
    if "files" in report.get("run", {}):  # a lint report: files relative to where it ran
        bases["SRCROOT"] = {
            "description": {"text": "The directory kvmdoctor lint ran in (the checkout)."}
        }
    return bases


def _linted_file(path: str, line: Optional[int]) -> dict[str, Any]:
    """A linted file's location: relative paths against SRCROOT (the directory lint ran in,
    a repository's checkout in CI), absolute ones as file: URIs."""
    if path.startswith("/"):
        artifact = {"uri": "file://" + quote(path, safe="/-._~")}
    else:
        relative = path[2:] if path.startswith("./") else path
        artifact = {"uri": quote(relative, safe="/-._~"), "uriBaseId": "SRCROOT"}
    physical: dict[str, Any] = {"artifactLocation": artifact}
    if line is not None:
        physical["region"] = {"startLine": line}
    return physical


def _invocation(report: dict[str, Any]) -> dict[str, Any]:
    run = report.get("run", {})
    invocation: dict[str, Any] = {
        "executionSuccessful": not report.get("load_errors"),
        "exitCode": report.get("exit_code", 0),
        "commandLine": _clean(" ".join(run.get("argv", []))),
    }
    if run.get("started"):
        invocation["startTimeUtc"] = run["started"]
    if run.get("finished"):
        invocation["endTimeUtc"] = run["finished"]
    notes = [
        {
            "level": "error",
            "message": {"text": _clean(f"{e['origin']}: {e.get('check') or ''} {e['message']}")},
        }
        for e in report.get("load_errors", [])
    ]
    if notes:
        invocation["toolExecutionNotifications"] = notes
    return invocation
