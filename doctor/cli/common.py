"""What several commands share: the source options, selection, the config, output files."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, BinaryIO, Optional

import typer

if TYPE_CHECKING:
    from doctor.config import Config
    from doctor.engine import IgnoreRule
    from doctor.sources.base import Source

EXIT_USAGE = 2
EXIT_INTERNAL = 3

UriOpt = typer.Option(
    None, "--uri", "-c", help="libvirt connection URI (default: libvirt's own).", metavar="URI"
)
RootOpt = typer.Option(
    None,
    "--root",
    help="Examine the files of a mounted image or unpacked "
    "support bundle at DIR instead of this host (files only).",
    metavar="DIR",
)
SnapshotOpt = typer.Option(
    None,
    "--snapshot",
    help="Replay a snapshot made by `kvmdoctor "
    "collect` (directory or .tar.gz) without touching this host.",
    metavar="PATH",
)
SelectOpt = typer.Option(
    None,
    "--select",
    help="Run only these checks: codes, prefixes or names, comma-separated or repeated.",
    metavar="CHECKS",
)
IgnoreOpt = typer.Option(
    None,
    "--ignore",
    help="Do not gate on these checks (they still run and are shown as ignored).",
    metavar="CHECKS",
)
ConfigOpt = typer.Option(
    None, "--config", help="Config file (default: ./kvmdoctor.toml if present).", metavar="FILE"
)


# The arguments of this invocation, for the report (set by the CLI group; sys.argv is the test
# runner's under CliRunner).
INVOCATION: list[str] = []


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def split_tokens(values: Optional[list[str]]) -> list[str]:
    return [t.strip() for v in values or [] for t in v.split(",") if t.strip()]


def parse_time(text: str, option: str) -> float:
    """An ISO 8601 time given on the command line, as seconds since the epoch (UTC unless it
    names its offset)."""
    import datetime as dt

    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(
            f"{option} takes an ISO 8601 time such as 2026-11-26T07:00:00Z, not {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.timestamp()


def load_config(path: Optional[str]) -> Config:
    from doctor.config import ConfigError, load

    try:
        return load(path)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def cli_ignores(tokens: list[str]) -> list[IgnoreRule]:
    from doctor.engine import IgnoreRule

    return [
        IgnoreRule(t, "ignored with --ignore on the command line", "command line") for t in tokens
    ]


MAX_SECONDS = 86400.0


def finite_seconds(value: Optional[float]) -> Optional[float]:
    """A time limit given on the command line: a finite number (nan and inf pass typer's
    range check, since no comparison with them is true)."""
    import math

    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a number of seconds")
    return value


ConnectTimeoutOpt = typer.Option(
    10.0,
    "--connect-timeout",
    min=0.1,
    max=MAX_SECONDS,
    callback=finite_seconds,
    help="Time limit for each answer from libvirt, in seconds.",
    metavar="SECONDS",
)

# The options `run` and `lint` share: what they write, where, and when it gates.
ReportFormatOpt = typer.Option(
    "text",
    "--format",
    "-f",
    help="text, json, junit, sarif, prometheus, markdown or html.",
    metavar="FORMAT",
)
ReportOutputOpt = typer.Option(
    None, "--output", "-o", help="Write the report to FILE instead of stdout.", metavar="FILE"
)
FailOnOpt = typer.Option(
    None,
    "--fail-on",
    help="Exit 1 when a finding is at or above this level: info, warn or fail (default fail).",
    metavar="LEVEL",
)
CheckTimeoutOpt = typer.Option(
    None,
    "--check-timeout",
    min=0.01,
    max=MAX_SECONDS,
    callback=finite_seconds,
    help="Time limit for each check, in seconds (default 10).",
    metavar="SECONDS",
)
NoColorOpt = typer.Option(False, "--no-color", help="No colour even on a terminal.")
VerboseOpt = typer.Option(False, "--verbose", "-v", help="Show passes and full evidence.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="Only problems and the summary.")


def open_source(
    *,
    uri: Optional[str],
    root: Optional[str],
    snapshot: Optional[str],
    connect_timeout: float = 10.0,
) -> Source:
    from doctor.sources import SourceError
    from doctor.sources import open_source as _open

    if root is not None and snapshot is not None:
        raise UsageError("--root and --snapshot exclude each other")
    refusals: tuple[type[Exception], ...] = (SourceError,)
    if snapshot is not None:
        from doctor.sources.snapshot import SnapshotError

        refusals += (SnapshotError,)
    try:
        return _open(root=root, snapshot=snapshot, uri=uri, connect_timeout=connect_timeout)
    except refusals as exc:
        raise UsageError(str(exc)) from None


class Output:
    """stdout, or a file written only when the command succeeds (nothing half-written).

    A new path or a regular file is written atomically: a temporary file beside it, renamed
    over it (keeping the old file's mode). Anything else -- a device such as /dev/null or
    /dev/full, a FIFO, a symlink (/dev/stdout) -- is written through, never replaced: kvmdoctor
    often runs as root, where replacing /dev/null with a file breaks the machine. An error on
    the way (a full device, a directory) is an error, and nothing is left behind.
    """

    def __init__(self, path: Optional[str]) -> None:
        self.path = path

    def write(self, text: str) -> None:
        if self.path is None or self.path == "-":
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        from doctor.output import write_file

        try:
            write_file(self.path, text.encode("utf-8"))
        except OSError as exc:
            raise UsageError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    @property
    def is_terminal(self) -> bool:
        return (self.path is None or self.path == "-") and sys.stdout.isatty()


def open_text_file(path: str) -> Optional[BinaryIO]:
    """A file the user named for `kvmdoctor explain FILE`, opened for reading in binary, or
    None when `path` names no regular file. What the user hands in, like a saved report: not
    the host's state, which only doctor/sources/ reads."""
    if not os.path.isfile(path):
        return None
    try:
        return open(path, "rb")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def use_color(output: Output, no_color: bool) -> bool:
    """Colour only on a terminal, never with --no-color or NO_COLOR (https://no-color.org)."""
    return output.is_terminal and not no_color and not os.environ.get("NO_COLOR")


def read_report(path: str, *, other_versions: bool = False) -> dict[str, Any]:
    """A saved JSON report (`kvmdoctor run -f json -o FILE`), or a usage error saying why not:
    not JSON, not of the shape docs/report.schema.json gives (every reader of a saved report
    then finds what the schema promises, so a damaged or hand-edited file is a usage error,
    not an internal one), or of another format version. `other_versions`: hand a report of
    another version on unjudged, for a caller that refuses it with its own words."""
    import json

    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"{path} is not a JSON report: {exc}") from None
    if not isinstance(data, dict) or "diagnoses" not in data:
        raise UsageError(f"{path} is not a kvmdoctor report (no diagnoses)")
    schema = _report_schema()
    ours = schema["properties"]["schema_version"]["const"]
    version = data.get("schema_version", ours)
    if version != ours:
        if other_versions:
            return data
        raise UsageError(
            f"{path} is a report of format {version!r}; this kvmdoctor reads format {ours} "
            "(show or convert it with the kvmdoctor that wrote it)"
        )
    problem = _schema_problem(schema, data)
    if problem is not None:
        raise UsageError(f"{path} is not a kvmdoctor report: {problem}")
    return data


