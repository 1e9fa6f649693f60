"""`kvmdoctor explain TEXT|CODE|PLAYBOOK|FILE|-`: what an error message means and what fixes it.

TEXT is read as people paste it -- log stamps and tools' prefixes, escaped quotes, lines a
terminal wrapped, other quoting and socket paths (`doctor.playbooks.pasted_lines`) -- and
matched against the playbooks' signatures. Every playbook a signature names is a candidate
cause; one message often has several (a missing /dev/kvm: module, firmware, outer hypervisor,
permissions). With `--here`, `--snapshot` or `--root`, the candidates' checks run read-only on
that host and each candidate is said to hold, not to hold, or to be undecided there.

When no signature matches, the playbooks whose words come nearest are shown as "probably",
with their similarity score: a lead to follow, never a diagnosis. A CODE or check name prints
the check's documentation and its playbooks; a playbook id prints the playbook. `-` reads the
text from standard input (`journalctl -u libvirtd | kvmdoctor explain -`) and a FILE from
that file, as a stream (doctor/textscan.py): each problem once, with its count of lines.
"""

from __future__ import annotations

import itertools
import json
import sys
import textwrap
from typing import TYPE_CHECKING, Any, BinaryIO, Optional

import typer

from doctor.cli.common import (
    ConnectTimeoutOpt,
    RootOpt,
    SnapshotOpt,
    UriOpt,
    UsageError,
    open_source,
    open_text_file,
)

if TYPE_CHECKING:
    from doctor.playbooks import Hit, Playbook, Playbooks

FORMATS = ("text", "json")
EXIT_MATCHED = 0
EXIT_NO_MATCH = 1


def register(app: typer.Typer) -> None:
    app.command("explain")(explain)


TextArg = typer.Argument(
    ...,
    help="An error message (quote it), a check code or name, a playbook id, a log FILE, or "
    "- for stdin.",
    metavar="TEXT|CODE|FILE|-",
)


def explain(
    text: list[str] = TextArg,
    format: str = typer.Option("text", "--format", "-f", help="text or json.", metavar="FORMAT"),
    here: bool = typer.Option(
        False,
        "--here",
        help="Run the candidate causes' checks on this host (read-only) and say which hold.",
    ),
    root: Optional[str] = RootOpt,
    snapshot: Optional[str] = SnapshotOpt,
    uri: Optional[str] = UriOpt,
    connect_timeout: float = ConnectTimeoutOpt,
) -> None:
    """Explain an error message, a check or a playbook: cause, fix, the checks involved.

    A message is matched against the playbooks' signatures after what pasting adds is taken
    away (log stamps, tools' prefixes, escaped quotes, wrapped lines, other socket paths).
    Every playbook it matches is listed as a possible cause. When none matches, the nearest
    playbooks by their words are listed as "probably" with a similarity score from 0 to 1:
    leads, not diagnoses.

    With --here (this host), --snapshot PATH or --root DIR, the candidates' checks run
    read-only there and each cause is said to hold, not to hold, or to be undecided.

    A FILE, or - for standard input, is read as a stream in flat memory however large (a
    whole journal: `journalctl -u libvirtd | kvmdoctor explain -`); each problem is listed
    once with the number of lines it was found on and the first and last of them.

    Exit codes: 0 a signature matched (or a check code or playbook was named), 1 nothing
    matched with confidence (only "probably", or nothing at all), 2 usage error.
    """
    from doctor import playbooks

    if format not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {format!r}")
    if sum((here, root is not None, snapshot is not None)) > 1:
        raise UsageError("--here, --root and --snapshot exclude each other")
    if uri is not None and not here:
        raise UsageError("--uri names the libvirt of this host: use it with --here")
    book = playbooks.shipped()
    for problem in book.errors:
        sys.stderr.write(f"kvmdoctor: playbook error: {problem}\n")
    host = _Host(here, root, snapshot, uri, connect_timeout)
    if text == ["-"]:
        _explain_stream(sys.stdin.buffer, book, format, host)
        return
    given = " ".join(text)
    if not given.strip():
        raise UsageError("nothing to explain: give an error message, a check code or -")
    token = given.strip()
    if "\n" not in token and " " not in token:
        if _explain_name(token, book, format, host):
            return
        stream = open_text_file(token)
        if stream is not None:
            with stream:
                _explain_stream(stream, book, format, host)
            return
    _explain_text(given, book, format, host)


# What is read of a stream before it is known to be a paste (its wrapped lines are then
# joined again, as for a message given as an argument) or a log (matched line by line).
HEAD_BYTES = 8 << 20


