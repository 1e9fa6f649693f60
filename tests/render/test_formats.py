"""Every format is a view of the one report, and each is read back by its real consumer: JUnit
by an XML parser as GitLab and Jenkins read it, SARIF by Microsoft's SARIF Multitool and the
SARIF 2.1.0 schema, the Prometheus textfile by prometheus_client's parser, Markdown by a
CommonMark parser."""

from __future__ import annotations

import json
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from doctor.render import render_as
from doctor.render.views import gates

from kdtest import ROOT, kvmdoctor, require

SAMPLES = sorted((ROOT / "sample_reports").glob("*.json"))
MULTITOOL = ROOT / ".sarif-tools" / "node_modules" / ".bin" / "sarif-multitool"
SARIF_SCHEMA = (
    ROOT / ".sarif-tools" / "node_modules" / "@microsoft" / "sarif-multitool-linux"
) / "sarif-2.1.0.json"
# What host text can hold: terminal escapes, markup of every format, a line break.
HOSTILE = (
    '\x1b]0;pwned\x07\x0c\r<script>alert(1)</script> [x](http://evil) @admin #1 | "q" \\ &amp;\n=='
)
BROKEN_CONF = "listen_tls = 0\nunix_sock_group = libvirt\n"


def findings_of(report: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(chk, f) for chk in report["checks"] for f in chk["findings"]]


@pytest.fixture(scope="module")
def gated_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A run with every kind of outcome: a fail on a file with its line (LIB008), a fail with a
    diagnosis and fix (/dev/net/tun missing), a warning gated by --fail-on warn, one ignored
    with a reason from the config, skips."""
    from kdsnap import EditableSnapshot
    from kdtest import HOST_SNAPSHOT

    base = tmp_path_factory.mktemp("formats")
    snap = EditableSnapshot(HOST_SNAPSHOT, base / "snapshot")
    snap.set_file("/etc/libvirt/libvirtd.conf", BROKEN_CONF).missing("stat", path="/dev/net/tun")
    path = snap.save()
    config = base / "kvmdoctor.toml"
    config.write_text(
        '[[ignore]]\ncheck = "KVM008"\nsubject = "device:/dev/vhost-net"\n'
        'reason = "CI runners use user-mode networking"\n'
    )
    result = kvmdoctor(
        "run", "--snapshot", str(path), "--fail-on", "warn", "--config", str(config), "-f", "json"
    )
    assert result.exit_code == 1, result.stderr
    return json.loads(result.stdout)


def reports(gated: dict[str, Any]) -> list[dict[str, Any]]:
    return [gated, *(json.loads(p.read_text()) for p in SAMPLES)]


def hostile(report: dict[str, Any]) -> dict[str, Any]:
    """The report with host text that tries every escape: in the host name, a subject, a
    message, evidence, a diagnosis's cause and fix."""
    data = json.loads(json.dumps(report))
    data["host"]["hostname"] = f"host{HOSTILE}"
    chk, finding = next((c, f) for c, f in findings_of(data) if f["status"] == "fail")
    finding["message"] = f"message {HOSTILE}"
    finding["subject"] = f"{finding['subject']}{HOSTILE}"
    finding["evidence"] = {"line": f"evidence {HOSTILE}"}
    diag = data["diagnoses"][0]
    diag["cause"] = f"cause {HOSTILE}"
    diag["fix"][0]["text"] = f"fix {HOSTILE}"
    for ref in diag["findings"]:
        ref["subject"] = finding["subject"]
        ref["message"] = finding["message"]
    return data


# --- JUnit ------------------------------------------------------------------------------------


def test_junit_has_one_testcase_per_check_and_subject_with_gitlab_counts(
    gated_report: dict[str, Any],
) -> None:
    for report in reports(gated_report):
        root = ET.fromstring(render_as("junit", report))
        assert root.tag == "testsuites"
        cases = []
        for suite in root.findall("testsuite"):
            members = suite.findall("testcase")
            cases += members
            assert int(suite.get("tests", "")) == len(members)
            for kind, tag in (("failures", "failure"), ("errors", "error"), ("skipped", "skipped")):
                assert int(suite.get(kind, "")) == sum(
                    1 for c in members if c.find(tag) is not None
                )
        assert int(root.get("tests", "")) == len(cases) == len(findings_of(report))
        for kind in ("failures", "errors", "skipped"):
            total = sum(int(s.get(kind, "")) for s in root.findall("testsuite"))
            assert int(root.get(kind, "")) == total
        for (chk, finding), case in zip(findings_of(report), cases):
            assert (
                case.get("classname")
                == f"kvmdoctor.{chk['code'].rstrip('0123456789')}.{chk['code']}"
            )
            assert case.get("name") == finding["subject"]
            failed = case.find("failure") is not None or case.find("error") is not None
            assert failed == (gates(report, finding) or finding["status"] == "error")
            skipped = case.find("skipped") is not None
            assert skipped == (finding["status"] == "skip" or bool(finding.get("ignored")))
            out = case.findtext("system-out") or ""
            assert out.startswith(f"{finding['status']}: {finding['message']}")