def _report_schema() -> dict[str, Any]:
    """The report schema, shipped in the package as doctor/report.schema.json (the published
    docs/report.schema.json is a link to it)."""
    import json
    from importlib import resources

    schema: dict[str, Any] = json.loads(
        resources.files("doctor").joinpath("report.schema.json").read_text(encoding="utf-8")
    )
    return schema


def _schema_problem(schema: dict[str, Any], data: dict[str, Any]) -> Optional[str]:
    """What in `data` the schema refuses, in one line, or None."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    from doctor.textsafe import one_line

    error = best_match(Draft202012Validator(schema).iter_errors(data))
    if error is None:
        return None
    where = "/".join(str(part) for part in error.absolute_path) or "(top level)"
    message = one_line(error.message)
    if len(message) > 160:
        message = message[:157] + "..."
    return f"{where}: {message}"


RedactOpt = typer.Option(
    False,
    "--redact",
    help="Replace host names, addresses, MACs, user and domain names by stable tokens "
    "(docs/redaction.md).",
)
RedactMapOpt = typer.Option(
    None,
    "--redact-map",
    help="With --redact: read the tokens' key from FILE when it exists, and write the key and "
    "every value -> token pair to it (mode 0600). Implies --redact.",
    metavar="FILE",
)


def open_redactor(redact: bool, redact_map: Optional[str]) -> Any:
    """The Redactor for --redact / --redact-map, or None without them."""
    if not redact and redact_map is None:
        return None
    from doctor.redaction import RedactMapError, Redactor

    try:
        redactor, warning = Redactor.open(redact_map)
    except RedactMapError as exc:
        raise UsageError(str(exc)) from None
    if warning:
        typer.echo(f"kvmdoctor: {warning}", err=True)
    return redactor


def save_redaction_map(redactor: Any, redact_map: Optional[str]) -> None:
    """Write the map file (only ever to the file the user named)."""
    if redactor is None or redact_map is None:
        return
    try:
        redactor.save(redact_map)
    except OSError as exc:
        raise UsageError(f"cannot write {redact_map}: {exc.strerror or exc}") from None
