"""KVM001-KVM008: a failing and a passing case each, on real recorded and captured data.

The base is the snapshot recorded on the lab machine (KVM works there through kvm_pvm, without a
vmx flag). Failing hosts are that snapshot with the answers that differ replaced, using real
kernel log lines, /proc/cpuinfo and DMI values captured on other machines (tests/fixtures/realdata,
origins in its SOURCES.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kdhosts import intel_bare_metal, no_kvm_device
from kdsnap import ALICE_IDENTITY, REALDATA_DMI, one, realdata, run_checks

VMWARE_GUEST = "cpuinfo/virt-what__vmware-esx4.1-guest_core2-e8400_no-vmx_no-hypervisor-flag.txt"
DISABLED_BY_BIOS = "kernel-log/platform9-express-206__dmesg-grep-kvm__kvm-disabled-by-bios_and_no-hardware-support.txt"
FEAT_CTL = "kernel-log/notes-id60370478174__dmesg-grep-vmx__VMX-outside-TXT_and_kvm_intel-VMX-not-enabled-MSR_IA32_FEAT_CTL_i5-4460.txt"
VMX_NOT_SUPPORTED = "kernel-log/lkml-nkamboju__dmesg-with-loglevel__kvm_intel-VMX-not-supported_kvm_amd-SVM-not-supported-not-amd_cloud-guest.txt"

ALICE_PASSWD = "alice:x:1500:1500:Alice,,,:/home/alice:/bin/bash\n"
DENIED_PROBE = {
    "path": "/dev/kvm",
    "opened": False,
    "open_errno": "EACCES",
    "api_version": None,
    "api_errno": None,
    "vm_created": None,
    "create_vm_errno": None,
    "extensions": {},
}


def dmi(snap: Any, case: str) -> None:
    values = json.loads(REALDATA_DMI.read_text())[case]
    for name in ("sys_vendor", "product_name", "bios_vendor", "board_vendor"):
        if values.get(name):
            snap.set_file(f"/sys/class/dmi/id/{name}", values[name] + "\n")


@pytest.fixture(scope="module")
def host() -> dict[str, list[Any]]:
    from kdtest import HOST_SNAPSHOT

    return run_checks(HOST_SNAPSHOT)


# --- KVM001 kvm-device-missing ------------------------------------------------------------


def test_kvm001_passes_where_the_device_exists(host: dict[str, list[Any]]) -> None:
    finding = one(host, "KVM001")
    assert finding.status == "pass"
    assert finding.evidence["device"]["rdev"] == "10:232"


def test_kvm001_names_the_firmware_when_the_kernel_said_disabled_by_bios(
    edit_snapshot: Any,
) -> None:
    snap = intel_bare_metal(no_kvm_device(edit_snapshot()), realdata(DISABLED_BY_BIOS))
    finding = one(run_checks(snap.save()), "KVM001")
    assert finding.status == "fail"
    assert finding.evidence["cause"] == "KVM003"
    assert "firmware has VT-x switched off" in finding.message
    assert "kvm: disabled by bios" in finding.message


def test_kvm001_names_the_outer_hypervisor_in_a_vmware_guest(edit_snapshot: Any) -> None:
    snap = no_kvm_device(edit_snapshot())
    snap.set_file("/proc/cpuinfo", realdata(VMWARE_GUEST))
    dmi(snap, "vmware_esx4.1_guest")
    finding = one(run_checks(snap.save()), "KVM001")
    assert finding.status == "fail"
    assert finding.evidence["cause"] == "KVM004"
    assert "runs under VMware" in finding.message


def test_kvm001_names_the_missing_module_on_a_cpu_with_vmx(edit_snapshot: Any) -> None:
    snap = intel_bare_metal(no_kvm_device(edit_snapshot()), "[    0.000000] Linux version 6.1.0\n")
    finding = one(run_checks(snap.save()), "KVM001")
    assert finding.status == "fail"
    assert finding.evidence["cause"] == "KVM005"
    assert "kvm_intel is not loaded" in finding.message


def test_kvm001_fails_on_a_regular_file_in_place_of_the_device(edit_snapshot: Any) -> None:
    snap = edit_snapshot().set_stat("/dev/kvm", type="file", rdev=None)
    finding = one(run_checks(snap.save()), "KVM001")
    assert finding.status == "fail"
    assert "is a file" in finding.message


# --- KVM002 kvm-device-not-accessible ------------------------------------------------------


def test_kvm002_passes_for_root_libvirtd_and_the_qemu_user(host: dict[str, list[Any]]) -> None:
    by_subject = {f.subject: f for f in host["KVM002"]}
    assert by_subject["user:libvirt-qemu"].status == "pass"
    assert "group kvm: rw-" in by_subject["user:libvirt-qemu"].message
    assert by_subject["user:root"].status == "pass"
    assert any(s.startswith("process:root[") for s in by_subject), by_subject
    assert all(f.status == "pass" for f in host["KVM002"])


def test_kvm002_fails_for_the_qemu_user_on_a_fresh_root_only_device(edit_snapshot: Any) -> None:
    # A fresh machine of the lab's kind has crw------- root root (shared/LAB.md).
    snap = edit_snapshot().set_stat("/dev/kvm", mode=0o600, gid=0)
    finding = one(run_checks(snap.save()), "KVM002", "user:libvirt-qemu")
    assert finding.status == "fail"
    assert "crw------- root:root" in finding.message
    assert finding.evidence["principal"]["role"] == "qemu.conf user"


def alice(snap: Any, groups: str = "") -> Any:
    passwd = (snap.path / "files/etc/passwd").read_text() + ALICE_PASSWD
    group = (snap.path / "files/etc/group").read_text() + "alice:x:1500:\n"
    if groups:
        group = group.replace("kvm:x:107:", f"kvm:x:107:{groups}")
    snap.set_file("/etc/passwd", passwd).set_file("/etc/group", group)
    snap.set_value("identity", ALICE_IDENTITY).set_value("kvm_probe", DENIED_PROBE, path="/dev/kvm")
    return snap


def test_kvm002_fails_for_a_session_user_outside_the_kvm_group(edit_snapshot: Any) -> None:
    snap = alice(edit_snapshot())
    finding = one(run_checks(snap.save()), "KVM002", "user:alice")
    assert finding.status == "fail"  # non-root without a URI means qemu:///session
    assert "alice (uid 1500) cannot open /dev/kvm" in finding.message
    assert finding.evidence["open_result"] == "EACCES"


def test_kvm002_only_warns_for_the_user_when_the_uri_is_the_system_one(edit_snapshot: Any) -> None:
    snap = alice(edit_snapshot())
    finding = one(run_checks(snap.save(), uri="qemu:///system"), "KVM002", "user:alice")
    assert finding.status == "warn"


def test_kvm002_passes_through_a_logind_style_acl_entry(edit_snapshot: Any) -> None:
    acl = [
        {"tag": "user", "qualifier": None, "perms": "rw-"},
        {"tag": "user", "qualifier": 1500, "perms": "rw-"},
        {"tag": "group", "qualifier": None, "perms": "rw-"},
        {"tag": "mask", "qualifier": None, "perms": "rw-"},
        {"tag": "other", "qualifier": None, "perms": "---"},
    ]
    snap = alice(edit_snapshot()).set_stat("/dev/kvm", acl=acl)
    snap.set_value(
        "kvm_probe",
        {**DENIED_PROBE, "opened": True, "open_errno": None, "api_version": 12, "vm_created": True},
        path="/dev/kvm",
    )
    finding = one(run_checks(snap.save()), "KVM002", "user:alice")
    assert finding.status == "pass"
    assert "ACL entry user:alice:rw-" in finding.message
    assert finding.evidence["device"]["mode"] == "crw-rw----+"


def test_kvm002_fails_when_the_acl_mask_takes_write_away(edit_snapshot: Any) -> None:
    acl = [
        {"tag": "user", "qualifier": None, "perms": "rw-"},
        {"tag": "user", "qualifier": 1500, "perms": "rw-"},
        {"tag": "group", "qualifier": None, "perms": "rw-"},
        {"tag": "mask", "qualifier": None, "perms": "r--"},
        {"tag": "other", "qualifier": None, "perms": "---"},
    ]
    snap = alice(edit_snapshot()).set_stat("/dev/kvm", acl=acl, mode=0o640)
    finding = one(run_checks(snap.save()), "KVM002", "user:alice")
    assert finding.status == "fail"
    assert "masked to r--" in finding.message


def test_kvm002_blames_an_lsm_when_the_mode_allows_but_open_was_refused(edit_snapshot: Any) -> None:
    snap = alice(edit_snapshot(), groups="alice")
    snap.set_value("identity", {**ALICE_IDENTITY, "groups": [107, 1500]})
    finding = one(run_checks(snap.save()), "KVM002", "user:alice")
    assert finding.status == "fail"
    assert "LSM" in finding.message


# --- KVM003 cpu-virt-disabled-by-firmware --------------------------------------------------


def test_kvm003_passes_where_kvm_creates_vms(host: dict[str, list[Any]]) -> None:
    assert one(host, "KVM003").status == "pass"


@pytest.mark.parametrize("log", [DISABLED_BY_BIOS, FEAT_CTL])
def test_kvm003_fails_on_the_kernels_firmware_lines(edit_snapshot: Any, log: str) -> None:
    snap = intel_bare_metal(no_kvm_device(edit_snapshot()), realdata(log))
    finding = one(run_checks(snap.save()), "KVM003")
    assert finding.status == "fail"
    assert finding.evidence["kernel_lines"]
    assert finding.evidence["kernel_log"]["origin"] == "/var/log/kern.log"


def test_kvm003_fails_on_a_locked_feature_control_msr_without_vmx(edit_snapshot: Any) -> None:
    snap = intel_bare_metal(no_kvm_device(edit_snapshot()), "[    0.000000] Linux version 6.1\n")
    snap.set_value("msr", "0x0000000000000001", cpu=0, register="0x3a")
    finding = one(run_checks(snap.save()), "KVM003")
    assert finding.status == "fail"
    assert finding.evidence["msr"]["disabled"] is True


def test_kvm003_passes_on_an_unlocked_msr_and_a_clean_log(edit_snapshot: Any) -> None:
    snap = intel_bare_metal(no_kvm_device(edit_snapshot()), "[    0.000000] Linux version 6.1\n")
    snap.set_value("msr", "0x0000000000000005", cpu=0, register="0x3a")
    assert one(run_checks(snap.save()), "KVM003").status == "pass"


# --- KVM004 nested-virt-not-exposed --------------------------------------------------------


def test_kvm004_passes_inside_kvm_where_kvm_works_without_the_flag(
    host: dict[str, list[Any]],
) -> None:
    finding = one(host, "KVM004")
    assert finding.status == "pass"
    assert "KVM/QEMU" in finding.message
    assert "no vmx/svm" in finding.message


def test_kvm004_names_vmware_and_its_setting_in_a_vmware_guest(edit_snapshot: Any) -> None:
    snap = no_kvm_device(edit_snapshot())
    snap.set_file("/proc/cpuinfo", realdata(VMWARE_GUEST))
    dmi(snap, "vmware_esx4.1_guest")
    finding = one(run_checks(snap.save()), "KVM004")
    assert finding.status == "fail"
    assert "Expose hardware assisted virtualization" in finding.message
    assert finding.evidence["virtualization"]["hypervisor"] == "vmware"


def test_kvm004_only_informs_where_the_device_exists_but_cannot_be_tested(
    edit_snapshot: Any,
) -> None:
    snap = edit_snapshot().drop("kvm_probe", path="/dev/kvm")  # as under --root
    finding = one(run_checks(snap.save()), "KVM004")
    assert finding.status == "info"
    assert "could not be tested" in finding.message


def test_kvm004_only_informs_when_kvmdoctor_may_not_open_the_device(edit_snapshot: Any) -> None:
    snap = edit_snapshot().set_value("kvm_probe", DENIED_PROBE, path="/dev/kvm")
    assert one(run_checks(snap.save()), "KVM004").status == "info"


def test_kvm004_passes_on_bare_metal(edit_snapshot: Any) -> None:
    snap = intel_bare_metal(edit_snapshot(), "[    0.000000] Linux version 6.1.0\n")
    finding = one(run_checks(snap.save()), "KVM004")
    assert finding.status == "pass"
    assert "not running inside a hypervisor" in finding.message


# --- KVM005 kvm-module-not-loaded ----------------------------------------------------------


def test_kvm005_passes_with_the_built_in_pvm_backend(host: dict[str, list[Any]]) -> None:
    finding = one(host, "KVM005")
    assert finding.status == "pass"
    assert finding.evidence["backends"] == {"kvm_pvm": "built in"}


def test_kvm005_fails_when_kvm_intel_refused_to_load(edit_snapshot: Any) -> None:
    snap = intel_bare_metal(no_kvm_device(edit_snapshot()), realdata(VMX_NOT_SUPPORTED))
    finding = one(run_checks(snap.save()), "KVM005")
    assert finding.status == "fail"
    assert "kvm_intel is not" in finding.message
    assert "VMX not supported" in finding.message


def test_kvm005_fails_when_kvm_itself_is_not_loaded(edit_snapshot: Any) -> None:
    snap = intel_bare_metal(no_kvm_device(edit_snapshot()), "")
    snap.set_file("/proc/modules", "tun 61440 0 - Live 0x0000000000000000\n")
    snap.set_value("dir", ["tun"], path="/sys/module")
    finding = one(run_checks(snap.save()), "KVM005")
    assert finding.status == "fail"
    assert "modprobe kvm_intel" in finding.message


# --- KVM006 kvm-usable ---------------------------------------------------------------------


def test_kvm006_passes_on_the_lab_host_despite_no_vmx_flag(host: dict[str, list[Any]]) -> None:
    finding = one(host, "KVM006")
    assert finding.status == "pass"
    assert "no vmx/svm flag" in finding.message
    assert finding.evidence["probe"]["api_version"] == 12


def test_kvm006_fails_when_the_kernel_refuses_to_create_a_vm(edit_snapshot: Any) -> None:
    probe = {
        **DENIED_PROBE,
        "opened": True,
        "open_errno": None,
        "api_version": 12,
        "vm_created": False,
        "create_vm_errno": "EBUSY",
    }
    snap = edit_snapshot().set_value("kvm_probe", probe, path="/dev/kvm")
    finding = one(run_checks(snap.save()), "KVM006")
    assert finding.status == "fail"
    assert "VirtualBox" in finding.message


def test_kvm006_fails_without_the_device(edit_snapshot: Any) -> None:
    finding = one(run_checks(no_kvm_device(edit_snapshot()).save()), "KVM006")
    assert finding.status == "fail"


def test_kvm006_warns_when_kvmdoctor_itself_may_not_open_the_device(edit_snapshot: Any) -> None:
    snap = edit_snapshot().set_value("kvm_probe", DENIED_PROBE, path="/dev/kvm")
    assert one(run_checks(snap.save()), "KVM006").status == "warn"


# --- KVM007 kvm-group-membership-stale -----------------------------------------------------


def test_kvm007_passes_on_the_lab_host(host: dict[str, list[Any]]) -> None:
    assert [f.status for f in host["KVM007"]] == ["pass"]


def test_kvm007_warns_when_the_session_predates_the_kvm_group(edit_snapshot: Any) -> None:
    snap = alice(edit_snapshot(), groups="alice")  # /etc/group: yes; the process: no
    finding = one(run_checks(snap.save()), "KVM007", "user:alice")
    assert finding.status == "warn"
    assert finding.evidence["missing"] == ["kvm"]
    assert "newgrp kvm" in finding.message
    kvm002 = one(run_checks(snap.path), "KVM002", "user:alice")
    assert "see KVM007" in kvm002.message


def test_kvm007_warns_for_a_qemu_process_started_before_the_group_change(
    edit_snapshot: Any, tmp_path: Path
) -> None:
    snap = edit_snapshot()
    rows = json.loads((snap.path / "processes.json").read_text())
    rows.append(
        {
            "pid": 4242,
            "ppid": 1,
            "name": "qemu-system-x86_64",
            "exe": "/usr/bin/qemu-system-x86_64",
            "cmdline": ["/usr/bin/qemu-system-x86_64"],
            "uid": 64055,
            "gid": 64055,
        }
    )
    snap.set_processes(rows)
    # What /proc/PID/status says for a QEMU process whose groups lack kvm (107).
    snap.set_file(
        "/proc/4242/status",
        "Name:\tqemu-system-x86\nUid:\t64055\t64055\t64055\t64055\n"
        "Gid:\t64055\t64055\t64055\t64055\nGroups:\t64055 \n",
    )
    finding = one(run_checks(snap.save()), "KVM007", "process:libvirt-qemu[4242]")
    assert finding.status == "warn"
    assert "power-cycle the guest" in finding.message


# --- KVM008 vhost-net-unavailable ----------------------------------------------------------


def test_kvm008_warns_about_vhost_net_on_the_lab_host(host: dict[str, list[Any]]) -> None:
    assert one(host, "KVM008", "device:/dev/vhost-net").status == "warn"
    assert one(host, "KVM008", "device:/dev/net/tun").status == "pass"


def test_kvm008_passes_with_both_devices(edit_snapshot: Any) -> None:
    snap = edit_snapshot().set_stat("/dev/vhost-net", mode=0o600, rdev="10:238")
    findings = run_checks(snap.save())
    assert {f.status for f in findings["KVM008"]} == {"pass"}


def test_kvm008_fails_without_the_tun_device(edit_snapshot: Any) -> None:
    snap = edit_snapshot().missing("stat", path="/dev/net/tun")
    finding = one(run_checks(snap.save()), "KVM008", "device:/dev/net/tun")
    assert finding.status == "fail"
    assert "cannot load modules" in finding.message  # this kernel has no module support


@pytest.mark.parametrize(
    ("pattern", "needles"),
    [
        ("FIRMWARE_DISABLED", "FIRMWARE_DISABLED_NEEDLES"),
        ("NO_HW_SUPPORT", "NO_HW_SUPPORT_NEEDLES"),
    ],
)
def test_every_wording_a_kernel_log_pattern_finds_holds_one_of_its_needles(
    pattern: str, needles: str
) -> None:
    import re

    import checks.kvm as kvm

    # Each alternative is literal text (escaped parentheses aside), so holding a needle is
    # holding it in every line the alternative matches: no log is left unsearched wrongly.
    alternatives = getattr(kvm, pattern).pattern.split("|")
    for alternative in alternatives:
        text = alternative.replace("\\(", "(").replace("\\)", ")")
        assert re.escape(text).replace("\\ ", " ") == alternative.replace("\\ ", " ")
        assert any(n in text.lower() for n in getattr(kvm, needles)), alternative