def test_a_junit_failure_carries_the_message_and_the_fix_of_its_diagnosis(
    gated_report: dict[str, Any],
) -> None:
    root = ET.fromstring(render_as("junit", gated_report))
    (tun,) = [c for c in root.iter("testcase") if c.get("name") == "device:/dev/net/tun"]
    failure = tun.find("failure")
    assert failure is not None
    (diag,) = [d for d in gated_report["diagnoses"] if d["subject"] == "device:/dev/net/tun"]
    assert failure.get("message", "").startswith("/dev/net/tun is missing")
    assert failure.get("type") == "fail"
    assert f"Diagnosis: {diag['title']}" in (failure.text or "")
    assert f"fix 1: [{diag['fix'][0]['safety']}] {diag['fix'][0]['text']}" in (failure.text or "")
    (vhost,) = [c for c in root.iter("testcase") if c.get("name") == "device:/dev/vhost-net"]
    skipped = vhost.find("skipped")
    assert skipped is not None
    assert "CI runners use user-mode networking" in skipped.get("message", "")
    evidence = json.loads((tun.findtext("system-out") or "").split("\n", 1)[1])
    (finding,) = [f for c, f in findings_of(gated_report) if f["subject"] == "device:/dev/net/tun"]
    assert evidence == finding["evidence"]


def test_junit_holds_host_text_as_text(gated_report: dict[str, Any]) -> None:
    text = render_as("junit", hostile(gated_report))
    root = ET.fromstring(text)  # well-formed although the text held \x1b and \x07
    assert "\x1b" not in text and "\x07" not in text
    assert "<script>" not in text
    names = [c.get("name", "") for c in root.iter("testcase")]
    assert any("\\x1b]0;pwned\\x07\\x0c\\x0d<script>alert(1)</script>" in n for n in names)


# --- SARIF ------------------------------------------------------------------------------------


def sarif_of(report: dict[str, Any]) -> dict[str, Any]:
    return json.loads(render_as("sarif", report))


def test_sarif_has_one_rule_per_check_with_its_documentation_as_help(
    gated_report: dict[str, Any],
) -> None:
    from doctor.registry import load_registry

    registry = load_registry()
    sarif = sarif_of(gated_report)
    assert sarif["version"] == "2.1.0"
    (run,) = sarif["runs"]
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == [c["code"] for c in gated_report["checks"]]
    for rule in rules:
        doc = registry.checks[rule["id"]].doc
        for section in ("What it checks", "Why it matters", "How to fix", "References"):
            assert f"{section}: {doc[section]}" in rule["help"]["text"]
    levels = {"fail": "error", "error": "error", "warn": "warning", "info": "note"}
    expected = [
        (c["code"], levels[f["status"]])
        for c, f in findings_of(gated_report)
        if f["status"] in levels
    ]
    assert [(r["ruleId"], r["level"]) for r in run["results"]] == expected
    for result in run["results"]:
        assert rules[result["ruleIndex"]]["id"] == result["ruleId"]


def test_sarif_locates_a_file_finding_at_its_line_and_suppresses_ignores(
    gated_report: dict[str, Any],
) -> None:
    (run,) = sarif_of(gated_report)["runs"]
    (conf,) = [r for r in run["results"] if r["ruleId"] == "LIB008"]
    physical = conf["locations"][0]["physicalLocation"]
    assert physical["artifactLocation"] == {
        "uri": "etc/libvirt/libvirtd.conf",
        "uriBaseId": "HOSTROOT",
    }
    assert physical["region"] == {"startLine": 2}  # where BROKEN_CONF goes wrong
    assert run["originalUriBaseIds"]["HOSTROOT"]["uri"] == "file:///"
    (vhost,) = [r for r in run["results"] if r["properties"]["subject"] == "device:/dev/vhost-net"]
    assert vhost["locations"][0]["physicalLocation"] == {
        "artifactLocation": {"uri": "dev/vhost-net", "uriBaseId": "HOSTROOT"},
        "region": {"startLine": 1},
    }
    assert vhost["locations"][0]["properties"] == {"lineKnown": False}
    assert vhost["suppressions"][0]["justification"].startswith("CI runners use user-mode")


