"""parse_cpuinfo and the `cpu` fact on real /proc/cpuinfo captures (realdata/SOURCES.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from doctor.facts import FactUnavailable
from doctor.facts.cpu import parse_cpuinfo
from doctor.sources.live import LiveSource

from kdtest import REALDATA

CPUINFO = REALDATA / "cpuinfo"

# file: (vendor, model, arch, processors, virt_flag, hypervisor_bit, virt_feature)
CASES = {
    "insights__intel-xeon-e5-2670_baremetal_vmx__cpu0.txt": (
        "GenuineIntel",
        "Intel(R) Xeon(R) CPU E5-2670 0 @ 2.60GHz",
        "x86_64",
        1,
        "vmx",
        False,
        "VT-x",
    ),
    "virt-what__intel-core-i7-m620_baremetal_vmx.txt": (
        "GenuineIntel",
        "Intel(R) Core(TM) i7 CPU       M 620  @ 2.67GHz",
        "x86_64",
        4,
        "vmx",
        False,
        "VT-x",
    ),
    "ollama__amd-epyc-9754_host-seen-from-lxc_svm_no-hypervisor__cpu0.txt": (
        "AuthenticAMD",
        "AMD EPYC 9754 128-Core Processor",
        "x86_64",
        1,
        "svm",
        False,
        "AMD-V",
    ),
    "ollama__amd-epyc-9754_guest_hypervisor+svm-nested__cpu0.txt": (
        "AuthenticAMD",
        "AMD EPYC 9754 128-Core Processor",
        "x86_64",
        1,
        "svm",
        True,
        "AMD-V",
    ),
    "virt-what__vmware-esx4.1-guest_core2-e8400_no-vmx_no-hypervisor-flag.txt": (
        "GenuineIntel",
        "Intel(R) Core(TM)2 Duo CPU     E8400  @ 3.00GHz",
        "x86_64",
        1,
        None,
        False,
        "VT-x (VMX)",
    ),
    "virt-what__hyperv-guest_xeon-5130_no-vmx_no-hypervisor-flag.txt": (
        "GenuineIntel",
        "Intel(R) Xeon(R) CPU            5130  @ 2.00GHz",
        "x86_64",
        1,
        None,
        False,
        "VT-x (VMX)",
    ),
    "virt-what__gce-arm64-guest_neoverse-n1_aarch64.txt": (
        "0x41",
        None,
        "aarch64",
        1,
        None,
        False,
        "hardware virtualization",
    ),
    "virt-what__vmware-esxi-arm-guest_cortex-a72_aarch64.txt": (
        "0x41",
        None,
        "aarch64",
        2,
        None,
        False,
        "hardware virtualization",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_parse_cpuinfo_on_real_captures(name: str) -> None:
    cpu = parse_cpuinfo((CPUINFO / name).read_text())
    assert (
        cpu.vendor,
        cpu.model,
        cpu.arch,
        cpu.processors,
        cpu.virt_flag,
        cpu.hypervisor_bit,
        cpu.virt_feature,
    ) == CASES[name]


def test_every_real_capture_has_a_case() -> None:
    assert sorted(p.name for p in CPUINFO.iterdir()) == sorted(CASES)


def test_flags_come_from_the_flags_line_not_the_vmx_flags_line() -> None:
    cpu = parse_cpuinfo(
        (CPUINFO / "insights__intel-xeon-e5-2670_baremetal_vmx__cpu0.txt").read_text()
    )
    assert "ept" in cpu.flags and "vmx" in cpu.flags
    assert "preemption_timer" not in cpu.flags  # only on the separate "vmx flags" line
    assert cpu.as_dict()["flags"] == len(cpu.flags)


def test_aarch64_features_line_gives_the_flags() -> None:
    cpu = parse_cpuinfo(
        (CPUINFO / "virt-what__gce-arm64-guest_neoverse-n1_aarch64.txt").read_text()
    )
    assert cpu.flags[:2] == ("fp", "asimd")


def test_trailing_empty_line_of_a_real_proc_cpuinfo_changes_nothing() -> None:
    text = (CPUINFO / "virt-what__intel-core-i7-m620_baremetal_vmx.txt").read_text()
    assert parse_cpuinfo(text + "\n") == parse_cpuinfo(text)


def test_empty_cpuinfo_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        parse_cpuinfo("\n\n")


def test_this_machines_cpuinfo_matches_uname_and_cpu_count() -> None:
    cpu = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    assert cpu.arch == os.uname().machine
    assert cpu.processors == os.cpu_count()


def test_cpu_fact_reads_the_trees_cpuinfo(make_tree, facts) -> None:
    name = "ollama__amd-epyc-9754_guest_hypervisor+svm-nested__cpu0.txt"
    tree = make_tree({"/proc/cpuinfo": (CPUINFO / name).read_text()})
    cpu = facts(tree).get("cpu")
    assert (cpu.vendor, cpu.virt_flag, cpu.hypervisor_bit) == ("AuthenticAMD", "svm", True)


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        pytest.param({"/etc/": None}, "holds no /proc", id="tree-without-proc"),
        pytest.param({"/proc/": None}, "cannot read /proc/cpuinfo", id="proc-without-cpuinfo"),
        pytest.param({"/proc/cpuinfo": "\n"}, "empty /proc/cpuinfo", id="empty-cpuinfo"),
    ],
)
def test_cpu_fact_is_unavailable_with_the_reason(make_tree, facts, files, reason: str) -> None:
    with pytest.raises(FactUnavailable, match=reason):
        facts(make_tree(files)).get("cpu")


def test_cpu_fact_on_this_host_matches_the_kernel() -> None:
    from doctor.facts import FactContext

    cpu = FactContext(LiveSource()).get("cpu")
    assert cpu.arch == os.uname().machine


DATA = Path(__file__).resolve().parent / "data/cpuinfo"


def test_s390x_counts_its_processor_lines_not_the_summary() -> None:
    cpu = parse_cpuinfo((DATA / "virt-what__zvm-guest_s390x.txt").read_text())
    assert (cpu.vendor, cpu.arch, cpu.processors, cpu.model) == ("IBM/S390", "s390x", 1, None)
    assert cpu.flags[:2] == ("esan3", "zarch")


def test_32_bit_arm_kernel_on_armv8_hardware_is_not_aarch64() -> None:
    name = "go-raspi-training__raspberry-pi-4_32-bit-kernel_armv7l.txt"
    cpu = parse_cpuinfo((DATA / name).read_text())
    assert (cpu.arch, cpu.processors, cpu.model) == ("armv7l", 4, "ARMv7 Processor rev 3 (v7l)")
