"""`kvmdoctor report show|convert`: a saved JSON report shown as `run` prints it, or written
in another format (every format is a view of the one report)."""

from __future__ import annotations

from typing import Any, Optional

import typer

from doctor.cli.common import (
    Output,
    RedactMapOpt,
    RedactOpt,
    UsageError,
    open_redactor,
    read_report,
    save_redaction_map,
    use_color,
)

CONVERT_FORMATS = ("junit", "sarif", "prometheus", "markdown", "html", "json", "text")

report_app = typer.Typer(
    name="report",
    help="Show a saved report, convert it to JUnit, SARIF, Prometheus, Markdown or HTML, or "
    "merge many hosts' reports into one fleet report.",
    no_args_is_help=True,
    add_completion=False,
)


def register(app: typer.Typer) -> None:
    app.add_typer(report_app, name="report")


ReportArg = typer.Argument(
    ..., help="A report written by `kvmdoctor run -f json`.", metavar="REPORT"
)


@report_app.command("show")
def show(
    report: str = ReportArg,
    no_color: bool = typer.Option(False, "--no-color", help="No colour even on a terminal."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show passes and full evidence."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only problems and the summary."),
    redact: bool = RedactOpt,
    redact_map: Optional[str] = RedactMapOpt,
) -> None:
    """Print a saved report as `kvmdoctor run` printed it on the host."""
    from doctor.render import render_as

    redactor = open_redactor(redact, redact_map)
    data = _redacted(read_report(report), redactor)
    out = Output(None)
    out.write(render_as("text", data, verbose=verbose, quiet=quiet, color=use_color(out, no_color)))
    save_redaction_map(redactor, redact_map)


@report_app.command("convert")
def convert(
    report: str = ReportArg,
    to: str = typer.Option(
        ...,
        "--to",
        "-t",
        help="junit, sarif, prometheus, markdown, html, json or text.",
        metavar="FORMAT",
    ),
    output: Optional[str] = typer.Option(
        None, "--output", "-o", help="Write to FILE instead of stdout.", metavar="FILE"
    ),
    redact: bool = RedactOpt,
    redact_map: Optional[str] = RedactMapOpt,
) -> None:
    """Write a saved report in another format."""
    from doctor.render import render_as

    if to not in CONVERT_FORMATS:
        raise UsageError(f"--to must be one of {', '.join(CONVERT_FORMATS)}, not {to!r}")
    redactor = open_redactor(redact, redact_map)
    data = _redacted(read_report(report), redactor)
    Output(output).write(render_as(to, data))
    save_redaction_map(redactor, redact_map)


def _redacted(data: dict[str, Any], redactor: Any) -> dict[str, Any]:
    """The report with its identifying values replaced (--redact), else as it is. The names
    come from the report itself (and from the map file): there are no facts to ask."""
    if redactor is None:
        return data
    redactor.learn_report(data)
    redacted: dict[str, Any] = redactor.report(data)
    return redacted


ReportsArg = typer.Argument(
    ..., help="Reports written by `kvmdoctor run -f json`, one per host.", metavar="REPORT..."
)


@report_app.command("merge")
def merge(
    reports: list[str] = ReportsArg,
    output: Optional[str] = typer.Option(
        None,
        "--output",
        "-o",
        help="Write the fleet report to FILE instead of stdout.",
        metavar="FILE",
    ),
    fail_on: str = typer.Option(
        "fail",
        "--fail-on",
        help="Exit 1 when a finding on any host, or across hosts, is at or above this level: "
        "info, warn or fail.",
        metavar="LEVEL",
    ),
) -> None:
    """Merge many hosts' JSON reports into one fleet report (JSON), with what no single host
    can see: a guest MAC on two hosts (NET010), a domain UUID on two hosts (DOM020), hosts
    whose libvirt, QEMU or firmware versions differ from the rest (LIB009).

    A host given twice keeps its newest report (said on stderr). `report show` and
    `report convert` read the fleet report like any report. Exit codes as `run`: 0 nothing
    at or above --fail-on on any host, 1 something is, 2 usage error.
    """

    from doctor.fleet import FleetError
    from doctor.fleet import merge as merge_reports
    from doctor.render import render_as

    if fail_on not in ("info", "warn", "fail"):
        raise UsageError(f"--fail-on must be one of info, warn, fail, not {fail_on!r}")
    loaded = [(path, read_report(path, other_versions=True)) for path in reports]
    try:
        fleet, notes = merge_reports(
            loaded, fail_on=fail_on, argv=["kvmdoctor", "report", "merge", *reports]
        )
    except FleetError as exc:
        raise UsageError(str(exc)) from None
    for note in notes:
        typer.echo(f"kvmdoctor: {note}", err=True)
    Output(output).write(render_as("json", fleet))
    raise typer.Exit(fleet["exit_code"])
