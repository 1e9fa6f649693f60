"""`kvmdoctor report merge`: hosts' reports from real runs (`kvmdoctor run --snapshot`) on the
lab's recorded snapshot, each edited into a host of its own (its name, its libvirt answers,
its guests: the lab's captured kd-cap-guest definition with the name, MAC or UUID a test
gives); then merged, shown, converted and validated against docs/report.schema.json."""

from __future__ import annotations

import gzip
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Optional

import pytest
from jsonschema import Draft202012Validator

import kdnet
from kdtest import ROOT, kvmdoctor, load_ansible

GUEST_LIVE = kdnet.lab_capture("guest/run-libvirt-qemu__kd-cap-guest.xml")
GUEST_DEF = kdnet.lab_capture("guest/etc-libvirt-qemu__kd-cap-guest.xml")
MAC = "52:54:00:8e:d6:ee"  # the captured guest's
UUID = "aab19d0c-0e7e-461b-bcae-d1b8ce3e671a"  # the captured guest's
LIBVIRT_9 = 9_000_000  # what the lab's libvirtd reported (the snapshot's connect answer)


def guest(
    name: str, *, mac: str = MAC, uuid: Optional[str] = None, active: bool = True
) -> dict[str, Any]:
    """A libvirt "domains" row: the captured guest (its status XML when running, its
    definition when not) renamed, with another MAC or UUID when given (a fresh one by default,
    so that only what a test shares is shared)."""
    xml = GUEST_LIVE if active else GUEST_DEF
    xml = xml.replace("<name>kd-cap-guest</name>", f"<name>{name}</name>")
    xml = xml.replace(f"'{MAC}'", f"'{mac}'")
    fresh = uuid or f"aab19d0c-0e7e-461b-bcae-{sum(map(ord, name)):012x}"
    xml = xml.replace(f"<uuid>{UUID}</uuid>", f"<uuid>{fresh}</uuid>")
    return kdnet.domain_entry(xml, active=active)


def host_report(
    edit_snapshot: Any,
    tmp_path: Path,
    name: str,
    *guests: dict[str, Any],
    libvirt: int = LIBVIRT_9,
    firmware: Optional[str] = None,
) -> Path:
    """`kvmdoctor run --snapshot -f json` on the lab snapshot as host `name`; its report."""
    snap = edit_snapshot()
    snap.set_value("uname", {**snap.value("uname"), "nodename": name})
    connect = {"uri": None, "request": "connect", "params": {}}
    snap.set_value(
        "libvirt", {**snap.value("libvirt", **connect), "daemon_version": libvirt}, **connect
    )
    kdnet.set_domains(snap, list(guests))
    if firmware is not None:
        # The head of ovmf's Debian changelog, as the package ships it (gzip); the lab's reads
        # "edk2 (2022.11-6+deb12u2) bookworm; urgency=medium".
        path = "/usr/share/doc/ovmf/changelog.Debian.gz"
        snap.set_file(path, "")
        head = f"edk2 ({firmware}) bookworm; urgency=medium\n\n  * New upstream release.\n"
        (snap.path / "files" / path.lstrip("/")).write_bytes(gzip.compress(head.encode()))
    path = snap.save()
    out = tmp_path / f"{name}.json"
    result = kvmdoctor("run", "--snapshot", str(path), "-f", "json", "-o", str(out))
    assert result.exit_code in (0, 1), result.stderr
    return out


def merge(*reports: Path, args: tuple[str, ...] = ()) -> tuple[Any, dict[str, Any]]:
    out = reports[0].parent / "fleet.json"
    if out.exists():
        out.unlink()
    result = kvmdoctor("report", "merge", *map(str, reports), "-o", str(out), *args)
    return result, (json.loads(out.read_text()) if out.exists() else {})


def findings(report: dict[str, Any], code: str) -> dict[str, dict[str, Any]]:
    (check,) = [c for c in report["checks"] if c["code"] == code]
    return {f["subject"]: f for f in check["findings"]}


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    schema = json.loads((ROOT / "docs" / "report.schema.json").read_text())
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def assert_valid(validator: Draft202012Validator, report: dict[str, Any]) -> None:
    assert [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(report)] == []


# --- what only the fleet sees ---------------------------------------------------------------


