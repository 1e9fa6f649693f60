"""docs/report.schema.json describes the report that `kvmdoctor run --format json` really prints.

Every report validated here comes from running kvmdoctor: on this host, on the snapshot recorded
on it, on a tiny hand-made tree, and with ignores. The contract test pins the report's keys to
the schema's, so a change to the report shape has to change this file and the schema together.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from typer.testing import CliRunner

from doctor.cli import app

REPO = Path(__file__).resolve().parents[1]
SCHEMA_PATH = REPO / "docs" / "report.schema.json"
SNAPSHOT = REPO / "tests" / "fixtures" / "snapshots" / "host-kvm-pvm"

STATUSES = ("pass", "info", "warn", "fail", "skip", "error")
TOP_LEVEL_KEYS = {
    "schema_version",
    "tool",
    "host",
    "run",
    "checks",
    "diagnoses",
    "load_errors",
    "summary",
    "exit_code",
}
TOOL_KEYS = {"name", "version"}
HOST_KEYS = {"hostname", "kernel", "os", "arch", "hypervisor", "libvirt_version", "uri"}
# Written by every run since the fleet view compares them; optional, so that reports made
# before still validate (a fleet report's host section is all null and has none of them).
HOST_OPTIONAL_KEYS = {"qemu_version", "firmware_version", "guests", "network"}
# Only in a fleet report (`kvmdoctor report merge`, tests/cli/test_report_merge.py).
TOP_LEVEL_OPTIONAL_KEYS = {"fleet"}
RUN_KEYS = {
    "started",
    "finished",
    "duration_s",
    "argv",
    "profile",
    "source",
    "user",
    "redacted",
    "fail_on",
    "selected",
    "ignores",
}
CHECK_KEYS = {"code", "name", "title", "tags", "origin", "status", "duration_ms", "findings"}
FINDING_KEYS = {"code", "status", "subject", "message", "evidence"}
FINDING_OPTIONAL_KEYS = {"ignored", "explained_by", "location"}
LOCATION_KEYS = {"element", "file", "line"}
RUN_OPTIONAL_KEYS = {"files"}  # a lint report's
IGNORED_KEYS = {"reason", "by"}
IGNORE_RULE_KEYS = {"check", "subject", "reason", "by"}
LOAD_ERROR_KEYS = {"origin", "check", "message"}
SUMMARY_KEYS = {*STATUSES, "ignored", "checks"}
DIAGNOSIS_KEYS = {
    "rank",
    "playbook",
    "title",
    "status",
    "subject",
    "codes",
    "specificity",
    "cause",
    "findings",
    "explains",
    "fix",
    "verify",
    "refs",
}
# Present only when set: on a consequence, the rank of its cause; on a cause, its consequences;
# in a fleet report, the hosts its fix runs on and how to see it again.
DIAGNOSIS_OPTIONAL_KEYS = {"consequence_of", "consequences", "hosts", "rerun"}
FINDING_REF_KEYS = {"code", "subject", "status", "message"}
FIX_STEP_KEYS = {"playbook", "action", "safety", "text", "params", "missing"}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def validator(schema: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def run_cli(*args: str) -> tuple[dict[str, Any], int]:
    """`kvmdoctor run ARGS --format json` in this process: (the report, the exit code)."""
    result = CliRunner().invoke(app, ["run", *args, "--format", "json"])
    assert result.exit_code in (0, 1), (result.exit_code, result.output)
    return json.loads(result.stdout), result.exit_code


@pytest.fixture(scope="module")
def snapshot_report() -> dict[str, Any]:
    report, _ = run_cli("--snapshot", str(SNAPSHOT))
    return report


@pytest.fixture(scope="module")
def ignored_report() -> dict[str, Any]:
    report, _ = run_cli("--snapshot", str(SNAPSHOT), "--ignore", "KVM008")
    return report


def assert_valid(validator: Draft202012Validator, report: dict[str, Any]) -> None:
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(report)]
    assert errors == []


def errors_at(validator: Draft202012Validator, report: dict[str, Any]) -> set[tuple[Any, ...]]:
    """Where the schema rejects `report`: the paths of its errors (with the keyword that failed)."""
    return {(*e.absolute_path, e.validator) for e in validator.iter_errors(report)}


def kvmdoctor_command() -> list[str]:
    """The installed console script next to this interpreter, else `python -m doctor`."""
    script = Path(sys.executable).with_name("kvmdoctor")
    if script.exists():
        return [str(script)]
    found = shutil.which("kvmdoctor")
    return [found] if found else [sys.executable, "-m", "doctor"]


# --- the schema itself --------------------------------------------------------------------------


def test_schema_is_a_valid_draft_2020_12_schema(schema: dict[str, Any]) -> None:
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] and schema["title"] and schema["description"]
    Draft202012Validator.check_schema(schema)


def test_schema_statuses_and_fail_on_levels_match_the_code(schema: dict[str, Any]) -> None:
    from doctor.model import STATUSES as MODEL_STATUSES
    from doctor.report import FAIL_ON_LEVELS, SCHEMA_VERSION

    assert tuple(schema["$defs"]["status"]["enum"]) == MODEL_STATUSES == STATUSES
    assert set(schema["$defs"]["fail_on"]["enum"]) == set(FAIL_ON_LEVELS)
    assert schema["properties"]["schema_version"]["const"] == SCHEMA_VERSION


# --- real reports validate ----------------------------------------------------------------------


@pytest.mark.integration
def test_live_report_on_this_host_validates(validator: Draft202012Validator) -> None:
    done = subprocess.run(
        [*kvmdoctor_command(), "run", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1"},
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    report = json.loads(done.stdout)
    assert_valid(validator, report)
    assert report["run"]["source"]["kind"] == "live"
    assert report["exit_code"] == done.returncode


def test_snapshot_report_validates(
    validator: Draft202012Validator, snapshot_report: dict[str, Any]
) -> None:
    assert_valid(validator, snapshot_report)
    source = snapshot_report["run"]["source"]
    assert source["kind"] == "snapshot"
    assert source["path"] == str(SNAPSHOT)
    assert source["recorded_from"]["kind"] == "live"


def test_report_recorded_inside_the_snapshot_validates(validator: Draft202012Validator) -> None:
    """report.json, written by `kvmdoctor collect`, carries "recording": true on its source."""
    report = json.loads((SNAPSHOT / "report.json").read_text(encoding="utf-8"))
    assert_valid(validator, report)
    assert report["run"]["source"]["recording"] is True


def test_root_tree_report_validates(validator: Draft202012Validator, tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "etc").mkdir()
    shutil.copy(SNAPSHOT / "files" / "proc" / "cpuinfo", tmp_path / "proc" / "cpuinfo")
    (tmp_path / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\n"
        "libvirt-qemu:x:64055:107:Libvirt Qemu,,,:/var/lib/libvirt:/usr/sbin/nologin\n"
    )
    (tmp_path / "etc" / "group").write_text("root:x:0:\nkvm:x:107:libvirt-qemu\n")

    report, code = run_cli("--root", str(tmp_path))

    assert_valid(validator, report)
    assert report["run"]["source"] == {
        "kind": "root",
        "root": str(tmp_path),
        "uri": None,
        "netns": None,
    }
    # A tree has no uname and no identity: the nullable fields really are null here.
    assert report["host"]["hostname"] is None
    assert report["run"]["user"] is None
    assert report["summary"]["skip"] > 0
    assert report["exit_code"] == code


def test_report_with_ignores_validates(
    validator: Draft202012Validator, ignored_report: dict[str, Any]
) -> None:
    assert_valid(validator, ignored_report)
    assert ignored_report["run"]["ignores"] == [
        {
            "check": "KVM008",
            "subject": None,
            "reason": "ignored with --ignore on the command line",
            "by": "command line",
        }
    ]
    ignored = [f for c in ignored_report["checks"] for f in c["findings"] if "ignored" in f]
    assert ignored and {f["code"] for f in ignored} == {"KVM008"}
    assert ignored_report["summary"]["ignored"] == len(ignored)


LINTED = """<domain type='kvm'>
  <name>kd-schema</name>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>
  <devices>
    <disk type='file' device='cdrom'><target dev='vdb' bus='virtio'/></disk>
  </devices>
