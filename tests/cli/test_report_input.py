"""A saved report is input from elsewhere (a ticket, another host): every command that reads
one (`report show|convert|merge`, `fix --report`) refuses a damaged file with exit 2 and one
line naming the file and the place, and never fails inside a renderer (exit 3)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

import pytest

from kdtest import ROOT, kvmdoctor

SAMPLE = ROOT / "sample_reports" / "duplicate-mac.json"
PROBE_SAMPLE = ROOT / "sample_reports" / "probe-ip-forward-off.json"


def _drop_started(report: dict[str, Any]) -> None:
    del report["run"]["started"]


def _null_fix_step(report: dict[str, Any]) -> None:
    report["diagnoses"][0]["fix"][0] = None


def _verify_not_a_list(report: dict[str, Any]) -> None:
    report["diagnoses"][0]["verify"] = True


def _hostname_a_number(report: dict[str, Any]) -> None:
    report["host"]["hostname"] = 7


def _nic_source_a_list(report: dict[str, Any]) -> None:
    report["host"]["network"]["guests"][0]["nics"][0]["source"] = {"bridge": ["kdbr0"]}


DAMAGES: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "run without its start": (_drop_started, "run: 'started' is a required property"),
    "a fix step that is null": (_null_fix_step, "diagnoses/0/fix/0: None is not of type"),
    "verify that is not a list": (_verify_not_a_list, "diagnoses/0/verify: True is not of type"),
    "a hostname that is a number": (_hostname_a_number, "host/hostname: 7 is not of type"),
    "a NIC source that is a list": (_nic_source_a_list, "source/bridge: ['kdbr0'] is not of"),
}

COMMANDS = {
    "show": lambda path, other: ["report", "show", str(path)],
    "convert html": lambda path, other: ["report", "convert", str(path), "--to", "html"],
    "convert prometheus": lambda path, other: [
        "report",
        "convert",
        str(path),
        "--to",
        "prometheus",
    ],
    "merge": lambda path, other: ["report", "merge", str(path), str(other)],
    "fix ansible": lambda path, other: ["fix", "--report", str(path), "--format", "ansible"],
}


def _write(tmp_path: Path, name: str, report: dict[str, Any]) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(report))
    return path


@pytest.mark.parametrize("damage", DAMAGES, ids=list(DAMAGES))
@pytest.mark.parametrize("command", COMMANDS, ids=list(COMMANDS))
def test_a_damaged_report_is_refused_with_where_it_is_damaged(
    tmp_path: Path, damage: str, command: str
) -> None:
    good = json.loads(SAMPLE.read_text())
    other = copy.deepcopy(good)
    other["host"]["hostname"] = "kd-other"
    damaged = copy.deepcopy(good)
    edit, needle = DAMAGES[damage]
    edit(damaged)
    path = _write(tmp_path, "damaged.json", damaged)
    result = kvmdoctor(*COMMANDS[command](path, _write(tmp_path, "other.json", other)))
    assert result.exit_code == 2, (result.stdout, result.stderr)
    (line,) = result.stderr.strip().splitlines()
    assert f"{path} is not a kvmdoctor report" in line and needle in line, line


def test_the_same_report_undamaged_is_read(tmp_path: Path) -> None:
    """The other side of the test above: the sample it damages is accepted as it is."""
    path = _write(tmp_path, "good.json", json.loads(SAMPLE.read_text()))
    for command in ("show", "convert html", "fix ansible"):
        result = kvmdoctor(*COMMANDS[command](path, path))
        assert result.exit_code in (0, 1), (command, result.stderr)
        assert result.stderr == "", (command, result.stderr)


def test_a_report_of_another_format_version_is_refused_by_show_and_fix(tmp_path: Path) -> None:
    later = json.loads(SAMPLE.read_text())
    later["schema_version"] = "2.0"
    later["run"] = "a shape this kvmdoctor does not know"
    path = _write(tmp_path, "later.json", later)
    for args in (["report", "show", str(path)], ["fix", "--report", str(path)]):
        result = kvmdoctor(*args)
        assert result.exit_code == 2, (args, result.stdout, result.stderr)
        (line,) = result.stderr.strip().splitlines()
        assert "is a report of format '2.0'; this kvmdoctor reads format 1.0" in line, line


def test_the_schema_kvmdoctor_checks_reports_with_is_the_published_one() -> None:
    shipped = json.loads((ROOT / "doctor" / "report.schema.json").read_text())
    published = json.loads((ROOT / "docs" / "report.schema.json").read_text())
    assert shipped == published


def _probe_evidence(report: dict[str, Any]) -> dict[str, Any]:
    (chk,) = [c for c in report["checks"] if c["code"] == "PRB002"]
    evidence: dict[str, Any] = chk["findings"][0]["evidence"]
    return evidence


@pytest.mark.parametrize(
    "edit",
    [
        lambda ev: ev["observations"]["seen"].update({ev["hops"][1]: {"request": "three"}}),
        lambda ev: ev.update({"hops": [["kdg17ae"], *ev["hops"][1:]]}),
        lambda ev: ev.update({"observations": ["not", "a", "mapping"]}),
        lambda ev: ev.update({"guest": "kdg17ae"}),
    ],
    ids=["counts-not-numbers", "hop-not-a-name", "observations-not-a-mapping", "guest-a-string"],
)
def test_html_of_a_probe_report_with_odd_evidence_still_draws_the_path(
    tmp_path: Path, edit: Callable[[dict[str, Any]], None]
) -> None:
    """Evidence is free-form in the schema: the drawing takes what it can use from it."""
    report = json.loads(PROBE_SAMPLE.read_text())
    edit(_probe_evidence(report))
    path = _write(tmp_path, "probe.json", report)
    result = kvmdoctor("report", "convert", str(path), "--to", "html")
    assert result.exit_code == 0, result.stderr
    assert 'id="probe-drawing"' in result.stdout
    assert "kdu17ae" in result.stdout  # the hop after the odd one is still drawn