def multitool_findings(paths: list[Path], out: Path, *extra: str) -> list[dict[str, Any]]:
    """What `sarif-multitool validate` says about the files: its own SARIF log's results."""
    require(MULTITOOL.exists(), "the SARIF Multitool (scripts/setup.sh --lab installs it)")
    proc = subprocess.run(
        [str(MULTITOOL), "validate", *map(str, paths), "--output", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = json.loads(out.read_text(encoding="utf-8-sig"))
    return [r for run in log["runs"] for r in run.get("results", [])]


@pytest.mark.integration
def test_sarif_is_valid_for_the_sarif_multitool(
    gated_report: dict[str, Any], tmp_path: Path
) -> None:
    paths = []
    for n, report in enumerate([*reports(gated_report), hostile(gated_report)]):
        path = tmp_path / f"report-{n}.sarif"
        path.write_text(render_as("sarif", report), encoding="utf-8")
        paths.append(path)
    results = multitool_findings(paths, tmp_path / "validation.sarif")
    # No error. It did read every file: each gets its warning that kvmdoctor has no web address
    # (SARIF2005, informationUri). The only other warning it may give is SARIF2017 for a file
    # finding whose evidence names no line (a certificate, a log): no region to give it.
    assert not [r for r in results if r.get("level") == "error"], results
    assert sorted(r["ruleId"] for r in results if r["ruleId"] == "SARIF2005") == [
        "SARIF2005"
    ] * len(paths)
    assert {r["ruleId"] for r in results} <= {"SARIF2005", "SARIF2017"}, results


@pytest.mark.integration
def test_sarif_passes_the_multitools_github_ingestion_rules(
    gated_report: dict[str, Any], tmp_path: Path
) -> None:
    """The Multitool's GitHub rules (GH1001: every location gives an artifact URI, ...) find
    nothing; the same rules do fail a log whose results have no location."""
    paths = []
    for n, report in enumerate([*reports(gated_report), hostile(gated_report)]):
        path = tmp_path / f"report-{n}.sarif"
        path.write_text(render_as("sarif", report), encoding="utf-8")
        paths.append(path)
    results = multitool_findings(paths, tmp_path / "gh.sarif", "--rule-kind", "Gh")
    assert [r for r in results if r["ruleId"].startswith("GH")] == []
    bare = json.loads(paths[0].read_text())
    for result in bare["runs"][0]["results"]:
        del result["locations"]
    paths[0].write_text(json.dumps(bare))
    results = multitool_findings(paths[:1], tmp_path / "gh-bare.sarif", "--rule-kind", "Gh")
    assert any(r["ruleId"].startswith("GH") and r.get("level") == "error" for r in results)


def github_problems(document: dict[str, Any]) -> list[str]:
    """What GitHub code scanning's upload documents (docs.github.com, "SARIF support for code
    scanning") that a schema cannot say: at most 20 runs, 25,000 results and rules a run, 10
    locations a result; every result a ruleId of a rule, message.text, and at least one
    location with physicalLocation.artifactLocation.uri (relative, or file://) and
    region.startLine >= 1; fingerprints so alerts are followed across runs."""
    from urllib.parse import urlsplit

    problems = []
    runs = document["runs"]
    if len(runs) > 20:
        problems.append("more than 20 runs")
    for run in runs:
        rules = run["tool"]["driver"].get("rules", [])
        ids = [r["id"] for r in rules]
        if len(ids) != len(set(ids)) or len(ids) > 25000:
            problems.append("rule ids repeat or are too many")
        if len(run["results"]) > 25000:
            problems.append("more than 25,000 results")
        for n, result in enumerate(run["results"]):
            where = f"result {n}"
            if result.get("ruleId") not in ids:
                problems.append(f"{where}: ruleId {result.get('ruleId')!r} names no rule")
            if not result.get("message", {}).get("text"):
                problems.append(f"{where}: no message.text")
            if not result.get("partialFingerprints"):
                problems.append(f"{where}: no partialFingerprints")
            locations = result.get("locations") or []
            if not 1 <= len(locations) <= 10:
                problems.append(f"{where}: {len(locations)} locations")
            for location in locations:
                physical = location.get("physicalLocation", {})
                uri = physical.get("artifactLocation", {}).get("uri")
                if not uri:
                    problems.append(f"{where}: no artifactLocation.uri")
                    continue
                parts = urlsplit(uri)
                if parts.scheme not in ("", "file") or (not parts.scheme and uri.startswith("/")):
                    problems.append(f"{where}: uri {uri!r} is neither relative nor file://")
                if ".." in uri.split("/") or any(c < " " or c == "\\" for c in uri):
                    problems.append(f"{where}: uri {uri!r} leaves its base or holds controls")
                line = physical.get("region", {}).get("startLine")
                if not isinstance(line, int) or line < 1:
                    problems.append(f"{where}: region.startLine {line!r}")
    return problems


def test_sarif_meets_github_code_scanning_upload_constraints(
    gated_report: dict[str, Any],
) -> None:
    for report in [*reports(gated_report), hostile(gated_report)]:
        document = sarif_of(report)
        assert github_problems(document) == [], report["run"]["argv"]
    bad = sarif_of(gated_report)
    bad["runs"][0]["results"][0]["locations"] = [{"logicalLocations": [{"name": "x"}]}]
    bad["runs"][0]["results"][1]["locations"][0]["physicalLocation"]["region"]["startLine"] = 0
    assert len(github_problems(bad)) == 2  # the check above can fail


def test_sarif_places_every_kind_of_subject_and_a_linted_file_at_its_line(
    gated_report: dict[str, Any],
) -> None:
    data = json.loads(json.dumps(gated_report))
    chk, finding = next((c, f) for c, f in findings_of(data) if f["status"] == "fail")
    subjects = {
        "domain:web1": ("etc/libvirt/qemu/web1.xml", "HOSTROOT", 1),
        "network:default": ("etc/libvirt/qemu/networks/default.xml", "HOSTROOT", 1),
        "iface:vnet0": ("sys/class/net/vnet0", "HOSTROOT", 1),
        "process:libvirtd[812]": ("proc/812", "HOSTROOT", 1),
        "cert:/etc/pki/CA/cacert.pem#2": ("etc/pki/CA/cacert.pem", "HOSTROOT", 1),
        "user:al ice/../x": ("kvmdoctor-subjects/user/al%20ice%2F..%2Fx", None, 1),
        "host": ("kvmdoctor-subjects/host", None, 1),
        "lint:guest.xml": ("deploy/guest%201.xml", None, 7),  # a linted file and its line
    }
    chk["findings"] = [
        {**finding, "subject": s, "evidence": {"file": "deploy/guest 1.xml", "line": 7}}
        if s.startswith("lint:") else {**finding, "subject": s, "evidence": {}}
        for s in subjects
    ]  # fmt: skip
    (run,) = sarif_of(data)["runs"]
    placed = {}
    for result in run["results"]:
        physical = result["locations"][0]["physicalLocation"]
        artifact = physical["artifactLocation"]
        placed[result["properties"]["subject"]] = (
            artifact["uri"], artifact.get("uriBaseId"), physical["region"]["startLine"]
        )  # fmt: skip
    assert {s: placed[s] for s in subjects} == subjects


@pytest.mark.integration
def test_the_sarif_multitool_does_report_an_invalid_file(tmp_path: Path) -> None:
    """The validation above proves something: the same tool fails a broken log."""
    path = tmp_path / "broken.sarif"
    path.write_text(json.dumps({"version": "2.1.0", "runs": [{"results": []}]}))
    results = multitool_findings([path], tmp_path / "validation.sarif")
    assert any(r.get("level") == "error" for r in results), results


def test_sarif_matches_the_sarif_schema(gated_report: dict[str, Any]) -> None:
    import jsonschema

    require(SARIF_SCHEMA.exists(), "the SARIF 2.1.0 schema of the SARIF Multitool")
    schema = json.loads(SARIF_SCHEMA.read_text(encoding="utf-8-sig"))
    validator = jsonschema.Draft202012Validator(schema)
    for report in [*reports(gated_report), hostile(gated_report)]:
        errors = [e.message for e in validator.iter_errors(sarif_of(report))]
        assert not errors, errors[:5]


def strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*strings(k), *strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


def test_sarif_holds_no_control_character(gated_report: dict[str, Any]) -> None:
    texts = strings(sarif_of(hostile(gated_report)))
    assert not [t for t in texts if re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", t)]
    assert any("message \\x1b]0;pwned\\x07\\x0c\\x0d<script>" in t for t in texts)
    assert any("host\\x1b]0;pwned\\x07" in t for t in texts)


# --- Prometheus -------------------------------------------------------------------------------


def families(text: str) -> dict[str, Any]:
    from prometheus_client.parser import text_string_to_metric_families

    return {f.name: f for f in text_string_to_metric_families(text)}


def test_prometheus_textfile_has_a_gauge_per_check_and_subject(
    gated_report: dict[str, Any],
) -> None:
    for report in reports(gated_report):
        metrics = families(render_as("prometheus", report))
        status = metrics["kvmdoctor_check_status"]
        assert status.type == "gauge"
        got = {
            (s.labels["code"], s.labels["subject"]): (s.labels["status"], s.labels["ignored"])
            for s in status.samples
        }
        want = {
            (c["code"], f["subject"]): (f["status"], "true" if f.get("ignored") else "false")
            for c, f in findings_of(report)
        }
        assert got == want
        assert all(s.value == 1 for s in status.samples)
        severity = {
            (s.labels["code"], s.labels["subject"]): s.value
            for s in metrics["kvmdoctor_check_severity"].samples
        }
        from doctor.model import SEVERITY

        assert severity == {k: SEVERITY[v[0]] for k, v in want.items()}
        (duration,) = metrics["kvmdoctor_run_duration_seconds"].samples
        assert duration.value == report["run"]["duration_s"]
        (exit_code,) = metrics["kvmdoctor_exit_code"].samples
        assert exit_code.value == report["exit_code"]
        found = {s.labels["status"]: s.value for s in metrics["kvmdoctor_findings"].samples}
        assert found == {k: v for k, v in report["summary"].items() if k != "checks"}


def test_prometheus_timestamp_is_when_the_run_finished(gated_report: dict[str, Any]) -> None:
    import datetime as dt

    (stamp,) = families(render_as("prometheus", gated_report))[
        "kvmdoctor_run_timestamp_seconds"
    ].samples
    finished = dt.datetime.strptime(gated_report["run"]["finished"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert stamp.value == pytest.approx(finished.replace(tzinfo=dt.timezone.utc).timestamp())


def test_prometheus_labels_hold_host_text_on_one_line(gated_report: dict[str, Any]) -> None:
    text = render_as("prometheus", hostile(gated_report))
    assert "\x1b" not in text
    subjects = {s.labels["subject"] for s in families(text)["kvmdoctor_check_status"].samples}
    assert any(
        s.endswith(
            '\\x1b]0;pwned\\x07  <script>alert(1)</script> [x](http://evil) @admin #1 | "q" \\ &amp; =='
        )
        for s in subjects
    ), subjects


# --- Markdown ---------------------------------------------------------------------------------


def html_of_markdown(text: str) -> str:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(text)


def test_markdown_gives_the_summary_and_every_diagnosis_with_its_fix(
    gated_report: dict[str, Any],
) -> None:
    import html

    page = html_of_markdown(render_as("markdown", gated_report))
    assert "<table>" in page
    counts = gated_report["summary"]
    assert f'<td style="text-align:right">{counts["fail"]}</td>' in page
    for diag in gated_report["diagnoses"]:
        assert html.escape(diag["title"], quote=False) in page
        for step in diag["fix"]:
            assert html.escape(step["text"], quote=False) in page
    assert "CI runners use user-mode networking" in page


def test_markdown_shows_host_text_as_text(gated_report: dict[str, Any]) -> None:
    text = render_as("markdown", hostile(gated_report))
    assert "\x1b" not in text and "\x07" not in text
    page = html_of_markdown(text)
    assert "<script>" not in page
    assert '<a href="http://evil"' not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; [x](http://evil) @admin #1 |" in page
    assert "<h1>" not in page and "<h2>==" not in page


# --- HTML -------------------------------------------------------------------------------------


class Page:
    """What an HTML parser makes of a page: its elements with their attributes, its text."""

    def __init__(self, text: str) -> None:
        from html.parser import HTMLParser

        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.pre: list[str] = []
        page = self

        class Parser(HTMLParser):
            in_pre = False

            def handle_starttag(self, tag: str, attrs: list[tuple[str, Any]]) -> None:
                page.tags.append((tag, {k: v or "" for k, v in attrs}))
                self.in_pre = self.in_pre or tag == "pre"

            def handle_endtag(self, tag: str) -> None:
                self.in_pre = self.in_pre and tag != "pre"

            def handle_data(self, data: str) -> None:
                page.text.append(data)
                if self.in_pre:
                    page.pre.append(data)

        parser = Parser(convert_charrefs=True)
        parser.feed(text)
        parser.close()

    def all_text(self) -> str:
        return "".join(self.text)


def test_html_is_one_page_that_needs_nothing_from_elsewhere(gated_report: dict[str, Any]) -> None:
    for report in reports(gated_report):
        text = render_as("html", report)
        page = Page(text)
        tags = {t for t, _ in page.tags}
        assert not tags & {"script", "link", "img", "iframe", "object", "embed", "base"}
        for tag, attrs in page.tags:
            assert "src" not in attrs and not any(k.startswith("on") for k in attrs), (tag, attrs)
            if "href" in attrs:
                assert tag == "a" and attrs["href"].startswith(("https://", "#")), attrs
        # every link within the page leads somewhere
        ids = {a["id"] for _, a in page.tags if "id" in a}
        inner = {a["href"][1:] for t, a in page.tags if a.get("href", "").startswith("#")}
        assert inner and inner <= ids, inner - ids
        assert "url(" not in text and "@import" not in text
        assert text.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in text


def test_html_shows_the_summary_diagnoses_fixes_and_evidence(gated_report: dict[str, Any]) -> None:
    page = Page(render_as("html", gated_report))
    words = page.all_text()
    for diag in gated_report["diagnoses"]:
        assert diag["title"] in words and diag["cause"] in words
        for step in diag["fix"]:
            assert step["text"] in words
    pre = "".join(page.pre)
    for _, finding in findings_of(gated_report):
        if finding["status"] in ("fail", "warn", "error") and not finding.get("ignored"):
            assert json.dumps(finding["evidence"], indent=2, ensure_ascii=False) in pre
    assert "CI runners use user-mode networking" in words


def test_html_shows_host_text_as_text(gated_report: dict[str, Any]) -> None:
    text = render_as("html", hostile(gated_report))
    assert "\x1b" not in text and "\x07" not in text
    page = Page(text)
    assert "script" not in {t for t, _ in page.tags}
    assert not [a for t, a in page.tags if a.get("href", "").startswith("http://evil")]
    assert "host\\x1b]0;pwned\\x07\\x0c\\x0d<script>alert(1)</script>" in page.all_text()


CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--enable-logging=stderr",
    "--v=0",
)


def chromium_dom(page: Path, tmp_path: Path) -> tuple[str, list[str]]:
    """The DOM headless Chromium builds from the page, and what the page wrote to its console
    (script errors, blocked loads, Content-Security-Policy violations)."""
    import shutil
    import tempfile

    binary = shutil.which("chromium")
    require(binary is not None, "chromium (Debian's package: scripts/setup.sh --lab)")
    assert binary is not None
    with tempfile.TemporaryDirectory(dir=tmp_path) as profile:
        proc = subprocess.run(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.integration
def test_html_opens_in_chromium_with_no_console_message(
    gated_report: dict[str, Any], tmp_path: Path
) -> None:
    for n, report in enumerate([gated_report, hostile(gated_report)]):
        page = tmp_path / f"report-{n}.html"
        page.write_text(render_as("html", report), encoding="utf-8")
        dom, console = chromium_dom(page, tmp_path)
        assert console == [], console
        parsed = Page(dom)
        assert "script" not in {t for t, _ in parsed.tags}
        ids = {a["id"] for _, a in parsed.tags if "id" in a}
        inner = {a["href"][1:] for _, a in parsed.tags if a.get("href", "").startswith("#")}
        assert inner and inner <= ids
        words = parsed.all_text()
        for diag in report["diagnoses"]:
            assert diag["title"] in words
            assert diag["fix"][0]["text"].split(HOSTILE)[0] in words
    assert "<script>alert(1)</script>" in words  # the hostile page's text, shown as text


@pytest.mark.integration
def test_chromium_does_report_what_a_bad_page_does(tmp_path: Path) -> None:
    """The check above proves something: a page that loads from elsewhere and runs a script
    under kvmdoctor's policy gets console messages."""
    from doctor.render.html import CSP

    page = tmp_path / "bad.html"
    page.write_text(
        f'<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '</head><body><img src="https://example.invalid/x.png"><script>1</script></body></html>'
    )
    _, console = chromium_dom(page, tmp_path)
    assert len(console) == 2, console


# --- one report, every format: the command line ------------------------------------------------


@pytest.mark.parametrize(
    "fmt", ["junit", "sarif", "prometheus", "markdown", "html", "json", "text"]
)
def test_run_format_and_report_convert_give_the_same_document(
    fmt: str, host_snapshot: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved = tmp_path / "report.json"
    result = kvmdoctor("run", "--snapshot", str(host_snapshot), "-f", "json", "-o", str(saved))
    assert result.exit_code == 0, result.stderr
    report = json.loads(saved.read_text())
    converted = kvmdoctor("report", "convert", str(saved), "--to", fmt)
    assert converted.exit_code == 0, converted.stderr
    assert converted.stdout == render_as(fmt, report)
    # A live run that produced this very report writes the very same document.
    from doctor.cli import run as run_cmd

    monkeypatch.setattr(run_cmd, "execute", lambda *a, **kw: report)
    live = kvmdoctor(
        "run", "--snapshot", str(host_snapshot), "-f", fmt, "-o", str(tmp_path / "live")
    )
    assert live.exit_code == 0, live.stderr
    assert live.stdout == ""
    assert (tmp_path / "live").read_text() == converted.stdout


def test_report_convert_writes_a_file_with_o(host_snapshot: Path, tmp_path: Path) -> None:
    saved = tmp_path / "report.json"
    kvmdoctor("run", "--snapshot", str(host_snapshot), "-f", "json", "-o", str(saved))
    result = kvmdoctor(
        "report", "convert", str(saved), "--to", "junit", "-o", str(tmp_path / "j.xml")
    )
    assert result.exit_code == 0 and result.stdout == ""
    assert ET.parse(tmp_path / "j.xml").getroot().tag == "testsuites"


def test_report_show_prints_a_saved_report_as_run_printed_it(
    host_snapshot: Path, tmp_path: Path
) -> None:
    saved = tmp_path / "report.json"
    kvmdoctor("run", "--snapshot", str(host_snapshot), "-f", "json", "-o", str(saved))
    report = json.loads(saved.read_text())
    for flags in ([], ["-v"], ["-q"]):
        shown = kvmdoctor("report", "show", str(saved), *flags)
        assert shown.exit_code == 0, shown.stderr
        assert shown.stdout == render_as("text", report, verbose="-v" in flags, quiet="-q" in flags)
    text = kvmdoctor("report", "show", str(saved)).stdout
    assert "Diagnoses" in text and "vhost-net-unavailable" in text
    assert "\x1b[" not in text  # no colour in a pipe


# The runs' samples (scripts/sample_reports.py): their .txt is `run`'s text view. The probe's
# samples keep the probe's own view (the row of hops), drawn from its observations, which
# `report show` does not have: it shows a probe report as any report.
RUN_SAMPLES = [p for p in SAMPLES if not p.name.startswith("probe-")]


@pytest.mark.parametrize("path", RUN_SAMPLES, ids=lambda p: p.name)
def test_report_show_of_a_sample_report_is_its_text(path: Path) -> None:
    shown = kvmdoctor("report", "show", str(path))
    assert shown.exit_code == 0, shown.stderr
    assert shown.stdout == path.with_suffix(".txt").read_text()


@pytest.mark.parametrize("path", [p for p in SAMPLES if p not in RUN_SAMPLES], ids=lambda p: p.name)
def test_report_show_of_a_probe_report_shows_its_prb_findings(path: Path) -> None:
    shown = kvmdoctor("report", "show", str(path), "-v")
    assert shown.exit_code == 0, shown.stderr
    assert "PRB002" in shown.stdout


def test_bad_input_to_report_is_one_line_and_exit_2(tmp_path: Path) -> None:
    not_json = tmp_path / "notes.txt"
    not_json.write_text("hello\n")
    not_report = tmp_path / "other.json"
    not_report.write_text('{"diagnoses": [], "checks": [{"code": 1}], "summary": {}, "run": {}}')
    good = ROOT / "sample_reports" / "lab-host.json"
    cases = [
        (["report", "show", str(not_json)], "is not a JSON report"),
        (
            ["report", "convert", str(not_report), "--to", "junit"],
            "not a kvmdoctor report: (top level): 'schema_version'",
        ),
        (["report", "convert", str(tmp_path / "none.json"), "--to", "sarif"], "cannot read"),
        (["report", "convert", str(good), "--to", "pdf"], "--to must be one of junit"),
        (["report", "convert", str(good)], "Missing option '--to'"),
        (["run", "--format", "pdf"], "--format must be one of text, json, junit, sarif"),
    ]
    for args, needle in cases:
        result = kvmdoctor(*args)
        assert result.exit_code == 2, (args, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (args, result.stderr)


# --- HTML: the drawings of the network ---------------------------------------------------------


def classes_of(page: Page, svg_id: str) -> list[str]:
    """The classes of the nodes drawn in the page's SVG `svg_id`, in order."""
    inside, found = False, []
    for tag, attrs in page.tags:
        if tag == "svg":
            inside = attrs.get("id") == svg_id
        elif inside and tag == "g":
            found.append(attrs.get("class", ""))
    return found


def test_html_draws_guests_taps_and_bridges_with_hostile_names_as_text() -> None:
    data = json.loads((ROOT / "sample_reports" / "duplicate-mac.json").read_text())
    network = data["host"]["network"]
    evil = "<script>alert(1)</script>\x1b[2J"
    network["guests"][0]["name"] = f"kd{evil}"
    network["links"].append(
        {"name": f"br{evil}", "kind": "bridge", "master": None, "lower": None,
         "operstate": "up", "mac": None, "port_state": None}
    )  # fmt: skip
    text = render_as("html", data)
    page = Page(text)
    nodes = classes_of(page, "network-drawing")
    assert sum("guest" in c.split() for c in nodes) == 2
    assert sum("bridge" in c.split() for c in nodes) == 2  # kdbr0 and the hostile one
    assert "script" not in {t for t, _ in page.tags} and "\x1b" not in text
    assert "kd<script>alert(1)</script>\\x1b[2J" in page.all_text()
    # each guest is joined to its tap: one path per NIC, one per port to its bridge
    svg = text[text.index('id="network-drawing"') :]
    assert svg[: svg.index("</svg>")].count("<path ") == 4


def test_html_links_a_drawn_node_to_its_finding() -> None:
    data = json.loads((ROOT / "sample_reports" / "probe-ip-forward-off.json").read_text())
    page = Page(render_as("html", data))
    ids = {a["id"] for _, a in page.tags if "id" in a}
    assert "probe-stop" in ids and "probe-drawing" in ids
    links = [a["href"][1:] for t, a in page.tags if t == "a" and a.get("href", "").startswith("#")]
    assert any(link.startswith("finding-") for link in links)
    assert set(links) <= ids


@pytest.mark.integration
@pytest.mark.parametrize(
    ("name", "svg_id", "kinds"),
    [
        ("healthy", "network-drawing", {"guest", "bridge", "link"}),
        ("duplicate-mac", "network-drawing", {"guest", "bridge", "link"}),
        ("probe-ip-forward-off", "probe-drawing", {"guest", "hop", "seen", "missing", "stop"}),
    ],
)
def test_html_drawing_opens_in_chromium_with_its_nodes_and_working_links(
    name: str, svg_id: str, kinds: set[str], tmp_path: Path
) -> None:
    page_file = tmp_path / f"{name}.html"
    page_file.write_text((ROOT / "sample_reports" / f"{name}.html").read_text(), encoding="utf-8")
    dom, console = chromium_dom(page_file, tmp_path)
    assert console == [], console
    parsed = Page(dom)
    drawn = {word for c in classes_of(parsed, svg_id) for word in c.split()}
    assert kinds <= drawn, drawn
    ids = {a["id"] for _, a in parsed.tags if "id" in a}
    inner = {a["href"][1:] for _, a in parsed.tags if a.get("href", "").startswith("#")}
    assert "network" in inner and inner <= ids, inner - ids


def test_report_times_are_read_as_strptime_read_them() -> None:
    """views.epoch reads the fields by position; the reference is strptime's reading."""
    import calendar
    import time

    from doctor.render.views import epoch

    def reference(stamp: str) -> Any:
        whole, _, frac = stamp.rstrip("Z").partition(".")
        try:
            seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
        except ValueError:
            return None
        return seconds + (float(f"0.{frac}") if frac.isdigit() else 0.0)

    stamps = ["2026-11-26T08:00:00.123Z", "2026-11-26T08:00:00Z", "2024-02-29T23:59:59.5Z"]
    stamps += ["2026-02-29T08:00:00Z", "2026-13-01T00:00:00Z", "2026-11-26 08:00:00Z"]
    stamps += ["2026-11-26T24:00:00Z", "2026-11-26T08:00Z", "2026-11-26T08:00:00.x1Z", "soon"]
    for stamp in stamps:
        assert epoch(stamp) == reference(stamp), stamp
    assert epoch("") is None and epoch(None) is None
    assert epoch("2026-11-26T08:00:00.5Z") == 1795680000.5
