"""docs/ci.md: every kvmdoctor command in it runs, against the recorded host, with the exit code
and the output the page documents; its alert rule selects exactly the failing findings."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest

from kdtest import HOST_SNAPSHOT, ROOT, kvmdoctor

DOC = ROOT / "docs" / "ci.md"
COMMAND = re.compile(r"\bkvmdoctor\s+(?:run|report|checks|explain|fix|collect|version)\b.*$")
FENCE = re.compile(r"^```(\S*)\s*$")


@dataclass
class Command:
    line: str
    exit: Optional[int]  # None: 0 or 1 (a gate that may pass or fail), never 2 or 3
    output: list[str] = field(default_factory=list)


@dataclass
class Block:
    lang: str
    lines: list[str]


def blocks(text: str) -> list[Block]:
    out: list[Block] = []
    current: Optional[Block] = None
    for line in text.splitlines():
        fence = FENCE.match(line)
        if fence and current is None:
            current = Block(fence.group(1), [])
        elif fence and current is not None:
            out.append(current)
            current = None
        elif current is not None:
            current.lines.append(line)
    assert current is None, "an unclosed code block"
    return out


def commands(block: Block) -> list[Command]:
    out: list[Command] = []
    for line in block.lines:
        if block.lang == "console" and not line.startswith("$ "):
            if out and line.strip() and line.strip() != "...":
                out[-1].output.append(line.strip())
            continue
        match = COMMAND.search(line)
        if match is None:
            continue
        expected = re.search(r"#\s*exit\s+(\d+)\s*$", match.group())
        out.append(Command(match.group(), int(expected.group(1)) if expected else None))
    return out


def argv(command: Command, cwd: Path) -> list[str]:
    """The command's arguments, run against the recorded host; files it writes outside the
    working directory are written into it."""
    args = shlex.split(command.line, comments=True)[1:]
    if args[0] == "run" and not {"--snapshot", "--root"} & set(args):
        args[1:1] = ["--snapshot", str(HOST_SNAPSHOT)]
    for i, arg in enumerate(args[:-1]):
        if arg in ("-o", "--output") and args[i + 1].startswith("/"):
            args[i + 1] = str(cwd / Path(args[i + 1]).name)
    return args


def test_every_kvmdoctor_command_in_docs_ci_runs_as_documented(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NO_COLOR", "1")
    ran = 0
    for block in blocks(DOC.read_text()):
        if block.lang == "toml" and block.lines and block.lines[0].startswith("# kvmdoctor.toml"):
            (tmp_path / "kvmdoctor.toml").write_text("\n".join(block.lines) + "\n")
            continue
        for command in commands(block):
            args = argv(command, tmp_path)
            result = kvmdoctor(*args)
            said = result.stdout + result.stderr
            where = f"docs/ci.md: {command.line}\n{said}"
            if command.exit is None:
                assert result.exit_code in (0, 1), where
            else:
                assert result.exit_code == command.exit, where
            for expected in command.output:
                assert expected in said, f"{where}\nexpected: {expected}"
            for i, arg in enumerate(args[:-1]):
                if arg in ("-o", "--output"):
                    assert Path(args[i + 1]).stat().st_size > 0, where
            ran += 1
    # the gate, the config, every format and both CI systems are in there
    assert ran >= 15, ran
    for needle in ("--fail-on", "--to junit", "--to sarif", "reports:", "upload-artifact",
                   "upload-sarif", "sarif_file: kvmdoctor.sarif", "junit: kvmdoctor.xml"):  # fmt: skip
        assert needle in DOC.read_text()


def test_the_files_the_ci_examples_write_are_what_their_consumers_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import xml.etree.ElementTree as ET

    monkeypatch.chdir(tmp_path)
    for block in blocks(DOC.read_text()):
        if block.lang == "yaml":
            for command in commands(block):
                kvmdoctor(*argv(command, tmp_path))
    assert ET.parse(tmp_path / "kvmdoctor.xml").getroot().tag == "testsuites"
    assert json.loads((tmp_path / "kvmdoctor.sarif").read_text())["version"] == "2.1.0"
    assert (tmp_path / "kvmdoctor.md").read_text().startswith("## kvmdoctor report")


def _alert_rules() -> dict[str, Any]:
    import yaml

    for block in blocks(DOC.read_text()):
        if block.lang == "yaml" and block.lines and block.lines[0].startswith("groups:"):
            doc = yaml.safe_load("\n".join(block.lines))
            return {r["alert"]: r for g in doc["groups"] for r in g["rules"]}
    raise AssertionError("docs/ci.md gives no alert rules")


def _selects(expr: str, metrics: str) -> set[tuple[str, str]]:
    """(code, subject) of the samples the rule's `name{label=..., label=~...} == 1` selects."""
    from prometheus_client.parser import text_string_to_metric_families

    match = re.fullmatch(r"(\w+)\{(.*)\}\s*==\s*1", expr.strip())
    assert match, expr
    name, body = match.groups()
    matchers = re.findall(r'(\w+)(=~|=)"([^"]*)"', body)
    chosen = set()
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name != name or sample.value != 1:
                continue
            if all(
                re.fullmatch(value, sample.labels.get(label, ""))
                if op == "=~"
                else sample.labels.get(label) == value
                for label, op, value in matchers
            ):
                chosen.add((sample.labels["code"], sample.labels["subject"]))
    return chosen


def test_the_documented_alert_fires_for_each_failing_finding_and_no_other() -> None:
    from doctor.render import render_as

    rules = _alert_rules()
    report = json.loads((ROOT / "sample_reports" / "kvm-root-only.json").read_text())
    failing = [
        (c["code"], f["subject"])
        for c in report["checks"]
        for f in c["findings"]
        if f["status"] in ("fail", "error")
    ]
    assert len(failing) >= 2
    # an ignored failure does not page anybody
    (chk,) = [c for c in report["checks"] if c["code"] == failing[0][0]]
    (first,) = [f for f in chk["findings"] if f["subject"] == failing[0][1]]
    first["ignored"] = {"reason": "known", "by": "command line"}
    metrics = render_as("prometheus", report)
    assert _selects(rules["KvmdoctorCheckFailing"]["expr"], metrics) == set(failing[1:])
    stale = rules["KvmdoctorNotRunning"]["expr"]
    assert "kvmdoctor_run_timestamp_seconds" in stale
    assert "kvmdoctor_run_timestamp_seconds " in metrics