def _explain_stream(stream: BinaryIO, book: Playbooks, format: str, host: _Host) -> None:
    """Text from a pipe or a file, read as a stream (doctor.textscan): a paste of up to
    MAX_JOINED_LINES lines (and HEAD_BYTES) is explained as a message given as an argument;
    anything longer is matched line by line, only the lines the engine flags, each playbook
    kept once with the number of lines it was found on."""
    from doctor import textscan
    from doctor.playbooks import MAX_JOINED_LINES, Tally, pasted_lines

    reading = textscan.Reading()
    source = textscan.blocks(stream, reading)
    head: list[bytes] = []
    pasted = size = 0
    ended = True
    for block in source:
        head.append(block)
        size += len(block)
        for text in block.decode("utf-8", "replace").split("\n"):
            pasted += len(pasted_lines(text))
            if pasted > MAX_JOINED_LINES:
                break
        if pasted > MAX_JOINED_LINES or size > HEAD_BYTES:
            ended = False
            break
    if ended:
        given = b"".join(head).decode("utf-8", "replace")
        if not given.strip():
            raise UsageError("nothing to explain: give an error message, a check code or -")
        token = given.strip()
        if "\n" not in token and " " not in token and _explain_name(token, book, format, host):
            return
        if reading.cut:
            _say_cut(reading.cut)
        _explain_text(given, book, format, host, cut=reading.cut)
        return
    engine = textscan.engine_for(book)
    tally = Tally()
    position = 0
    for number, candidate in textscan.scan(engine, itertools.chain(head, source), reading):
        for line in pasted_lines(candidate.decode("utf-8", "replace")):
            tally.add(position, number, book.match_line(line))
            position += 1
    if reading.cut:
        _say_cut(reading.cut)
    first = b"".join(head).decode("utf-8", "replace")
    del head
    _show(tally.hits(), first, reading.lines, book, format, host, cut=reading.cut)


def _say_cut(count: int) -> None:
    from doctor.textscan import MAX_LINE

    sys.stderr.write(
        f"kvmdoctor: {count} line(s) longer than {MAX_LINE // 1024} KiB: only their first "
        f"{MAX_LINE // 1024} KiB were matched\n"
    )


class _Host:
    """Which host the candidates' checks run on, when one was asked for."""

    def __init__(
        self,
        here: bool,
        root: Optional[str],
        snapshot: Optional[str],
        uri: Optional[str],
        connect_timeout: float,
    ) -> None:
        self.asked = here or root is not None or snapshot is not None
        self.root, self.snapshot, self.uri = root, snapshot, uri
        self.connect_timeout = connect_timeout

    def judge(self, candidates: list[Playbook]) -> Optional[dict[str, Any]]:
        """Each candidate's verdict on this host, or None when no host was asked for."""
        if not self.asked or not candidates:
            return None
        source = open_source(
            uri=self.uri,
            root=self.root,
            snapshot=self.snapshot,
            connect_timeout=self.connect_timeout,
        )
        return judge(candidates, source, uri=self.uri)


def judge(candidates: list[Playbook], source: Any, *, uri: Optional[str]) -> dict[str, Any]:
    """Run the checks the candidates' conditions name on `source` (read-only: the checks of
    `kvmdoctor run`, nothing else) and say for each candidate whether it holds there.

    A candidate holds when its own conditions find their findings, whatever other playbooks
    would be ranked above it (`diagnosed` lists what `kvmdoctor run` would show). It does
    not hold when the check its diagnosis rests on ran and gave nothing it accepts, or when
    every check it needs ran; it is undecided when a check it needs was skipped or failed
    (and the first did not already rule it out)."""
    from doctor import rules
    from doctor.cli.run import execute
    from doctor.model import Finding
    from doctor.playbooks import Playbooks

    # The checks of what each candidate requires, and of what would contradict it (premises,
    # `not:` in `when`, where playbooks state them): a premise left unchecked cannot rule out.
    codes = sorted(
        {c.code for p in candidates for c in (*p.conditions, *getattr(p, "contradicted_by", ()))}
    )
    report = execute(source, selected=codes, ignores=[], fail_on="fail", uri=uri)
    checks = {check["code"]: check for check in report["checks"]}
    findings = [
        Finding(
            status=f["status"],
            message=f["message"],
            subject=f["subject"],
            evidence=f["evidence"],
            code=f["code"],
        )
        for check in report["checks"]
        for f in check["findings"]
    ]
    verdicts: list[dict[str, Any]] = []
    for playbook in candidates:
        alone = Playbooks(items={playbook.id: playbook})
        diagnoses, _ = rules.diagnose(findings, alone)
        if diagnoses:
            verdicts.append(
                {
                    "id": playbook.id,
                    "verdict": "holds",
                    "subjects": [d.subject for d in diagnoses],
                    "reason": _first_sentence(diagnoses[0].cause),
                }
            )
            continue
        anchor = playbook.conditions[0]
        anchor_ran = checks.get(anchor.code, {}).get("status") not in (None, "skip", "error")
        anchored = any(anchor.matches(f) for f in findings)
        undecided = [
            code
            for code in playbook.codes
            if checks.get(code, {}).get("status") in (None, "skip", "error")
        ]
        if undecided and (anchored or not anchor_ran):
            verdict, reason = "undecided", _why_not_run(undecided, checks)
        else:
            verdict = "does not hold"
            reason = "its checks found " + "; ".join(
                _check_summary(code, checks) for code in playbook.codes
            )
        verdicts.append({"id": playbook.id, "verdict": verdict, "subjects": [], "reason": reason})
    order = {"holds": 0, "undecided": 1, "does not hold": 2}
    verdicts.sort(key=lambda v: order[v["verdict"]])
    return {
        "source": report["run"]["source"],
        "checks": codes,
        "verdicts": verdicts,
        "diagnosed": list(dict.fromkeys(d["playbook"] for d in report["diagnoses"])),
    }