def test_a_guest_mac_on_two_hosts_is_one_net010_failure_naming_both_hosts_and_guests(
    edit_snapshot: Any, tmp_path: Path, validator: Draft202012Validator
) -> None:
    a = host_report(edit_snapshot, tmp_path, "kd-host-a", guest("kd-web"))
    b = host_report(edit_snapshot, tmp_path, "kd-host-b", guest("kd-twin"))
    # Neither host can see it: each one's NET010 passes its guest.
    for path, dom in ((a, "kd-web"), (b, "kd-twin")):
        alone = json.loads(path.read_text())
        assert findings(alone, "NET010")[f"domain:{dom}"]["status"] == "pass"
        assert_valid(validator, alone)

    result, fleet = merge(a, b)
    assert result.exit_code == 1, result.stderr
    shared = findings(fleet, "NET010")[f"mac:{MAC}"]
    assert shared["status"] == "fail"  # both run
    assert shared["message"] == (
        f"MAC {MAC} is used by 2 interfaces: host:kd-host-a/domain:kd-web interface 1 "
        "(running), host:kd-host-b/domain:kd-twin interface 1 (running)"
    )
    assert shared["evidence"]["hosts"] == ["kd-host-a", "kd-host-b"]
    assert shared["evidence"]["host"] == "kd-host-b"  # NET010's pick (the last, none defined)
    # The duplicate-mac playbook diagnoses it as on one host.
    (diag,) = [d for d in fleet["diagnoses"] if d["subject"] == f"mac:{MAC}"]
    assert diag["playbook"] == "duplicate-mac" and diag["rank"] == 1
    assert "host:kd-host-a/domain:kd-web" in diag["cause"]
    assert shared["explained_by"] == ["duplicate-mac"]
    # Each host's own findings are there, with the host in their subjects.
    assert findings(fleet, "NET010")["host:kd-host-a/domain:kd-web"]["status"] == "pass"
    assert findings(fleet, "KVM006")["host:kd-host-b"]["status"] == "pass"
    assert [h["name"] for h in fleet["fleet"]["hosts"]] == ["kd-host-a", "kd-host-b"]
    assert fleet["run"]["source"] == {
        "kind": "fleet",
        "reports": [{"host": "kd-host-a", "file": str(a)}, {"host": "kd-host-b", "file": str(b)}],
    }
    assert_valid(validator, fleet)


def test_a_defined_clone_on_another_host_warns_and_names_its_host(
    edit_snapshot: Any, tmp_path: Path
) -> None:
    a = host_report(edit_snapshot, tmp_path, "kd-host-a", guest("kd-web"))
    b = host_report(edit_snapshot, tmp_path, "kd-host-b", guest("kd-web", active=False))
    _, fleet = merge(a, b)
    shared = findings(fleet, "NET010")[f"mac:{MAC}"]
    assert shared["status"] == "warn"  # clashes when the clone starts
    assert (shared["evidence"]["domain"], shared["evidence"]["host"]) == ("kd-web", "kd-host-b")


def test_a_mac_shared_on_one_host_stays_that_hosts_finding(
    edit_snapshot: Any, tmp_path: Path
) -> None:
    a = host_report(edit_snapshot, tmp_path, "kd-host-a", guest("kd-web"), guest("kd-twin"))
    b = host_report(edit_snapshot, tmp_path, "kd-host-b", guest("kd-db", mac="52:54:00:8e:d6:ef"))
    _, fleet = merge(a, b)
    net010 = findings(fleet, "NET010")
    assert net010[f"host:kd-host-a/mac:{MAC}"]["status"] == "fail"  # from kd-host-a's report
    assert f"mac:{MAC}" not in net010
    assert net010["fleet"]["status"] == "pass"
    assert net010["fleet"]["message"] == "no guest MAC is on two hosts (2 hosts' guests compared)"


@pytest.mark.parametrize(("second_runs", "status"), [(True, "fail"), (False, "warn")])
def test_a_domain_uuid_on_two_hosts(
    edit_snapshot: Any, tmp_path: Path, second_runs: bool, status: str
) -> None:
    a = host_report(edit_snapshot, tmp_path, "kd-host-a", guest("kd-web", uuid=UUID))
    b = host_report(
        edit_snapshot,
        tmp_path,
        "kd-host-b",
        guest("kd-web", uuid=UUID, mac="52:54:00:8e:d6:ef", active=second_runs),
    )
    _, fleet = merge(a, b)
    dom020 = findings(fleet, "DOM020")
    found = dom020[f"uuid:{UUID}"]
    assert found["status"] == status
    second = "running" if second_runs else "defined"
    assert found["message"].startswith(
        f"UUID {UUID} is defined on 2 hosts: host:kd-host-a/domain:kd-web (running), "
        f"host:kd-host-b/domain:kd-web ({second})"
    )
    assert found["evidence"]["hosts"] == ["kd-host-a", "kd-host-b"]
    assert found["explained_by"] == ["domain-uuid-on-two-hosts"]
    assert "mac:52:54:00:8e:d6:ee" not in findings(fleet, "NET010")  # MACs differ


