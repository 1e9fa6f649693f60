"""`kvmdoctor collect -o DIR`: run every check while recording what it read."""

from __future__ import annotations

import os
from typing import Optional

import typer

from doctor.cli.common import (
    ConnectTimeoutOpt,
    RedactMapOpt,
    RedactOpt,
    RootOpt,
    SelectOpt,
    UriOpt,
    UsageError,
    split_tokens,
)


def register(app: typer.Typer) -> None:
    app.command("collect")(collect)


def collect(
    output: str = typer.Option(
        ...,
        "--output",
        "-o",
        help="Snapshot directory to create, or a NAME.tar.gz archive.",
        metavar="DIR",
    ),
    uri: Optional[str] = UriOpt,
    root: Optional[str] = RootOpt,
    select: Optional[list[str]] = SelectOpt,
    connect_timeout: float = ConnectTimeoutOpt,
    force: bool = typer.Option(
        False,
        "--force",
        help="Write into an existing non-empty directory or over an existing archive.",
    ),
    redact: bool = RedactOpt,
    redact_map: Optional[str] = RedactMapOpt,
) -> None:
    """Record everything the checks read into a snapshot, for `kvmdoctor run --snapshot`.

    The snapshot holds the answers the checks needed (files, command outputs, device and
    process facts) and the report of this run; private keys and secrets are never read.
    With --redact, host names, addresses, MACs, user and domain names are replaced by tokens
    in every answer, file name and the report, and a replay gives the same diagnoses.
    """
    from doctor.cli.common import open_redactor, open_source, save_redaction_map
    from doctor.cli.run import execute
    from doctor.sources.snapshot import RecordingSource

    archive = output.endswith((".tar.gz", ".tgz"))
    if not archive and os.path.lexists(output) and not os.path.isdir(output):
        raise UsageError(
            f"{output} exists and is not a directory; name a new directory or a NAME.tar.gz"
        )
    if archive and os.path.isdir(output):
        raise UsageError(f"{output} is a directory; an archive needs a file name")
    if not force and os.path.lexists(output) and (archive or os.listdir(output)):
        raise UsageError(f"{output} exists and is not empty; choose another name or add --force")
    redactor = open_redactor(redact, redact_map)
    recorder = RecordingSource(
        open_source(uri=uri, root=root, snapshot=None, connect_timeout=connect_timeout)
    )
    report = execute(
        recorder,
        selected=split_tokens(select),
        ignores=[],
        fail_on="fail",
        uri=uri,
        redactor=redactor,
    )
    try:
        recorder.write(output, report=report, redactor=redactor)
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror}") from None
    save_redaction_map(redactor, redact_map)
    typer.echo(
        f"kvmdoctor: wrote {output}: {len(recorder.entries)} answers, "
        f"{report['summary']['checks']} checks",
        err=True,
    )
