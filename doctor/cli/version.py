"""`kvmdoctor version`."""

from __future__ import annotations

import platform

import typer

from doctor import __version__


def register(app: typer.Typer) -> None:
    app.command("version")(version)


def version() -> None:
    """Print kvmdoctor's version."""
    typer.echo(f"kvmdoctor {__version__} (Python {platform.python_version()})")
