"""FW001-FW004: a failing and a passing case each.

Hosts are trees (`--root`) built from real files: the firmware descriptors Debian (x86_64,
aarch64) and Arch ship, real /proc/cpuinfo (which gives a tree its architecture) and
os-release files, dpkg's real file list of ovmf, and the domain definitions libvirt 9.0 wrote
to /etc/libvirt/qemu on the lab machine (tests/fixtures/realdata, origins in its SOURCES.md).
Firmware binaries are empty files in the trees: the checks only ask whether they exist. The
same definitions also run through libvirt's test driver against this machine's own firmware.
What the real daemon says about them is compared in tests/integration/test_firmware_libvirt.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional, Union

import pytest

from kdsnap import one, run_checks
from kdtest import ARCH_X86, DEBIAN_AARCH64, DEBIAN_X86, REALDATA, require, write_tree

FIRMWARE = REALDATA / "firmware"
LAB = FIRMWARE / "lab"
INTEL = (REALDATA / "cpuinfo/insights__intel-xeon-e5-2670_baremetal_vmx__cpu0.txt").read_text()
ARM64 = (REALDATA / "cpuinfo/virt-what__gce-arm64-guest_neoverse-n1_aarch64.txt").read_text()
ARCH_OS = (REALDATA / "os-release/notes-id35122322576__archlinux-amd64-docker.txt").read_text()
DEBIAN_OS = (REALDATA / "os-release/notes-id35122322576__debian12-arm64v8-docker.txt").read_text()
NVRAM = "/var/lib/libvirt/qemu/nvram"

Files = dict[str, Optional[Union[str, bytes]]]


def make(tmp_path: Path, files: Files) -> Path:
    """A host tree; a path ending in "/" is an empty directory."""
    return write_tree(tmp_path / "tree", files)


def descriptors(
    which: dict[str, str], *, directory: str = "/usr/share/qemu/firmware", binaries: bool = True
) -> Files:
    """Real descriptors at their installed names, and (empty) files for what they name."""
    files: Files = {}
    for name, src in which.items():
        text = (FIRMWARE / src).read_text()
        files[f"{directory}/{name}"] = text
        if binaries:
            mapping = json.loads(text)["mapping"]
            for key in ("executable", "nvram-template"):
                files[mapping[key]["filename"]] = b""
    return files


def host(cpuinfo: str = INTEL, os_release: str = DEBIAN_OS, **extra: Any) -> Files:
    files: Files = {
        "/proc/cpuinfo": cpuinfo,
        "/etc/os-release": os_release,
        "/etc/libvirt/qemu/": None,
        f"{NVRAM}/": None,
    }
    files.update(extra)
    return files


def definitions(*names: str) -> Files:
    """Definitions libvirt 9.0 wrote on the lab machine, where libvirt keeps them."""
    return {
        f"/etc/libvirt/qemu/{n}.xml": (LAB / f"etc-libvirt-qemu__{n}.xml").read_text()
        for n in names
    }


def fw(path: Path, uri: Optional[str] = None) -> dict[str, list[Any]]:
    return run_checks(path, ("FW",), uri=uri)


def debian_host(tmp_path: Path, *domains: str, **extra: Any) -> dict[str, list[Any]]:
    return fw(
        make(tmp_path, {**host(), **descriptors(DEBIAN_X86), **definitions(*domains), **extra})
    )


# --- FW001 uefi-firmware-missing ---------------------------------------------------------


def test_fw001_passes_on_an_arch_linux_tree_with_its_own_descriptors(tmp_path: Path) -> None:
    finding = one(
        fw(make(tmp_path, {**host(os_release=ARCH_OS), **descriptors(ARCH_X86)})), "FW001"
    )
    assert finding.status == "pass"
    assert finding.message.startswith(
        "UEFI firmware for x86_64: 2 descriptor(s) (50-edk2-ovmf-x86_64-secure-4m.json, "
        "70-edk2-ovmf-x86_64-csm-4m.json), every file present"
    )
    assert (finding.evidence["arch"], finding.evidence["arch_from"]) == ("x86_64", "/proc/cpuinfo")
    assert finding.evidence["package"]["name"] == "edk2-ovmf"


def test_fw001_passes_on_a_debian_aarch64_tree(tmp_path: Path) -> None:
    tree = make(tmp_path, {**host(cpuinfo=ARM64), **descriptors(DEBIAN_AARCH64)})
    finding = one(fw(tree), "FW001")
    assert finding.status == "pass"
    assert "UEFI firmware for aarch64: 3 descriptor(s)" in finding.message
    assert [d["loader"] for d in finding.evidence["descriptors"]] == [
        "/usr/share/AAVMF/AAVMF_CODE.ms.fd",
        "/usr/share/AAVMF/AAVMF_CODE.secboot.fd",
        "/usr/share/AAVMF/AAVMF_CODE.fd",
    ]


def test_fw001_fails_on_a_sysroot_without_any_firmware(tmp_path: Path) -> None:
    finding = one(fw(make(tmp_path, host(**{"/usr/share/qemu/": None}))), "FW001")
    assert finding.status == "fail"
    assert finding.message == (
        "no UEFI firmware for x86_64: no descriptor in /usr/share/qemu/firmware, "
        '/etc/qemu/firmware and no OVMF/AAVMF build (virt-install: "Did not find any UEFI '
        "binary path for arch 'x86_64'\"): install ovmf (`apt-get install ovmf`)"
    )
    assert [d["state"] for d in finding.evidence["directories"]] == ["absent", "absent"]


def test_fw001_fails_when_ovmf_is_installed_but_its_files_are_gone(tmp_path: Path) -> None:
    dpkg = {
        "/var/lib/dpkg/status": "",
        "/var/lib/dpkg/info/ovmf.list": (LAB / "var-lib-dpkg-info__ovmf.list").read_text(),
    }
    tree = make(tmp_path, {**host(**dpkg), **descriptors(DEBIAN_X86, binaries=False)})
    finding = one(fw(tree), "FW001")
    assert finding.status == "fail"
    assert "every UEFI descriptor for x86_64 (40-edk2-x86_64-secure-enrolled.json" in (
        finding.message
    )
    assert "/usr/share/OVMF/OVMF_CODE_4M.fd" in finding.message
    assert finding.message.endswith(
        "ovmf is installed but its files are gone: `apt-get install --reinstall ovmf`"
    )


def test_fw001_fails_on_an_x86_host_with_only_aarch64_descriptors(tmp_path: Path) -> None:
    finding = one(fw(make(tmp_path, {**host(), **descriptors(DEBIAN_AARCH64)})), "FW001")
    assert finding.status == "fail"
    assert finding.message.startswith("no UEFI firmware for x86_64")
    assert finding.evidence["other_descriptors"] == {n: ["aarch64"] for n in DEBIAN_AARCH64}


def test_fw001_warns_when_ovmf_files_exist_without_descriptors(tmp_path: Path) -> None:
    tree = make(
        tmp_path,
        host(
            **{
                "/usr/share/OVMF/OVMF_CODE.fd": b"",
                "/usr/share/OVMF/OVMF_VARS.fd": b"",
                "/usr/share/qemu/": None,
            }
        ),
    )
    finding = one(fw(tree), "FW001")
    assert finding.status == "warn"
    assert "<os firmware='efi'> fails (\"Unable to find any firmware to satisfy 'efi'\")" in (
        finding.message
    )
    assert finding.evidence["loose_files"] == ["/usr/share/OVMF/OVMF_CODE.fd"]


def test_fw001_fails_when_libvirt_cannot_parse_one_descriptor(tmp_path: Path) -> None:
    broken = (FIRMWARE / DEBIAN_X86["60-edk2-x86_64.json"]).read_text()[:300]
    tree = make(
        tmp_path,
        {**host(), **descriptors(DEBIAN_X86), "/etc/qemu/firmware/55-local.json": broken},
    )
    finding = one(fw(tree), "FW001")
    assert finding.status == "fail"
    assert finding.message.startswith(
        "libvirt cannot load the firmware descriptors (unable to parse json file "
        "'/etc/qemu/firmware/55-local.json')"
    )


def test_fw001_warns_when_a_stale_descriptor_sorts_before_working_ones(tmp_path: Path) -> None:
    stale = descriptors(
        {"30-edk2-ovmf-x86_64-secure-4m.json": ARCH_X86["50-edk2-ovmf-x86_64-secure-4m.json"]},
        directory="/etc/qemu/firmware",
        binaries=False,
    )
    finding = one(fw(make(tmp_path, {**host(), **descriptors(DEBIAN_X86), **stale})), "FW001")
    assert finding.status == "warn"
    assert finding.message.startswith(
        "1 of 4 UEFI descriptors for x86_64 name missing files "
        "(/etc/qemu/firmware/30-edk2-ovmf-x86_64-secure-4m.json: "
        "/usr/share/edk2-ovmf/x64/OVMF_CODE.secboot.4m.fd, /usr/share/edk2-ovmf/x64/OVMF_VARS.4m.fd)"
        "; it sorts before 40-edk2-x86_64-secure-enrolled.json, so libvirt picks it first"
    )
    assert "hide it with an empty /etc/qemu/firmware/30-edk2-ovmf-x86_64-secure-4m.json" in (
        finding.message
    )


def test_fw001_warns_when_empty_files_in_etc_mask_every_descriptor(tmp_path: Path) -> None:
    masks: Files = {f"/etc/qemu/firmware/{n}": "" for n in DEBIAN_X86}
    finding = one(fw(make(tmp_path, {**host(), **descriptors(DEBIAN_X86), **masks})), "FW001")
    assert finding.status == "warn"
    assert finding.message.startswith("no UEFI firmware descriptor for x86_64")
    hidden = {(e["path"], e["status"]) for e in finding.evidence["not_used"]}
    assert ("/etc/qemu/firmware/60-edk2-x86_64.json", "masks") in hidden
    assert ("/usr/share/qemu/firmware/60-edk2-x86_64.json", "overridden") in hidden


def test_fw001_skips_on_a_snapshot_that_did_not_record_the_firmware_directories(
    edit_snapshot: Any,
) -> None:
    snap = edit_snapshot()
    for path in ("/usr/share/qemu/firmware", "/etc/qemu/firmware"):
        snap.drop("dir", path=path)
    finding = one(fw(snap.save()), "FW001")
    assert finding.status == "skip"
    assert "not recorded in the snapshot" in finding.message


# --- FW002 uefi-nvram-template-missing ------------------------------------------------------


def test_fw002_passes_for_a_loader_that_a_descriptor_maps(tmp_path: Path) -> None:
    finding = one(debian_host(tmp_path, "kd-fw-ovmf4m"), "FW002", "domain:kd-fw-ovmf4m")
    assert finding.status == "pass"
    assert finding.message == (
        f"its NVRAM {NVRAM}/kd-fw-ovmf4m_VARS.fd will be created from "
        "/usr/share/OVMF/OVMF_VARS_4M.fd (firmware descriptor "
        "/usr/share/qemu/firmware/60-edk2-x86_64.json)"
    )


def test_fw002_fails_for_a_custom_loader_that_nothing_maps(tmp_path: Path) -> None:
    finding = one(debian_host(tmp_path, "kd-fw-custom"), "FW002", "domain:kd-fw-custom")
    assert finding.status == "fail"
    assert (
        '"unable to find any master var store for loader: '
        '/var/lib/libvirt/images/kd-fw-custom_CODE.fd"' in finding.message
    )
    assert finding.evidence["template"]["searched"][0] == (
        "no firmware descriptor maps /var/lib/libvirt/images/kd-fw-custom_CODE.fd "
        "(3 descriptors read)"
    )


def test_fw002_fails_for_a_secure_boot_build_on_i440fx(tmp_path: Path) -> None:
    findings = debian_host(tmp_path, "kd-fw-secboot-i440fx")
    finding = one(findings, "FW002", "domain:kd-fw-secboot-i440fx")
    assert finding.status == "fail"
    assert "no template maps loader /usr/share/OVMF/OVMF_CODE_4M.secboot.fd" in finding.message


def test_fw002_fails_when_the_descriptors_template_is_missing(tmp_path: Path) -> None:
    tree = make(tmp_path, {**host(), **descriptors(DEBIAN_X86), **definitions("kd-fw-ovmf4m")})
    (tree / "usr/share/OVMF/OVMF_VARS_4M.fd").unlink()
    finding = one(fw(tree), "FW002", "domain:kd-fw-ovmf4m")
    assert finding.status == "fail"
    assert finding.message.endswith(
        "(\"Failed to open file '/usr/share/OVMF/OVMF_VARS_4M.fd': No such file or directory\")"
    )


def test_fw002_passes_when_the_nvram_file_already_exists(tmp_path: Path) -> None:
    nvram = {f"{NVRAM}/kd-fw-ovmf4m_VARS.fd": b""}
    finding = one(debian_host(tmp_path, "kd-fw-ovmf4m", **nvram), "FW002", "domain:kd-fw-ovmf4m")
    assert finding.status == "pass"
    assert finding.message.startswith(f"its NVRAM {NVRAM}/kd-fw-ovmf4m_VARS.fd exists")


def test_fw002_informs_when_an_existing_nvram_could_not_be_recreated(tmp_path: Path) -> None:
    nvram = {f"{NVRAM}/kd-fw-custom_VARS.fd": b""}
    finding = one(debian_host(tmp_path, "kd-fw-custom", **nvram), "FW002", "domain:kd-fw-custom")
    assert finding.status == "info"
    assert "virsh start --reset-nvram" in finding.message


def test_fw002_passes_for_the_2m_ovmf_on_debian_through_libvirts_built_in_list(
    tmp_path: Path,
) -> None:
    ovmf2m = {"/usr/share/OVMF/OVMF_CODE.fd": b"", "/usr/share/OVMF/OVMF_VARS.fd": b""}
    findings = debian_host(tmp_path, "kd-fw-ovmf2m", **ovmf2m)
    finding = one(findings, "FW002", "domain:kd-fw-ovmf2m")
    assert finding.status == "pass"
    assert "from /usr/share/OVMF/OVMF_VARS.fd (libvirt's built-in list" in finding.message


def test_fw002_warns_when_only_a_build_dependent_list_maps_the_loader(tmp_path: Path) -> None:
    files = host(os_release=ARCH_OS, **{"/usr/share/qemu/": None})
    files.update({"/usr/share/OVMF/OVMF_CODE.fd": b"", "/usr/share/OVMF/OVMF_VARS.fd": b""})
    finding = one(
        fw(make(tmp_path, {**files, **definitions("kd-fw-ovmf2m")})), "FW002", "domain:kd-fw-ovmf2m"
    )
    assert finding.status == "warn"
    assert "<nvram template='/usr/share/OVMF/OVMF_VARS.fd'>" in finding.message


def test_fw002_fails_when_no_descriptor_satisfies_firmware_efi(tmp_path: Path) -> None:
    finding = one(
        debian_host(tmp_path, "kd-fw-efi-sb-i440fx"), "FW002", "domain:kd-fw-efi-sb-i440fx"
    )
    assert finding.status == "fail"
    assert finding.message == (
        "no firmware descriptor satisfies <os firmware='efi'> for x86_64 pc-i440fx-7.2: "
        "libvirt refuses to start it (\"Unable to find any firmware to satisfy 'efi'\")"
    )


def test_fw002_gives_one_passing_finding_on_a_host_without_domains(tmp_path: Path) -> None:
    finding = one(debian_host(tmp_path), "FW002")
    assert (finding.status, finding.subject) == ("pass", "host")
    assert finding.message == "no domains are defined (definition and status files)"


# --- FW003 domain-firmware-missing --------------------------------------------------------------


def test_fw003_fails_for_a_loader_that_does_not_exist_and_names_what_does(tmp_path: Path) -> None:
    finding = one(debian_host(tmp_path, "kd-fw-custom"), "FW003", "domain:kd-fw-custom")
    assert finding.status == "fail"
    assert finding.message.startswith(
        "loader /var/lib/libvirt/images/kd-fw-custom_CODE.fd (domain XML) does not exist "
        "(\"Path '/var/lib/libvirt/images/kd-fw-custom_CODE.fd' is not accessible: No such "
        'file or directory")'
    )
    assert finding.evidence["candidates"] == [
        "/usr/share/OVMF/OVMF_CODE_4M.ms.fd",
        "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd",
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
    ]


def test_fw003_passes_when_loader_and_nvram_exist(tmp_path: Path) -> None:
    extra = {
        "/var/lib/libvirt/images/kd-fw-custom_CODE.fd": b"",
        f"{NVRAM}/kd-fw-custom_VARS.fd": b"",
    }
    finding = one(debian_host(tmp_path, "kd-fw-custom", **extra), "FW003", "domain:kd-fw-custom")
    assert finding.status == "pass"
    assert finding.message == (
        "loader /var/lib/libvirt/images/kd-fw-custom_CODE.fd and NVRAM "
        f"{NVRAM}/kd-fw-custom_VARS.fd exist"
    )


def test_fw003_informs_that_a_missing_nvram_is_created_at_the_next_start(tmp_path: Path) -> None:
    finding = one(debian_host(tmp_path, "kd-fw-ovmf4m"), "FW003", "domain:kd-fw-ovmf4m")
    assert finding.status == "info"
    assert "does not exist yet: libvirt creates it from a template" in finding.message


def test_fw003_fails_when_the_nvram_directory_is_missing(tmp_path: Path) -> None:
    tree = make(tmp_path, {**host(), **descriptors(DEBIAN_X86), **definitions("kd-fw-ovmf4m")})
    (tree / NVRAM.lstrip("/")).rmdir()
    finding = one(fw(tree), "FW003", "domain:kd-fw-ovmf4m")
    assert finding.status == "fail"
    assert f"\"Failed to create file '{NVRAM}/kd-fw-ovmf4m_VARS.fd.new'" in finding.message


def test_fw003_fails_when_the_build_firmware_efi_picks_is_gone(tmp_path: Path) -> None:
    tree = make(tmp_path, {**host(), **descriptors(DEBIAN_X86), **definitions("kd-fw-efi-sb-q35")})
    (tree / "usr/share/OVMF/OVMF_CODE_4M.ms.fd").unlink()
    finding = one(fw(tree), "FW003", "domain:kd-fw-efi-sb-q35")
    assert finding.status == "fail"
    assert finding.message.startswith(
        "loader /usr/share/OVMF/OVMF_CODE_4M.ms.fd (firmware='efi' selects "
        "/usr/share/qemu/firmware/40-edk2-x86_64-secure-enrolled.json) does not exist"
    )


def test_fw003_passes_for_a_bios_domain_that_names_no_firmware(tmp_path: Path) -> None:
    rhel = (
        REALDATA / "domains/insights__etc-libvirt-qemu__i440fx_rhel7.4_virt-manager-persistent.xml"
    ).read_text()
    finding = one(
        debian_host(tmp_path, **{"/etc/libvirt/qemu/rhel7.4.xml": rhel}), "FW003", "domain:rhel7.4"
    )
    assert (finding.status, finding.message) == (
        "pass",
        "names no firmware files (QEMU's default BIOS)",
    )


# --- FW004 secure-boot-needs-q35-smm -----------------------------------------------------------


def test_fw004_fails_for_firmware_efi_secure_boot_on_i440fx(tmp_path: Path) -> None:
    finding = one(
        debian_host(tmp_path, "kd-fw-efi-sb-i440fx"), "FW004", "domain:kd-fw-efi-sb-i440fx"
    )
    assert finding.status == "fail"
    assert finding.message == (
        "Secure Boot is requested (<feature enabled='yes' name='secure-boot'/>) but the machine "
        "type pc-i440fx-7.2 is not q35; libvirt: \"Unable to find any firmware to satisfy 'efi'\""
    )
    assert "<type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>" in finding.evidence["xml"]


def test_fw004_fails_for_secure_boot_with_smm_turned_off(tmp_path: Path) -> None:
    finding = one(
        debian_host(tmp_path, "kd-fw-efi-sb-smm-off"), "FW004", "domain:kd-fw-efi-sb-smm-off"
    )
    assert finding.status == "fail"
    assert "SMM is turned off (<smm state='off'/>)" in finding.message
    assert finding.evidence["libvirt_says"] == [
        "domain has SMM turned off but chosen firmware requires it"
    ]
    assert "<features><smm state='off'/></features>" in finding.evidence["xml"]


def test_fw004_fails_for_a_secure_boot_build_named_on_i440fx(tmp_path: Path) -> None:
    findings = debian_host(tmp_path, "kd-fw-secboot-i440fx")
    finding = one(findings, "FW004", "domain:kd-fw-secboot-i440fx")
    assert finding.status == "fail"
    assert finding.message.startswith(
        "Secure Boot is requested (loader /usr/share/OVMF/OVMF_CODE_4M.secboot.fd is a Secure "
        "Boot build that requires SMM) but the machine type pc-i440fx-7.2 is not q35"
    )


@pytest.mark.parametrize(
    ("domain", "message"),
    [
        (
            "kd-fw-secure-smm",
            "Secure Boot (<loader secure='yes'>, loader /usr/share/OVMF/OVMF_CODE_4M.secboot.fd "
            "is a Secure Boot build that requires SMM) on pc-q35-7.2 with SMM on",
        ),
        (
            "kd-fw-efi-sb-q35",
            "Secure Boot (<feature enabled='yes' name='secure-boot'/>, firmware='efi' picks "
            "40-edk2-x86_64-secure-enrolled.json, a Secure Boot build that requires SMM) on "
            "pc-q35-7.2 with SMM turned on by libvirt for the chosen build",
        ),
        ("kd-fw-ovmf4m", "does not ask for Secure Boot"),
    ],
)
def test_fw004_passes_for_secure_boot_on_q35_and_for_domains_without_it(
    tmp_path: Path, domain: str, message: str
) -> None:
    finding = one(debian_host(tmp_path, domain), "FW004", f"domain:{domain}")
    assert (finding.status, finding.message) == ("pass", message)


# --- the same definitions through libvirt's test driver, on this machine's firmware ----------------


def node(tmp_path: Path, *xml: str) -> str:
    """A test-driver URI whose <node> holds these domains, shut off."""
    parts = []
    for text in xml:
        text = re.sub(r"<!--.*?-->\s*", "", text, flags=re.DOTALL)
        text = text.replace(
            "<domain type='kvm'>",
            "<domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>",
            1,
        )
        parts.append(text.replace("</domain>", "<test:runstate>5</test:runstate></domain>"))
    path = tmp_path / "kd-node.xml"
    path.write_text("<node>\n" + "\n".join(parts) + "</node>\n")
    return f"test://{path}"


def lab_xml(name: str) -> str:
    return (LAB / f"etc-libvirt-qemu__{name}.xml").read_text()


def hand_written(name: str, machine: str, loader: str, features: str = "") -> str:
    """A definition as a user writes it: the lab's libvirt refuses these ones (see the
    integration tests), the test driver takes them."""
    return f"""<domain type='kvm'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <os>
    <type arch='x86_64' machine='{machine}'>hvm</type>
    {loader}
  </os>
  <features><acpi/>{features}</features>
