"""The report as JUnit XML, as GitLab (artifacts:reports:junit) and Jenkins (junit step) read it.

One <testsuite> per check area (KVM, LIB, NET, ...) inside <testsuites>; one <testcase> per
check and subject: classname `kvmdoctor.AREA.CODE` (Jenkins shows AREA as the package, the code
as the class), name the subject. A finding that gates at the report's --fail-on level is a
<failure> (an `error` finding an <error>) whose text is the message and the fix of the diagnosis
that explains it; skips and ignored findings are <skipped>; the evidence goes to <system-out>.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from typing import Any

from doctor.render.views import (
    area,
    diagnoses_for,
    findings,
    fix_steps,
    gates,
    location_text,
    then,
)

# What XML 1.0 cannot hold even escaped (C0 controls but tab and line ends, surrogates, U+FFFE/F),
# and CR and the C1 controls, which it can hold but a reader changes or does not want: shown
# as \xNN.
_NOT_XML = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def _text(value: Any) -> str:
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))


def _explanation(report: dict[str, Any], chk: dict[str, Any], finding: dict[str, Any]) -> str:
    lines = [
        f"{finding['status'].upper()} {chk['code']} {chk['name']} — {finding['subject']}"
        + location_text(finding)
    ]
    lines.append(finding["message"])
    for diag in diagnoses_for(report, chk["code"], finding["subject"]):
        lines += ["", f"Diagnosis: {diag['title']} ({diag['playbook']})", diag["cause"]]
        for number, step in enumerate(fix_steps(report, diag), start=1):
            lines.append(f"fix {number}: [{step['safety']}] {step['text']}")
        hint = then(report, diag)
        if hint:
            lines.append(hint)
    return "\n".join(lines)


def render(report: dict[str, Any]) -> str:
    suites: dict[str, ET.Element] = {}
    counts: dict[str, dict[str, float]] = {}
    host = report.get("host", {}).get("hostname") or "unknown"
    started = (report.get("run", {}).get("started") or "").rstrip("Z").split(".")[0]

    def suite(name: str) -> tuple[ET.Element, dict[str, float]]:
        if name not in suites:
            element = ET.Element("testsuite", name=f"kvmdoctor.{name}", hostname=_text(host))
            if started:
                element.set("timestamp", started)
            suites[name] = element
            counts[name] = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0, "time": 0.0}
        return suites[name], counts[name]

    seen: set[str] = set()
    for chk, finding in findings(report):
        parent, count = suite(area(chk["code"]))
        per_finding = len(chk["findings"]) or 1
        seconds = chk.get("duration_ms", 0.0) / 1000 / per_finding
        case = ET.SubElement(
            parent,
            "testcase",
            classname=f"kvmdoctor.{area(chk['code'])}.{chk['code']}",
            name=_text(finding["subject"]),
            time=f"{seconds:.6f}",
        )
        count["tests"] += 1
        if chk["code"] not in seen:
            count["time"] += chk.get("duration_ms", 0.0) / 1000
            seen.add(chk["code"])
        status = finding["status"]
        ignored = finding.get("ignored")
        if ignored:
            element = ET.SubElement(
                case,
                "skipped",
                message=_text(f"ignored ({ignored['by']}): {ignored['reason']}"),
            )
            element.text = _text(f"{status}: {finding['message']}")
            count["skipped"] += 1
        elif status == "skip":
            ET.SubElement(case, "skipped", message=_text(finding["message"]))
            count["skipped"] += 1
        elif status == "error":
            element = ET.SubElement(case, "error", message=_text(finding["message"]), type="error")
            element.text = _text(_explanation(report, chk, finding))
            count["errors"] += 1
        elif gates(report, finding):
            element = ET.SubElement(case, "failure", message=_text(finding["message"]), type=status)
            element.text = _text(_explanation(report, chk, finding))
            count["failures"] += 1
        out = [f"{status}: {finding['message']}"]
        if finding.get("evidence"):
            out.append(json.dumps(finding["evidence"], indent=2, ensure_ascii=False))
        ET.SubElement(case, "system-out").text = _text("\n".join(out))

    for error in report.get("load_errors", []):
        parent, count = suite("plugins")
        case = ET.SubElement(
            parent,
            "testcase",
            classname="kvmdoctor.plugins",
            name=_text(error.get("check") or error["origin"]),
            time="0",
        )
        element = ET.SubElement(case, "error", message=_text(error["message"]), type="load-error")
        element.text = _text(f"{error['origin']}: {error['message']}")
        count["tests"] += 1
        count["errors"] += 1

    root = ET.Element("testsuites", name="kvmdoctor")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0, "time": 0.0}
    for name, element in suites.items():
        for key, value in counts[name].items():
            element.set(key, f"{value:.3f}" if key == "time" else str(int(value)))
            totals[key] += value
        root.append(element)
    for key, value in totals.items():
        root.set(key, f"{value:.3f}" if key == "time" else str(int(value)))
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n"
