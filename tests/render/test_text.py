"""The text view: colour only on a terminal and never with NO_COLOR; evidence readable."""

from __future__ import annotations

import io
import json
import re
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


# --- at a glance: log hits as a table, skips grouped by reason ---------------------------------

GLANCE_LOG = """\
2026-11-26 07:24:21.858+0000: 7722: error : virQEMUCapsNewForBinaryInternal:5859 : Cannot check QEMU binary /usr/libexec/qemu-kvm: No such file or directory
2026-11-26 07:26:21.858+0000: 7722: error : virQEMUCapsNewForBinaryInternal:5859 : Cannot check QEMU binary /usr/libexec/qemu-kvm: No such file or directory
2026-11-26 07:27:53.901+0000: 11006: error : virPortAllocatorSetUsed:274 : internal error: Failed to reserve port 5977
"""  # noqa: E501 - real lines as libvirtd 9.0 wrote them (tests/checks/test_logs.py)


def glance(tmp_path: Path, *args: str) -> Any:
    from kdtest import kvmdoctor, write_tree

    tree = write_tree(tmp_path / "tree", {"/var/log/libvirt/libvirtd.log": GLANCE_LOG})
    return kvmdoctor("run", "--root", str(tree), "--at", "2026-11-26T08:00:00Z", *args)


def test_log_hits_are_one_table_row_each_and_whole_under_verbose(tmp_path: Path) -> None:
    text = glance(tmp_path).stdout
    table = text.split("Recent errors in the logs", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    rows = [line.split() for line in table if line.startswith("  2026")]
    assert [(r[2], r[3]) for r in rows] == [
        ("graphics-port-conflict", "1x"),
        ("rhel-emulator-path-on-other-distribution", "2x"),
    ]
    assert all(r[4] == "/var/log/libvirt/libvirtd.log" for r in rows)
    assert "A known error appears" not in text  # no 8-line block per hit
    verbose = glance(tmp_path, "-v").stdout
    assert verbose.count("A known error appears in the libvirt or QEMU logs") == 2
    assert "Failed to reserve port 5977" in verbose
    report = json.loads(glance(tmp_path, "-f", "json").stdout)  # nothing lost in JSON
    hits = [f for c in report["checks"] if c["code"] == "LOG001" for f in c["findings"]]
    assert len(hits) == 2


def test_skips_with_one_reason_are_one_line_naming_every_check(tmp_path: Path) -> None:
    text = glance(tmp_path).stdout
    report = json.loads(glance(tmp_path, "-f", "json").stdout)
    skipped = {c["code"] for c in report["checks"] if c["status"] == "skip"}
    skip_lines = [line for line in text.splitlines() if line.startswith("SKIP")]
    assert len(skip_lines) < len(skipped)  # grouped
    for code in skipped:  # none lost
        assert [line for line in skip_lines if re.search(rf"\b{code}\b", line)], code
    (netlink,) = [line for line in skip_lines if "neither netlink" in line]
    assert netlink.startswith("SKIP  7 checks: ")


# --- without colour the view is written without rich, and reads exactly as rich writes it ----

HOSTILE = [
    "plain",
    "[bold]not a tag from the host[/]",
    "a [b] c [/b] [x=1] [@click] [#fff] [/",
    "\\[escaped] \\\\[two] \\\\\\[three] ends with \\",
    "ends with two \\\\",
    "tab\there and\tthere",
    "wide\u4e2d\u6587\tcolumn",
    "brackets ] [ [[ ]] [1] [a-b] [A] [/x]",
    "carriage\rreturn and bell\x07",
    "",
]


def rich_console(out: Any) -> Any:
    """The console the view used before it could write without rich."""
    from rich.console import Console

    return Console(
        file=out, no_color=True, force_terminal=False, highlight=False, soft_wrap=True, emoji=False
    )


@pytest.mark.parametrize("text", HOSTILE)
def test_escape_and_plain_read_markup_as_rich_does(text: str) -> None:
    from rich.markup import escape as rich_escape
    from rich.markup import render as rich_render

    from doctor.render import text as view

    assert view.escape(text) == rich_escape(text)
    if not re.search(r"[\x07\x08\x0b\x0c\x0d]", text):  # rich's Text strips those; the
        # console leaves a line holding one to rich (below)
        assert view.plain(view.escape(text)) == rich_render(rich_escape(text)).plain
    line = f"[bold]{view.escape(text)}[/] [dim]({view.escape(text)})[/]"
    plain, rich = io.StringIO(), io.StringIO()
    view.PlainConsole(plain).print(line)
    rich_console(rich).print(line)
    assert plain.getvalue() == rich.getvalue()


def hostile_report(report: dict[str, Any]) -> dict[str, Any]:
    """The report with host text that looks like markup, and tabs, in every place shown."""
    report = json.loads(json.dumps(report))
    for index, chk in enumerate(report["checks"]):
        for finding in chk["findings"]:
            finding["message"] = f"{finding['message']} {HOSTILE[index % len(HOSTILE)]}"
            finding["subject"] = f"{finding['subject']}[/]\\"
            finding["status"] = "fail" if index % 3 == 0 else finding["status"]
    return report


SAMPLES = sorted((Path(__file__).resolve().parents[2] / "sample_reports").glob("*.json"))


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.stem)
@pytest.mark.parametrize("verbose", [False, True])
@pytest.mark.parametrize("hostile", [False, True])
def test_without_colour_the_view_is_what_rich_wrote(
    sample: Path, verbose: bool, hostile: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from doctor.render import text as view

    report = json.loads(sample.read_text())
    if hostile:
        report = hostile_report(report)
    ours = io.StringIO()
    render(report, ours, verbose=verbose, color=False)
    monkeypatch.setattr(view, "PlainConsole", rich_console)
    theirs = io.StringIO()
    render(report, theirs, verbose=verbose, color=False)
    assert ours.getvalue() == theirs.getvalue()
    assert ours.getvalue().count("\n") >= 3


def test_the_view_without_colour_does_not_import_rich(host_snapshot: Path) -> None:
    import subprocess
    import sys

    from kdtest import ROOT

    probe = (
        "import io, json, sys; from doctor.render.text import render; "
        f"render(json.load(open({str(host_snapshot / 'report.json')!r})), io.StringIO()); "
        "print('rich' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert done.stdout.strip() == "False"
