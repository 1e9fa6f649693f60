"""`kvmdoctor explain TEXT|CODE|PLAYBOOK`: what an error message means and what fixes it.

TEXT is matched against the playbooks' signatures, line by line, after the prefixes that
differ between tools are removed (timestamps, `error:`, `libvirt.libvirtError:`, log tags); a
CODE or check name prints the check's documentation and its playbooks; a playbook id prints the
playbook. `-` reads the text from standard input (`journalctl -u libvirtd | kvmdoctor explain -`).
"""

from __future__ import annotations

import json
import sys
import textwrap
from typing import Any, Optional

import typer

from doctor.cli.common import UsageError

FORMATS = ("text", "json")
EXIT_NO_MATCH = 1


def register(app: typer.Typer) -> None:
    app.command("explain")(explain)


TextArg = typer.Argument(
    ...,
    help="An error message (quote it), a check code or name, a playbook id, or - for stdin.",
    metavar="TEXT|CODE|-",
)


def explain(
    text: list[str] = TextArg,
    format: str = typer.Option("text", "--format", "-f", help="text or json.", metavar="FORMAT"),
) -> None:
    """Explain an error message, a check or a playbook: cause, fix, the checks involved.

    Exit codes: 0 something matched, 1 nothing did, 2 usage error.
    """
    from doctor import playbooks

    if format not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {format!r}")
    given = sys.stdin.read() if text == ["-"] else " ".join(text)
    if not given.strip():
        raise UsageError("nothing to explain: give an error message, a check code or -")
    book = playbooks.shipped()
    for problem in book.errors:
        sys.stderr.write(f"kvmdoctor: playbook error: {problem}\n")
    token = given.strip()
    if "\n" not in token and " " not in token:
        handled = _explain_name(token, book, format)
        if handled:
            return
    _explain_text(given, book, format)


def _explain_name(token: str, book: Any, format: str) -> bool:
    """A check code or name, or a playbook id; False when the token is neither."""
    from doctor.docs import check_doc
    from doctor.registry import load_registry

    playbook = book.get(token.lower())
    if playbook is not None:
        _emit(format, {"playbooks": [_playbook_data(playbook)]}, _playbook_text(playbook))
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
    data = {"check": spec.as_dict(), "playbooks": [_playbook_data(p) for p in related]}
    _emit(format, data, text)
    return True


def _explain_text(given: str, book: Any, format: str) -> None:
    from doctor.playbooks import message_lines

    matches = book.match_text(given)
    lines = message_lines(given)
    if not matches:
        if format == "json":
            typer.echo(json.dumps({"lines": len(lines), "matches": []}, indent=2))
        else:
            typer.echo(
                "No known problem matches this text. `kvmdoctor run` examines the host itself; "
                "`kvmdoctor checks` lists what it looks at."
            )
        raise typer.Exit(EXIT_NO_MATCH)
    data = {"lines": len(lines), "matches": [_match_data(m) for m in matches]}
    parts = []
    for match in matches:
        parts.append(
            f'matched: "{match.matched}"\n' + _playbook_text(match.playbook, _values(match))
        )
    _emit(format, data, "\n".join(parts))


def _resolve(groups: Optional[dict[str, str]]) -> Any:
    values = dict(groups or {})
    return values.get


def _playbook_data(playbook: Any, groups: Optional[dict[str, str]] = None) -> dict[str, Any]:
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


def _values(match: Any) -> dict[str, str]:
    """What fills a matched playbook's placeholders: the signature's named groups, and the
    pasted line for {message} (the finding's message, had a check seen the problem)."""
    return {"message": match.line.rstrip("."), **match.groups}


def _match_data(match: Any) -> dict[str, Any]:
    return {
        "line": match.line,
        "matched": match.matched,
        "values": dict(match.groups),
        **_playbook_data(match.playbook, _values(match)),
    }


def _wrap(text: str, indent: str = "  ") -> str:
    return "\n".join(
        textwrap.wrap(text, width=96, initial_indent=indent, subsequent_indent=indent + "  ")
    )


def _playbook_text(playbook: Any, groups: Optional[dict[str, str]] = None) -> str:
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
