"""The `kvm`, `net_devices` and `firmware_control` facts on the recorded host, trees and this
machine."""

from __future__ import annotations

import os

import pytest

from doctor.facts import FactUnavailable
from doctor.sources.live import LiveSource
from doctor.sources.snapshot import SnapshotSource

from kdtest import HOST_SNAPSHOT, REALDATA, kvm_device

INTEL = (REALDATA / "cpuinfo/insights__intel-xeon-e5-2670_baremetal_vmx__cpu0.txt").read_text()
AMD = (
    REALDATA / "cpuinfo/ollama__amd-epyc-9754_host-seen-from-lxc_svm_no-hypervisor__cpu0.txt"
).read_text()


def test_kvm_of_the_recorded_host_is_usable(facts) -> None:
    kvm = facts(SnapshotSource(str(HOST_SNAPSHOT))).get("kvm")
    assert kvm.usable and kvm.device.is_char
    assert kvm.as_dict()["device"]["mode"] == "crw-rw----"
    # KVM_CAP_X86_SMM is 0 on this PVM host: no System Management Mode for guests.
    assert kvm.probe.extensions == {"nr_vcpus": 2, "max_vcpus": 1024, "x86_smm": 0}


def test_net_devices_of_the_recorded_host(facts) -> None:
    devices = facts(SnapshotSource(str(HOST_SNAPSHOT))).get("net_devices")
    assert devices.tun.is_char and devices.tun.stat.rdev == "10:200"
    assert not devices.vhost_net.exists and devices.vhost_net.error is None


def test_kvm_of_a_tree_without_dev_is_unavailable(make_tree, facts) -> None:
    with pytest.raises(FactUnavailable, match="holds no /dev"):
        facts(make_tree({"/etc/": None})).get("kvm")


def test_kvm_of_a_tree_with_dev_but_no_kvm_says_the_device_is_missing(make_tree, facts) -> None:
    kvm = facts(make_tree({"/dev/": None})).get("kvm")
    assert (kvm.device.exists, kvm.probe, kvm.probe_unavailable) == (
        False,
        None,
        "the device does not exist",
    )


def test_kvm_of_a_tree_cannot_be_probed(make_tree, facts) -> None:
    kvm = facts(make_tree({"/dev/kvm": ""})).get("kvm")
    assert kvm.device.exists and not kvm.device.is_char and not kvm.usable
    assert kvm.probe is None and "only files are read" in kvm.probe_unavailable


@pytest.mark.integration
def test_kvm_of_this_host_is_proven_by_the_ioctl(facts) -> None:
    kvm_device()
    kvm = facts(LiveSource()).get("kvm")
    assert kvm.device.stat.rdev == "10:232"
    if os.geteuid() == 0:
        assert kvm.usable and kvm.probe.api_version == 12


@pytest.mark.parametrize(
    ("cpuinfo", "register", "value", "expected"),
    [
        pytest.param(INTEL, 0x3A, "0x0000000000000005", ("0x5", True, False), id="intel-enabled"),
        pytest.param(INTEL, 0x3A, "0x0000000000000001", ("0x1", True, True), id="intel-locked-off"),
        pytest.param(INTEL, 0x3A, "0x0000000000000000", ("0x0", False, False), id="intel-unlocked"),
        pytest.param(AMD, 0xC0010114, "0x0000000000000018", ("0x18", True, True), id="amd-svmdis"),
        pytest.param(AMD, 0xC0010114, "0x0000000000000000", ("0x0", False, False), id="amd-on"),
    ],
)
def test_firmware_control_reads_the_vendors_msr(
    edit_snapshot, facts, cpuinfo: str, register: int, value: str, expected
) -> None:
    snap = (
        edit_snapshot()
        .set_file("/proc/cpuinfo", cpuinfo)
        .set_value("msr", value, cpu=0, register=f"{register:#x}")
        .save()
    )
    control = facts(SnapshotSource(str(snap))).get("firmware_control")
    assert (control.value, control.locked, control.disabled) == expected


def test_firmware_control_without_the_msr_module_is_unavailable(edit_snapshot, facts) -> None:
    snap = edit_snapshot().set_file("/proc/cpuinfo", INTEL).save()
    with pytest.raises(FactUnavailable, match="msr module"):
        facts(SnapshotSource(str(snap))).get("firmware_control")


def test_firmware_control_of_an_arm_cpu_is_unavailable(edit_snapshot, facts) -> None:
    arm = (REALDATA / "cpuinfo/virt-what__gce-arm64-guest_neoverse-n1_aarch64.txt").read_text()
    snap = edit_snapshot().set_file("/proc/cpuinfo", arm).save()
    with pytest.raises(FactUnavailable, match="no firmware virtualization MSR known"):
        facts(SnapshotSource(str(snap))).get("firmware_control")
