"""`kvmdoctor probe --format` gives every report format (a probe report is a report), each read
back by its consumer; the HTML draws the probe's path and marks where it stopped."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from typing import Any

import pytest

from kdtest import ROOT, require
from probelab import BRIDGE, UPLINK, ProbeLab

pytestmark = pytest.mark.integration


def probe(lab: ProbeLab, fmt: str) -> str:
    done = subprocess.run(
        ["ip", "netns", "exec", lab.host.name, sys.executable, "-m", "doctor", "probe",
         *lab.probe_args("--static", "--format", fmt)],
        capture_output=True, text=True, cwd=ROOT, timeout=90, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    return done.stdout


def tags(page: str) -> list[tuple[str, dict[str, str]]]:
    found: list[tuple[str, dict[str, str]]] = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, Any]]) -> None:
            found.append((tag, {k: v or "" for k, v in attrs}))

    Parser().feed(page)
    return found


def test_probe_gives_every_format_and_the_html_marks_where_the_path_stops() -> None:
    require(os.geteuid() == 0, "root (namespaces, nft)")
    with ProbeLab(tag="f") as lab:
        lab.host.sysctl("net.ipv4.ip_forward", "0")
        report = json.loads(probe(lab, "json"))
        [fail] = [
            f for c in report["checks"] if c["code"] == "PRB001" for f in c["findings"]
            if f["status"] == "fail"
        ]  # fmt: skip
        assert fail["evidence"]["cause"] == "ip-forward-off"

        sarif = json.loads(probe(lab, "sarif"))
        [result] = sarif["runs"][0]["results"]
        assert result["ruleId"] == "PRB001" and result["level"] == "error"
        assert "ip_forward" in result["message"]["text"]

        suite = ET.fromstring(probe(lab, "junit"))
        failed = [c for c in suite.iter("testcase") if c.find("failure") is not None]
        assert [c.get("classname", "") + c.get("name", "") for c in failed]
        assert any("PRB001" in (c.get("classname", "") + c.get("name", "")) for c in failed)

        from prometheus_client.parser import text_string_to_metric_families

        assert list(text_string_to_metric_families(probe(lab, "prometheus")))
        assert "EHOSTUNREACH" in probe(lab, "markdown")

        page = probe(lab, "html")
        parsed = tags(page)
        ids = {a["id"] for _, a in parsed if "id" in a}
        assert {"probe-drawing", "probe-stop"} <= ids
        svg = page[page.index('id="probe-drawing"') :]
        svg = svg[: svg.index("</svg>")]

        def x_of(name: str) -> float:
            node = svg[svg.index(f"<title>{name}: ") :]
            return float(re.search(r'<rect x="([0-9.]+)"', node).group(1))  # type: ignore[union-attr]

        stop = svg[svg.index('id="probe-stop"') :]
        cross = float(re.search(r'<line x1="([0-9.]+)"', stop).group(1))  # type: ignore[union-attr]
        # the stop is drawn between the bridge (the last hop the request reaches) and the uplink
        assert x_of(BRIDGE) < cross < x_of(UPLINK)
        inner = {a["href"][1:] for t, a in parsed if a.get("href", "").startswith("#")}
        assert inner <= ids, inner - ids
