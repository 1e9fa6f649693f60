"""`kvmdoctor checks [CODE]`: the catalogue, or one check's documentation."""

from __future__ import annotations

import json
from typing import Optional

import typer

from doctor.cli.common import UsageError


def register(app: typer.Typer) -> None:
    app.command("checks")(checks)


def checks(
    code: Optional[str] = typer.Argument(None, help="A check's code or name.", metavar="[CODE]"),
    format: str = typer.Option("text", "--format", "-f", help="text or json.", metavar="FORMAT"),
) -> None:
    """List the checks, or print one check's full documentation."""
    from doctor.docs import check_doc
    from doctor.registry import load_registry

    if format not in ("text", "json"):
        raise UsageError(f"--format must be text or json, not {format!r}")
    registry = load_registry()
    for error in registry.errors:
        typer.echo(f"kvmdoctor: plugin error: {error}", err=True)
    if code is not None:
        spec = registry.find(code)
        if spec is None:
            raise UsageError(f"no check {code!r} (see kvmdoctor checks)")
        typer.echo(json.dumps(spec.as_dict(), indent=2) if format == "json" else check_doc(spec))
        return
    specs = list(registry)
    if format == "json":
        typer.echo(json.dumps([s.as_dict() for s in specs], indent=2))
        return
    width = max((len(s.name) for s in specs), default=0)
    for spec in specs:
        typer.echo(f"{spec.code}  {spec.name:<{width}}  {spec.title}")