def _first_sentence(text: str) -> str:
    head, dot, _ = text.partition(". ")
    return head + "." if dot else text


def _why_not_run(codes: list[str], checks: dict[str, Any]) -> str:
    parts = []
    for code in codes:
        check = checks.get(code)
        if check is None:
            parts.append(f"{code} did not run")
            continue
        message = check["findings"][0]["message"] if check["findings"] else ""
        parts.append(f"{code} {check['status']}: {message}".rstrip(": "))
    return "; ".join(parts)


def _check_summary(code: str, checks: dict[str, Any]) -> str:
    check = checks.get(code)
    if check is None:
        return f"{code} did not run"
    problems = [f for f in check["findings"] if f["status"] in ("warn", "fail")]
    shown = problems[0] if problems else (check["findings"] or [{"message": ""}])[0]
    return f"{code} {check['status']}: {shown['message']}".rstrip(": ")


def _explain_name(token: str, book: Playbooks, format: str, host: _Host) -> bool:
    """A check code or name, or a playbook id; False when the token is neither."""
    from doctor.docs import check_doc
    from doctor.registry import load_registry

    playbook = book.get(token.lower())
    if playbook is not None:
        judged = host.judge([playbook])
        data: dict[str, Any] = {"playbooks": [_playbook_data(playbook)]}
        if judged is not None:
            data["host"] = judged
        _emit(format, data, _host_text(judged) + _playbook_text(playbook))
        return True
    spec = load_registry().find(token)
    if spec is None:
        return False
    related = book.for_code(spec.code)
    text = check_doc(spec)
    if related:
        text += "\nPlaybooks:\n\n" + "\n".join(_playbook_text(p) for p in related)
    else:
        text += "\nNo playbook covers this check.\n"
    judged = host.judge(related)
    data = {"check": spec.as_dict(), "playbooks": [_playbook_data(p) for p in related]}
    if judged is not None:
        data["host"] = judged
    _emit(format, data, _host_text(judged) + text)
    return True


def _explain_text(given: str, book: Playbooks, format: str, host: _Host, cut: int = 0) -> None:
    from doctor.playbooks import line_count, numbered_lines

    hits = book.find(numbered_lines(given))
    _show(hits, given, line_count(given), book, format, host, cut=cut)


def _show(
    hits: list[Hit],
    text: str,
    lines: int,
    book: Playbooks,
    format: str,
    host: _Host,
    cut: int = 0,
) -> None:
    """What was found in a text of `lines` lines; when nothing, the playbooks nearest to
    `text` (all of a message; the first part of a long stream)."""
    counts: dict[str, Any] = {"lines": lines}
    if cut:
        counts["lines_cut"] = cut
    if not hits:
        nearest = book.nearest(text)
        judged = host.judge([n.playbook for n in nearest])
        data: dict[str, Any] = {
            **counts,
            "matches": [],
            "probably": [
                {
                    "id": n.playbook.id,
                    "title": n.playbook.title,
                    "score": n.score,
                    "shared_words": list(n.shared),
                }
                for n in nearest
            ],
        }
        if judged is not None:
            data["host"] = judged
        out = ["No known problem matches this text."]
        if nearest:
            out.append("Probably (nearest by their words, score 0-1; a lead, not a diagnosis):")
            for n in nearest:
                out.append(
                    f"  {n.score:.2f}  {n.playbook.id}: {n.playbook.title}"
                    f" (shares: {', '.join(n.shared)})"
                )
        out.append(
            "`kvmdoctor run` examines the host itself; `kvmdoctor checks` lists what it looks at."
        )
        text = _host_text(judged) + "\n".join(out)
        if format == "json":
            typer.echo(json.dumps(data, indent=2, ensure_ascii=False))
        else:
            typer.echo(text)
        raise typer.Exit(EXIT_NO_MATCH)
    matches = [hit.match for hit in hits]
    judged = host.judge([m.playbook for m in matches])
    data = {**counts, "matches": [_match_data(hit) for hit in hits]}
    if judged is not None:
        data["host"] = judged
    parts = []
    if len(matches) > 1:
        hint = (
            ""
            if judged is not None
            else " (`--here`, `--snapshot PATH` or `--root DIR` tells which holds on a host)"
        )
        listing = [f"{len(matches)} possible causes{hint}:"]
        listing += [f"  {m.playbook.id}: {m.playbook.title}" for m in matches]
        parts.append("\n".join(listing) + "\n")
    for hit in hits:
        match = hit.match
        parts.append(
            f'matched: "{match.matched}" {_where(hit)}\n'
            + _playbook_text(match.playbook, _values(match))
        )
    _emit(format, data, _host_text(judged) + "\n".join(parts))


