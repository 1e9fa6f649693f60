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
