"""The command line through typer's CliRunner: exit codes, gating, selection, config, errors."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from kdtest import kvmdoctor


def report_of(result: Any) -> dict[str, Any]:
    return json.loads(result.stdout)


@pytest.fixture
def snap(host_snapshot: Path) -> str:
    return str(host_snapshot)


def assert_one_line_error(result: Any, *needles: str) -> None:
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0]


# --- exit codes and gating ----------------------------------------------------------------


def test_run_exits_0_when_nothing_reaches_the_default_fail_level(snap: str) -> None:
    result = kvmdoctor("run", "--snapshot", snap, "--format", "json")
    assert result.exit_code == 0
    report = report_of(result)
    assert report["exit_code"] == 0
    assert report["summary"]["warn"] == 1


@pytest.mark.parametrize(("level", "code"), [("fail", 0), ("warn", 1), ("info", 1)])
def test_fail_on_sets_the_gate(snap: str, level: str, code: int) -> None:
    result = kvmdoctor("run", "--snapshot", snap, "--fail-on", level, "-f", "json")
    assert result.exit_code == code
    assert report_of(result)["run"]["fail_on"] == level


def test_ignore_on_the_command_line_keeps_the_finding_but_not_the_gate(snap: str) -> None:
    result = kvmdoctor(
        "run", "--snapshot", snap, "--fail-on", "warn", "--ignore", "KVM008", "-f", "json"
    )
    assert result.exit_code == 0
    report = report_of(result)
    (kvm008,) = [c for c in report["checks"] if c["code"] == "KVM008"]
    ignored = [f for f in kvm008["findings"] if f.get("ignored")]
    assert ignored and ignored[0]["ignored"]["by"] == "command line"
    assert report["summary"]["ignored"] == 2


def test_select_runs_only_what_was_asked_for(snap: str) -> None:
    result = kvmdoctor(
        "run", "--snapshot", snap, "--select", "KVM006,kvm-device-missing", "-f", "json"
    )
    assert [c["code"] for c in report_of(result)["checks"]] == ["KVM001", "KVM006"]


def test_a_failing_host_exits_1(edit_snapshot: Any) -> None:
    path = edit_snapshot().missing("stat", path="/dev/net/tun").save()
    result = kvmdoctor("run", "--snapshot", str(path))
    assert result.exit_code == 1
    # The failure leads as a diagnosis, with the finding it rests on under it.
    assert "FAIL  /dev/net/tun is missing" in result.stdout
    assert "found by: FAIL KVM008 device:/dev/net/tun" in result.stdout


# --- the config file -----------------------------------------------------------------------


def test_the_config_in_the_working_directory_holds_ignores_with_reasons(
    snap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "kvmdoctor.toml").write_text(
        'fail_on = "warn"\n\n[[ignore]]\ncheck = "vhost-net-unavailable"\n'
        'subject = "device:/dev/vhost-net"\nreason = "CI runners use user-mode networking"\n'
    )
    monkeypatch.chdir(tmp_path)
    result = kvmdoctor("run", "--snapshot", snap)
    assert result.exit_code == 0, result.stdout
    assert "Ignored" in result.stdout
    assert "CI runners use user-mode networking" in result.stdout
    strict = kvmdoctor("run", "--snapshot", snap, "--ignore", "KVM001", "-f", "json")
    assert report_of(strict)["run"]["fail_on"] == "warn"


def test_a_config_ignore_without_a_reason_is_a_usage_error(snap: str, tmp_path: Path) -> None:
    config = tmp_path / "gate.toml"
    config.write_text('[[ignore]]\ncheck = "KVM008"\n')
    result = kvmdoctor("run", "--snapshot", snap, "--config", str(config))
    assert_one_line_error(result, "ignore #1 (KVM008) has no reason")


def test_a_config_with_an_unknown_setting_is_a_usage_error(snap: str, tmp_path: Path) -> None:
    config = tmp_path / "gate.toml"
    config.write_text('fail_onn = "warn"\n')
    assert_one_line_error(
        kvmdoctor("run", "--snapshot", snap, "--config", str(config)), "unknown setting(s) fail_onn"
    )


# --- bad input: exit 2 and one clear line on stderr ----------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--bogus"], "No such option"),
        (["run", "--format", "xml"], "--format must be one of text, json, junit"),
        (["run", "--fail-on", "sometimes"], "--fail-on must be one of info, warn, fail"),
        (["run", "--select", "KVM999"], "no check matches 'KVM999'"),
        (["run", "--root", "/", "--snapshot", "/"], "exclude each other"),
        (["run", "--snapshot", "/nonexistent/snap"], "not a snapshot directory or archive"),
        (["run", "--root", "/nonexistent/tree"], "/nonexistent/tree"),
        (["run", "--check-timeout", "0"], "--check-timeout"),
        (["run", "--check-timeout", "nan"], "nan is not a number of seconds"),
        (["run", "--check-timeout", "inf"], "--check-timeout"),
        (["run", "--connect-timeout", "nan"], "nan is not a number of seconds"),
        (["run", "--connect-timeout", "1e308"], "--connect-timeout"),
        (["fix", "--connect-timeout", "-inf"], "--connect-timeout"),
        (["checks", "KVM999"], "no check 'KVM999'"),
        (["frobnicate"], "No such command 'frobnicate'"),
        (["collect"], "Missing option '--output'"),
    ],
)
def test_bad_input_gives_exit_2_and_one_line(args: list[str], needle: str) -> None:
    assert_one_line_error(kvmdoctor(*args), needle)


def test_an_internal_error_exits_3_with_one_line(
    snap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from doctor import engine

    def broken(*a: Any, **kw: Any) -> Any:
        raise RuntimeError("engine on fire")

    monkeypatch.setattr(engine, "run", broken)
    result = kvmdoctor("run", "--snapshot", snap)
    assert result.exit_code == 3
    assert result.stderr.strip().splitlines() == [
        "kvmdoctor: internal error: RuntimeError: engine on fire "
        "(set KVMDOCTOR_DEBUG=1 for the traceback)"
    ]


# --- output --------------------------------------------------------------------------------


def test_text_output_leads_with_diagnoses_and_has_no_colour_in_a_pipe(snap: str) -> None:
    result = kvmdoctor("run", "--snapshot", snap)
    out = result.stdout
    assert "\x1b[" not in out
    # The vhost-net warning leads as a diagnosis and is not repeated among the problems.
    assert out.index("Diagnoses") < out.index("WARN  /dev/vhost-net is missing")
    assert "found by: WARN KVM008 device:/dev/vhost-net" in out
    assert "WARN  KVM008" not in out
    assert "PASS" not in out  # passes only with -v
    assert re.search(
        r"^\d+ checks, findings: \d+ passed · 1 warning · 0 failed(?: · \d+ skipped)? · exit 0$",
        out,
        re.M,
    )


def test_verbose_text_shows_passes_with_full_evidence(snap: str) -> None:
    out = kvmdoctor("run", "--snapshot", snap, "-v").stdout
    assert "PASS  KVM006 kvm-usable" in out
    assert '"api_version": 12' in out


def test_output_file_gets_the_report_and_stdout_stays_empty(snap: str, tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    result = kvmdoctor("run", "--snapshot", snap, "-f", "json", "-o", str(target))
    assert result.stdout == ""
    assert json.loads(target.read_text())["tool"]["name"] == "kvmdoctor"


def test_checks_lists_the_catalogue_and_documents_one(snap: str) -> None:
    listing = kvmdoctor("checks").stdout.splitlines()
    from doctor.registry import load_registry

    assert [line.split()[0] for line in listing] == [spec.code for spec in load_registry()]
    assert {f"KVM00{i}" for i in range(1, 9)} <= {line.split()[0] for line in listing}
    doc = kvmdoctor("checks", "kvm-device-not-accessible")
    assert doc.exit_code == 0
    for section in ("What it checks:", "Why it matters:", "How to fix:", "References:"):
        assert section in doc.stdout
    assert doc.stdout.startswith("KVM002 kvm-device-not-accessible")


def test_version_prints_the_version() -> None:
    from doctor import __version__

    assert kvmdoctor("version").stdout.startswith(f"kvmdoctor {__version__}")


# --- collect and replay ----------------------------------------------------------------------


def findings_of(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    return [
        (f["code"], f["status"], f["subject"], json.dumps(f["evidence"], sort_keys=True))
        for c in report["checks"]
        for f in c["findings"]
    ]


def test_collect_from_a_tree_replays_to_the_same_findings(
    tmp_path: Path, host_snapshot: Path
) -> None:
    tree = tmp_path / "tree"
    for rel in ("proc/cpuinfo", "etc/passwd", "etc/group", "etc/os-release"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes((host_snapshot / "files" / rel).read_bytes())
    (tree / "dev").mkdir()  # a /dev without kvm: the device is known to be missing
    snapshot = tmp_path / "snap"
    collected = kvmdoctor("collect", "-o", str(snapshot), "--root", str(tree))
    assert collected.exit_code == 0, collected.stderr
    assert "wrote" in collected.stderr
    direct = report_of(kvmdoctor("run", "--root", str(tree), "-f", "json"))
    replay = report_of(kvmdoctor("run", "--snapshot", str(snapshot), "-f", "json"))
    assert findings_of(replay) == findings_of(direct)
    assert any(f[0] == "KVM001" and f[1] == "fail" for f in findings_of(direct))


def test_collect_refuses_to_write_into_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("precious")
    assert_one_line_error(
        kvmdoctor("collect", "-o", str(tmp_path), "--root", str(tmp_path)),
        "exists and is not empty",
    )
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_the_report_records_this_invocations_arguments(snap: str) -> None:
    args = ["run", "--snapshot", snap, "-f", "json"]
    assert report_of(kvmdoctor(*args))["run"]["argv"] == ["kvmdoctor", *args]


def test_text_output_leads_with_the_kvm_verdict(snap: str) -> None:
    second_line = kvmdoctor("run", "--snapshot", snap).stdout.splitlines()[1]
    assert second_line.startswith("KVM is usable: API version 12")
    assert second_line.endswith("(KVM006)")


# --- the time a host is judged at ------------------------------------------------------------


def test_at_judges_a_tree_at_the_given_time_not_today(tmp_path: Path) -> None:
    log = tmp_path / "var/log/libvirt/libvirtd.log"
    log.parent.mkdir(parents=True)
    log.write_text(
        "2026-11-26 07:24:21.858+0000: 7722: error : virPortAllocatorSetUsed:274 : "
        "internal error: Failed to reserve port 5977\n"
    )

    def log001(at: str) -> dict[str, Any]:
        result = kvmdoctor("run", "--root", str(tmp_path), "--select", "LOG001", "-f", "json", *at)
        (check,) = report_of(result)["checks"]
        return dict(check["findings"][0])

    hit = log001(("--at", "2026-11-26T08:00:00Z"))
    assert hit["status"] == "info"
    assert hit["evidence"]["playbook"] == "graphics-port-conflict"
    late = log001(("--at", "2026-12-26T08:00:00+01:00"))
    assert late["status"] == "pass"
    assert "1 older than 7 days not counted" in late["message"]


@pytest.mark.parametrize("value", ["yesterday", "2026-13-01", ""])
def test_at_refuses_what_is_not_an_iso_time(value: str, tmp_path: Path) -> None:
    result = kvmdoctor("run", "--root", str(tmp_path), "--at", value)
    assert_one_line_error(result, "--at takes an ISO 8601 time")


def test_a_config_that_is_not_utf8_is_a_usage_error(snap: str, tmp_path: Path) -> None:
    config = tmp_path / "kvmdoctor.toml"
    config.write_bytes(b'fail_on = "w\xe4rn"\n')
    assert_one_line_error(
        kvmdoctor("run", "--snapshot", snap, "--config", str(config)), "not UTF-8 text"
    )


@pytest.mark.parametrize(
    ("manifest", "needle"),
    [
        (b'{"format": "kvmdoctor-snapshot", "format_version": true}', "format version True"),
        (b'{"format": "kvmdoctor-snapshot", "x": "\xff"}', "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deep"),
    ],
)
def test_a_hostile_manifest_is_a_usage_error(manifest: bytes, needle: str, tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_bytes(manifest)
    assert_one_line_error(kvmdoctor("run", "--snapshot", str(tmp_path)), needle)
