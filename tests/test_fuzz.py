"""Fuzzing `kvmdoctor run` with mutated manifests, archives, domain XML, libvirt configuration
files and kvmdoctor.toml (tests/kdfuzz.py, a seeded generator: the same seed gives the same
inputs, so a failure can be replayed). For a bounded time, in a process of its own with its
memory capped: every run ends with exit 0, 1 or 2, never an internal error or a traceback,
and nothing is written outside the fuzz directory."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

from kdtest import ROOT

SEED = 20261204
MEMORY_CAP = 2 * 1024**3  # address space of the fuzzing process


def git_status() -> str:
    done = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    return done.stdout if done.returncode == 0 else ""


def test_mutated_inputs_end_in_0_1_or_2_without_a_traceback(tmp_path: Path) -> None:
    work = tmp_path / "fuzz"
    (work / "tmp").mkdir(parents=True)
    (work / "home").mkdir()
    before = git_status()

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))

    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "kdfuzz.py"), str(SEED), "200", "120", str(work)],
        cwd=work,
        env={**os.environ, "TMPDIR": str(work / "tmp"), "HOME": str(work / "home")},
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=cap,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(results) >= 50, "the fuzz run did too few iterations to mean anything"
    assert {r["kind"] for r in results} == {"manifest", "archive", "domain-xml", "conf", "config"}
    bad = [r for r in results if r["exit"] not in (0, 1, 2) or r["internal"] or r["traceback"]]
    assert not bad, json.dumps(bad, indent=1)
    # refusals happened: the mutations reached the parsers rather than passing unread
    assert any(r["exit"] == 2 for r in results)
    # nothing written outside the fuzz directory: kvmdoctor's temporary files were removed,
    # and the working tree is as it was
    assert list((work / "tmp").iterdir()) == []
    assert git_status() == before
