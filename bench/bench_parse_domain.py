"""How long `parse_domain` takes for one domain as `kvmdoctor run` reads it (no lint lines).

    .venv/bin/python bench/bench_parse_domain.py [--domains N] [--runs N]

Parses the domains bench/bench_scale.py writes (q35 and i440fx guests with the PCI
addresses and controllers libvirt 9.0 writes, 4 NICs and 3 disks each) as `run` does
(`file=None`), N times, and prints the median and fastest CPU time per domain in
microseconds (process time: steadier than wall time on a shared machine). A micro-benchmark
for changes to doctor/facts/domains.py; docs/performance.md has the whole-run numbers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_scale import TEST_NS, domain_xml  # noqa: E402

from doctor.facts.domains import parse_domain  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, default=200)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    images = [Path(f"/var/lib/libvirt/images/kd-bench-{d}.qcow2") for d in range(3)]
    xmls = [
        domain_xml(n, images)
        .replace(f" xmlns:test='{TEST_NS}'", "")
        .replace("<test:runstate>5</test:runstate>", "")
        for n in range(args.domains)
    ]
    for xml in xmls:  # warm-up, and every document parses
        parse_domain(xml, active=False, persistent=True, origin="bench")
    times = []
    for _ in range(args.runs):
        start = time.process_time()
        for xml in xmls:
            parse_domain(xml, active=False, persistent=True, origin="bench")
        times.append((time.process_time() - start) / len(xmls) * 1e6)
    print(
        f"parse_domain: median {statistics.median(times):.1f} us, "
        f"fastest {min(times):.1f} us per domain ({args.domains} domains x {args.runs} runs)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
