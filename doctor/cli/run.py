"""`kvmdoctor run`: run the checks and report."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

import typer

from doctor.cli.common import (
    INVOCATION,
    CheckTimeoutOpt,
    ConfigOpt,
    ConnectTimeoutOpt,
    FailOnOpt,
    IgnoreOpt,
    NoColorOpt,
    Output,
    QuietOpt,
    RedactMapOpt,
    RedactOpt,
    ReportFormatOpt,
    ReportOutputOpt,
    RootOpt,
    SelectOpt,
    SnapshotOpt,
    UriOpt,
    UsageError,
    VerboseOpt,
    cli_ignores,
    load_config,
    open_redactor,
    open_source,
    parse_time,
    save_redaction_map,
    split_tokens,
    use_color,
)
from doctor.render import FORMATS as RENDER_FORMATS

if TYPE_CHECKING:
    from doctor.engine import IgnoreRule
    from doctor.sources.base import Source

FORMATS = RENDER_FORMATS
FAIL_ON = ("info", "warn", "fail")


def register(app: typer.Typer) -> None:
    app.command("run")(run)


def run(
    uri: Optional[str] = UriOpt,
    root: Optional[str] = RootOpt,
    snapshot: Optional[str] = SnapshotOpt,
    select: Optional[list[str]] = SelectOpt,
    ignore: Optional[list[str]] = IgnoreOpt,
    config: Optional[str] = ConfigOpt,
    format: str = ReportFormatOpt,
    output: Optional[str] = ReportOutputOpt,
    fail_on: Optional[str] = FailOnOpt,
    connect_timeout: float = ConnectTimeoutOpt,
    check_timeout: Optional[float] = CheckTimeoutOpt,
    no_color: bool = NoColorOpt,
    verbose: bool = VerboseOpt,
    quiet: bool = QuietOpt,
    at: Optional[str] = typer.Option(
        None,
        "--at",
        help="Judge the host as at this time (ISO 8601, UTC unless it says otherwise): "
        "certificate validity and which log lines are recent. Default: the host's clock "
        "(a snapshot's: when it was recorded).",
        metavar="TIME",
    ),
    redact: bool = RedactOpt,
    redact_map: Optional[str] = RedactMapOpt,
) -> None:
    """Run the checks on this host (or a tree, or a snapshot) and report.

    Exit codes: 0 nothing at or above --fail-on, 1 findings at or above it (or a check that
    could not run), 2 usage error, 3 internal error.
    """
    if format not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {format!r}")
    if fail_on is not None and fail_on not in FAIL_ON:
        raise UsageError(f"--fail-on must be one of {', '.join(FAIL_ON)}, not {fail_on!r}")
    cfg = load_config(config)
    level = fail_on or cfg.fail_on or "fail"
    selected = split_tokens(select) or list(cfg.select)
    ignores = [*cfg.ignores, *cli_ignores(split_tokens(ignore))]
    moment = parse_time(at, "--at") if at is not None else None
    redactor = open_redactor(redact, redact_map)
    source = open_source(uri=uri, root=root, snapshot=snapshot, connect_timeout=connect_timeout)
    report = execute(
        source,
        selected=selected,
        ignores=ignores,
        fail_on=level,
        uri=uri,
        timeout=check_timeout,
        at=moment,
        redactor=redactor,
    )
    from doctor.render import render_as

    out = Output(output)
    color = use_color(out, no_color)
    out.write(render_as(format, report, verbose=verbose, quiet=quiet, color=color))
    save_redaction_map(redactor, redact_map)
    raise typer.Exit(report["exit_code"])


def execute(
    source: Source,
    *,
    selected: Sequence[str],
    ignores: Sequence[IgnoreRule],
    fail_on: str,
    uri: Optional[str],
    timeout: Optional[float] = None,
    at: Optional[float] = None,
    redactor: Any = None,
) -> dict[str, Any]:
    """Load the checks, run them against `source`, and build the report (with identifying
    values replaced by tokens when given a doctor.redaction.Redactor)."""
    from doctor import engine, playbooks, rules
    from doctor.facts import RunOptions
    from doctor.registry import load_registry
    from doctor.report import build

    # A selection loads only the check modules (and so the facts and libraries) it can match;
    # the ignores are validated against the checks, so their modules load too.
    wanted = [*selected, *(rule.token for rule in ignores)] if selected else []
    registry = load_registry(wanted=wanted)
    for error in registry.errors:
        sys.stderr.write(f"kvmdoctor: plugin error: {error}\n")
    book = playbooks.shipped()
    for problem in book.errors:
        sys.stderr.write(f"kvmdoctor: playbook error: {problem}\n")
    try:
        result = engine.run(
            registry,
            source,
            selected=selected,
            ignores=ignores,
            options=RunOptions(uri=uri, at=at),
            timeout=timeout,
        )
        if redactor is not None:  # the names the facts know, while the source is open
            redactor.learn_facts(result.facts)
    except engine.SelectionError as exc:
        raise UsageError(str(exc)) from None
    finally:
        source.close()
    result = rules.apply(result, book)
    report = build(
        result,
        source,
        argv=list(INVOCATION) or ["kvmdoctor"],
        fail_on=fail_on,  # type: ignore[arg-type]
        selected=selected,
    )
    if redactor is not None:
        redactor.learn_report(report)
        report = redactor.report(report)
    return report
