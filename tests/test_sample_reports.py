"""sample_reports/ is what kvmdoctor produces today for the recorded scenarios, in every
format; and each sample is what its format's reader expects."""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from kdtest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import sample_reports  # noqa: E402

SAMPLES = ROOT / "sample_reports"
NAMES = sorted([*sample_reports.SCENARIOS, *sample_reports.PROBES])


@pytest.mark.parametrize("name", NAMES)
def test_sample_reports_are_current(name: str) -> None:
    for file, content in sample_reports.generate(name).items():
        assert (SAMPLES / file).read_text(encoding="utf-8") == content, (
            f"{file} is stale: run make sample-reports"
        )


def test_every_scenario_has_every_format_and_nothing_else_is_there() -> None:
    expected = {"README.md"}
    for name in NAMES:
        expected |= set(sample_reports.generate(name))
        expected.add(f"{name}.json")
    expected |= {f"{p}.txt" for p in sample_reports.PROBES}
    assert {p.name for p in SAMPLES.iterdir()} == expected


def report(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SAMPLES / f"{name}.json").read_text())
    return data


@pytest.mark.parametrize(
    ("name", "code", "status", "subject"),
    [
        ("ip-forward-off", "NET004", "fail", "network:kdnat"),
        ("tls-expired", "TLS003", "fail", "cert:/etc/libvirt/pki/servercert.pem"),
        # A guest without a free slot defines and runs: only a later hot-plug fails (a warn).
        ("pci-slots-full", "DOM001", "warn", "domain:kddb1"),
        ("duplicate-mac", "NET010", "fail", "mac:52:54:00:00:02:01"),
        ("probe-ip-forward-off", "PRB002", "fail", None),
    ],
)
def test_each_scenario_shows_its_problem_in_every_format(
    name: str, code: str, status: str, subject: str
) -> None:
    found = [
        f
        for c in report(name)["checks"]
        if c["code"] == code
        for f in c["findings"]
        if f["status"] == status and (subject is None or f["subject"] == subject)
    ]
    assert found, (name, code)
    sarif = json.loads((SAMPLES / f"{name}.sarif").read_text())
    assert code in {r["ruleId"] for r in sarif["runs"][0]["results"]}
    suite = ET.parse(SAMPLES / f"{name}.junit.xml").getroot()
    # JUnit fails a test case for a failure; a warning passes with its message in system-out.
    cases = [
        c for c in suite.iter("testcase") if code in c.get("name", "") + c.get("classname", "")
    ]
    if status == "fail":
        assert any(c.find("failure") is not None for c in cases), code
    else:
        assert any("warn: " in "".join(c.itertext()) and c.find("failure") is None for c in cases)
    page = (SAMPLES / f"{name}.html").read_text()
    assert f"<code>{code}</code>" in page


def test_the_healthy_scenario_passes_and_is_drawn_with_its_guest_on_its_bridge() -> None:
    data = report("healthy")
    assert data["exit_code"] == 0
    network = data["host"]["network"]
    [guest] = network["guests"]
    [nic] = guest["nics"]
    tap = next(link for link in network["links"] if link["name"] == nic["target"])
    assert tap["master"] == "kdbr0" and tap["port_state"] == "forwarding"
    page = (SAMPLES / "healthy.html").read_text()
    assert 'id="network-drawing"' in page
    assert f"<title>domain {guest['name']}: {nic['mac']}</title>" in page
