"""The text view: colour only on a terminal and never with NO_COLOR; evidence readable."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from doctor.cli.common import Output, use_color
from doctor.render.text import evidence_lines, render


@pytest.fixture
def report(host_snapshot: Path) -> dict[str, Any]:
    return json.loads((host_snapshot / "report.json").read_text())


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_is_used_on_a_terminal(report: dict[str, Any]) -> None:
    out = io.StringIO()
    render(report, out, color=True)
    assert "\x1b[" in out.getvalue()


@pytest.mark.parametrize(
    ("tty", "flag", "env", "expected"),
    [
        (True, False, None, True),
        (True, True, None, False),
        (True, False, "1", False),
        (False, False, None, False),
    ],
)
def test_colour_only_on_a_terminal_without_no_color(
    monkeypatch: pytest.MonkeyPatch, tty: bool, flag: bool, env: Any, expected: bool
) -> None:
    monkeypatch.setattr("sys.stdout", Tty() if tty else io.StringIO())
    if env is None:
        monkeypatch.delenv("NO_COLOR", raising=False)
    else:
        monkeypatch.setenv("NO_COLOR", env)
    assert use_color(Output(None), flag) is expected


def test_a_file_output_is_never_coloured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("sys.stdout", Tty())
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_color(Output(str(tmp_path / "r.txt")), False) is False


def test_compact_evidence_is_flat_and_bounded() -> None:
    evidence = {
        "device": {"mode": "crw-rw----+", "acl": ["user::rw-", "user:alice:rw-"]},
        "groups": [107, 64055],
        "missing": None,
        "many": {f"k{i}": i for i in range(20)},
    }
    lines = evidence_lines(evidence, verbose=False)
    assert lines[:3] == [
        "device.mode: crw-rw----+",
        "device.acl: user::rw-, user:alice:rw-",
        "groups: 107, 64055",
    ]
    assert lines[-1] == "... 15 more (-v or --format json)"
    assert json.loads("\n".join(evidence_lines(evidence, verbose=True))) == evidence
