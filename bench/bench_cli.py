"""Whole-process timings of the kvmdoctor CLI against the floor its framework sets.

    .venv/bin/python bench/bench_cli.py [--runs N] [--markdown]

Each command runs N times after a warm-up; the table gives the median and the fastest run, and
the ratio of the median to the floor (`python -c "import typer"`). Bytecode caching is on, as
on an operator's host (this lab's shell sets PYTHONDONTWRITEBYTECODE, which would charge every
run for compiling kvmdoctor). Targets (docs/performance.md): --help within 1.5x the floor,
a full `run` within 3x.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv" / "bin"
SNAPSHOT = ROOT / "tests" / "fixtures" / "snapshots" / "host-kvm-pvm"
TARGETS = {"kvmdoctor --help": 1.5, "kvmdoctor run": 3.0}


def commands() -> list[tuple[str, list[str]]]:
    py = str(VENV / "python")
    kd = str(VENV / "kvmdoctor")
    cmds = [
        ("floor: python -c 'import typer'", [py, "-c", "import typer"]),
        # What a full run cannot avoid: the libraries its checks and its text output use.
        (
            "libraries: python -c 'import typer, rich.console, libvirt, psutil, pyroute2'",
            [py, "-c", "import typer, rich.console, libvirt, psutil, pyroute2"],
        ),
        ("kvmdoctor --help", [kd, "--help"]),
        ("kvmdoctor run", [kd, "run"]),
        ("kvmdoctor run --format json", [kd, "run", "--format", "json"]),
        ("kvmdoctor run --select KVM", [kd, "run", "--select", "KVM"]),
        ("kvmdoctor run --snapshot (lab host)", [kd, "run", "--snapshot", str(SNAPSHOT)]),
    ]
    validate = shutil.which("virt-host-validate")
    if validate:
        cmds.append(("virt-host-validate qemu", [validate, "qemu"]))
    return cmds


def measure(argv: list[str], runs: int, env: dict[str, str]) -> list[float]:
    for _ in range(2):  # warm-up: page cache, bytecode
        subprocess.run(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False
        )
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False
        )
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    rows = []
    floor = None
    for label, argv in commands():
        times = measure(argv, args.runs, env)
        median = statistics.median(times)
        floor = floor or median
        rows.append((label, median, min(times), median / floor))
    failed = []
    if args.markdown:
        print("| command | median | fastest | x floor | target |")
        print("|---|---:|---:|---:|---:|")
    for label, median, fastest, ratio in rows:
        target = TARGETS.get(label)
        if target and ratio > target:
            failed.append(label)
        mark = f"<= {target}x" if target else ""
        if args.markdown:
            print(
                f"| `{label}` | {median * 1000:.1f} ms | {fastest * 1000:.1f} ms | "
                f"{ratio:.2f} | {mark} |"
            )
        else:
            print(
                f"{label:40} median {median * 1000:7.1f} ms  fastest {fastest * 1000:7.1f} ms"
                f"  {ratio:5.2f}x floor  {mark}"
            )
    for label in failed:
        print(f"over target: {label}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
