"""libvirt's own test suite as the oracle of the definition-only checks.

tests/fixtures/libvirt-suite/ holds the inputs of libvirt 9.0.0's qemuxml2argvtest in the
areas kvmdoctor's checks cover, each with libvirt's verdict (manifest.json, written by
scripts/libvirt_corpus.py; docs/lint-oracle.md). Over that corpus (the manifest's
`entries`): every rejection is a `fail` of the check that names libvirt's reason, so is every
input libvirt defines and QEMU refuses to start, every accepted input has no `fail`, and the
whole agrees with libvirt on at least 95% of the inputs. The rejections outside the checks'
areas (`out_of_area`) are linted and counted apart.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest

from kdtest import kvmdoctor

CORPUS = Path(__file__).resolve().parent / "fixtures" / "libvirt-suite"
MANIFEST = json.loads((CORPUS / "manifest.json").read_text())
ENTRIES = MANIFEST["entries"]  # the corpus: inputs in the areas the checks cover
OUT_OF_AREA = MANIFEST["out_of_area"]  # rejections for rules outside them, kept apart
ACCEPTED = [e for e in ENTRIES if e["verdict"] == "accepted"]
# libvirt refuses them, or defines them and QEMU refuses to start them: a `fail` is due
REFUSED = [e for e in ENTRIES if e["verdict"] != "accepted"]
AGREEMENT = 0.95


def _lint_one(file: str) -> list[tuple[str, str, str, Any]]:
    """`kvmdoctor lint --format json FILE`: (code, status, message, location) of each finding.
    Each input is linted on its own, as libvirt's suite judges it (most are named
    QEMUGuest1 and use the same image paths; linted together they would be one host's)."""
    done = kvmdoctor("lint", "--format", "json", str(CORPUS / file))
    assert done.exit_code in (0, 1), (file, done.stdout, done.stderr)
    out = []
    for check in json.loads(done.stdout)["checks"]:
        for finding in check["findings"]:
            location = finding.get("location") or {}
            if "file" not in location:
                continue  # about no file (NET010 with no network among the files)
            assert location["file"] == str(CORPUS / file), finding
            out.append((check["code"], finding["status"], finding["message"], location))
    return out


@lru_cache(maxsize=1)
def _by_file() -> dict[str, list[tuple[str, str, str, Any]]]:
    """The findings of every corpus file, by its path in the manifest."""
    return {entry["file"]: _lint_one(entry["file"]) for entry in [*ENTRIES, *OUT_OF_AREA]}


def lint(file: str) -> list[tuple[str, str, str, Any]]:
    return _by_file().get(file, [])


def _fails(file: str) -> dict[str, str]:
    return {code: msg for code, status, msg, _ in lint(file) if status == "fail"}


def _agrees(entry: dict[str, Any]) -> bool:
    """Accepted: no `fail`. Refused (by libvirt, or by QEMU at start): a `fail` of the
    expected check. Out of area: a `fail` of any check (rarely: those rules are not
    kvmdoctor's)."""
    fails = _fails(entry["file"])
    if entry["verdict"] == "accepted":
        return not fails
    if "expected_code" in entry:
        return entry["expected_code"] in fails
    return bool(fails)


def _ids(entries: list[dict[str, Any]]) -> Iterator[str]:
    return (Path(e["file"]).stem for e in entries)


def test_lint_judges_every_file_of_the_corpus() -> None:
    for file, findings in _by_file().items():
        assert {code for code, *_ in findings} >= {"DOM009", "DOM019"}, file


def test_the_corpus_holds_what_the_oracle_needs() -> None:
    rejected = [e for e in ENTRIES if e["verdict"] == "rejected"]
    assert len(ACCEPTED) >= 100 and len(rejected) >= 50, (len(ACCEPTED), len(rejected))
    for entry in ENTRIES:
        assert (CORPUS / entry["file"]).is_file(), entry["file"]
        assert entry["verdict"] in ("accepted", "accepted-refused-at-start", "rejected")
        if entry["verdict"] == "rejected":
            assert entry["error"] and entry["expected_code"], entry["file"]
        if entry["verdict"] == "accepted-refused-at-start":
            assert entry["start_error"] and entry["expected_code"], entry["file"]
    for entry in OUT_OF_AREA:
        assert (CORPUS / entry["file"]).is_file(), entry["file"]
        assert entry["verdict"] == "rejected" and entry["error"] and entry["reason"], entry


@pytest.mark.parametrize("entry", REFUSED, ids=_ids(REFUSED))
def test_every_refused_input_fails_the_check_that_names_the_reason(entry: dict[str, Any]) -> None:
    """libvirt's rejections, and the inputs QEMU refuses to start (DOM005: one image
    opened writable by two disks, QEMU's image lock)."""
    fails = _fails(entry["file"])
    assert entry["expected_code"] in fails, (entry.get("error", entry.get("start_error")), fails)
    # the finding points at an element of the file, on the line that element starts
    (location,) = [
        loc
        for code, status, _, loc in lint(entry["file"])
        if code == entry["expected_code"] and status == "fail"
    ]
    assert location["line"] >= 1 and location["element"].startswith("/domain")
    text = (CORPUS / entry["file"]).read_text().splitlines()[location["line"] - 1]
    tag = location["element"].rsplit("/", 1)[-1].split("[")[0]
    assert f"<{tag}" in text, (location, text)


@pytest.mark.parametrize("entry", ACCEPTED, ids=_ids(ACCEPTED))
def test_no_input_libvirt_and_qemu_accept_fails(entry: dict[str, Any]) -> None:
    assert not _fails(entry["file"])


def test_lint_agrees_with_libvirt_on_at_least_95_percent_of_the_corpus(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The agreement over the corpus (every input in the checks' areas); the rejections
    outside them are counted and printed beside it, and so is the whole directory."""
    disagreements = [e for e in ENTRIES if not _agrees(e)]
    agreed = len(ENTRIES) - len(disagreements)
    flagged = [e for e in OUT_OF_AREA if _agrees(e)]
    whole = len(ENTRIES) + len(OUT_OF_AREA)
    with capsys.disabled():
        print(
            f"\nlint agrees with libvirt 9.0 on {agreed}/{len(ENTRIES)} inputs of the corpus "
            f"({agreed / len(ENTRIES):.1%}); out of area: {len(flagged)}/{len(OUT_OF_AREA)} "
            f"rejections get a fail; whole directory (corpus and out of area) "
            f"{agreed + len(flagged)}/{whole} ({(agreed + len(flagged)) / whole:.1%})"
        )
        for entry in disagreements:
            fails = ", ".join(sorted(_fails(entry["file"]))) or "no fail"
            print(f"  {entry['verdict']:8} {entry['file']}: {fails}")
    assert agreed / len(ENTRIES) >= AGREEMENT
    assert not [e for e in disagreements if e["verdict"] == "accepted"]
