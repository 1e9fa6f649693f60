"""The report for people: diagnoses first, then failures and warnings with their evidence."""

from __future__ import annotations

import json
import re
import shlex
import textwrap
from collections.abc import Iterator
from typing import IO, Any, Optional

from doctor.render.views import location_text, ref_location, then

STYLE = {
    "pass": "green",
    "info": "cyan",
    "warn": "yellow",
    "fail": "bold red",
    "skip": "dim",
    "error": "bold magenta",
}
LABEL = {
    "pass": "PASS",
    "info": "INFO",
    "warn": "WARN",
    "fail": "FAIL",
    "skip": "SKIP",
    "error": "ERROR",
}
_ORDER = ("error", "fail", "warn", "info")
_MAX_EVIDENCE_LINES = 8

# The view is written in rich's console markup. Without colour it is written without rich
# (whose import costs a fifth of a run): tags dropped and escapes undone exactly as
# rich.markup reads them (tests/render/test_text.py compares both ways on every sample report
# and on hostile text). `escape` is rich.markup.escape.
_TAGS = re.compile(r"((\\*)\[([a-z#/@][^[]*?)])")
_ESCAPE = re.compile(r"(\\*)(\[[a-z#/@][^[]*?])")
# What rich's Text treats specially (tabs expanded by cell width, controls stripped): a line
# holding one is left to rich.
_RICH_ONLY = re.compile(r"[\t\x07\x08\x0b\x0c\x0d]")


def _escape_backslashes(match: re.Match[str]) -> str:
    backslashes, text = match.groups()
    return f"{backslashes}{backslashes}\\{text}"


def escape(markup: str) -> str:
    """`markup` with its square brackets escaped, so that it is shown as it is."""
    markup = _ESCAPE.sub(_escape_backslashes, markup)
    if markup.endswith("\\") and not markup.endswith("\\\\"):
        return markup + "\\"
    return markup


def plain(markup: str) -> str:
    """The text that console markup shows: tags dropped, escapes undone."""
    if "[" not in markup:
        return markup
    parts = []
    position = 0
    for match in _TAGS.finditer(markup):
        full_text, escapes, _ = match.groups()
        start, end = match.span()
        if start > position:
            parts.append(markup[position:start].replace("\\[", "["))
        position = end
        if escapes:
            backslashes, escaped = divmod(len(escapes), 2)
            parts.append("\\" * backslashes)
            if escaped:
                parts.append(full_text[len(escapes) :].replace("\\[", "["))
    if position < len(markup):
        parts.append(markup[position:].replace("\\[", "["))
    return "".join(parts)


