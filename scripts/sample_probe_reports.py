"""Write sample_reports/probe-*.{json,txt}: real `kvmdoctor probe` runs on the namespace lab of
tests/probe (root; the lab is made and removed here).

    .venv/bin/python scripts/sample_probe_reports.py [OUTDIR]

Unlike the replayed samples (scripts/sample_reports.py), these are live runs: counters, times
and namespace names differ from run to run, so no test compares them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "probe")]


def probe(lab: object, fmt: str) -> str:
    done = subprocess.run(
        ["ip", "netns", "exec", lab.host.name, sys.executable, "-m", "doctor", "probe",  # type: ignore[attr-defined]
         *lab.probe_args("--format", fmt, "--no-color")],  # type: ignore[attr-defined]
        capture_output=True, text=True, cwd=ROOT, check=False,
    )  # fmt: skip
    if done.returncode not in (0, 1):
        raise SystemExit(f"kvmdoctor probe failed: {done.stderr.strip()}")
    return done.stdout


def main(argv: list[str]) -> int:
    from probelab import ProbeLab

    out = Path(argv[0]) if argv else ROOT / "sample_reports"
    with ProbeLab(tag="s") as lab:
        probe(lab, "json")  # warm-up: the guest learns its gateway's MAC
        for name in ("healthy", "ip-forward-off"):
            if name == "ip-forward-off":
                lab.host.sysctl("net.ipv4.ip_forward", "0")
            for fmt, ext in (("json", "json"), ("text", "txt")):
                (out / f"probe-{name}.{ext}").write_text(probe(lab, fmt))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
