"""`kvmdoctor lint`: check domain and network definitions (XML files) before they reach a host."""

from __future__ import annotations

import sys
from typing import Optional

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
    open_source,
    split_tokens,
    use_color,
)
from doctor.render import FORMATS

FAIL_ON = ("info", "warn", "fail")
PathsArg = typer.Argument(
    ...,
    help="Domain or network XML files, directories of them (their .xml files, "
    "recursively), or - for one definition on stdin.",
    metavar="PATH...",
)


def register(app: typer.Typer) -> None:
    app.command("lint")(lint)


def lint(
    paths: list[str] = PathsArg,
    host: bool = typer.Option(
        False,
        "--host",
        help="Also compare the definitions with a host (this one, or --uri, --root, "
        "--snapshot): firmware files, bridges, networks, emulators.",
    ),
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
) -> None:
    """Check domain and network XML before it reaches a host: what libvirt or QEMU will
    refuse (fail) and the limits that bite later (warn), each finding with its file and line.

    Without --host no host is read. Exit codes as `run`: 0 nothing at or above --fail-on,
    1 findings at or above it (or a check that could not run), 2 usage error or unreadable
    input, 3 internal error.
    """
    if format not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {format!r}")
    if fail_on is not None and fail_on not in FAIL_ON:
        raise UsageError(f"--fail-on must be one of {', '.join(FAIL_ON)}, not {fail_on!r}")
    if not host and (uri or root or snapshot):
        raise UsageError("--uri, --root and --snapshot name the host of lint --host")
    if paths.count("-") > 1:
        raise UsageError("stdin (-) can be given once")
    cfg = load_config(config)
    level = fail_on or cfg.fail_on or "fail"
    selected = split_tokens(select) or list(cfg.select)
    ignores = [*cfg.ignores, *cli_ignores(split_tokens(ignore))]

    from doctor import engine, playbooks, rules
    from doctor import lint as linter
    from doctor.facts import RunOptions
    from doctor.registry import load_registry
    from doctor.report import build
    from doctor.sources.files import DefinitionFiles
    from doctor.sources.redact import ScrubbedSource

    stdin = sys.stdin.buffer.read() if "-" in paths else None
    files = ScrubbedSource(DefinitionFiles(paths, stdin=stdin))
    try:
        definitions = linter.read_definitions(files, paths)
    except linter.LintInputError as exc:
        raise UsageError("cannot lint:\n  " + "\n  ".join(exc.problems)) from None
    finally:
        files.close()

    registry = load_registry()
    for error in registry.errors:
        sys.stderr.write(f"kvmdoctor: plugin error: {error}\n")
    book = playbooks.shipped()
    for problem in book.errors:
        sys.stderr.write(f"kvmdoctor: playbook error: {problem}\n")
    source = (
        open_source(uri=uri, root=root, snapshot=snapshot, connect_timeout=connect_timeout)
        if host
        else files
    )
    try:
        result = linter.run(
            registry,
            definitions,
            source,
            host=host,
            selected=selected,
            ignores=ignores,
            options=RunOptions(uri=uri),
            timeout=check_timeout,
        )
    except engine.SelectionError as exc:
        raise UsageError(f"{exc} among the checks lint runs") from None
    finally:
        source.close()
    result = rules.apply(result, book)
    report = build(
        result,
        source,
        argv=list(INVOCATION) or ["kvmdoctor", "lint"],
        fail_on=level,  # type: ignore[arg-type]
        selected=selected,
        files=list(linter.files_of(definitions)),
    )
    from doctor.render import render_as

    out = Output(output)
    color = use_color(out, no_color)
    out.write(render_as(format, report, verbose=verbose, quiet=quiet, color=color))
    raise typer.Exit(report["exit_code"])
