"""Throughput and peak memory of `kvmdoctor explain -` on generated journals, beside grep.

    .venv/bin/python bench/bench_explain.py [--sizes 100,1000] [--runs 3] [--engines]

Writes (once; kept in /tmp) a journal of each size in MB: journalctl's short-iso lines of the
daemons a KVM host runs (systemd, kernel, sshd, cron, NetworkManager, dnsmasq, libvirtd, QEMU,
containerd, a few lines outside ASCII), from a fixed seed, with one line in ERROR_EVERY a real
error message from the tests' message corpus (tests/fixtures/messages) and the playbooks' own
signature examples. Then times, each as a whole process fed the file on its standard input:

- `kvmdoctor explain - --format json` (throughput in MB/s and the child's peak RSS);
- `grep -c -i -F -f NEEDLES`, NEEDLES being the signatures' required texts, on the same file:
  the floor the issue measures against (the ratio is explain's time over grep's).

Medians of --runs runs. With --engines it also times each multi-pattern engine installed
(`doctor.textscan`) in this process over the 100 MB journal, and RE2::Set tried line by line.
Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SEED = 13
ERROR_EVERY = 10_000  # ~118 real errors in 100 MB, as in the journal
TMP = Path(os.environ.get("KD_BENCH_DIR", "/tmp"))
GOAL_MBPS = 100.0
GOAL_RSS_MB = 100.0
# `kvmdoctor` from this tree (the venv's console script may point at another checkout).
KVMDOCTOR = "import sys; sys.argv[0] = 'kvmdoctor'; from doctor.cli import main; main()"

HOSTS = ("kvm1", "kvm2")
NOISE = (
    "systemd[1]: Started Session {n} of User root.",
    "systemd[1]: session-{n}.scope: Deactivated successfully.",
    "systemd[1]: Starting Cleanup of Temporary Directories...",
    "systemd-logind[{pid}]: New session {n} of user admin.",
    "sshd[{pid}]: Accepted publickey for admin from 192.0.2.{b} port {port} ssh2: ED25519 "
    "SHA256:{hex}",
    "sshd[{pid}]: Failed password for invalid user test from 198.51.100.{b} port {port} ssh2",
    "sshd[{pid}]: pam_unix(sshd:session): session closed for user admin",
    "CRON[{pid}]: (root) CMD (command -v debian-sa1 > /dev/null && debian-sa1 1 1)",
    "kernel: virbr0: port {b}(vnet{b}) entered forwarding state",
    "kernel: device vnet{b} entered promiscuous mode",
    'kernel: audit: type=1400 audit({n}.{b}:{pid}): apparmor="STATUS" operation='
    '"profile_load" profile="unconfined" name="libvirt-{hex}" pid={pid} comm="apparmor_parser"',
    "kernel: EXT4-fs (vda1): re-mounted {hex}. Quota mode: none.",
    "NetworkManager[{pid}]: <info>  [{n}.{port}] device (vnet{b}): state change: unavailable "
    "-> disconnected (reason 'none', sys-iface-state: 'external')",
    "NetworkManager[{pid}]: <info>  [{n}.{port}] manager: (vnet{b}): new Tun device "
    "(/org/freedesktop/NetworkManager/Devices/{b})",
    "dnsmasq-dhcp[{pid}]: DHCPACK(virbr0) 192.0.2.{b} 52:54:00:{mac} guest{b}",
    "dnsmasq-dhcp[{pid}]: DHCPREQUEST(virbr0) 192.0.2.{b} 52:54:00:{mac}",
    "libvirtd[{pid}]: {pid}: info : libvirt version: 9.0.0, package: 9.0.0-4+deb12u2 (Debian)",
    "libvirtd[{pid}]: {pid}: info : hostname: kvm1",
    "libvirtd[{pid}]: Domain id={b} name='guest{b}' uuid={uuid} is tainted: host-cpu",
    "libvirtd[{pid}]: internal error: client socket is closed",
    "qemu-system-x86_64[{pid}]: terminating on signal 15 from pid {n} (/usr/sbin/libvirtd)",
    'containerd[{pid}]: time="2026-11-26T07:24:21.{port}Z" level=info msg="loading plugin '
    '\\"io.containerd.grpc.v1.cri\\"..." type=io.containerd.grpc.v1',
    "systemd-resolved[{pid}]: Using degraded feature set UDP instead of UDP+EDNS0 for DNS "
    "server 192.0.2.1.",
    "chronyd[{pid}]: Selected source 203.0.113.{b} (2.debian.pool.ntp.org)",
    "bash[{pid}]: ls: cannot access '/srv/backup/{hex}': No such file or directory",
    "polkitd[{pid}]: Registered Authentication Agent for unix-process:{pid}:{n}",
    "smartd[{pid}]: Device: /dev/sda [SAT], Temperature changed +2 Celsius to 41 Celsius",
    "kernel: perf: interrupt took too long ({n} > {port}), lowering kernel.perf_event_max_"
    "sample_rate to {port}",
    "systemd[1]: Reached target Network is Online.",
)
# Lines outside ASCII: a thermometer, a user's name, a localised message.
NON_ASCII = (
    "sensord[{pid}]: Sensor alarm: Chip coretemp-isa-0000: temp{b} 71.0 °C",
    "sshd[{pid}]: Accepted password for josé from 192.0.2.{b} port {port} ssh2",
    "systemd[1]: Démarrage de Session {n} de l'utilisateur root.",
)
NON_ASCII_EVERY = 2_000


def error_lines() -> list[str]:
    """Real single lines that a signature matches: the corpus and the signatures' examples,
    each line of a message on its own."""
    import yaml

    from doctor import playbooks

    book = playbooks.shipped()
    texts = []
    for path in sorted((ROOT / "tests" / "fixtures" / "messages").glob("*.yaml")):
        texts += [e["message"] for e in yaml.safe_load(path.read_text(encoding="utf-8"))]
    out = []
    for text in texts:
        for raw in text.splitlines():
            if raw.strip() and book.match_line(playbooks.normalise(raw)):
                out.append(raw.strip())
    return sorted(set(out))


def journal(size_mb: int) -> Path:
    """The journal of `size_mb` MB (generated once, from SEED)."""
    path = TMP / f"kd-bench-journal-{size_mb}MB-s{SEED}.log"
    if path.exists() and path.stat().st_size >= size_mb * 1_000_000:
        return path
    rng = random.Random(SEED)
    errors = error_lines()
    target = size_mb * 1_000_000
    written = 0
    clock = 1_795_000_000  # a fixed start: the file never depends on today's date
    tmp = path.with_suffix(".part")
    with open(tmp, "w", encoding="utf-8") as out:
        line_no = 0
        while written < target:
            batch = []
            for _ in range(5000):
                line_no += 1
                clock += rng.random() < 0.3
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(clock))
                host = HOSTS[line_no & 1]
                if line_no % ERROR_EVERY == 0:
                    text = rng.choice(errors)
                    batch.append(f"{stamp} {host} libvirtd[7722]: {text}\n")
                    continue
                pool = NON_ASCII if line_no % NON_ASCII_EVERY == 0 else NOISE
                b = rng.randrange(1, 250)
                batch.append(
                    f"{stamp} {host} "
                    + rng.choice(pool).format(
                        n=rng.randrange(1, 100000),
                        pid=rng.randrange(300, 65000),
                        b=b,
                        port=rng.randrange(1024, 65535),
                        hex=f"{rng.getrandbits(64):016x}",
                        mac=f"{b:02x}:{rng.randrange(256):02x}:{rng.randrange(256):02x}",
                        uuid=f"{rng.getrandbits(128):032x}",
                    )
                    + "\n"
                )
            chunk = "".join(batch)
            out.write(chunk)
            written += len(chunk.encode())
    tmp.rename(path)
    return path


def needles() -> Path:
    from doctor import playbooks

    book = playbooks.shipped()
    texts = sorted({playbooks.required_text(s.pattern) for p in book for s in p.signatures} - {""})
    path = TMP / "kd-bench-needles.txt"
    path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    return path


def child(
    argv: list[str], stdin_path: Path, env: dict[str, str]
) -> tuple[float, float, float, str]:
    """(seconds, CPU seconds, the child's own peak RSS in MB, its stdout) of one whole
    process. CPU time (user + system, from wait4) is the counter that shared cores disturb
    least."""
    import tempfile

    with open(stdin_path, "rb") as feed, tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=feed, stdout=out, stderr=subprocess.DEVNULL, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        cpu = usage.ru_utime + usage.ru_stime
        return elapsed, cpu, usage.ru_maxrss / 1024, out.read().decode(errors="replace")


def bench_files(sizes: list[int], runs: int) -> list[tuple[str, ...]]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(ROOT)
    explain = [sys.executable, "-c", KVMDOCTOR, "explain", "-", "--format", "json"]
    grep = ["grep", "-c", "-i", "-F", "-f", str(needles())]
    rows = []
    for size in sizes:
        path = journal(size)
        mb = path.stat().st_size / 1_000_000
        results = {}
        for label, argv in (("grep", grep), ("explain", explain)):
            child(argv, path, env)  # warm-up: page cache, bytecode
            times, cpus, peaks, out = [], [], [], ""
            for _ in range(runs):
                elapsed, cpu, peak, out = child(argv, path, env)
                times.append(elapsed)
                cpus.append(cpu)
                peaks.append(peak)
            results[label] = (statistics.median(times), statistics.median(cpus), max(peaks), out)
        grep_s, grep_cpu, _, grep_out = results["grep"]
        ex_s, ex_cpu, ex_rss, ex_out = results["explain"]
        data = json.loads(ex_out) if ex_out.strip() else {"matches": []}
        hits = sum(m.get("count", 1) for m in data["matches"])
        rows.append(
            (
                f"{mb:,.0f} MB",
                f"{data.get('lines', 0):,}",
                f"{ex_s:.2f} s",
                f"{mb / ex_s:.0f} MB/s",
                f"{ex_cpu:.2f} s",
                f"{mb / ex_cpu:.0f} MB/s",
                f"{ex_rss:.0f} MB",
                f"{grep_s:.2f} s ({grep_out.strip()} lines)",
                f"{mb / grep_s:.0f} MB/s",
                f"{grep_cpu:.2f} s",
                f"{ex_s / grep_s:.1f}x",
                f"{ex_cpu / grep_cpu:.1f}x",
                f"{len(data['matches'])} problems, {hits} lines",
            )
        )
    return rows


def bench_engines(size: int) -> list[tuple[str, ...]]:
    """Each engine over the journal in this process: scanning alone, and scanning with the
    signatures tried on the candidate lines (what explain does)."""
    from doctor import playbooks, textscan

    book = playbooks.shipped()
    path = journal(size)
    mb = path.stat().st_size / 1_000_000
    rows = []
    for name in textscan.ENGINES:
        try:
            engine = textscan.make_engine(book, name)
        except ImportError as exc:
            rows.append((name, f"not installed ({exc})", "", ""))
            continue
        start = time.perf_counter()
        candidates = 0
        with open(path, "rb") as feed:
            for _ in textscan.scan(engine, textscan.blocks(feed, textscan.Reading())):
                candidates += 1
        elapsed = time.perf_counter() - start
        rows.append((name, f"{mb / elapsed:.0f} MB/s", f"{elapsed:.2f} s", f"{candidates:,}"))
    try:
        import re2

        keys = textscan.signature_keys(book) or []
        options = re2.Options()
        options.case_sensitive = False
        rset = re2.Set.SearchSet(options)
        for expression in textscan.expressions(keys):
            rset.Add(expression)
        rset.Compile()
        start = time.perf_counter()
        candidates = 0
        with open(path, "rb") as feed:
            for line in feed:
                if rset.Match(line):
                    candidates += 1
        elapsed = time.perf_counter() - start
        rows.append(
            (
                "re2 Set, line by line",
                f"{mb / elapsed:.0f} MB/s",
                f"{elapsed:.2f} s",
                f"{candidates:,}",
            )
        )
    except ImportError:
        pass
    return rows


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000", help="journal sizes in MB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--engines", action="store_true", help="also time each engine")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    load = os.getloadavg()
    print(
        f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} CPUs\n"
    )
    if args.engines:
        print(
            table(
                ("engine", "throughput", "time", "candidate lines"),
                bench_engines(sizes[0]),
            )
            + "\n"
        )
    rows = bench_files(sizes, args.runs)
    print(
        table(
            (
                "journal",
                "lines",
                "explain -",
                "MB/s",
                "explain CPU",
                "MB per CPU s",
                "peak RSS",
                "grep -c -i -F -f NEEDLES",
                "MB/s",
                "grep CPU",
                "explain / grep",
                "CPU explain / grep",
                "found",
            ),
            rows,
        )
    )
    failed = []
    for row in rows:
        mbps = float(row[3].split()[0])
        rss = float(row[6].split()[0])
        if mbps < GOAL_MBPS or rss >= GOAL_RSS_MB:
            failed.append(row[0])
    load = os.getloadavg()
    print(f"\nload average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(
        f"goal: >= {GOAL_MBPS:.0f} MB/s and peak RSS < {GOAL_RSS_MB:.0f} MB: "
        + ("met" if not failed else "NOT met for " + ", ".join(failed))
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
