"""The report as Markdown to paste into an issue tracker (GitHub, GitLab, Jira's Markdown
editors): the host, the summary, the diagnoses with their fixes, the problems they do not
explain, and what was ignored. Text from the host is escaped: no control character, HTML tag,
link, mention or table break gets through."""

from __future__ import annotations

import re
from typing import Any

from doctor.render.views import (
    findings,
    fix_steps,
    location_text,
    ref_location,
    rerun,
)
from doctor.textsafe import one_line

LABEL = {"pass": "PASS", "info": "INFO", "warn": "WARN", "fail": "FAIL", "skip": "SKIP",
         "error": "ERROR"}  # fmt: skip
# Punctuation that can start a construct anywhere in a line: emphasis, code, links and
# images, HTML and entities, tables, strikethrough, mentions and issue references, math.
_PUNCT = re.compile(r"([\\`*_\[\]()<>&|~@#!$])")
# What starts a block only at the start of a line: a list, a quote, a setext underline.
_LINE_START = re.compile(r"^(\d+)([.)])|^([-+=])")
_ORDER = ("error", "fail", "warn", "info")


def md(value: Any) -> str:
    """Host text as Markdown that shows exactly that text: one line without leading blanks,
    controls as \\xNN, and every mark that could start a construct backslash-escaped (in
    CommonMark an escaped ASCII punctuation mark is literal), so `<script>`, `[a](b)`, `@user`,
    `#12` and a `|` in a table cell stay text, and the text cannot start a list or heading."""
    text = _PUNCT.sub(r"\\\1", one_line(str(value)).strip())
    return _LINE_START.sub(
        lambda m: f"{m.group(1)}\\{m.group(2)}" if m.group(1) else f"\\{m.group(3)}", text
    )


def render(report: dict[str, Any]) -> str:
    host = report.get("host", {})
    run = report.get("run", {})
    tool = report.get("tool", {})
    out = [f"## kvmdoctor report: {md(host.get('hostname') or 'unknown host')}", ""]
    facts = [
        ("OS", host.get("os")),
        ("kernel", host.get("kernel")),
        ("arch", host.get("arch")),
        ("inside", host.get("hypervisor")),
        ("libvirt URI", host.get("uri")),
        ("source", run.get("source", {}).get("kind")),
        ("run", f"{run.get('started', '?')}, {run.get('duration_s', '?')} s"),
        ("kvmdoctor", tool.get("version")),
        ("gate", f"--fail-on {run.get('fail_on', 'fail')}, exit {report.get('exit_code')}"),
    ]
    out += [f"- **{name}**: {md(value)}" for name, value in facts if value]
    summary = report.get("summary", {})
    out += ["", "| checks | pass | info | warn | fail | error | skip | ignored |"]
    out += ["|---:|---:|---:|---:|---:|---:|---:|---:|"]
    cells = ["checks", "pass", "info", "warn", "fail", "error", "skip", "ignored"]
    out += ["| " + " | ".join(str(int(summary.get(c, 0))) for c in cells) + " |", ""]

    diagnoses = report.get("diagnoses", [])
    if diagnoses:
        out += ["### Diagnoses", ""]
    ranks = {d.get("rank") for d in diagnoses}
    for diag in diagnoses:
        if diag.get("consequence_of") in ranks:
            continue
        out += _diagnosis(report, diag, diagnoses)

    problems = [
        (chk, f)
        for chk, f in findings(report)
        if f["status"] in _ORDER and not f.get("ignored") and not f.get("explained_by")
    ]
    problems.sort(key=lambda row: _ORDER.index(row[1]["status"]))
    if problems:
        out += ["### Other problems", ""]
        out += [
            f"- **{LABEL[f['status']]}** `{chk['code']}` {md(chk['name'])} — "
            f"{md(f['subject'] + location_text(f))}: {md(f['message'])}"
            for chk, f in problems
        ]
        out.append("")
    ignored = [(chk, f) for chk, f in findings(report) if f.get("ignored")]
    if ignored:
        out += ["### Ignored", ""]
        out += [
            f"- {LABEL[f['status']]} `{chk['code']}` {md(f['subject'] + location_text(f))}: "
            f"{md(f['ignored']['reason'])} ({md(f['ignored']['by'])})"
            for chk, f in ignored
        ]
        out.append("")
    for error in report.get("load_errors", []):
        out.append(f"- **PLUGIN ERROR** {md(error['origin'])}: {md(error['message'])}")
    if not diagnoses and not problems:
        out += ["No problem found.", ""]
    out.append(
        f"<sub>kvmdoctor {md(tool.get('version', ''))}: "
        "`kvmdoctor report show REPORT.json` prints the full report</sub>"
    )
    return "\n".join(out).rstrip() + "\n"


def _diagnosis(
    report: dict[str, Any], diag: dict[str, Any], diagnoses: list[dict[str, Any]]
) -> list[str]:
    subject = "" if diag["subject"] == "host" else f" — {md(diag['subject'])}"
    out = [
        f"#### {LABEL[diag['status']]}: {md(diag['title'])}{subject}",
        "",
        f"{md(diag['cause'])} \\(playbook `{diag['playbook']}`\\)",
        "",
    ]
    for role, refs in (
        ("Found by", diag.get("findings", [])),
        ("Explains", diag.get("explains", [])),
    ):
        for ref in refs:
            out.append(
                f"- {role}: {LABEL[ref['status']]} `{ref['code']}` "
                f"{md(ref['subject'] + ref_location(report, ref))}: "
                f"{md(ref['message'])}"
            )
    consequences = [d for d in diagnoses if d.get("consequence_of") == diag.get("rank")]
    for other in consequences:
        out.append(f"- Consequence: {LABEL[other['status']]} {md(other['title'])}")
    steps = fix_steps(report, diag)
    if steps:
        out += ["", "Fix:", ""]
        out += [
            f"{n}. \\[{md(step['safety'])}\\] {md(step['text'])}"
            for n, step in enumerate(steps, start=1)
        ]
    hint = rerun(report, diag)
    if hint is not None:
        place, command = hint
        out += ["", f"Then{' ' + place if place else ''}: `{command}`"]
    out.append("")
    return out
