"""Whole-process timings of the kvmdoctor CLI, each against the floor it is judged by.

    .venv/bin/python bench/bench_cli.py [--runs N] [--markdown] [--instructions]

Every command runs N times, round-robin (one run of each command, then the next round), after
two warm-up rounds, so that load from other processes on the machine falls on all of them
alike; the table gives the median, the fastest run and the median's ratio to the command's
floor. With --instructions each command also runs once under valgrind's callgrind, whose
count of instructions executed does not depend on the machine's load.

The floors: `python -c "import typer"` (the CLI framework; `--help` and `run --select KVM`
are judged by it) and the libraries a full run imports before any kvmdoctor code runs
(`import typer, rich.console, libvirt, psutil, pyroute2`: rich for the text view on a
terminal, libvirt-python for the LIB, TLS, FW and DOM checks, psutil, which pyroute2's
package imports (the checks read the processes they want from /proc), pyroute2 for the NET
checks' links). Written to a pipe, the text view does without rich, so
the table also shows that floor without rich.

Targets (docs/performance.md): `--help` within 1.5x typer's floor, `run --select KVM` within
2x, a full `run` (live libvirtd) within 1.5x the libraries' floor.

Bytecode caching is on, as on an operator's host (this lab's shell sets
PYTHONDONTWRITEBYTECODE, which would charge every run for compiling kvmdoctor), and the tree
this script sits in is the kvmdoctor that runs (PYTHONPATH), whatever the venv points at.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv" / "bin"
SNAPSHOT = ROOT / "tests" / "fixtures" / "snapshots" / "host-kvm-pvm"
TYPER = "floor: python -c 'import typer'"
LIBRARIES = "floor: python -c 'import typer, rich.console, libvirt, psutil, pyroute2'"
PIPED = "floor without rich: python -c 'import typer, libvirt, psutil, pyroute2'"
# label -> (floor label, target ratio)
TARGETS = {
    "kvmdoctor --help": (TYPER, 1.5),
    "kvmdoctor run --select KVM": (TYPER, 2.0),
    "kvmdoctor run": (LIBRARIES, 1.5),
}
FLOORS = {
    "kvmdoctor run --format json": LIBRARIES,
    "kvmdoctor run --snapshot (lab host)": TYPER,
}


def commands() -> list[tuple[str, list[str]]]:
    py = str(VENV / "python")
    kd = str(VENV / "kvmdoctor")
    cmds = [
        (TYPER, [py, "-c", "import typer"]),
        (LIBRARIES, [py, "-c", "import typer, rich.console, libvirt, psutil, pyroute2"]),
        (PIPED, [py, "-c", "import typer, libvirt, psutil, pyroute2"]),
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


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def once(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def round_robin(cmds: list[tuple[str, list[str]]], runs: int, env: dict[str, str]) -> dict:
    for _ in range(2):  # warm-up: page cache, bytecode
        for _, argv in cmds:
            once(argv, env)
    times: dict[str, list[float]] = {label: [] for label, _ in cmds}
    for _ in range(runs):
        for label, argv in cmds:
            times[label].append(once(argv, env))
    return times


def instructions(argv: list[str], env: dict[str, str]) -> int | None:
    """Instructions the process executed (its own, not its children's), by callgrind."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return None
    with tempfile.TemporaryDirectory(prefix="kd-bench-") as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(
            [valgrind, "--tool=callgrind", f"--callgrind-out-file={out}", *argv],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        try:
            text = out.read_text()
        except OSError:
            return None
    found = re.search(r"^(?:summary|totals): (\d+)", text, re.MULTILINE)
    return int(found.group(1)) if found else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument(
        "--instructions", action="store_true", help="also count instructions (valgrind)"
    )
    args = parser.parse_args()
    env = environment()
    cmds = commands()
    started = time.time()
    times = round_robin(cmds, args.runs, env)
    counts = {label: instructions(argv, env) for label, argv in cmds} if args.instructions else {}
    load = os.getloadavg()
    median = {label: statistics.median(t) for label, t in times.items()}

    failed = []
    header = ["command", "median", "fastest", "floor", "x floor", "target"]
    if counts:
        header += ["instructions", "x floor (instr.)"]
    rows = []
    for label, _ in cmds:
        floor, target = TARGETS.get(label, (FLOORS.get(label), None))
        ratio = median[label] / median[floor] if floor else None
        row = [
            f"`{label}`" if args.markdown else label,
            f"{median[label] * 1000:.1f} ms",
            f"{min(times[label]) * 1000:.1f} ms",
            "typer" if floor == TYPER else "libraries" if floor == LIBRARIES else "",
            f"{ratio:.2f}" if ratio else "",
            f"<= {target}x" if target else "",
        ]
        if counts:
            mine, base = counts.get(label), counts.get(floor) if floor else None
            row.append(f"{mine / 1e6:.0f} M" if mine else "")
            row.append(f"{mine / base:.2f}" if mine and base else "")
        if target and ratio and ratio > target:
            failed.append(f"{label}: {ratio:.2f}x its floor, target {target}x")
        rows.append(row)
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|---|" + "---:|" * (len(header) - 1))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    piped = median["kvmdoctor run"] / median[PIPED]
    print(
        f"\n{args.runs} rounds, {time.time() - started:.0f} s; load average at the end "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs; "
        f"`kvmdoctor run` is {piped:.2f}x the floor without rich"
    )
    for line in failed:
        print(f"over target: {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