class PlainConsole:
    """What the view asks of rich's Console, for output without colour or styles."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self._rich: Any = None

    def print(self, markup: str, style: Any = None) -> None:
        text = plain(markup)
        if _RICH_ONLY.search(text):
            self._rich_console().print(markup)
            return
        self.out.write(text + "\n")

    def _rich_console(self) -> Any:
        if self._rich is None:
            self._rich = _console(self.out, color=False)
        return self._rich


def _console(out: IO[str], *, color: bool) -> Any:
    from rich.console import Console

    return Console(
        file=out,
        no_color=not color,
        force_terminal=bool(color),
        highlight=False,
        soft_wrap=True,
        emoji=False,
    )


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flatten(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        for index, item in enumerate(value):
            yield from _flatten(item, f"{prefix}[{index}]")
    elif isinstance(value, list):
        if value:
            yield prefix, ", ".join(str(v) for v in value)
    elif value is not None:
        yield prefix, str(value)


def evidence_lines(evidence: dict[str, Any], verbose: bool) -> list[str]:
    if verbose:
        return json.dumps(evidence, indent=2, ensure_ascii=False).splitlines()
    lines = [f"{k}: {v if len(v) <= 100 else v[:97] + '...'}" for k, v in _flatten(evidence)]
    if len(lines) > _MAX_EVIDENCE_LINES:
        hidden = len(lines) - _MAX_EVIDENCE_LINES
        lines = lines[:_MAX_EVIDENCE_LINES] + [f"... {hidden} more (-v or --format json)"]
    return lines


def render(
    report: dict[str, Any],
    out: IO[str],
    *,
    verbose: bool = False,
    quiet: bool = False,
    color: bool = False,
) -> None:
    from doctor.textsafe import for_terminal

    report = for_terminal(report)  # no escape sequence from the host reaches the terminal
    console = _console(out, color=True) if color else PlainConsole(out)
    print_ = console.print

    from doctor.render import fleet

    if not quiet and fleet.is_fleet(report):
        fleet.header(console, report, verbose=verbose)
    elif not quiet:
        host = report["host"]
        source = report["run"]["source"]
        parts = [f"kvmdoctor {report['tool']['version']}"]
        parts += [str(v) for v in (host.get("hostname"), host.get("os")) if v]
        if host.get("kernel"):
            parts.append(f"kernel {host['kernel']}")
        if host.get("arch"):
            parts.append(host["arch"])
        if host.get("hypervisor"):
            parts.append(f"inside {host['hypervisor']}")
        where = source.get("kind", "live")
        if where == "snapshot":
            where = f"snapshot {source.get('path')}"
        elif where == "root":
            where = f"tree {source.get('root')}"
        parts.append(where)
        print_(escape(" · ".join(parts)), style="bold")
        headline = _headline(report)
        if headline:
            status, message = headline
            print_(f"[{STYLE[status]}]{escape(message)}[/]")

    diagnoses = report.get("diagnoses") or []
    # Known errors found in the logs, which no current check confirms: one table row each
    # (time, problem, log) after the diagnoses; their full blocks with -v.
    log_rows = [] if verbose else _log_rows(report)
    if log_rows:
        diagnoses = [d for d in diagnoses if d.get("playbook") != LOG_PLAYBOOK]
    if diagnoses:
        print_("\nDiagnoses", style="bold underline")
        ranks = {diag.get("rank") for diag in diagnoses}
        for diag in diagnoses:
            if diag.get("consequence_of") in ranks:
                continue  # shown under its cause
            _diagnosis(console, diag, verbose=verbose, report=report)
            for other in diagnoses:
                if other.get("consequence_of") == diag.get("rank"):
                    _consequence(console, other, verbose=verbose)

    if log_rows:
        print_(
            "\nRecent errors in the logs (no current check confirms them)", style="bold underline"
        )
        width = max(len(row[1]) for row in log_rows)
        for when, problem, times, log in log_rows:
            print_(f"  {escape(when):20}  {escape(problem):{width}}  {times:>3}x  {escape(log)}")
        print_("  [dim]kvmdoctor explain PROBLEM: its cause and fix; -v: the lines themselves[/]")

    problems = []
    ignored = []
    others = []
    for chk in report["checks"]:
        for finding in chk["findings"]:
            row = (chk, finding)
            if finding.get("ignored"):
                ignored.append(row)
            elif finding.get("explained_by"):
                continue  # shown under its diagnosis
            elif finding["status"] in _ORDER:
                problems.append(row)
            else:
                others.append(row)
    problems.sort(key=lambda row: _ORDER.index(row[1]["status"]))

    if problems:
        print_("\nProblems", style="bold underline")
        for chk, finding in problems:
            _finding(console, chk, finding, verbose=verbose, evidence=True)
    for error in report.get("load_errors", []):
        who = f"{error['origin']}: {error['check']}" if error.get("check") else error["origin"]
        print_(f"[{STYLE['error']}]PLUGIN ERROR[/] {escape(who)}: {escape(error['message'])}")
    if ignored:
        print_("\nIgnored", style="bold underline")
        for chk, finding in ignored:
            why = finding["ignored"]
            print_(
                f"  {LABEL[finding['status']]:5} {chk['code']} {escape(finding['subject'])}"
                f"{escape(location_text(finding))}: "
                f"{escape(why['reason'])} [dim]({escape(why['by'])})[/]"
            )
    if verbose and others:
        print_("\nPassed and skipped", style="bold underline")
        for chk, finding in others:
            _finding(console, chk, finding, verbose=verbose, evidence=True)
    elif others and not quiet:
        # Skips grouped by their reason: one line for the 21 checks a host without libvirt
        # skips, naming them.
        groups: dict[str, list[str]] = {}
        for chk, finding in others:
            if finding["status"] == "skip":
                codes = groups.setdefault(_skip_reason(finding["message"]), [])
                if chk["code"] not in codes:
                    codes.append(chk["code"])
        for reason, codes in groups.items():
            if len(codes) == 1:
                (only,) = [c for c in report["checks"] if c["code"] == codes[0]]
                print_(f"[dim]SKIP  {codes[0]} {escape(only['name'])}: {escape(reason)}[/]")
            else:
                print_(f"[dim]SKIP  {len(codes)} checks: {escape(reason)} ({', '.join(codes)})[/]")

    summary = report["summary"]
    counts = []
    for status, word in (
        ("pass", "passed"),
        ("info", "info"),
        ("warn", "warning"),
        ("fail", "failed"),
        ("error", "error"),
        ("skip", "skipped"),
    ):
        n = summary.get(status, 0)
        if n or status in ("pass", "fail"):
            plural = "s" if n != 1 and status in ("warn", "error") else ""
            counts.append(f"{n} {word}{plural}")
    checks = summary["checks"]
    counts[0] = f"{checks} check{'s' if checks != 1 else ''}, findings: {counts[0]}"
    if summary.get("ignored"):
        counts.append(f"{summary['ignored']} ignored")
    counts.append(f"exit {report['exit_code']}")
    print_("\n" + " · ".join(counts), style="bold")


LOG_PLAYBOOK = "known-error-in-logs"
_UNAVAILABLE = re.compile(r"^[a-z_]+ unavailable: ")


def _log_rows(report: dict[str, Any]) -> list[tuple[str, str, int, str]]:
    """(time, problem, count, log) of each log hit that only the generic log diagnosis
    explains, newest first."""
    rows = []
    for chk in report["checks"]:
        if chk["code"] != "LOG001":
            continue
        for finding in chk["findings"]:
            if LOG_PLAYBOOK not in finding.get("explained_by", ()):
                continue
            ev = finding.get("evidence") or {}
            when = str(ev.get("time") or "unknown time").replace("T", " ").rstrip("Z")
            log = finding["subject"].split(":", 1)[-1]
            rows.append((when, str(ev.get("playbook", "?")), int(ev.get("count") or 1), log))
    return sorted(rows, key=lambda row: row[0], reverse=True)


def _skip_reason(message: str) -> str:
    """What a skip says, without the name of the fact that carried it ("libvirt_conn
    unavailable: ..."), so that one reason groups the checks it stopped."""
    return _UNAVAILABLE.sub("", message)


def _diagnosis(
    console: Any, diag: dict[str, Any], *, verbose: bool, report: Optional[dict[str, Any]] = None
) -> None:
    """One diagnosis: its title and cause, the findings it rests on and explains, the fix."""
    status = diag["status"]
    subject = "" if diag["subject"] == "host" else f" — {diag['subject']}"
    console.print(
        f"[{STYLE[status]}]{LABEL[status]:5}[/] [bold]{escape(diag['title'])}[/]"
        f"{escape(subject)} [dim]({escape(diag['playbook'])})[/]"
    )
    for line in textwrap.wrap(diag["cause"], width=94):
        console.print(f"      {escape(line)}")
    for role, refs in (("found by", diag["findings"]), ("explains", diag["explains"])):
        for ref in refs:
            where = "" if ref["subject"] == "host" else f" {ref['subject']}"
            where += ref_location(report, ref) if report is not None else ""
            console.print(
                f"      [dim]{role}: {LABEL[ref['status']]} {ref['code']}{escape(where)}"
                + (f": {escape(ref['message'])}" if verbose else "")
                + "[/]"
            )
    for number, step in enumerate(diag["fix"], start=1):
        lines = textwrap.wrap(f"fix {number}: [{step['safety']}] {step['text']}", width=94)
        for line in lines:
            indent = "      " if line is lines[0] else "        "
            console.print(f"{indent}{escape(line)}")
    hint = then(report or {}, diag)
    if hint:
        after = "kvmdoctor fix prints the plan"
        if hint.startswith("then: kvmdoctor lint"):
            # lint's findings are about files, which `fix` does not edit: lint them again
            files = sorted(
                {r["subject"][5:] for r in diag["findings"] if r["subject"][:5] == "file:"}
            )
            hint += "".join(f" {'-' if f == '<stdin>' else shlex.quote(f)}" for f in files)
            after = (
                f"once the file{'s are' if len(files) > 1 else ' is'} changed; lint changes no file"
            )
        console.print(f"      [dim]{escape(hint)} ({after})[/]")


def _consequence(console: Any, diag: dict[str, Any], *, verbose: bool) -> None:
    """A diagnosis that its cause (shown just above) fully explains: one line indented under
    it (its own cause and findings with -v), and no fix steps: fixing the cause fixes it, and
    the plan leaves it out."""
    status = diag["status"]
    subject = "" if diag["subject"] == "host" else f" — {diag['subject']}"
    console.print(
        f"      consequence: [{STYLE[status]}]{LABEL[status]}[/] {escape(diag['title'])}"
        f"{escape(subject)} [dim]({escape(diag['playbook'])})[/]"
    )
    if verbose:
        for line in textwrap.wrap(diag["cause"], width=88):
            console.print(f"        [dim]{escape(line)}[/]")
        for ref in diag["findings"]:
            where = "" if ref["subject"] == "host" else f" {ref['subject']}"
            console.print(
                f"        [dim]found by: {LABEL[ref['status']]} {ref['code']}{escape(where)}: "
                f"{escape(ref['message'])}[/]"
            )


def _headline(report: dict[str, Any]) -> Any:
    """The one verdict an operator asks first: can this host run KVM guests? (KVM006)"""
    for chk in report["checks"]:
        if chk["code"] == "KVM006" and chk["findings"]:
            finding = chk["findings"][0]
            return finding["status"], f"{finding['message']} (KVM006)"
    return None


def _finding(
    console: Any, chk: dict[str, Any], finding: dict[str, Any], *, verbose: bool, evidence: bool
) -> None:
    status = finding["status"]
    subject = "" if finding["subject"] == "host" else f" — {finding['subject']}"
    console.print(
        f"[{STYLE[status]}]{LABEL[status]:5}[/] [bold]{chk['code']}[/] "
        f"{escape(chk['name'])}{escape(subject)}{escape(location_text(finding))}"
    )
    console.print(f"      {escape(finding['message'])}")
    if evidence and finding.get("evidence"):
        for line in evidence_lines(finding["evidence"], verbose):
            console.print(f"      [dim]{escape(line)}[/]")