</domain>"""


@pytest.fixture
def this_machines_ovmf() -> None:
    require(
        Path("/usr/share/qemu/firmware/60-edk2-x86_64.json").exists(),
        "Debian's ovmf package (shared/LAB.md)",
    )


@pytest.mark.usefixtures("this_machines_ovmf")
def test_fw002_and_fw003_do_not_judge_test_driver_domains_by_this_hosts_files(
    tmp_path: Path,
) -> None:
    """The test driver's domains do not run here: their loader paths are not this host's, so
    FW002/FW003 do not compare them with this host's files (the real daemon's tests do)."""
    findings = fw(Path("/"), uri=node(tmp_path, lab_xml("kd-fw-custom"), lab_xml("kd-fw-ovmf4m")))
    assert all(f.subject == "host" and f.status == "pass" for f in findings["FW002"])
    assert all(f.subject == "host" and f.status == "pass" for f in findings["FW003"])


@pytest.mark.usefixtures("this_machines_ovmf")
@pytest.mark.parametrize(
    ("machine", "smm", "said"),
    [
        ("pc-i440fx-7.2", "", "Secure boot is supported with q35 machine types only"),
        ("pc-q35-7.2", "", "Secure boot requires SMM feature enabled"),
    ],
)
def test_fw004_on_the_test_driver_quotes_what_libvirt_refuses_at_define(
    tmp_path: Path, machine: str, smm: str, said: str
) -> None:
    loader = (
        "<loader readonly='yes' secure='yes' type='pflash'>"
        "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd</loader>"
    )
    xml = hand_written("kd-fw-secure", machine, loader, smm)
    finding = one(fw(Path("/"), uri=node(tmp_path, xml)), "FW004", "domain:kd-fw-secure")
    assert finding.status == "fail"
    assert said in finding.evidence["libvirt_says"]


@pytest.mark.usefixtures("this_machines_ovmf")
def test_fw004_on_the_test_driver_passes_for_a_secure_loader_on_q35_with_smm(
    tmp_path: Path,
) -> None:
    finding = one(
        fw(Path("/"), uri=node(tmp_path, lab_xml("kd-fw-secure-smm"))),
        "FW004",
        "domain:kd-fw-secure-smm",
    )
    assert finding.status == "pass"


def test_fw002_passes_for_a_writable_pflash_loader_that_keeps_its_own_variables(
    tmp_path: Path,
) -> None:
    """libvirt 9.0 on the lab adds no <nvram> to a pflash loader without readonly='yes'."""
    writable = lab_xml("kd-fw-ovmf4m").replace(
        "<loader readonly='yes' type='pflash'>", "<loader type='pflash'>"
    )
    writable = re.sub(r"\s*<nvram>[^<]*</nvram>", "", writable)
    findings = fw(
        make(
            tmp_path,
            {**host(), **descriptors(DEBIAN_X86), "/etc/libvirt/qemu/kd-fw-ovmf4m.xml": writable},
        )
    )
    finding = one(findings, "FW002", "domain:kd-fw-ovmf4m")
    assert finding.status == "pass"
    assert "not read-only" in finding.message
    assert (
        one(findings, "FW003", "domain:kd-fw-ovmf4m").message
        == "loader /usr/share/OVMF/OVMF_CODE_4M.fd exists"
    )


def test_fw001_fails_when_libvirt_would_refuse_qemu_conf_nvram_and_not_when_it_ignores_it(
    tmp_path: Path,
) -> None:
    """One of Debian qemu.conf's `nvram` examples, with its TEMPLATE half forgotten: libvirt
    parses the pairs only when no descriptor exists."""
    conf = {"/etc/libvirt/qemu.conf": 'nvram = [ "/usr/share/OVMF/OVMF_CODE.fd" ]\n'}
    ovmf = {"/usr/share/OVMF/OVMF_CODE.fd": b"", "/usr/share/qemu/": None}
    finding = one(fw(make(tmp_path / "bare", {**host(), **ovmf, **conf})), "FW001")
    assert finding.status == "fail"
    assert "Invalid nvram format: '/usr/share/OVMF/OVMF_CODE.fd'" in finding.message
    described = make(tmp_path / "described", {**host(), **descriptors(DEBIAN_X86), **conf})
    assert one(fw(described), "FW001").status == "pass"
