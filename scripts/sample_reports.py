"""Regenerate sample_reports/ from the recorded snapshots in tests/fixtures/snapshots.

    .venv/bin/python scripts/sample_reports.py [OUTDIR]

Each scenario is a real recording replayed; times and durations are zeroed so that the files
change only when kvmdoctor's findings or report format change (tests/test_sample_reports.py
fails when they are stale).
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = {
    # name: (snapshot, what it shows)
    "lab-host": (
        "tests/fixtures/snapshots/host-kvm-pvm",
        "the lab machine: KVM usable without a vmx flag, /dev/vhost-net missing",
    ),
    "libvirtd-stopped": (
        "tests/fixtures/snapshots/libvirtd-stopped",
        "the lab machine seen with libvirtd and virtlogd not running",
    ),
    "libvirtd-killed": (
        "tests/fixtures/snapshots/libvirtd-killed",
        "the lab machine seen after libvirtd was killed: its socket file left, connections refused",
    ),
    "kvm-root-only": (
        "tests/fixtures/snapshots/kvm-root-only",
        "the lab machine seen with /dev/kvm as a fresh install leaves it: crw------- root root",
    ),
}


def normalise(report: dict[str, Any]) -> dict[str, Any]:
    run = report["run"]
    run.update(
        started="1970-01-01T00:00:00.000Z",
        finished="1970-01-01T00:00:00.000Z",
        duration_s=0.0,
        argv=["kvmdoctor", "run", "--snapshot", "SNAPSHOT"],
    )
    run["source"]["path"] = "SNAPSHOT"
    for check in report["checks"]:
        check["duration_ms"] = 0.0
    return report


def generate(name: str) -> tuple[str, str]:
    from doctor.cli.run import execute
    from doctor.render.text import render
    from doctor.sources.snapshot import SnapshotSource

    snapshot, _ = SCENARIOS[name]
    report = execute(
        SnapshotSource(str(ROOT / snapshot)), selected=[], ignores=[], fail_on="fail", uri=None
    )
    report = normalise(report)
    text = io.StringIO()
    render(report, text, color=False)
    return json.dumps(report, indent=2, ensure_ascii=False) + "\n", text.getvalue()


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else ROOT / "sample_reports"
    out.mkdir(parents=True, exist_ok=True)
    for name in SCENARIOS:
        data, text = generate(name)
        (out / f"{name}.json").write_text(data)
        (out / f"{name}.txt").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
