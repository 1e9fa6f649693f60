"""Time to a verdict of `kvmdoctor probe` on the namespace lab of tests/probe (root).

    .venv/bin/python bench/bench_probe.py [--runs N] [--markdown]

Builds the lab (a guest, a host with a bridge and NAT, a gateway: all namespaces, removed at
the end), then times whole `kvmdoctor probe` processes inside the host namespace: the healthy
path (both directions), and a drop located at the forwarding step (ip_forward = 0), each with
the default 3 packets and 2 s timeout. Targets (docs/performance.md, issue 8): a verdict on the
healthy path within 3 s per direction; a located drop within the timeout plus 1 s, counted from
the first packet (the process start, path discovery and baseline come before it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "probe")]


def run(lab: object, runs: int) -> list[tuple[float, float]]:
    """(wall-clock seconds of the process, seconds from the first packet to the verdict's
    data) per run."""
    out = []
    for _ in range(runs):
        started = time.monotonic()
        done = subprocess.run(
            ["ip", "netns", "exec", lab.host.name, sys.executable, "-m", "doctor", "probe",  # type: ignore[attr-defined]
             *lab.probe_args("--format", "json")],  # type: ignore[attr-defined]
            capture_output=True, text=True, cwd=ROOT, check=False,
        )  # fmt: skip
        wall = time.monotonic() - started
        if not done.stdout.startswith("{"):
            raise SystemExit(f"kvmdoctor probe failed: {done.stderr.strip()}")
        report = json.loads(done.stdout)
        [prb002] = [c for c in report["checks"] if c["code"] == "PRB002"]
        observed = prb002["findings"][0]["evidence"]["observations"]["since_first_packet_s"]
        out.append((wall, observed))
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    from probelab import ProbeLab

    rows = []
    with ProbeLab(tag="b") as lab:
        run(lab, 1)  # warm-up: bytecode, the neighbour entries
        rows.append(("healthy path (3 requests, 3 replies)", run(lab, args.runs)))
        lab.host.sysctl("net.ipv4.ip_forward", "0")
        rows.append(("drop at the forwarding step (ip_forward = 0)", run(lab, args.runs)))
    header = "| probe | process median | first packet to verdict, median | fastest process |"
    print(header if args.markdown else header.replace("|", " "))
    if args.markdown:
        print("|---|---:|---:|---:|")
    for name, times in rows:
        wall = statistics.median(t[0] for t in times)
        observed = statistics.median(t[1] for t in times)
        fastest = min(t[0] for t in times)
        print(f"| {name} | {wall:.2f} s | {observed:.2f} s | {fastest:.2f} s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
