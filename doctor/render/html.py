"""The report as one self-contained HTML page for a ticket: the host and summary, the
diagnoses with their causes and fixes, the problems with their evidence, what was ignored, and
(folded) what passed or was skipped. No script, no stylesheet or image from elsewhere: it reads
the same offline. Host text is escaped as HTML, its control characters shown as \\xNN."""

from __future__ import annotations

import html
import json
import re
from typing import Any

from doctor.render.netdraw import STYLE as NET_STYLE
from doctor.render.netdraw import host_drawing, probe_drawing
from doctor.render.views import (
    findings,
    fix_steps,
    location_text,
    ref_location,
    rerun,
)
from doctor.textsafe import escape_controls

LABEL = {"pass": "PASS", "info": "INFO", "warn": "WARN", "fail": "FAIL", "skip": "SKIP",
         "error": "ERROR"}  # fmt: skip
_ORDER = ("error", "fail", "warn", "info")
_BREAKS = re.compile("[\r\x0b\x0c\x85\u2028\u2029]")
CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:62em;padding:0 1em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;border-bottom:1px solid #ccc;padding-bottom:.2em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}
th{background:#f4f4f4}.facts td,.facts th{text-align:left}
.badge{display:inline-block;min-width:3.5em;text-align:center;font-weight:bold;border-radius:3px;
padding:0 .3em;color:#fff}.error{background:#8b1a8b}.fail{background:#c0392b}
.warn{background:#b9770e}.info{background:#2471a3}.pass{background:#1e8449}.skip{background:#888}
.diag{border:1px solid #ddd;border-radius:4px;padding:.6em 1em;margin:1em 0}
.refs{color:#555;margin:.3em 0}.safety{font-family:monospace;color:#555}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:13px}code{font-size:13px}
"""


def esc(value: Any) -> str:
    """Host text as HTML text: escaped, control characters and odd line ends shown as \\xNN."""
    text = escape_controls(str(value))
    text = _BREAKS.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return html.escape(text, quote=True)


def badge(status: str) -> str:
    return f'<span class="badge {esc(status)}">{LABEL.get(status, esc(status))}</span>'


def render(report: dict[str, Any]) -> str:
    host = report.get("host", {})
    run = report.get("run", {})
    tool = report.get("tool", {})
    name = host.get("hostname") or "unknown host"
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # The page may load nothing, run nothing: a reader's browser enforces it.
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        f"<title>kvmdoctor report: {esc(name)}</title>",
        f"<style>{STYLE}{NET_STYLE}</style></head><body>",
        f"<h1>kvmdoctor report: {esc(name)}</h1>",
        '<nav><a href="#summary">Summary</a> · <a href="#diagnoses">Diagnoses</a> · '
        '<a href="#network">Network</a> · <a href="#findings">Findings</a> · '
        '<a href="#ignored">Ignored</a> · <a href="#passed">Passed and skipped</a></nav>',
        '<table class="facts">',
    ]
    facts = [
        ("OS", host.get("os")),
        ("kernel", host.get("kernel")),
        ("arch", host.get("arch")),
        ("inside", host.get("hypervisor")),
        ("libvirt URI", host.get("uri")),
        ("source", run.get("source", {}).get("kind")),
        ("run", f"{run.get('started', '?')}, {run.get('duration_s', '?')} s"),
        ("command", " ".join(run.get("argv", []))),
        ("kvmdoctor", tool.get("version")),
        ("gate", f"--fail-on {run.get('fail_on', 'fail')}: exit {report.get('exit_code')}"),
    ]
    out += [f"<tr><th>{k}</th><td>{esc(v)}</td></tr>" for k, v in facts if v]
    out.append("</table>")

    summary = report.get("summary", {})
    cells = ("checks", "pass", "info", "warn", "fail", "error", "skip", "ignored")
    out += [
        '<h2 id="summary">Summary</h2><table><tr>',
        "".join(f"<th>{c}</th>" for c in cells),
        "</tr><tr>",
        "".join(f"<td>{int(summary.get(c, 0))}</td>" for c in cells),
        "</tr></table>",
    ]

    diagnoses = report.get("diagnoses", [])
    ranks = {d.get("rank") for d in diagnoses}
    out.append('<h2 id="diagnoses">Diagnoses</h2>')
    if not diagnoses:
        out.append("<p>No diagnosis: no playbook matched a problem.</p>")
    for diag in diagnoses:
        if diag.get("consequence_of") not in ranks:
            out += _diagnosis(report, diag, diagnoses)

    rows = list(findings(report))
    problems = [(c, f) for c, f in rows if f["status"] in _ORDER and not f.get("ignored")]
    problems.sort(key=lambda row: _ORDER.index(row[1]["status"]))
    anchors: dict[str, str] = {}
    for n, (_, finding) in enumerate(problems):
        anchors.setdefault(finding["subject"], f"finding-{n}")
    out += _network(report, anchors)
    out.append('<h2 id="findings">Findings</h2>')
    if not problems:
        out.append("<p>No problem found.</p>")
    for n, (chk, finding) in enumerate(problems):
        out += _finding(chk, finding, open_evidence=True, anchor=f"finding-{n}")
    for error in report.get("load_errors", []):
        out.append(
            f"<p>{badge('error')} plugin {esc(error['origin'])}: {esc(error['message'])}</p>"
        )
    ignored = [(c, f) for c, f in rows if f.get("ignored")]
    out.append('<h2 id="ignored">Ignored</h2>')
    out.append("<ul>" if ignored else "<p>Nothing was ignored.</p>")
    if ignored:
        out += [
            f"<li>{badge(f['status'])} <code>{esc(c['code'])}</code> "
            f"{esc(f['subject'] + location_text(f))}: "
            f"{esc(f['ignored']['reason'])} ({esc(f['ignored']['by'])})</li>"
            for c, f in ignored
        ]
        out.append("</ul>")
    others = [(c, f) for c, f in rows if f["status"] not in _ORDER and not f.get("ignored")]
    out.append(f'<details id="passed"><summary>Passed and skipped ({len(others)})</summary>')
    for chk, finding in others:
        out += _finding(chk, finding, open_evidence=False)
    out.append("</details>")
    out.append(
        f"<p><small>kvmdoctor {esc(tool.get('version', ''))}; the JSON report holds all of "
        "this (<code>kvmdoctor report show</code> prints it).</small></p>"
    )
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _diagnosis(
    report: dict[str, Any], diag: dict[str, Any], diagnoses: list[dict[str, Any]]
) -> list[str]:
    subject = "" if diag["subject"] == "host" else f" — {esc(diag['subject'])}"
    out = [
        f'<div class="diag" id="diagnosis-{int(diag["rank"])}">',
        f"<h3>{badge(diag['status'])} {esc(diag['title'])}{subject}</h3>",
        f"<p>{esc(diag['cause'])}</p>",
        '<ul class="refs">',
    ]
    for role, refs in (
        ("found by", diag.get("findings", [])),
        ("explains", diag.get("explains", [])),
    ):
        out += [
            f"<li>{role}: {badge(r['status'])} <code>{esc(r['code'])}</code> "
            f"{esc(r['subject'] + ref_location(report, r))}: {esc(r['message'])}</li>"
            for r in refs
        ]
    out += [
        f"<li>consequence: {badge(d['status'])} {esc(d['title'])}</li>"
        for d in diagnoses
        if d.get("consequence_of") == diag.get("rank")
    ]
    out.append("</ul>")
    steps = fix_steps(report, diag)
    if steps:
        out.append("<p>Fix:</p><ol>")
        out += [
            f'<li><span class="safety">[{esc(s["safety"])}]</span> {esc(s["text"])}</li>'
            for s in steps
        ]
        out.append("</ol>")
    hint = rerun(report, diag)
    if hint is not None:
        place, command = hint
        place = f" {esc(place)}" if place else ""
        out.append(f"<p>Then{place}: <code>{esc(command)}</code></p>")
    refs = [r for r in diag.get("refs", []) if str(r).startswith(("https://", "http://"))]
    if refs:
        out.append(
            "<p>References: " + ", ".join(f'<a href="{esc(r)}">{esc(r)}</a>' for r in refs) + "</p>"
        )
    out.append(f"<p><small>playbook <code>{esc(diag['playbook'])}</code></small></p></div>")
    return out


def _network(report: dict[str, Any], anchors: dict[str, str]) -> list[str]:
    """The drawings of the host's virtual network and of a probe's path, from the report."""
    out = ['<h2 id="network">Network</h2>']
    probe = probe_drawing(report, esc, anchors)
    host = host_drawing(report, esc, anchors)
    if probe:
        out += ["<p>The probe's path; a red cross marks where the traffic stopped.</p>", probe]
    if host:
        network = report["host"]["network"]
        more = " (more links than drawn)" if network.get("truncated") else ""
        out += [
            f"<p>The host's virtual network as the checks saw it ({esc(network['origin'])})"
            f"{more}; a node with a problem links to it.</p>",
            host,
        ]
    drawn = _fleet_networks(report, anchors)
    out += drawn
    if not probe and not host and not drawn:
        out.append("<p>This report holds no network to draw (no check read the links).</p>")
    return out


def _fleet_networks(report: dict[str, Any], anchors: dict[str, str]) -> list[str]:
    """A fleet report's hosts, each with the drawing of its own network (its report's
    `host.network`, kept in `fleet.hosts`); a node with a problem links to it, and a MAC on
    two hosts marks its guests on both."""
    fleet = report.get("fleet")
    if not isinstance(fleet, dict):
        return []
    out = []
    for number, host in enumerate(fleet.get("hosts", []), start=1):
        if not isinstance(host, dict):
            continue
        name = str(host.get("name"))
        out.append(f'<h3 id="network-host-{number}">Host {esc(name)}</h3>')
        given = host.get("network")
        network: dict[str, Any] = given if isinstance(given, dict) else {}
        drawing = host_drawing(
            report,
            esc,
            anchors,
            network=network,
            prefix=f"host:{name}/",
            svg_id=f"network-drawing-{number}",
        )
        if drawing is None:
            out.append("<p>Its report holds no network to draw (no check read the links).</p>")
            continue
        more = " (more links than drawn)" if network.get("truncated") else ""
        out += [f"<p>As its checks saw it ({esc(network.get('origin'))}){more}.</p>", drawing]
    return out


def _finding(
    chk: dict[str, Any], finding: dict[str, Any], *, open_evidence: bool, anchor: str = ""
) -> list[str]:
    subject = "" if finding["subject"] == "host" else f" — {esc(finding['subject'])}"
    ident = f' id="{anchor}"' if anchor else ""
    subject += esc(location_text(finding))
    out = [
        f"<p{ident}>{badge(finding['status'])} <code>{esc(chk['code'])}</code> {esc(chk['name'])}"
        f"{subject}<br>{esc(finding['message'])}</p>"
    ]
    if finding.get("evidence"):
        evidence = json.dumps(finding["evidence"], indent=2, ensure_ascii=False)
        attribute = " open" if open_evidence else ""
        out.append(
            f"<details{attribute}><summary>evidence</summary><pre>{esc(evidence)}</pre></details>"
        )
    return out