def test_hosts_whose_versions_differ_from_the_rest_warn_naming_them_and_the_majority(
    edit_snapshot: Any, tmp_path: Path, validator: Draft202012Validator
) -> None:
    a = host_report(edit_snapshot, tmp_path, "kd-host-a", firmware="2022.11-6+deb12u2")
    b = host_report(edit_snapshot, tmp_path, "kd-host-b", firmware="2022.11-6+deb12u2")
    c = host_report(
        edit_snapshot, tmp_path, "kd-host-c", libvirt=8_000_000, firmware="2022.11-6+deb12u1"
    )
    alone = json.loads(c.read_text())
    assert (alone["host"]["libvirt_version"], alone["host"]["qemu_version"]) == ("8.0.0", "7.2.22")
    assert alone["host"]["firmware_version"] == "2022.11-6+deb12u1"
    assert_valid(validator, alone)

    result, fleet = merge(a, b, c)
    lib009 = findings(fleet, "LIB009")
    assert lib009["version:libvirt"]["status"] == "warn"
    assert lib009["version:libvirt"]["message"] == (
        "libvirt: kd-host-c runs 8.0.0; the others run 9.0.0 (2 of 3 hosts)"
    )
    assert lib009["version:firmware"]["message"] == (
        "firmware (OVMF): kd-host-c runs 2022.11-6+deb12u1; the others run 2022.11-6+deb12u2 "
        "(2 of 3 hosts)"
    )
    assert lib009["version:qemu"]["status"] == "pass"
    assert lib009["version:libvirt"]["evidence"]["odd_hosts"] == ["kd-host-c"]
    assert "version-drift" in {d["playbook"] for d in fleet["diagnoses"]}
    # Warnings only (the snapshot's own is vhost-net's): exit 0 at the default --fail-on...
    assert result.exit_code == 0 and fleet["exit_code"] == 0
    # ...and 1 at --fail-on warn, as `run` does.
    result, fleet = merge(a, b, c, args=("--fail-on", "warn"))
    assert result.exit_code == 1 and fleet["exit_code"] == 1
    assert fleet["run"]["fail_on"] == "warn"
    assert_valid(validator, fleet)


def test_on_a_tie_the_newest_version_is_the_majority(edit_snapshot: Any, tmp_path: Path) -> None:
    a = host_report(edit_snapshot, tmp_path, "kd-host-a", libvirt=9_010_000)
    b = host_report(edit_snapshot, tmp_path, "kd-host-b", libvirt=9_009_000)
    _, fleet = merge(a, b)
    assert findings(fleet, "LIB009")["version:libvirt"]["message"] == (
        "libvirt: kd-host-b runs 9.9.0; the others run 9.10.0 (1 of 2 hosts)"
    )


def test_a_report_made_before_hosts_listed_guests_merges_with_what_it_has(
    edit_snapshot: Any, tmp_path: Path, validator: Draft202012Validator
) -> None:
    """A report without host.guests and the new versions (as kvmdoctor wrote them before):
    the versions come from LIB002's evidence, and the guest comparisons say they could not
    look at that host."""
    a = host_report(edit_snapshot, tmp_path, "kd-host-a", guest("kd-web"))
    b = host_report(edit_snapshot, tmp_path, "kd-host-b", libvirt=8_000_000)
    old = json.loads(b.read_text())
    for key in ("qemu_version", "firmware_version", "guests"):
        del old["host"][key]
    old["host"]["libvirt_version"] = None
    assert_valid(validator, old)
    b.write_text(json.dumps(old))
    result, fleet = merge(a, b)
    assert result.exit_code == 1  # kd-host-a's guest has no bridge on the snapshot host
    assert findings(fleet, "LIB009")["version:libvirt"]["evidence"]["versions"] == {
        "kd-host-a": "9.0.0",
        "kd-host-b": "8.0.0",
    }
    for code in ("NET010", "DOM020"):
        skipped = findings(fleet, code)[f"report:{b}"]
        assert skipped["status"] == "skip"
        assert "does not list its guests" in skipped["message"]


