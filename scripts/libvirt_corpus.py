"""Regenerate tests/fixtures/libvirt-suite/ from libvirt's source tree.

    python scripts/libvirt_corpus.py /tmp/kdsrc/libvirt-9.0.0 [--list]

Reads tests/qemuxml2argvtest.c, takes libvirt's verdict on each input from the macro that
tests it (DO_TEST*_PARSE_ERROR* and DO_TEST*_FAILURE*: rejected, with the message of the
`.err` file beside it; any other DO_TEST*: accepted), keeps the x86_64 inputs in the areas
kvmdoctor's checks cover, and writes them with manifest.json: the corpus (`entries`: the
accepted inputs, those QEMU refuses at start, and each rejection with the kvmdoctor code
expected to flag it, EXPECTED) and, apart, the rejections outside the checks' areas
(`out_of_area`, each with the reason, OUT_OF_SCOPE). The derived inputs (DERIVED, each an
accepted input with one change, whose verdict the lab's libvirtd confirmed) are written
beside them. The suite does not run this script;
tests/test_lint_oracle.py reads its output.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "libvirt-suite"
TEST_C = "tests/qemuxml2argvtest.c"
DATA = "tests/qemuxml2argvdata"

# Inputs whose names say they are about what the checks cover.
RELEVANT = re.compile(
    r"pci|pcie|controller|address|disk|drive|shareable|scsi|sata|ide|virtio-blk|"
    r"firmware|loader|nvram|bios|uefi|ovmf|secure|smm|tseg|"
    r"vcpu|smp|cpu-hotplug|max-cpus|machine|q35|440fx|"
    r"iommu|intel|memory-hotplug|^memory|mem-|hugepages|"
    r"^net-|interface|mac|hostdev"
)


@dataclass
class Case:
    name: str  # the input's base name in qemuxml2argvdata
    macro: str
    arch: str
    caps: str  # "latest", a QEMU version, or "fake" (a hand-picked capability list)
    verdict: str  # accepted or rejected
    kind: Optional[str] = None  # parse-error or failure
    error: Optional[str] = None
    line: int = 0
    extra: dict[str, str] = field(default_factory=dict)


def _calls(text: str) -> list[tuple[int, str, list[str]]]:
    """Every DO_TEST* call in mymain(): (line, macro, arguments as written)."""
    body = text[text.index("mymain(void)") :]
    offset = text[: text.index("mymain(void)")].count("\n")
    out = []
    for match in re.finditer(r"\b(DO_TEST[A-Z0-9_]*)\s*\(", body):
        depth, i = 1, match.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(body[i], 0)
            i += 1
        args = [a.strip() for a in re.split(r",(?![^()]*\))", body[match.end() : i - 1])]
        out.append((offset + body[: match.start()].count("\n") + 1, match.group(1), args))
    return out


def _string(arg: str) -> str:
    return "".join(re.findall(r'"([^"]*)"', arg))


def cases(src: Path) -> list[Case]:
    text = (src / TEST_C).read_text()
    found = []
    for line, macro, args in _calls(text):
        if macro.startswith("DO_TEST_CAPS_INTERNAL") or not args or '"' not in args[0]:
            continue  # the macro definitions themselves
        name = _string(args[0])
        flags = " ".join(args)
        arch, caps = "x86_64", "fake"
        if macro.startswith("DO_TEST_CAPS"):
            caps = "latest"
            if "_ARCH_" in macro:
                arch = _string(args[1])
            elif "PPC64" in macro:
                arch = "ppc64"
            if "_VER" in macro:
                caps = _string(args[2] if "_ARCH_" in macro else args[1])
        elif macro == "DO_TEST_FULL":
            arch = _string(flags.split("ARG_CAPS_ARCH")[1]) if "ARG_CAPS_ARCH" in flags else arch
        parse_error = "PARSE_ERROR" in macro or "FLAG_EXPECT_PARSE_ERROR" in flags
        failure = parse_error or "FAILURE" in macro or "FLAG_EXPECT_FAILURE" in flags
        case = Case(name, macro, arch, caps, "rejected" if failure else "accepted", line=line)
        if "VIR_DOMAIN_DEF_PARSE_ABI_UPDATE" in flags:
            case.extra["parse"] = "ABI_UPDATE"  # as `virsh define` parses
        if failure:
            case.kind = "parse-error" if parse_error else "failure"
            suffix = "" if caps == "fake" else f".{arch}-{caps}"
            err = src / DATA / f"{name}{suffix}.err"
            if err.exists():
                case.error = err.read_text().strip()
        found.append(case)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="libvirt's unpacked source tree")
    parser.add_argument("--list", action="store_true", help="print every case and stop")
    args = parser.parse_args()
    found = cases(args.source)
    if args.list:
        for c in found:
            print(f"{c.verdict:8} {c.arch:8} {c.caps:8} {c.name}  {c.error or ''}")
        return 0
    return write(args.source, found)


# In-scope rejections: the kvmdoctor check that names libvirt's reason.
EXPECTED = {
    "minimal-no-memory": "DOM009",
    "boot-dev+order": "DOM004",
    "disk-same-targets": "DOM010",
    "disk-address-conflict": "DOM011",
    "disk-hostdev-scsi-address-conflict": "DOM011",
    "hostdevs-drive-address-conflict": "DOM011",
    "440fx-ide-address-conflict": "DOM012",
    "pci-domain-invalid": "DOM013",
    "pci-bus-invalid": "DOM013",
    "pci-slot-invalid": "DOM013",
    "pci-function-invalid": "DOM013",
    "q35-dmi-bad-address1": "DOM014",
    "pci-bridge-duplicate-index": "DOM014",
    "pci-root-nonzero-index": "DOM014",
    "pci-root-address": "DOM014",
    "q35-wrong-root": "DOM014",
    "440fx-wrong-root": "DOM014",
    "pci-expander-bus-bad-machine": "DOM014",
    "pcie-expander-bus-bad-machine": "DOM014",
    "pcie-root-port-too-many": "DOM014",
    "disk-shared-qcow": "DOM015",
    "intel-iommu-wrong-machine": "DOM017",
    "virtio-iommu-wrong-machine": "DOM017",
    "virtio-iommu-no-acpi": "DOM017",
    "tseg-i440fx": "DOM018",
    "tseg-invalid-size": "DOM018",
    "firmware-manual-efi-no-path": "DOM019",
    "firmware-manual-efi-features": "DOM019",
    "firmware-manual-efi-nvram-template-stateless": "DOM019",
    "firmware-manual-efi-nvram-stateless": "DOM019",
    "firmware-manual-efi-noacpi-q35": "DOM019",
    "firmware-manual-bios-not-stateless": "DOM019",
    "firmware-auto-bios-not-stateless": "DOM019",
    "firmware-auto-bios-nvram": "DOM019",
    "firmware-auto-efi-loader-insecure": "DOM019",
    "firmware-auto-efi-loader-path": "DOM019",
    "firmware-auto-efi-enrolled-keys-no-secboot": "DOM019",
    "disk-fdc-incompatible-address": "DOM021",
    "disk-ide-incompatible-address": "DOM021",
    "disk-sata-incompatible-address": "DOM021",
    "disk-scsi-incompatible-address": "DOM021",
    "disk-usb-pci": "DOM021",
    "virtio-iommu-invalid-address-type": "DOM021",
    "pci-expander-bus-bad-bus": "DOM022",
    "pcie-expander-bus-bad-bus": "DOM022",
    "q35-dmi-bad-address2": "DOM022",
    "virtio-iommu-invalid-address": "DOM022",
    "disk-attaching-partition-nosupport": "DOM023",
    "disk-missing-target-invalid": "DOM023",
    "disk-device-lun-type-invalid": "DOM024",
    "disk-scsi-disk-vpd-build-error": "DOM024",
    "pci-bridge-negative-index-invalid": "DOM014",
}

# Inputs libvirt's suite accepts (it defines them) that QEMU refuses at start, as a private
# lab libvirtd 9.0.0 with QEMU 7.2 showed (tests/integration/test_lint_oracle_lab.py starts
# them again, with lab image files in place of the suite's paths): QEMU's message, and the
# check that must fail them (a `fail` means libvirt or QEMU refuses, now or at the next start).
REFUSED_AT_START = {
    "disk-cache": ('Failed to get "write" lock', "DOM005"),
    "disk-scsi-disk-split": ('Failed to get "write" lock', "DOM005"),
}

# Rejections outside the checks' areas, by libvirt's message (first match wins), and why
# (docs/lint-oracle.md). They are kept apart (the manifest's `out_of_area`), not part of the
# corpus the agreement is measured on.
OUT_OF_SCOPE = (
    (
        r"QEMU binary|this QEMU|not supported by hypervisor|Emulator '",
        "depends on the QEMU binary's capabilities (the test gives a hand-picked or older "
        "capability set); a definition alone does not say which QEMU will run it",
    ),
    (r"hugetlbfs|hugepages|numa node set", "depends on the host's hugepages and NUMA nodes"),
    (r"storage format|'cow'", "image formats QEMU cannot open: outside the checks' areas"),
    (
        r"secret|auth|encryption|cipher|tls",
        "disk authentication and encryption: outside the checks' areas",
    ),
    (r"Hostdev already exists|zPCI|CCW|mediated|vgpu|assigned devices", "host device assignment"),
    (r"USB|usb", "USB topology: outside the checks' areas"),
    (r"numa|NUMA|memnode|hotplug granularity|alignment|memory backend", "NUMA and memory hot-plug"),
    (
        r"Invalid value for attribute|power of two|at least 1 MiB|Invalid BIOS|UUID mismatch|"
        r"msi option",
        "the syntax or range of a value outside the checks' areas (shared memory sizes, SMBIOS, "
        "NIC queue sizes, NUMA cell access); DOM025 warns where libvirt's schema refuses it",
    ),
    (
        r"video|Serial device|'hpt' feature|ramfb",
        "video, serial and architecture-specific devices: outside the checks' areas",
    ),
    (r"tap device path|rx_queue_size", "NIC backend options: outside the checks' areas"),
    (r"xhci|vcpusched|graphics device is needed|'uuid'", "outside the checks' areas"),
)

# Inputs the suite has no failing case for, each derived from an accepted input by one change;
# their verdict was confirmed with `virsh define` on a private libvirtd (tests/kdlab.py).
DERIVED = {
    "kd-derived-q35-vcpus-289": {
        "derived_from": "intel-iommu-eim",
        "change": "machine='pc-q35-7.2' and 289 vCPUs instead of q35 and 288",
        "expected": "DOM016",
    },
    "kd-derived-i440fx-vcpus-256": {
        "derived_from": "boot-network",
        "change": "256 vCPUs instead of 1",
        "expected": "DOM016",
    },
}


def _reason(case: Case) -> str:
    for pattern, reason in OUT_OF_SCOPE:
        if re.search(pattern, case.error or ""):
            return reason
    return "a rule outside the areas of kvmdoctor's checks"


def _arch(xml: str) -> Optional[str]:
    found = re.search(r"<type[^>]*\barch=['\"]([^'\"]+)", xml)
    return found.group(1) if found else None


def verdicts(found: list[Case]) -> dict[str, Case]:
    """One verdict per input: its run with the latest capabilities, else the hand-picked
    capability set's; a rejection by an older QEMU only is left out (out of date)."""
    by_name: dict[str, list[Case]] = {}
    for case in found:
        by_name.setdefault(case.name, []).append(case)
    chosen = {}
    for name, runs in by_name.items():
        latest = [c for c in runs if c.caps == "latest"]
        fake = [c for c in runs if c.caps == "fake"]
        pick = (latest or fake or [None])[0]
        if pick is None:
            continue
        if len({c.verdict for c in (latest or fake)}) > 1:
            # `virsh define` parses with ABI_UPDATE; the other run loads a stored definition
            defining = [c for c in (latest or fake) if c.extra.get("parse") == "ABI_UPDATE"]
            if not defining:
                continue  # accepted and rejected under one capability set: depends on caps
            pick = defining[0]
        chosen[name] = pick
    return chosen


