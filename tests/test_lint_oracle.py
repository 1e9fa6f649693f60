"""libvirt's own test suite as the oracle of the definition-only checks.

tests/fixtures/libvirt-suite/ holds the inputs of libvirt 9.0.0's qemuxml2argvtest in the
areas kvmdoctor's checks cover, each with libvirt's verdict (manifest.json, written by
scripts/libvirt_corpus.py; docs/lint-oracle.md). Over that corpus: every rejection in scope
is a `fail` of the check that names libvirt's reason, every accepted input has no `fail`, and
the whole agrees with libvirt on at least 95% of the inputs.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest

from doctor.facts.domains import Domains, parse_domain
from doctor.registry import load_registry

CORPUS = Path(__file__).resolve().parent / "fixtures" / "libvirt-suite"
MANIFEST = json.loads((CORPUS / "manifest.json").read_text())
ENTRIES = MANIFEST["entries"]
IN_SCOPE = [e for e in ENTRIES if e["in_scope"]]
AGREEMENT = 0.95


@lru_cache(maxsize=1)
def _definition_checks() -> list[Any]:
    """The checks that need nothing but the domain definitions."""
    return [c for c in load_registry() if c.facts == ("domains",)]


@lru_cache(maxsize=None)
def lint(file: str) -> tuple[tuple[str, str, str], ...]:
    """(code, status, message) of every finding on one corpus file."""
    xml = (CORPUS / file).read_text()
    try:
        dom = parse_domain(xml, active=False, persistent=True, origin=file)
    except (ET.ParseError, ValueError) as exc:
        return (("XML", "fail", str(exc)),)
    domains = Domains((dom,), "file")
    out = []
    for spec in _definition_checks():
        for finding in spec.func(domains):
            out.append((spec.code, finding.status, finding.message))
    return tuple(out)


def _fails(file: str) -> dict[str, str]:
    return {code: msg for code, status, msg in lint(file) if status == "fail"}


def _agrees(entry: dict[str, Any]) -> bool:
    """Accepted: no `fail`. Rejected in scope: a `fail` of the expected check. Rejected out
    of scope: a `fail` of any check (rarely: those rules are not kvmdoctor's)."""
    fails = _fails(entry["file"])
    if entry["verdict"] == "accepted":
        return not fails
    if entry["in_scope"]:
        return entry["expected_code"] in fails
    return bool(fails)


def _ids(entries: list[dict[str, Any]]) -> Iterator[str]:
    return (Path(e["file"]).stem for e in entries)


def test_the_corpus_holds_what_the_oracle_needs() -> None:
    accepted = [e for e in ENTRIES if e["verdict"] == "accepted"]
    rejected = [e for e in ENTRIES if e["verdict"] == "rejected"]
    assert len(accepted) >= 100 and len(rejected) >= 50, (len(accepted), len(rejected))
    for entry in ENTRIES:
        assert (CORPUS / entry["file"]).is_file(), entry["file"]
        if entry["verdict"] == "rejected":
            assert entry["error"], entry["file"]
            assert entry.get("expected_code") or entry.get("reason"), entry["file"]


@pytest.mark.parametrize(
    "entry",
    [e for e in IN_SCOPE if e["verdict"] == "rejected"],
    ids=_ids([e for e in IN_SCOPE if e["verdict"] == "rejected"]),
)
def test_every_rejection_in_scope_fails_the_check_that_names_it(entry: dict[str, Any]) -> None:
    fails = _fails(entry["file"])
    assert entry["expected_code"] in fails, (entry["error"], fails)


@pytest.mark.parametrize(
    "entry",
    [e for e in ENTRIES if e["verdict"] == "accepted"],
    ids=_ids([e for e in ENTRIES if e["verdict"] == "accepted"]),
)
def test_no_input_libvirt_accepts_fails(entry: dict[str, Any]) -> None:
    assert not _fails(entry["file"])


def test_lint_agrees_with_libvirt_on_at_least_95_percent_of_the_inputs_in_scope(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The agreement over the inputs in scope (accepted ones, and rejections for a rule the
    checks cover); the out-of-scope rejections are counted and printed beside it."""
    disagreements = [e for e in IN_SCOPE if not _agrees(e)]
    agreed = len(IN_SCOPE) - len(disagreements)
    out = [e for e in ENTRIES if not e["in_scope"]]
    flagged = [e for e in out if _agrees(e)]
    with capsys.disabled():
        print(
            f"\nlint agrees with libvirt 9.0 on {agreed}/{len(IN_SCOPE)} inputs in scope "
            f"({agreed / len(IN_SCOPE):.1%}); {len(flagged)}/{len(out)} out-of-scope "
            f"rejections get a fail; whole corpus {agreed + len(flagged)}/{len(ENTRIES)}"
        )
        for entry in disagreements:
            fails = ", ".join(sorted(_fails(entry["file"]))) or "no fail"
            print(f"  {entry['verdict']:8} {entry['file']}: {fails}")
    assert agreed / len(IN_SCOPE) >= AGREEMENT