def test_run_does_not_run_the_fleet_checks_and_select_skips_them_with_the_reason(
    host_snapshot: Path,
) -> None:
    result = kvmdoctor("run", "--snapshot", str(host_snapshot), "-f", "json")
    codes = {c["code"] for c in json.loads(result.stdout)["checks"]}
    assert "NET010" in codes and not codes & {"DOM020", "LIB009"}
    result = kvmdoctor("run", "--snapshot", str(host_snapshot), "--select", "LIB009", "-f", "json")
    (only,) = json.loads(result.stdout)["checks"]
    assert only["status"] == "skip"
    assert "only `kvmdoctor report merge` sees many hosts" in only["findings"][0]["message"]


# --- show and convert -----------------------------------------------------------------------


@pytest.fixture
def shared_mac_fleet(edit_snapshot: Any, tmp_path: Path) -> Path:
    a = host_report(edit_snapshot, tmp_path, "kd-host-a", guest("kd-web"))
    b = host_report(edit_snapshot, tmp_path, "kd-host-b", guest("kd-twin"), libvirt=8_000_000)
    result, _ = merge(a, b)
    assert result.exit_code == 1
    return tmp_path / "fleet.json"


def test_report_show_prints_a_table_of_the_hosts_then_what_only_the_fleet_sees(
    shared_mac_fleet: Path,
) -> None:
    result = kvmdoctor("report", "show", str(shared_mac_fleet), "--no-color")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith("· fleet of 2 hosts")
    assert lines[1].split() == [
        "host", "libvirt", "QEMU", "firmware", "guests", "fail", "warn", "error", "exit"
    ]  # fmt: skip
    assert lines[2].split()[:5] == ["kd-host-a", "9.0.0", "7.2.22", "?", "1"]
    assert lines[3].split()[:5] == ["kd-host-b", "8.0.0", "7.2.22", "?", "1"]
    across = lines.index("Across hosts")
    assert lines.index("Diagnoses") > across
    block = "\n".join(lines[across : lines.index("Diagnoses")])
    assert f"FAIL  NET010 mac:{MAC}: MAC {MAC} is used by 2 interfaces" in block
    assert "WARN  LIB009 version:libvirt: libvirt: kd-host-b runs 8.0.0" in block
    assert "host:kd-host-a/domain:kd-web" in result.stdout.split("Diagnoses", 1)[1]