</domain>
"""


def test_lint_report_validates_with_files_as_subjects_and_locations(
    validator: Draft202012Validator, tmp_path: Path
) -> None:
    path = tmp_path / "kd-schema.xml"
    path.write_text(LINTED)
    result = CliRunner().invoke(app, ["lint", str(path), "--format", "json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert_valid(validator, report)
    assert report["run"]["source"] == {"kind": "files", "paths": [str(path)]}
    assert report["run"]["files"] == [str(path)]
    located = [f for c in report["checks"] for f in c["findings"] if "location" in f]
    assert located and all(set(f["location"]) == LOCATION_KEYS for f in located)
    assert {f["subject"] for f in located} == {f"file:{path}"}
    # what the schema refuses: a line 0, a relative element path, an unknown key
    broken = copy.deepcopy(report)
    finding = next(f for c in broken["checks"] for f in c["findings"] if "location" in f)
    finding["location"].update(line=0, element="domain", column=3)
    where = [e[-1] for e in errors_at(validator, broken) if "location" in e]
    assert sorted(where) == ["additionalProperties", "minimum", "pattern"]


# --- the contract: report keys == schema keys == the keys pinned here ---------------------------


def _keys(schema: dict[str, Any], obj: dict[str, Any]) -> tuple[set[str], set[str]]:
    """(all properties, required properties) of a schema object, following a local $ref."""
    if "$ref" in obj:
        obj = schema["$defs"][obj["$ref"].rsplit("/", 1)[1]]
    return set(obj["properties"]), set(obj.get("required", ()))


def test_contract_pins_report_keys_and_schema_together(
    schema: dict[str, Any], ignored_report: dict[str, Any], snapshot_report: dict[str, Any]
) -> None:
    report = ignored_report
    props = schema["properties"]
    defs = schema["$defs"]
    pinned = [
        ("top level", report, schema, TOP_LEVEL_KEYS, TOP_LEVEL_OPTIONAL_KEYS),
        ("tool", report["tool"], props["tool"], TOOL_KEYS, set()),
        ("host", report["host"], props["host"], HOST_KEYS, HOST_OPTIONAL_KEYS),
        ("run", report["run"], props["run"], RUN_KEYS, RUN_OPTIONAL_KEYS),
        ("summary", report["summary"], props["summary"], SUMMARY_KEYS, set()),
        ("ignore rule", report["run"]["ignores"][0], defs["ignore_rule"], IGNORE_RULE_KEYS, set()),
    ]
    for where, actual, part, expected, optional in pinned:
        written = HOST_OPTIONAL_KEYS if where == "host" else set()  # a run writes them all
        assert set(actual) == expected | written, where
        assert _keys(schema, part) == (expected | optional, expected), where
        assert part.get("additionalProperties") is False, where

    assert _keys(schema, defs["check"]) == (CHECK_KEYS, CHECK_KEYS)
    assert _keys(schema, defs["finding"]) == (FINDING_KEYS | FINDING_OPTIONAL_KEYS, FINDING_KEYS)
    assert _keys(schema, defs["finding"]["properties"]["ignored"]) == (IGNORED_KEYS, IGNORED_KEYS)
    assert _keys(schema, defs["finding"]["properties"]["location"]) == (LOCATION_KEYS, {"element"})
    assert _keys(schema, defs["load_error"]) == (LOAD_ERROR_KEYS, LOAD_ERROR_KEYS)
    assert _keys(schema, defs["diagnosis"]) == (
        DIAGNOSIS_KEYS | DIAGNOSIS_OPTIONAL_KEYS,
        DIAGNOSIS_KEYS,
    )
    assert _keys(schema, defs["finding_ref"]) == (FINDING_REF_KEYS, FINDING_REF_KEYS)
    assert _keys(schema, defs["fix_step"]) == (FIX_STEP_KEYS, FIX_STEP_KEYS)
    for name in ("check", "finding", "load_error", "diagnosis", "finding_ref", "fix_step"):
        assert defs[name]["additionalProperties"] is False, name

    assert snapshot_report["diagnoses"], "the snapshot's vhost-net warning gives a diagnosis"
    for diagnosis in snapshot_report["diagnoses"]:
        keys = set(diagnosis)
        assert keys >= DIAGNOSIS_KEYS and keys - DIAGNOSIS_KEYS <= DIAGNOSIS_OPTIONAL_KEYS
        for ref in (*diagnosis["findings"], *diagnosis["explains"]):
            assert set(ref) == FINDING_REF_KEYS
        for step in diagnosis["fix"]:
            assert set(step) == FIX_STEP_KEYS

    seen_ignored = False
    for check in report["checks"]:
        assert set(check) == CHECK_KEYS, check["code"]
        for finding in check["findings"]:
            keys = set(finding)
            assert keys >= FINDING_KEYS and keys - FINDING_KEYS <= FINDING_OPTIONAL_KEYS, finding
            if "ignored" in finding:
                seen_ignored = True
                assert set(finding["ignored"]) == IGNORED_KEYS
    assert seen_ignored


def test_summary_counts_the_findings_the_checks_carry(
    snapshot_report: dict[str, Any], ignored_report: dict[str, Any]
) -> None:
    for report in (snapshot_report, ignored_report):
        findings = [f for c in report["checks"] for f in c["findings"]]
        counted = {s: 0 for s in STATUSES}
        for finding in findings:
            if "ignored" not in finding:
                counted[finding["status"]] += 1
        summary = report["summary"]
        assert {s: summary[s] for s in STATUSES} == counted
        assert summary["ignored"] == sum("ignored" in f for f in findings)
        assert summary["checks"] == len(report["checks"])


# --- the schema rejects what build() never produces ---------------------------------------------


def test_schema_rejects_an_unknown_finding_status(
    validator: Draft202012Validator, snapshot_report: dict[str, Any]
) -> None:
    report = copy.deepcopy(snapshot_report)
    report["checks"][0]["findings"][0]["status"] = "ok"
    assert ("checks", 0, "findings", 0, "status", "enum") in errors_at(validator, report)


def test_schema_rejects_an_unknown_check_status(
    validator: Draft202012Validator, snapshot_report: dict[str, Any]
) -> None:
    report = copy.deepcopy(snapshot_report)
    report["checks"][0]["status"] = "passed"
    assert errors_at(validator, report) == {("checks", 0, "status", "enum")}


def test_schema_rejects_a_report_without_exit_code(
    validator: Draft202012Validator, snapshot_report: dict[str, Any]
) -> None:
    report = copy.deepcopy(snapshot_report)
    del report["exit_code"]
    assert errors_at(validator, report) == {("required",)}


def test_schema_rejects_an_extra_top_level_key(
    validator: Draft202012Validator, snapshot_report: dict[str, Any]
) -> None:
    report = copy.deepcopy(snapshot_report)
    report["warnings"] = []
    assert errors_at(validator, report) == {("additionalProperties",)}


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("run", "fail_on"), "error"),
        (("exit_code",), 3),
        (("host", "hostname"), 42),
        (("checks", 0, "findings", 0, "ignored"), {"reason": "x", "by": "y", "when": "now"}),
        (("checks", 0, "findings", 0, "evidence"), []),
        (("run", "source", "kind"), "bundle"),
    ],
)
def test_schema_rejects_values_build_never_produces(
    validator: Draft202012Validator,
    snapshot_report: dict[str, Any],
    path: tuple[Any, ...],
    value: Any,
) -> None:
    report = copy.deepcopy(snapshot_report)
    target = report
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    assert not validator.is_valid(report)
