"""Virtualization detection (DMI, kernel log, CPUID bit, /sys/hypervisor) and the `host` fact,
on trees made of real captured cpuinfo, DMI strings and kernel log lines."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import pytest

from doctor.facts.host import HYPERVISOR_NAMES, classify_dmi, os_release_name
from doctor.sources.live import LiveSource
from doctor.sources.snapshot import SnapshotSource

from kdsnap import REALDATA_DMI
from kdsnap import realdata as realfile
from kdtest import HOST_SNAPSHOT

DMI_CASES = json.loads(REALDATA_DMI.read_text())
DMI_FIELDS = ("sys_vendor", "product_name", "bios_vendor", "board_vendor")

EXPECTED_DMI = {
    "vmware_esx4.1_guest": "vmware",
    "vmware_guest_insights": "vmware",
    "hyperv_guest_2008": "microsoft",
    "hyperv_guest_debian9_sysfs": "microsoft",
    "qemu_kvm_old_bochs": "kvm",
    "qemu_kvm_q35_seabios_dmesg": "kvm",
    "rhev_kvm_guest": "kvm",
    "ovirt_kvm_guest": "kvm",
    "nutanix_ahv_kvm_guest": "kvm",  # systemd-detect-virt said "microsoft" on this guest
    "aws_ec2_xen_hvm": "xen",
    "gce_arm64_guest": "google",
    "alibaba_cloud_ecs": "kvm",
}


@pytest.mark.parametrize("case", sorted(DMI_CASES))
def test_classify_dmi_on_real_vendor_strings(case: str) -> None:
    assert classify_dmi(DMI_CASES[case]) == EXPECTED_DMI[case]


def test_classify_dmi_reads_only_the_sysfs_fields() -> None:
    # The same strings as the kernel would expose them: absent fields are missing files.
    for case, values in DMI_CASES.items():
        sysfs = {k: values[k] for k in DMI_FIELDS if values.get(k)}
        assert classify_dmi(sysfs) == EXPECTED_DMI[case], case


def test_microsoft_dmi_without_a_virtual_product_is_not_hyper_v() -> None:
    physical = {**DMI_CASES["hyperv_guest_2008"], "product_name": "Surface Laptop 3"}
    assert classify_dmi(physical) is None
    assert classify_dmi({}) is None


def dmi_files(case: str) -> dict[str, Optional[str]]:
    values = DMI_CASES[case]
    return {f"/sys/class/dmi/id/{k}": values[k] + "\n" for k in DMI_FIELDS if values.get(k)}


CPU = {
    "xeon-metal": "cpuinfo/insights__intel-xeon-e5-2670_baremetal_vmx__cpu0.txt",
    "epyc-guest": "cpuinfo/ollama__amd-epyc-9754_guest_hypervisor+svm-nested__cpu0.txt",
    "esx41": "cpuinfo/virt-what__vmware-esx4.1-guest_core2-e8400_no-vmx_no-hypervisor-flag.txt",
    "hyperv": "cpuinfo/virt-what__hyperv-guest_xeon-5130_no-vmx_no-hypervisor-flag.txt",
    "gce-arm": "cpuinfo/virt-what__gce-arm64-guest_neoverse-n1_aarch64.txt",
}
LOG = {
    "q35": "kernel-log/lkml-rrichter__dmesg__qemu-q35-guest_boot-header_DMI-QEMU_Hypervisor-detected-KVM.txt",
    "hv-enlightened-kvm": "kernel-log/lkml-seanjc__dmesg-grep-hyper-v__Hypervisor-detected-Microsoft-Hyper-V_kvm-guest-with-hv-enlightenments.txt",
    "vmware": "kernel-log/peter-moller-system-info-9__dmesg-grep-hypervisor__Hypervisor-detected-VMware.txt",
    "kvm-debian8": "kernel-log/fusioninventory-agent-594__dmesg-excerpt__Hypervisor-detected-KVM_debian8-3.16.txt",
    "bios": "kernel-log/platform9-express-206__dmesg-grep-kvm__kvm-disabled-by-bios_and_no-hardware-support.txt",
}


def host_tree(
    make_tree: Any,
    *,
    cpu: Optional[str] = None,
    log: Optional[str] = None,
    dmi: Optional[str] = None,
    extra: Optional[dict[str, Optional[str]]] = None,
) -> Path:
    files: dict[str, Optional[str]] = {"/proc/": None, "/sys/": None, "/var/log/": None}
    if cpu:
        files["/proc/cpuinfo"] = realfile(CPU[cpu])
    if log:
        files["/var/log/kern.log"] = realfile(LOG[log])
    if dmi:
        files.update(dmi_files(dmi))
    files.update(extra or {})
    return make_tree(files)


@pytest.mark.parametrize(
    ("parts", "hypervisor", "detected_by", "bit"),
    [
        pytest.param(
            {"dmi": "qemu_kvm_q35_seabios_dmesg", "log": "q35"},
            "kvm",
            ("dmi", "kernel log"),
            None,
            id="q35-guest-dmi-and-kernel-agree",
        ),
        pytest.param(
            {"dmi": "nutanix_ahv_kvm_guest", "log": "hv-enlightened-kvm"},
            "kvm",
            ("dmi", "kernel log"),
            None,
            id="kvm-with-hyperv-enlightenments-dmi-wins-over-the-kernel-line",
        ),
        pytest.param(
            {"cpu": "esx41", "dmi": "vmware_esx4.1_guest"},
            "vmware",
            ("dmi",),
            False,
            id="old-vmware-guest-without-hypervisor-flag-found-by-dmi",
        ),
        pytest.param(
            {"cpu": "hyperv", "dmi": "hyperv_guest_2008"},
            "microsoft",
            ("dmi",),
            False,
            id="old-hyperv-guest-found-by-dmi",
        ),
        pytest.param(
            {"cpu": "gce-arm", "dmi": "gce_arm64_guest"},
            "google",
            ("dmi",),
            False,
            id="gce-arm64-guest",
        ),
        pytest.param(
            {"cpu": "epyc-guest"},
            "unknown",
            ("cpuid hypervisor bit",),
            True,
            id="only-the-cpuid-bit",
        ),
        pytest.param({"log": "vmware"}, "vmware", ("kernel log",), None, id="only-the-kernel-line"),
        pytest.param({"cpu": "xeon-metal", "log": "bios"}, None, (), False, id="bare-metal-xeon"),
    ],
)
def test_virt_fact_on_trees_of_real_data(
    make_tree, facts, parts, hypervisor: Optional[str], detected_by, bit
) -> None:
    virt = facts(host_tree(make_tree, **parts)).get("virt")
    assert (virt.hypervisor, virt.detected_by, virt.cpu_hypervisor_bit) == (
        hypervisor,
        detected_by,
        bit,
    )
    assert virt.name == HYPERVISOR_NAMES.get(hypervisor or "", "bare metal")
    assert json.loads(json.dumps(virt.as_dict()))["name"] == virt.name


def test_kernel_line_of_an_enlightened_kvm_guest_alone_says_hyper_v(make_tree, facts) -> None:
    # SOURCES.md caveat: this "Microsoft Hyper-V" line came from a KVM guest. Without DMI the
    # fact can only repeat what the kernel said, and shows that the kernel was its only witness.
    virt = facts(host_tree(make_tree, log="hv-enlightened-kvm")).get("virt")
    assert (virt.hypervisor, virt.detected_by) == ("microsoft", ("kernel log",))
    assert virt.kernel_line == "[    0.000000] Hypervisor detected: Microsoft Hyper-V"


def test_dmi_strings_are_reported_as_the_kernel_exposes_them(make_tree, facts) -> None:
    virt = facts(host_tree(make_tree, dmi="nutanix_ahv_kvm_guest")).get("virt")
    assert virt.dmi == {"sys_vendor": "Nutanix", "product_name": "AHV", "bios_vendor": "SeaBIOS"}


def test_sys_hypervisor_type_xen_is_evidence(make_tree, facts) -> None:
    tree = host_tree(make_tree, dmi="aws_ec2_xen_hvm", extra={"/sys/hypervisor/type": "xen\n"})
    virt = facts(tree).get("virt")
    assert (virt.hypervisor, virt.detected_by) == ("xen", ("dmi", "/sys/hypervisor/type"))


def test_virt_of_a_tree_without_proc_sys_or_logs_is_bare_metal_by_default(make_tree, facts) -> None:
    virt = facts(make_tree({"/etc/": None})).get("virt")
    assert (virt.hypervisor, virt.detected_by, virt.cpu_hypervisor_bit) == (None, (), None)


def test_virt_of_the_recorded_host_is_kvm_by_kernel_line_and_cpuid_bit(facts) -> None:
    virt = facts(SnapshotSource(str(HOST_SNAPSHOT))).get("virt")
    assert (virt.hypervisor, virt.detected_by, virt.dmi) == (
        "kvm",
        ("kernel log", "cpuid hypervisor bit"),
        {},
    )


# --- host --------------------------------------------------------------------------------------


def test_os_release_name_prefers_pretty_name() -> None:
    text = (HOST_SNAPSHOT / "files/etc/os-release").read_text()
    assert os_release_name(text) == "Debian GNU/Linux 12 (bookworm)"
    assert os_release_name('NAME="Fedora Linux"\n') == "Fedora Linux"
    assert os_release_name("# nothing\n") is None


def test_host_of_a_tree_comes_from_its_files(make_tree, facts) -> None:
    tree = make_tree(
        {
            "/usr/lib/os-release": (HOST_SNAPSHOT / "files/etc/os-release").read_text(),
            "/etc/hostname": "web-7\n",
            "/proc/sys/kernel/osrelease": "6.1.0-18-amd64\n",
            "/proc/cpuinfo": realfile(CPU["gce-arm"]),
        }
    )
    host = facts(tree).get("host")
    assert (host.hostname, host.kernel, host.os, host.arch, host.arch_from) == (
        "web-7",
        "6.1.0-18-amd64",
        "Debian GNU/Linux 12 (bookworm)",
        "aarch64",
        "/proc/cpuinfo",
    )


def test_host_arch_of_a_tree_without_cpuinfo_comes_from_its_qemu_binary(make_tree, facts) -> None:
    tree = make_tree({"/usr/bin/qemu-system-x86_64": "", "/usr/bin/qemu-img": ""})
    host = facts(tree).get("host")
    assert (host.arch, host.arch_from) == ("x86_64", "/usr/bin/qemu-system-x86_64")


def test_host_of_this_machine_comes_from_uname(facts) -> None:
    host = facts(LiveSource()).get("host")
    assert (host.hostname, host.kernel, host.arch, host.arch_from) == (
        os.uname().nodename,
        os.uname().release,
        os.uname().machine,
        "uname",
    )