def test_report_convert_writes_the_fleet_in_every_format(
    shared_mac_fleet: Path, tmp_path: Path
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from doctor.cli.report import CONVERT_FORMATS

    for fmt in CONVERT_FORMATS:
        out = tmp_path / f"fleet.{fmt}"
        result = kvmdoctor("report", "convert", str(shared_mac_fleet), "--to", fmt, "-o", str(out))
        assert result.exit_code == 0, (fmt, result.stderr)
        text = out.read_text()
        assert f"mac:{MAC}" in text, fmt
        assert "host:kd-host-b/domain:kd-twin" in text, fmt
    cases = ET.parse(tmp_path / "fleet.junit").getroot().iter("testcase")
    failed = [c for c in cases if c.find("failure") is not None]
    assert any(f"mac:{MAC}" in (c.get("name") or "") for c in failed)
    sarif = json.loads((tmp_path / "fleet.sarif").read_text())
    rules = {r["id"] for run in sarif["runs"] for r in run["tool"]["driver"]["rules"]}
    assert {"NET010", "DOM020", "LIB009"} <= rules
    families = list(text_string_to_metric_families((tmp_path / "fleet.prometheus").read_text()))
    subjects = {s.labels.get("subject") for fam in families for s in fam.samples}
    assert f"mac:{MAC}" in subjects and "host:kd-host-a/domain:kd-web" in subjects


def test_report_convert_redact_of_a_fleet_hides_every_host_guest_and_mac(
    shared_mac_fleet: Path, tmp_path: Path
) -> None:
    """The hosts' names are in the fleet's table, its sources and at the head of every
    subject (`host:NAME/domain:GUEST`): redacted in every format, and still two hosts."""
    from doctor.cli.report import CONVERT_FORMATS

    names = ("kd-host-a", "kd-host-b", "kd-web", "kd-twin", MAC)
    plain = shared_mac_fleet.read_text()
    assert all(name in plain for name in names)
    for fmt in CONVERT_FORMATS:
        out = tmp_path / f"redacted.{fmt}"
        command = ("report", "convert", str(shared_mac_fleet), "--to", fmt, "--redact")
        result = kvmdoctor(*command, "-o", str(out))
        assert result.exit_code == 0, (fmt, result.stderr)
        text = out.read_text()
        assert [name for name in names if name in text] == [], fmt
    report = json.loads((tmp_path / "redacted.json").read_text())
    subjects = [f.get("subject") or "" for c in report["checks"] for f in c["findings"]]
    hosts = {s.split("/")[0] for s in subjects if s.startswith("host:")}
    assert len(hosts) == 2 and {h["name"] for h in report["fleet"]["hosts"]} == {
        h[len("host:") :] for h in hosts
    }


# --- what cannot be merged ------------------------------------------------------------------


def one_line_error(result: Any, *needles: str) -> None:
    assert result.exit_code == 2, (result.stdout, result.stderr)
    (line,) = result.stderr.strip().splitlines()
    for needle in needles:
        assert needle in line, line


def test_a_file_that_is_not_a_report_is_refused(
    edit_snapshot: Any, tmp_path: Path, host_snapshot: Path
) -> None:
    a = host_report(edit_snapshot, tmp_path, "kd-host-a")
    manifest = host_snapshot / "manifest.json"  # JSON, but a snapshot's
    result = kvmdoctor("report", "merge", str(a), str(manifest))
    one_line_error(result, str(manifest), "not a kvmdoctor report")


def test_a_report_of_another_format_version_is_refused(edit_snapshot: Any, tmp_path: Path) -> None:
    a = host_report(edit_snapshot, tmp_path, "kd-host-a")
    b = host_report(edit_snapshot, tmp_path, "kd-host-b")
    later = json.loads(b.read_text())
    later["schema_version"] = "2.0"
    b.write_text(json.dumps(later))
    result = kvmdoctor("report", "merge", str(a), str(b))
    one_line_error(result, str(b), "format '2.0'", "merges format 1.0")


def test_a_fleet_report_and_a_single_host_are_refused(edit_snapshot: Any, tmp_path: Path) -> None:
    a = host_report(edit_snapshot, tmp_path, "kd-host-a")
    b = host_report(edit_snapshot, tmp_path, "kd-host-b")
    result, _ = merge(a, b)
    assert result.exit_code == 0
    fleet = tmp_path / "fleet.json"
    one_line_error(kvmdoctor("report", "merge", str(fleet), str(a)), "is a fleet report already")
    one_line_error(kvmdoctor("report", "merge", str(a)), "at least two hosts")


def test_a_host_given_twice_keeps_its_newest_report_and_says_so(
    edit_snapshot: Any, tmp_path: Path
) -> None:
    first = host_report(edit_snapshot, tmp_path, "kd-host-a", guest("kd-web"))
    again = tmp_path / "kd-host-a-again.json"
    newer = json.loads(first.read_text())
    older = json.loads(first.read_text())
    newer["run"]["finished"] = "2026-01-02T00:00:00.000Z"
    older["run"]["finished"] = "2026-01-01T00:00:00.000Z"
    newer["host"]["guests"] = []  # the guest was undefined between the two runs
    again.write_text(json.dumps(newer))
    first.write_text(json.dumps(older))
    b = host_report(edit_snapshot, tmp_path, "kd-host-b", guest("kd-twin"))
    # The newer report comes first on the command line: the time decides, not the order.
    result, fleet = merge(again, first, b)
    assert [h["file"] for h in fleet["fleet"]["hosts"]] == [str(again), str(b)]
    assert f"mac:{MAC}" not in findings(fleet, "NET010")  # the older report's guest is gone
    assert f"left out {first}" in result.stderr
    assert fleet["fleet"]["left_out"] == [result.stderr.strip().removeprefix("kvmdoctor: ")]


def test_redacted_and_plain_reports_are_not_mixed(edit_snapshot: Any, tmp_path: Path) -> None:
    a = host_report(edit_snapshot, tmp_path, "kd-host-a")
    b = host_report(edit_snapshot, tmp_path, "kd-host-b")
    report = json.loads(b.read_text())
    report["run"]["redacted"] = True
    b.write_text(json.dumps(report))
    one_line_error(kvmdoctor("report", "merge", str(a), str(b)), "some reports are redacted")
    report = json.loads(a.read_text())
    report["run"]["redacted"] = True
    a.write_text(json.dumps(report))
    result, fleet = merge(a, b)
    assert result.exit_code == 0 and fleet["run"]["redacted"] is True


def test_the_debian_changelog_head_gives_the_package_version() -> None:
    from doctor.facts.firmware import debian_changelog_version

    head = b"edk2 (2022.11-6+deb12u2) bookworm; urgency=medium\n\n  * Fix overflow condition\n"
    packed = gzip.compress(head + b"  * more\n" * 2000)
    assert debian_changelog_version(packed) == "2022.11-6+deb12u2"
    assert debian_changelog_version(packed[:200]) == "2022.11-6+deb12u2"  # only its start read
    assert debian_changelog_version(b"not gzip") is None
    assert debian_changelog_version(gzip.compress(b"no version here\n")) is None
    assert re.fullmatch(r"\d+\.\d+-\S+", debian_changelog_version(packed) or "")


# --- fixing a fleet: every step names its host ----------------------------------------------


def test_a_fleet_diagnosis_names_the_host_its_fix_runs_on_and_how_to_see_it_again(
    shared_mac_fleet: Path, validator: Draft202012Validator
) -> None:
    fleet = json.loads(shared_mac_fleet.read_text())
    assert_valid(validator, fleet)
    by_subject = {d["subject"]: d for d in fleet["diagnoses"]}
    mac = by_subject[f"mac:{MAC}"]
    # NET010 picked kd-host-b's interface to change: its fix runs there, on kd-twin.
    assert mac["hosts"] == ["kd-host-b"]
    (step,) = mac["fix"]
    assert step["text"].startswith("on host kd-host-b: Give the interface of kd-twin ")
    assert "`virsh edit kd-twin`" in step["text"]
    # The fleet's own check is seen again only by collecting and merging again.
    assert mac["rerun"]["where"] == "on every host"
    assert "kvmdoctor report merge" in mac["rerun"]["command"]
    assert "--select" not in mac["rerun"]["command"]
    drift = by_subject["version:libvirt"]
    assert drift["hosts"] == ["kd-host-b"]  # the odd one out
    assert drift["fix"][0]["text"].startswith("on host kd-host-b: Bring kd-host-b to libvirt 9.0.0")
    # A host's own diagnoses run on that host, and are checked there with `run`.
    own = [d for d in fleet["diagnoses"] if d["subject"].startswith("host:")]
    assert own, "the snapshot hosts have diagnoses of their own"
    for diag in own:
        name = diag["subject"][len("host:") :].split("/", 1)[0]
        assert diag["hosts"] == [name]
        assert all(s["text"].startswith(f"on host {name}: ") for s in diag["fix"])
        assert diag["rerun"] == {
            "where": f"on host {name}",
            "command": f"kvmdoctor run --select {','.join(diag['verify'])}",
        }


def test_a_domain_uuid_on_two_hosts_is_fixed_on_both_hosts(
    edit_snapshot: Any, tmp_path: Path
) -> None:
    a = host_report(edit_snapshot, tmp_path, "kd-host-a", guest("kd-web", uuid=UUID))
    b = host_report(
        edit_snapshot, tmp_path, "kd-host-b", guest("kd-web", uuid=UUID, mac="52:54:00:8e:d6:ef")
    )
    _, fleet = merge(a, b)
    (diag,) = [d for d in fleet["diagnoses"] if d["subject"] == f"uuid:{UUID}"]
    # Which host keeps the domain is for a person to say: the step names both.
    assert diag["hosts"] == ["kd-host-a", "kd-host-b"]
    assert diag["fix"][0]["text"].startswith("on hosts kd-host-a, kd-host-b: Keep domain UUID")


def test_every_view_of_a_fleet_says_where_to_fix_and_to_merge_again(
    shared_mac_fleet: Path, tmp_path: Path
) -> None:
    shown = kvmdoctor("report", "show", str(shared_mac_fleet), "--no-color")
    assert shown.exit_code == 0, shown.stderr
    text = " ".join(shown.stdout.split())  # as read, whatever the wrapping
    assert "fix 1: [disruptive] on host kd-host-b: Give the interface of kd-twin" in text
    assert "then on every host: kvmdoctor run -f json -o HOST.json" in text
    assert "then on host kd-host-a: kvmdoctor run --select " in text
    for fmt, hint in (
        ("markdown", "Then on every host: `kvmdoctor run -f json -o HOST.json"),
        ("html", "Then on every host: <code>kvmdoctor run -f json -o HOST.json"),
        ("junit", "then on every host: kvmdoctor run -f json -o HOST.json"),
    ):
        out = tmp_path / f"fleet.{fmt}"
        result = kvmdoctor("report", "convert", str(shared_mac_fleet), "--to", fmt, "-o", str(out))
        assert result.exit_code == 0, result.stderr
        text = out.read_text()
        assert hint in text, fmt
        assert "on host kd-host-b: Give the interface of kd-twin" in text, fmt
        assert "then: kvmdoctor run --select NET010" not in text.replace("`", ""), fmt


def test_fix_report_on_a_fleet_writes_each_hosts_steps_under_its_name(
    shared_mac_fleet: Path, tmp_path: Path
) -> None:
    import subprocess

    result = kvmdoctor("fix", "--report", str(shared_mac_fleet))
    assert result.exit_code == 0, result.stderr
    script = result.stdout
    assert "for a fleet of 2 hosts" in script.splitlines()[1]
    headers = [line for line in script.splitlines() if line.startswith("# ====")]
    assert [h.split(" on ", 1)[1].strip("= ") for h in headers] == [
        "host kd-host-b",
        "host kd-host-a",
    ]
    # Each host's steps are live only on that host: the one script can go to every host.
    block_b = script.split(headers[0], 1)[1].split(headers[1], 1)[0]
    assert block_b.splitlines()[1] == 'case "$(uname -n)" in kd-host-b)'
    assert "# [disruptive] on host kd-host-b: Give the interface of kd-twin" in block_b
    assert "# then check on every host: kvmdoctor run -f json -o HOST.json" in block_b
    assert block_b.rstrip().endswith(";; esac  # end of the steps on host kd-host-b")
    block_a = script.split(headers[1], 1)[1]
    assert "# then check on host kd-host-a: kvmdoctor run --select " in block_a
    assert "kd-host-b" not in block_a
    checked = subprocess.run(["sh", "-n"], input=script, text=True, capture_output=True)
    assert checked.returncode == 0, checked.stderr


def test_fix_report_on_a_fleet_writes_one_ansible_play_per_host(
    shared_mac_fleet: Path, tmp_path: Path
) -> None:
    import subprocess
    import sys

    out = tmp_path / "fix.yml"
    result = kvmdoctor("fix", "--report", str(shared_mac_fleet), "-f", "ansible", "-o", str(out))
    assert result.exit_code == 0, result.stderr
    plays = load_ansible(out.read_text())
    assert [p["hosts"] for p in plays] == ["kd-host-b", "kd-host-a"]
    tasks_b = [t["name"] for t in plays[0]["tasks"]]
    assert any(
        t.startswith("duplicate-mac: on host kd-host-b: Give the interface of kd-twin")
        for t in tasks_b
    )
    assert not any("kd-host-b" in str(t) for t in plays[1]["tasks"])
    # ansible-playbook reads it so: each play reaches its own host of the inventory only.
    (tmp_path / "inventory.ini").write_text("kd-host-a\nkd-host-b\nkd-host-c\n")
    listed = subprocess.run(
        [
            str(Path(sys.executable).with_name("ansible-playbook")),
            "-i",
            "inventory.ini",
            "--list-hosts",
            str(out),
        ],
        cwd=tmp_path,
        env={
            "PATH": "/usr/bin:/bin",
            "ANSIBLE_HOME": str(tmp_path / ".ansible"),
            "ANSIBLE_LOCAL_TEMP": str(tmp_path / ".ansible" / "tmp"),
            "ANSIBLE_NOCOLOR": "1",
        },
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert listed.returncode == 0, listed.stdout + listed.stderr
    plays_seen = re.findall(r"play #\d+ \(([^)]*)\).*?hosts \(1\):\s+(\S+)", listed.stdout, re.S)
    assert plays_seen == [("kd-host-b", "kd-host-b"), ("kd-host-a", "kd-host-a")], listed.stdout


def test_a_fleet_play_for_a_name_that_is_not_a_host_name_reaches_no_host() -> None:

    from doctor.remedy import PlanItem, ansible_playbook

    item = PlanItem("duplicate-mac", "t", "mac:x", "c", ("NET010",), (), ("all",))
    (play,) = load_ansible(ansible_playbook([item], host="", version="1"))
    assert play["hosts"] == []
    item = PlanItem("duplicate-mac", "t", "mac:x", "c", ("NET010",), (), ("web*",))
    (play,) = load_ansible(ansible_playbook([item], host="", version="1"))
    assert play["hosts"] == []


def test_prometheus_series_of_a_fleet_carry_their_host(
    shared_mac_fleet: Path, tmp_path: Path
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    out = tmp_path / "fleet.prom"
    result = kvmdoctor(
        "report", "convert", str(shared_mac_fleet), "--to", "prometheus", "-o", str(out)
    )
    assert result.exit_code == 0, result.stderr
    families = {f.name: f for f in text_string_to_metric_families(out.read_text())}
    status = families["kvmdoctor_check_status"].samples
    hosts = {(s.labels["subject"], s.labels["host"]) for s in status}
    assert ("host:kd-host-a/domain:kd-web", "kd-host-a") in hosts
    assert ("host:kd-host-b", "kd-host-b") in hosts
    assert (f"mac:{MAC}", "") in hosts  # across hosts: no one host's
    assert all("host" in s.labels for s in status)
    diagnoses = families["kvmdoctor_diagnosis"].samples
    assert all("host" in s.labels for s in diagnoses)
    per_host = {s.labels["host"]: s.value for s in families["kvmdoctor_host_exit_code"].samples}
    fleet = json.loads(shared_mac_fleet.read_text())
    assert per_host == {h["name"]: h["exit_code"] for h in fleet["fleet"]["hosts"]}
    found = {
        (s.labels["host"], s.labels["status"]): s.value
        for s in families["kvmdoctor_host_findings"].samples
    }
    for host in fleet["fleet"]["hosts"]:
        assert found[(host["name"], "pass")] == host["summary"]["pass"]


def test_the_fleet_html_draws_each_hosts_network_and_marks_the_shared_mac_on_both(
    shared_mac_fleet: Path, tmp_path: Path, validator: Draft202012Validator
) -> None:
    fleet = json.loads(shared_mac_fleet.read_text())
    assert_valid(validator, fleet)
    for host in fleet["fleet"]["hosts"]:
        own = json.loads(Path(host["file"]).read_text())["host"]["network"]
        assert own is not None and host["network"] == own  # each host's, as its report drew it
    out = tmp_path / "fleet.html"
    result = kvmdoctor("report", "convert", str(shared_mac_fleet), "--to", "html", "-o", str(out))
    assert result.exit_code == 0, result.stderr
    assert out.read_text().count('<svg class="net" id="network-drawing-') == 2
    # Only the MAC marks the guests: their own problems (no bridge on the snapshot host, no
    # free PCI slot) put aside, so that a marked guest is the shared MAC's doing.
    for check in fleet["checks"]:
        for finding in check["findings"]:
            if "/domain:" in finding["subject"] or "/iface:" in finding["subject"]:
                finding["status"] = "pass"
    from doctor.render import render_as

    text = render_as("html", fleet)
    assert 'id="network-drawing"' not in text  # a fleet has no host of its own
    page = text[text.index('<h2 id="network">') : text.index('<h2 id="findings">')]
    sections = re.findall(r'<h3 id="network-host-(\d)">Host ([^<]*)</h3>', page)
    assert sections == [("1", "kd-host-a"), ("2", "kd-host-b")]
    ids = set(re.findall(r' id="([^"]+)"', text))
    for number, guest_name in enumerate(("kd-web", "kd-twin"), start=1):
        svg = page[page.index(f'id="network-drawing-{number}"') :]
        svg = svg[: svg.index("</svg>")]
        # The guest with the MAC both hosts use is marked, and links to the fleet's finding.
        node = re.search(
            r'<a href="#([^"]+)"><g class="node guest st-fail" id="net-' + str(number)
            + r'-g\d+"><title>domain ' + guest_name + ":",
            svg,
        )  # fmt: skip
        assert node is not None, svg[:2000]
        assert node.group(1) in ids
        anchor = text[text.index(f'id="{node.group(1)}"') :]
        assert f"mac:{MAC}" in anchor[: anchor.index("</p>")]
        assert (
            guest_name in svg and {"kd-web": "kd-twin", "kd-twin": "kd-web"}[guest_name] not in svg
        )


def test_a_hostile_host_name_in_a_fleet_plan_stays_a_quoted_word() -> None:
    """A saved fleet report is a file from anywhere: its host names go into the shell plan's
    `case` pattern quoted, and into no live line otherwise."""
    import subprocess

    from doctor.remedy import PlanItem, shell_script

    name = "a) rm -rf / ;; b"
    item = PlanItem("duplicate-mac", "t", "mac:x", "c", ("NET010",), (), (name, "kd\nx"))
    script = shell_script([item], host="", version="1")
    (case,) = [line for line in script.splitlines() if line.startswith("case ")]
    assert case == "case \"$(uname -n)\" in 'a) rm -rf / ;; b'|'kd x')"
    checked = subprocess.run(["sh", "-n"], input=script, text=True, capture_output=True)
    assert checked.returncode == 0, checked.stderr
    assert all(line.startswith(("#", "case ", ";; esac")) for line in script.split("set -eu")[1]
               .split("}\n", 1)[1].splitlines() if line.strip())  # fmt: skip
