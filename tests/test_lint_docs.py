"""docs/lint.md: every kvmdoctor command in it runs on the definitions the page shows, with the
exit code and the output it documents, and its CI jobs write what their consumers read."""

from __future__ import annotations

import json
import re
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Optional

import pytest
from test_ci_docs import Block, Command, blocks

from kdtest import ROOT, kvmdoctor

DOC = ROOT / "docs" / "lint.md"
COMMAND = re.compile(r"(?:\bcat\s+(\S+)\s*\|\s*)?\bkvmdoctor\s+(?:lint|report)\b.*$")
LAID_OUT = re.compile(r"^<!--\s*(\S+)\s*-->$")
NOT_XML = "Notes on the guests: web serves, db stores.\n"


def commands(block: Block) -> list[tuple[Command, Optional[str]]]:
    """The kvmdoctor commands of a block, each with the file piped into it (`cat F |`)."""
    out: list[tuple[Command, Optional[str]]] = []
    for line in block.lines:
        if block.lang == "console" and not line.startswith("$ "):
            if out and line.strip():
                out[-1][0].output.append(line.strip())
            continue
        match = COMMAND.search(line)
        if match is None:
            continue
        text = match.group()
        if match.group(1):
            text = text[text.index("kvmdoctor") :]
        expected = re.search(r"#\s*exit\s+(\d+)\s*$", text)
        out.append((Command(text, int(expected.group(1)) if expected else None), match.group(1)))
    return out


def lay_out(root: Path) -> None:
    """The definitions the page shows, where their first lines say, and a file that is not XML."""
    for block in blocks(DOC.read_text()):
        if block.lang == "xml" and block.lines and LAID_OUT.match(block.lines[0]):
            found = LAID_OUT.match(block.lines[0])
            assert found is not None
            path = root / found.group(1)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(block.lines[1:]) + "\n")
    (root / "vms" / "notes.txt").write_text(NOT_XML)


def run(command: Command, piped: Optional[str]) -> tuple[int, str]:
    args = shlex.split(command.line, comments=True)[1:]
    stdin = Path(piped).read_text() if piped else None
    result = kvmdoctor(*args, input=stdin)
    return result.exit_code, result.stdout + result.stderr


def test_every_kvmdoctor_command_in_docs_lint_runs_as_documented(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NO_COLOR", "1")
    lay_out(tmp_path)
    ran = 0
    for block in blocks(DOC.read_text()):
        if block.lang not in ("console", "yaml", "sh"):
            continue
        for command, piped in commands(block):
            code, said = run(command, piped)
            where = f"docs/lint.md: {command.line}\n{said}"
            if command.exit is None:
                assert code in (0, 1), where
            else:
                assert code == command.exit, where
            for expected in command.output:
                assert expected in said, f"{where}\nexpected: {expected}"
            ran += 1
    # files, a directory, stdin, bad input, ignores, formats, both CI systems
    assert ran >= 15, ran
    text = DOC.read_text()
    for needle in ("upload-sarif", "reports:", "junit:", "lint --host", "| exit | meaning |"):
        assert needle in text


def test_the_documented_lines_point_at_the_offending_elements(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    lay_out(tmp_path)
    report = json.loads(kvmdoctor("lint", "vms/", "--format", "json").stdout)
    lines = (tmp_path / "vms" / "web.xml").read_text().splitlines()
    located = {
        f["code"]: f["location"]
        for c in report["checks"]
        for f in c["findings"]
        if f["status"] in ("warn", "fail")
    }
    assert set(located) == {"DOM001", "DOM003"}
    assert lines[located["DOM003"]["line"] - 1].strip() == "<disk type='file' device='cdrom'>"
    assert lines[located["DOM001"]["line"] - 1].strip() == "<devices>"


def test_the_ci_jobs_write_what_their_consumers_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    monkeypatch.chdir(tmp_path)
    lay_out(tmp_path)
    jobs = [b for b in blocks(DOC.read_text()) if b.lang == "yaml"]
    assert len(jobs) == 2
    github, gitlab = (yaml.safe_load("\n".join(b.lines)) for b in jobs)
    steps = github["jobs"]["kvmdoctor-lint"]["steps"]
    assert any(s.get("uses", "").startswith("github/codeql-action/upload-sarif") for s in steps)
    assert gitlab["kvmdoctor-lint"]["artifacts"]["reports"]["junit"] == "kvmdoctor-lint.xml"
    for block in jobs:
        for command, piped in commands(block):
            run(command, piped)
    sarif = json.loads((tmp_path / "kvmdoctor-lint.sarif").read_text())
    (result,) = [r for r in sarif["runs"][0]["results"] if r["ruleId"] == "DOM003"]
    assert result["locations"][0]["physicalLocation"] == {
        "artifactLocation": {"uri": "vms/web.xml", "uriBaseId": "SRCROOT"},
        "region": {"startLine": 15},
    }
    suite = ET.parse(tmp_path / "kvmdoctor-lint.xml").getroot()
    assert suite.tag == "testsuites" and int(suite.get("failures", "0")) == 1
