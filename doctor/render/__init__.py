"""Renderers: views of the report dictionary. None of them computes anything new.

`render_as` is the one way a command turns a report into one of FORMATS; each renderer module
is imported only when its format is asked for, so `kvmdoctor --help` loads none of them.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any, Optional

FORMATS = ("text", "json", "junit", "sarif", "prometheus", "markdown", "html")


def render_as(
    fmt: str,
    report: dict[str, Any],
    *,
    verbose: bool = False,
    quiet: bool = False,
    color: bool = False,
    docs: Optional[Mapping[str, Mapping[str, str]]] = None,
) -> str:
    """The report in `fmt` (one of FORMATS). `docs` ({code: docstring sections}) feeds the
    SARIF rules' help; without it they are looked up in the installed checks."""
    if fmt == "text":
        from doctor.render.text import render as render_text

        buffer = io.StringIO()
        render_text(report, buffer, verbose=verbose, quiet=quiet, color=color)
        return buffer.getvalue()
    if fmt == "json":
        from doctor.render.json import render as render_json

        return render_json(report)
    if fmt == "junit":
        from doctor.render.junit import render as render_junit

        return render_junit(report)
    if fmt == "sarif":
        from doctor.render.sarif import render as render_sarif

        return render_sarif(report, check_docs() if docs is None else docs)
    if fmt == "prometheus":
        from doctor.render.prometheus import render as render_prometheus

        return render_prometheus(report)
    if fmt == "markdown":
        from doctor.render.markdown import render as render_markdown

        return render_markdown(report)
    if fmt == "html":
        from doctor.render.html import render as render_html

        return render_html(report)
    raise ValueError(f"unknown format {fmt!r}")


def check_docs() -> dict[str, dict[str, str]]:
    """The documentation of every installed check, by code: {code: {section: text}}, with the
    check's name and title under "name" and "title"."""
    from doctor.registry import load_registry

    return {
        spec.code: {**spec.doc, "name": spec.name, "title": spec.title} for spec in load_registry()
    }