def _where(hit: Hit) -> str:
    if hit.count == 1:
        return f"(line {hit.first_line})"
    return f"({hit.count} lines, first {hit.first_line}, last {hit.last_line})"


def _host_text(judged: Optional[dict[str, Any]]) -> str:
    if judged is None:
        return ""
    source = judged["source"]
    where = (
        f"snapshot {source.get('path')}"
        if source.get("kind") == "snapshot"
        else f"tree {source.get('root')}"
        if source.get("root") not in (None, "/")
        else "this host"
    )
    lines = [f"On {where} (checks {', '.join(judged['checks'])}):"]
    for v in judged["verdicts"]:
        subjects = f" [{', '.join(v['subjects'])}]" if v["subjects"] else ""
        lines.append(_wrap(f"{v['verdict']:<13} {v['id']}{subjects}: {v['reason']}", "  "))
    if judged["diagnosed"]:
        lines.append(f"  `kvmdoctor run` would diagnose: {', '.join(judged['diagnosed'])}")
    return "\n".join(lines) + "\n\n"


def _resolve(groups: Optional[dict[str, str]]) -> Any:
    values = dict(groups or {})
    return values.get


def _playbook_data(playbook: Playbook, groups: Optional[dict[str, str]] = None) -> dict[str, Any]:
    from doctor.playbooks import fill
    from doctor.rules import steps_for

    resolve = _resolve(groups)
    cause, _ = fill(playbook.cause, resolve)
    return {
        **playbook.summary(),
        "cause": cause,
        "fix": [step.as_dict() for step in steps_for(playbook, resolve)],
        "refs": list(playbook.refs),
        "signatures": [s.pattern for s in playbook.signatures],
    }


# The daemon behind each socket name, for the playbooks whose fix starts "{daemon}" when the
# message named a socket and not the daemon: libvirt-sock is libvirtd's, or virtproxyd's on a
# host with the modular daemons.
_SOCKET_DAEMON = {"modular-daemon-not-running": "virtproxyd", "libvirtd-not-running": "libvirtd"}


def _values(match: Any) -> dict[str, str]:
    """What fills a matched playbook's placeholders: the signature's named groups, and the
    pasted line for {message} (the finding's message, had a check seen the problem)."""
    values = {"message": match.line.rstrip("."), **match.groups}
    socket = values.get("socket", "")
    if socket and "daemon" not in values:
        name = socket.rsplit("/", 1)[-1]
        if name.startswith("libvirt-") and match.playbook.id in _SOCKET_DAEMON:
            values["daemon"] = _SOCKET_DAEMON[match.playbook.id]
    return values


def _match_data(hit: Hit) -> dict[str, Any]:
    match = hit.match
    return {
        "line": match.line,
        "matched": match.matched,
        "values": dict(match.groups),
        "count": hit.count,
        "first_line": hit.first_line,
        "last_line": hit.last_line,
        **_playbook_data(match.playbook, _values(match)),
    }


def _wrap(text: str, indent: str = "  ") -> str:
    return "\n".join(
        textwrap.wrap(text, width=96, initial_indent=indent, subsequent_indent=indent + "  ")
    )


def _playbook_text(playbook: Playbook, groups: Optional[dict[str, str]] = None) -> str:
    data = _playbook_data(playbook, groups)
    lines = [
        f"{playbook.id}: {playbook.title}",
        f"  checks: {', '.join(playbook.codes)}"
        + (f"; explains {', '.join(playbook.explains)}" if playbook.explains else ""),
        "  cause:",
        _wrap(data["cause"], "    "),
        "  fix:",
    ]
    for number, step in enumerate(data["fix"], start=1):
        lines.append(_wrap(f"{number}. [{step['safety']}] {step['text']}", "    "))
    lines.append(f"  verify: kvmdoctor run --select {','.join(playbook.verify)}")
    lines += [f"  see: {ref}" for ref in playbook.refs]
    return "\n".join(lines) + "\n"


def _emit(format: str, data: dict[str, Any], text: str) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False) if format == "json" else text)
