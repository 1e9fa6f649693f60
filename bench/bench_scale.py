"""How `kvmdoctor run` scales with the number of domains, on libvirt's test driver.

    .venv/bin/python bench/bench_scale.py [--runs N] [--sizes 100,1000] [--format text|json]
                                          [--select CHECKS] [--markdown] [--keep DIR]

For each size it writes a `<node>` document (test:///ABSOLUTE/PATH.xml) holding that many
domains and four isolated networks, and times `kvmdoctor run --uri test:///...` as a whole
process, N times after a warm-up; the table gives the median and the fastest run. Each domain
has 4 NICs and 3 disks and is varied as a real host is: q35 and i440fx machines with the PCI
addresses and controllers libvirt writes, NICs on libvirt networks and on host bridges, VNC
and SPICE consoles (a few with fixed ports), a CD-ROM on some, about a third of them running.
The disk images exist (empty files in a temporary directory), as they do on a working host.

Targets (docs/performance.md): 1,000 domains in under 2 s, and the 1,000-domain run under
8 times the 100-domain run (nothing per domain may be quadratic).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KVMDOCTOR = ROOT / ".venv" / "bin" / "kvmdoctor"
TARGET_SECONDS = 2.0  # the largest size
TARGET_GROWTH = 8.0  # largest / smallest
NETWORKS = 4
TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"


def network_xml(index: int) -> str:
    """An isolated network (no <forward>) on a documentation range."""
    address, netmask = (
        ("192.0.2.1", "255.255.255.128"),
        ("192.0.2.129", "255.255.255.128"),
        ("198.51.100.1", "255.255.255.0"),
        ("203.0.113.1", "255.255.255.0"),
    )[index]
    return f"""  <network>
    <name>kd-bench-net{index}</name>
    <bridge name='kdbench{index}' stp='on' delay='0'/>
    <ip address='{address}' netmask='{netmask}'/>
  </network>
"""


def _pci(bus: int, slot: int, function: int = 0, multifunction: bool = False) -> str:
    multi = " multifunction='on'" if multifunction else ""
    return (
        f"<address type='pci' domain='0x0000' bus='0x{bus:02x}' slot='0x{slot:02x}' "
        f"function='0x{function:x}'{multi}/>"
    )


def _mac(n: int, nic: int) -> str:
    value = n * 4 + nic
    return f"52:54:00:{(value >> 16) & 0xFF:02x}:{(value >> 8) & 0xFF:02x}:{value & 0xFF:02x}"


def _nic(n: int, nic: int, address: str) -> str:
    mac = _mac(n, nic)
    if (n + nic) % 3 == 2:  # a host bridge, as on servers
        source = f"<interface type='bridge'><source bridge='br{nic % 2}'/>"
    else:
        source = f"<interface type='network'><source network='kd-bench-net{(n + nic) % NETWORKS}'/>"
    return f"{source}<mac address='{mac}'/><model type='virtio'/>{address}</interface>"


def _disk(image: Path, dev: str, address: str) -> str:
    return (
        "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source file='{image}'/><target dev='{dev}' bus='virtio'/>{address}</disk>"
    )


def _graphics(n: int) -> str:
    if n % 50 == 7:  # a few consoles on fixed ports, all different
        return f"<graphics type='vnc' port='{5900 + n}' autoport='no' listen='127.0.0.1'/>"
    if n % 4 == 1:
        return "<graphics type='spice' autoport='yes' listen='127.0.0.1'/>"
    return "<graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'/>"


def q35_devices(n: int, images: list[Path]) -> str:
    """As libvirt 9.0 lays out a virt-install q35 guest: pcie-root, root ports on 00:02.x
    (one spare for hot-plug), each device alone on its root port."""
    ports = 10  # 4 NICs + 3 disks + usb + balloon + 1 spare
    parts = ["<controller type='pci' index='0' model='pcie-root'/>"]
    for i in range(1, ports + 1):
        slot, function = 2 + (i - 1) // 8, (i - 1) % 8
        parts.append(
            f"<controller type='pci' index='{i}' model='pcie-root-port'>"
            f"<model name='pcie-root-port'/><target chassis='{i}' port='0x{0x10 + i - 1:x}'/>"
            f"{_pci(0, slot, function, multifunction=function == 0)}</controller>"
        )
    parts.append(f"<controller type='usb' index='0' model='qemu-xhci'>{_pci(1, 0)}</controller>")
    parts.append(f"<controller type='sata' index='0'>{_pci(0, 0x1F, 2)}</controller>")
    for nic in range(4):
        parts.append(_nic(n, nic, _pci(2 + nic, 0)))
    for d, image in enumerate(images):
        parts.append(_disk(image, f"vd{'abc'[d]}", _pci(6 + d, 0)))
    parts.append(f"<memballoon model='virtio'>{_pci(9, 0)}</memballoon>")
    parts.append(f"<video><model type='virtio' heads='1' primary='yes'/>{_pci(0, 1)}</video>")
    return "".join(parts)


def i440fx_devices(n: int, images: list[Path]) -> str:
    """As libvirt lays out an i440fx guest: everything on pci-root, video in slot 2, a CD-ROM
    on the PIIX3 IDE controller."""
    parts = [
        "<controller type='pci' index='0' model='pci-root'/>",
        f"<controller type='ide' index='0'>{_pci(0, 1, 1)}</controller>",
        f"<controller type='usb' index='0' model='piix3-uhci'>{_pci(0, 1, 2)}</controller>",
        f"<video><model type='cirrus' vram='16384' heads='1' primary='yes'/>{_pci(0, 2)}</video>",
    ]
    for nic in range(4):
        parts.append(_nic(n, nic, _pci(0, 3 + nic)))
    for d, image in enumerate(images):
        parts.append(_disk(image, f"vd{'abc'[d]}", _pci(0, 7 + d)))
    if n % 3 == 0:
        parts.append(
            "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
            "<target dev='hdc' bus='ide'/><readonly/>"
            "<address type='drive' controller='0' bus='1' target='0' unit='0'/></disk>"
        )
    parts.append(f"<memballoon model='virtio'>{_pci(0, 10)}</memballoon>")
    return "".join(parts)


def domain_xml(n: int, images: list[Path]) -> str:
    q35 = n % 2 == 0
    machine = "pc-q35-7.2" if q35 else "pc-i440fx-7.2"
    devices = q35_devices(n, images) if q35 else i440fx_devices(n, images)
    running = n % 3 == 0
    state = "" if running else "<test:runstate>5</test:runstate>"
    memory = (1, 2, 4, 8)[n % 4] * 1024 * 1024
    uuid = f"6b1e{n:04x}-0000-4000-8000-{n:012x}"
    return f"""  <domain type='test' xmlns:test='{TEST_NS}'>
    <name>kd-bench-{n:04d}</name>
    <uuid>{uuid}</uuid>
    <memory unit='KiB'>{memory}</memory>
    <currentMemory unit='KiB'>{memory}</currentMemory>
    <vcpu placement='static'>{(1, 2, 4)[n % 3]}</vcpu>
    <os><type arch='x86_64' machine='{machine}'>hvm</type><boot dev='hd'/></os>
    <features><acpi/><apic/></features>
    <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>{devices}{_graphics(n)}</devices>
    {state}
  </domain>
