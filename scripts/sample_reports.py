"""Regenerate sample_reports/ from the recorded snapshots in tests/fixtures/snapshots.

    .venv/bin/python scripts/sample_reports.py [OUTDIR]

Each scenario is a real recording replayed (the lab-* ones recorded by
scripts/record_lab_scenarios.py); times and durations are zeroed so that the files change only
when kvmdoctor's findings or report format change. Every scenario is written in each of
FORMATS; the live probe reports (probe-*.json, scripts/sample_probe_reports.py) are converted
to the same formats, as `kvmdoctor report convert` does. tests/test_sample_reports.py fails
when any file is stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this tree's kvmdoctor, whatever the venv has installed
SCENARIOS = {
    # name: (snapshot, what it shows)
    "healthy": (
        "tests/fixtures/snapshots/lab-healthy",
        "a lab libvirtd with an isolated network and one running guest: nothing wrong",
    ),
    "ip-forward-off": (
        "tests/fixtures/snapshots/lab-ip-forward-off",
        "a NAT network and its running guest with net.ipv4.ip_forward set to 0 afterwards",
    ),
    "tls-expired": (
        "tests/fixtures/snapshots/lab-tls-expired",
        "libvirtd.conf listens for TLS with a server certificate that has expired",
    ),
    "pci-slots-full": (
        "tests/fixtures/snapshots/lab-pci-slots-full",
        "a q35 guest whose only pcie-root-port its NIC takes: nothing can be hot-plugged",
    ),
    "duplicate-mac": (
        "tests/fixtures/snapshots/lab-duplicate-mac",
        "two running guests on one bridge with the same MAC",
    ),
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


# format: file extension
FORMATS = {"json": "json", "text": "txt", "html": "html", "sarif": "sarif", "junit": "junit.xml"}
PROBES = ("probe-healthy", "probe-ip-forward-off")  # live runs, kept as recorded


def replay(name: str) -> dict[str, Any]:
    from doctor.cli.run import execute
    from doctor.sources.snapshot import SnapshotSource

    snapshot, _ = SCENARIOS[name]
    report = execute(
        SnapshotSource(str(ROOT / snapshot)), selected=[], ignores=[], fail_on="fail", uri=None
    )
    return normalise(report)


def render(report: dict[str, Any], fmt: str) -> str:
    from doctor.render import render_as

    if fmt == "json":
        return json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    return render_as(fmt, report, color=False)


def generate(name: str) -> dict[str, str]:
    """{file name: content} for a scenario or a probe report, in every format."""
    if name in PROBES:
        path = ROOT / "sample_reports" / f"{name}.json"
        report = json.loads(path.read_text())
        # The probe's own text view (rows of hops) is kept as recorded with its JSON.
        return {f"{name}.{ext}": render(report, f) for f, ext in FORMATS.items()
                if f not in ("json", "text")}  # fmt: skip
    report = replay(name)
    return {f"{name}.{ext}": render(report, fmt) for fmt, ext in FORMATS.items()}


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else ROOT / "sample_reports"
    out.mkdir(parents=True, exist_ok=True)
    for name in [*SCENARIOS, *PROBES]:
        for file, content in generate(name).items():
            (out / file).write_text(content, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
