"""Kernel log search and current-boot trimming, and the `modules` fact, on real captures."""

from __future__ import annotations

import os
import re
import time

import pytest

from doctor.facts import FactContext, FactUnavailable
from doctor.facts.kernel import LOG_FILES, KernelLog, current_boot
from doctor.sources.live import LiveSource
from doctor.sources.snapshot import SnapshotSource

from kdtest import HOST_SNAPSHOT, REALDATA

LOGS = REALDATA / "kernel-log"
DISABLED_BY_BIOS = (
    "platform9-express-206__dmesg-grep-kvm__kvm-disabled-by-bios_and_no-hardware-support.txt"
)
Q35_BOOT_HEADER = (
    "lkml-rrichter__dmesg__qemu-q35-guest_boot-header_DMI-QEMU_Hypervisor-detected-KVM.txt"
)
Q35_LATER = (
    "lkml-rrichter__dmesg__qemu-q35-guest_kvm_intel-VMX-not-supported_kvm_amd-svm-not-available.txt"
)
WITH_LOGLEVEL = "lkml-nkamboju__dmesg-with-loglevel__kvm_intel-VMX-not-supported_kvm_amd-SVM-not-supported-not-amd_cloud-guest.txt"
PRINTK_CALLER = "lkml-bpetkov__dmesg__x86-cpu-VMX-outside-TXT-disabled-by-BIOS_printk-caller-id.txt"


def lines(name: str) -> list[str]:
    return (LOGS / name).read_text().splitlines()


def log(name: str) -> KernelLog:
    return KernelLog("test", tuple(lines(name)))


# --- search ------------------------------------------------------------------------------------


def test_search_finds_every_repeated_line() -> None:
    found = log(DISABLED_BY_BIOS).search(re.compile(r"kvm: disabled by bios"))
    assert len(found) == 5
    assert found[-1] == "[852862.138091] kvm: disabled by bios"


def test_search_sees_through_loglevel_and_printk_caller_prefixes() -> None:
    vmx = re.compile(r"kvm_intel: VMX not supported by CPU \d+")
    assert log(WITH_LOGLEVEL).search(vmx) == [
        "<3>[    1.834686] kvm_intel: VMX not supported by CPU 0"
    ]
    txt = re.compile(r"VMX \(outside TXT\) disabled by BIOS")
    assert len(log(PRINTK_CALLER).search(txt)) == 1


def test_search_without_a_match_is_empty() -> None:
    assert log(Q35_BOOT_HEADER).search(re.compile(r"disabled by bios")) == []


@pytest.mark.parametrize(
    "pattern",
    [
        r"kvm: disabled by bios|VMX \(outside TXT\) disabled by BIOS|SVM disabled \(by BIOS\)",
        r"kvm_intel: VMX not supported by CPU \d+",
        r"^\[\s*0\.000000\] Linux",  # anchored: tried line by line only
        r"BIOS$",
        r"\d+\](?= kvm)",  # lookahead at a line's end differs in the joined text
        r"(?<!x)kvm",
        r"(?m)^<3>",
        r"\bkvm\b",
        r"no such text anywhere",
        r"[^a-z]{3}\s",
    ],
)
def test_search_of_the_whole_log_finds_what_a_search_of_each_line_finds(pattern: str) -> None:
    compiled = re.compile(pattern, re.IGNORECASE)
    for path in sorted(LOGS.iterdir()):
        kernel = KernelLog("test", tuple(path.read_text().splitlines()))
        assert kernel.search(compiled) == [ln for ln in kernel.lines if compiled.search(ln)], path


# --- current_boot ------------------------------------------------------------------------------


def test_current_boot_starts_at_the_last_boot_banner() -> None:
    # An earlier boot's complaints, then a later boot (one real boot, header and later lines).
    combined = lines(DISABLED_BY_BIOS) + lines(Q35_BOOT_HEADER) + lines(Q35_LATER)
    boot = current_boot(combined)
    assert boot[0].startswith("[    0.000000] Linux version 6.4.0-rc6")
    assert len(boot) == len(lines(Q35_BOOT_HEADER)) + len(lines(Q35_LATER))
    assert not any("disabled by bios" in line for line in boot)


def test_current_boot_with_two_banners_keeps_only_the_second_boot() -> None:
    combined = lines(Q35_BOOT_HEADER) + lines(DISABLED_BY_BIOS) + lines(Q35_BOOT_HEADER)
    assert current_boot(combined) == lines(Q35_BOOT_HEADER)


def test_current_boot_without_a_banner_keeps_everything() -> None:
    assert current_boot(lines(DISABLED_BY_BIOS)) == lines(DISABLED_BY_BIOS)


def test_a_line_quoting_linux_version_without_a_number_is_no_banner() -> None:
    text = lines(Q35_BOOT_HEADER) + ["[   12.000000] audit: comm=uname Linux version check"]
    assert current_boot(text)[0] == lines(Q35_BOOT_HEADER)[0]


# --- the kernel_log fact -----------------------------------------------------------------------