"""


def write_host(directory: Path, count: int) -> Path:
    """The node document for `count` domains, and their (empty) disk images."""
    images_dir = directory / f"images-{count}"
    images_dir.mkdir(parents=True, exist_ok=True)
    parts = ["<node>\n"]
    parts.extend(network_xml(i) for i in range(NETWORKS))
    for n in range(count):
        images = [images_dir / f"kd-bench-{n:04d}-{d}.qcow2" for d in range(3)]
        for image in images:
            image.touch()
        parts.append(domain_xml(n, images))
    parts.append("</node>\n")
    path = directory / f"kd-bench-{count}.xml"
    path.write_text("".join(parts))
    return path


def measure(argv: list[str], runs: int, env: dict[str, str]) -> list[float]:
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
        )
        times.append(time.perf_counter() - start)
        if done.returncode not in (0, 1):
            raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr!r}")
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--sizes", default="100,1000", help="comma-separated domain counts")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--format", default="text", help="the report format to time")
    parser.add_argument("--select", help="pass --select to kvmdoctor (default: every check)")
    parser.add_argument("--keep", metavar="DIR", help="write the hosts here and keep them")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    directory = Path(args.keep or tempfile.mkdtemp(prefix="kd-bench-"))
    rows = []
    try:
        for count in sizes:
            node = write_host(directory, count)
            argv = [str(KVMDOCTOR), "run", "--uri", f"test://{node}", "--format", args.format]
            if args.select:
                argv += ["--select", args.select]
            times = measure(argv, args.runs, env)
            rows.append((count, statistics.median(times), min(times)))
    finally:
        if args.keep is None:
            shutil.rmtree(directory, ignore_errors=True)
    failed = []
    largest = rows[-1]
    if largest[1] > TARGET_SECONDS:
        failed.append(f"{largest[0]} domains took {largest[1]:.2f} s (target {TARGET_SECONDS} s)")
    growth = largest[1] / rows[0][1]
    if len(rows) > 1 and growth > TARGET_GROWTH:
        failed.append(f"{rows[0][0]} -> {largest[0]} domains grew {growth:.1f}x")
    if args.markdown:
        print("| domains | median | fastest | x smallest |")
        print("|---:|---:|---:|---:|")
    for count, median, fastest in rows:
        ratio = median / rows[0][1]
        if args.markdown:
            print(f"| {count} | {median * 1000:.0f} ms | {fastest * 1000:.0f} ms | {ratio:.2f} |")
        else:
            print(
                f"{count:6d} domains  median {median * 1000:7.0f} ms  "
                f"fastest {fastest * 1000:7.0f} ms  {ratio:5.2f}x"
            )
    for line in failed:
        print(f"over target: {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