def write(src: Path, found: list[Case]) -> int:
    inputs = OUT / "inputs"
    if OUT.exists():
        shutil.rmtree(inputs, ignore_errors=True)
        shutil.rmtree(OUT / "derived", ignore_errors=True)
    inputs.mkdir(parents=True)
    entries: list[dict[str, object]] = []  # the corpus
    out_of_area: list[dict[str, object]] = []
    for name, case in sorted(verdicts(found).items()):
        xml_path = src / DATA / f"{name}.xml"
        if not xml_path.exists():
            continue
        xml = xml_path.read_text()
        if _arch(xml) not in ("x86_64", "i686"):
            continue
        bases = {spec["derived_from"] for spec in DERIVED.values()}
        relevant = bool(RELEVANT.search(name)) or name in EXPECTED or name in bases
        if not relevant:
            continue
        entry: dict[str, object] = {
            "file": f"inputs/{name}.xml",
            "verdict": case.verdict,
            "origin": f"{DATA}/{name}.xml",
            "test": f"{TEST_C}:{case.line} {case.macro}",
            "caps": case.caps,
        }
        if case.verdict == "rejected":
            entry["kind"] = case.kind
            entry["error"] = case.error
            if name in EXPECTED:
                entry["expected_code"] = EXPECTED[name]
            else:
                entry["reason"] = _reason(case)
        elif name in REFUSED_AT_START:
            entry["verdict"] = "accepted-refused-at-start"
            entry["start_error"], entry["expected_code"] = REFUSED_AT_START[name]
        (inputs / f"{name}.xml").write_text(xml)
        (out_of_area if "reason" in entry else entries).append(entry)
    missing = {*EXPECTED, *REFUSED_AT_START} - {Path(str(e["file"])).stem for e in entries}
    if missing:
        print(f"expected inputs not found: {sorted(missing)}", file=sys.stderr)
        return 1
    derived = OUT / "derived"
    derived.mkdir()
    for name, spec in DERIVED.items():
        base = (src / DATA / f"{spec['derived_from']}.xml").read_text()
        (derived / f"{name}.xml").write_text(DERIVE[name](base))
        entries.append(
            {
                "file": f"derived/{name}.xml",
                "verdict": "rejected",
                "derived_from": f"{DATA}/{spec['derived_from']}.xml",
                "change": spec["change"],
                "expected_code": spec["expected"],
                "error": CONFIRMED.get(name),
            }
        )
    manifest = {
        "libvirt": VERSION,
        "source": "Debian libvirt 9.0.0-4+deb12u2 source package (apt-get source libvirt)",
        "licence": "LGPL-2.1-or-later",
        "entries": entries,
        "out_of_area": out_of_area,
    }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    counts: dict[str, int] = {}
    for e in entries:
        counts[str(e["verdict"])] = counts.get(str(e["verdict"]), 0) + 1
    counts["out of area"] = len(out_of_area)
    print(json.dumps(counts))
    return 0


VERSION = "9.0.0"
# libvirt's words for the derived inputs, from the lab libvirtd (tests/integration/
# test_lint_oracle_lab.py asserts them again).
CONFIRMED = {
    "kd-derived-q35-vcpus-289": "unsupported configuration: Maximum CPUs greater than "
    "specified machine type limit 288",
    "kd-derived-i440fx-vcpus-256": "unsupported configuration: Maximum CPUs greater than "
    "specified machine type limit 255",
}


def _vcpus(xml: str, count: int, machine: Optional[str] = None) -> str:
    if machine:
        xml = re.sub(r"machine=['\"][^'\"]*['\"]", f"machine='{machine}'", xml, count=1)
    return re.sub(r"<vcpu([^>]*)>\d+</vcpu>", rf"<vcpu\g<1>>{count}</vcpu>", xml, count=1)


DERIVE = {
    "kd-derived-q35-vcpus-289": lambda xml: _vcpus(xml, 289, "pc-q35-7.2"),
    "kd-derived-i440fx-vcpus-256": lambda xml: _vcpus(xml, 256),
}


if __name__ == "__main__":
    sys.exit(main())