def test_kernel_log_of_a_tree_comes_from_kern_log_trimmed_to_this_boot(make_tree, facts) -> None:
    text = "\n".join(lines(DISABLED_BY_BIOS) + lines(Q35_BOOT_HEADER)) + "\n"
    kernel_log = facts(make_tree({"/var/log/kern.log": text})).get("kernel_log")
    assert kernel_log.origin == "/var/log/kern.log"
    assert list(kernel_log.lines) == lines(Q35_BOOT_HEADER)
    assert kernel_log.tried[0].startswith("dmesg: only files are read under --root")


def test_kernel_log_falls_through_empty_and_missing_files(make_tree, facts) -> None:
    tree = make_tree({"/var/log/kern.log": "", "/var/log/messages": (LOGS / Q35_LATER).read_text()})
    kernel_log = facts(tree).get("kernel_log")
    assert kernel_log.origin == "/var/log/messages"
    assert [t.split(":")[0] for t in kernel_log.tried] == [
        "dmesg",
        "/var/log/kern.log",
        "/var/log/dmesg",
    ]


def test_kernel_log_unavailable_names_everything_it_tried(make_tree, facts) -> None:
    with pytest.raises(FactUnavailable) as caught:
        facts(make_tree({"/var/log/": None})).get("kernel_log")
    for path in ("dmesg", *LOG_FILES):
        assert f"{path}: " in caught.value.reason


def test_kernel_log_of_the_recorded_host_comes_from_dmesg(facts) -> None:
    kernel_log = facts(SnapshotSource(str(HOST_SNAPSHOT))).get("kernel_log")
    assert kernel_log.origin == "dmesg"
    assert any("Hypervisor detected: KVM" in line for line in kernel_log.lines)


@pytest.mark.integration
@pytest.mark.usefixtures("as_root")
def test_kernel_log_on_this_host_as_root_is_dmesg(facts) -> None:
    # The boot lines may have left the ring buffer on a machine that has run for a while (the
    # lab's bridges and namespaces log a lot): put a line of our own in, and look for it.
    marker = f"kdtest kernel-log marker {os.getpid()} {time.monotonic_ns()}"
    with open("/dev/kmsg", "w") as kmsg:
        kmsg.write(marker + "\n")
    kernel_log = facts(LiveSource()).get("kernel_log")
    assert kernel_log.origin == "dmesg"
    assert any(marker in line for line in kernel_log.lines)


# --- modules -----------------------------------------------------------------------------------

# /proc/modules lines in the kernel's format (kernel/module/procfs.c: name size refcount users
# state address). SYNTHETIC: no real capture was found; names and fields are the usual ones.
PROC_MODULES = """\
kvm_intel 380928 0 - Live 0x0000000000000000
kvm 1142784 1 kvm_intel, Live 0x0000000000000000
irqbypass 16384 1 kvm, Live 0x0000000000000000
vhost_net 32768 0 - Live 0x0000000000000000
"""


def test_modules_of_a_modular_kernel_with_parameters(make_tree, facts) -> None:
    tree = make_tree(
        {
            "/proc/modules": PROC_MODULES,
            "/sys/module/kvm/": None,
            "/sys/module/kvm_intel/parameters/nested": "Y\n",
            "/sys/module/irqbypass/": None,
            "/sys/module/vhost_net/": None,
            "/sys/module/tun/": None,  # built in: in /sys/module, not in /proc/modules
        }
    )
    modules = facts(tree).get("modules")
    assert modules.modular
    assert modules.loaded == ("kvm_intel", "kvm", "irqbypass", "vhost_net")
    assert (modules.state("kvm_intel"), modules.state("tun"), modules.state("kvm_amd")) == (
        "loaded",
        "built in",
        "absent",
    )
    assert modules.built_in("tun") and not modules.built_in("kvm")
    assert modules.parameters == {"kvm_intel": {"nested": "Y"}}
    assert modules.as_dict()["kvm_related"] == {
        "kvm": "loaded",
        "kvm_intel": "loaded",
        "tun": "built in",
        "vhost_net": "loaded",
    }


def test_modules_of_a_non_modular_kernel_come_from_sys_module(facts) -> None:
    modules = facts(SnapshotSource(str(HOST_SNAPSHOT))).get("modules")
    assert not modules.modular and modules.loaded == ()
    assert modules.state("kvm") == "built in" and modules.has("kvm_pvm")
    assert modules.parameters == {}


def test_modules_of_this_host_agree_with_proc_and_sys() -> None:
    modules = FactContext(LiveSource()).get("modules")
    assert modules.modular == os.path.exists("/proc/modules")
    assert set(modules.present) == set(os.listdir("/sys/module"))
    for name in os.listdir("/sys/module"):
        assert modules.has(name)


def test_modules_with_proc_modules_but_no_sys_still_know_what_is_loaded(make_tree, facts) -> None:
    modules = facts(make_tree({"/proc/modules": PROC_MODULES})).get("modules")
    assert modules.has("kvm") and modules.present == ()


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        pytest.param({"/etc/": None}, "holds no /proc", id="tree-without-proc"),
        pytest.param({"/proc/": None}, "neither /proc/modules nor /sys/module", id="no-sys"),
    ],
)
def test_modules_unavailable_with_the_reason(make_tree, facts, files, reason: str) -> None:
    with pytest.raises(FactUnavailable, match=reason):
        facts(make_tree(files)).get("modules")
