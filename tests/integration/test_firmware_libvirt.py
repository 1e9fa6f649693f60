"""FW checks against the lab's real libvirtd (qemu:///system) and Debian's ovmf: the check
predicts, then `virsh define` / `virsh start` says, and the two must agree on the path or the
message.

Every domain here is named kd-fw-..., has 128 MiB, no disk and no network interface, and is
destroyed and undefined with its NVRAM by the `domains` fixture, also when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from doctor.facts.firmware import parse_descriptor, parse_domcaps_firmware

from kdsnap import one, run_checks
from kdtest import ROOT, answers, kvm_device, require

pytestmark = pytest.mark.integration
SOCKET = "/run/libvirt/libvirt-sock"
URI = "qemu:///system"
FIRMWARE_DIR = Path("/usr/share/qemu/firmware")
NVRAM = Path("/var/lib/libvirt/qemu/nvram")


@pytest.fixture(scope="module")
def lab() -> None:
    require(os.geteuid() == 0, "root")
    require(answers(SOCKET), f"libvirtd answering on {SOCKET} (make setup-lab starts it)")
    require(shutil.which("virsh") is not None, "virsh (libvirt-clients)")
    require(
        (FIRMWARE_DIR / "60-edk2-x86_64.json").exists(), "Debian's ovmf package (shared/LAB.md)"
    )


def virsh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["virsh", "-c", URI, *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def domains(
    lab: None, tmp_path: Path
) -> Iterator[Callable[[str], subprocess.CompletedProcess[str]]]:
    """define(xml) defines a domain with `virsh define`; every domain it was asked for is
    destroyed and undefined with --nvram afterwards, and its log removed."""
    names: list[str] = []

    def define(xml: str) -> subprocess.CompletedProcess[str]:
        name = re.search(r"<name>(kd-fw[\w-]*)</name>", xml)
        assert name is not None, "test domains are named kd-fw..."
        names.append(name.group(1))
        path = tmp_path / f"{name.group(1)}.xml"
        path.write_text(xml)
        return virsh("define", str(path))

    try:
        yield define
    finally:
        for name in names:
            virsh("destroy", name)
            virsh("undefine", "--nvram", name)
            with contextlib.suppress(FileNotFoundError):
                (NVRAM / f"{name}_VARS.fd").unlink()
            with contextlib.suppress(FileNotFoundError):
                Path(f"/var/log/libvirt/qemu/{name}.log").unlink()
        left = [n for n in names if virsh("dominfo", n).returncode == 0]
        assert left == [], f"still defined: {left}"


def domain_xml(
    name: str, os_inner: str, *, machine: str = "q35", os_attrs: str = "", features: str = ""
) -> str:
    """A minimal isolated KVM guest: no disk, no network interface, 128 MiB."""
    return f"""<domain type='kvm'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os{os_attrs}>
    <type arch='x86_64' machine='{machine}'>hvm</type>
    {os_inner}
  </os>
  <features><acpi/>{features}</features>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices>
</domain>
"""


def fw() -> dict[str, list[Any]]:
    return run_checks(Path("/"), ("FW",), uri=URI)


def kvmdoctor_json(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "doctor", "run", "--format", "json", "--uri", URI, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout)


def started(name: str) -> subprocess.CompletedProcess[str]:
    done = virsh("start", name)
    if done.returncode == 0:
        virsh("destroy", name)
    return done


# --- FW001: this host, and what libvirt offers ------------------------------------------------


def test_fw001_passes_here_and_its_descriptors_are_the_loaders_libvirt_offers(lab: None) -> None:
    finding = one(fw(), "FW001")
    assert finding.status == "pass", finding.message
    assert "libvirt's domain capabilities for x86_64 pc-q35-7.2 agree" in finding.message
    # libvirt's own answer through virsh, independent of the check's libvirt-python call:
    caps = parse_domcaps_firmware(virsh("domcapabilities", "--machine", "q35").stdout)
    descs = [
        parse_descriptor(p.read_text(), name=p.name, path=str(p))
        for p in sorted(FIRMWARE_DIR.iterdir())
    ]
    assert caps.loaders == tuple(d.loader for d in descs if d.serves("x86_64", caps.machine))
    assert [d["loader"] for d in finding.evidence["descriptors"]] == list(caps.loaders)
    i440fx = parse_domcaps_firmware(virsh("domcapabilities", "--machine", "pc").stdout)
    assert i440fx.loaders == tuple(d.loader for d in descs if d.serves("x86_64", i440fx.machine))


# --- FW003: a loader that does not exist, as virsh start reports it -----------------------------

MISSING = "/usr/share/OVMF/kd-fw003-renamed_CODE_4M.fd"


def test_fw003_names_the_missing_loader_that_virsh_start_reports(
    domains: Callable[[str], Any],
) -> None:
    name = "kd-fw003-missing-loader"
    xml = domain_xml(
        name,
        f"<loader readonly='yes' type='pflash'>{MISSING}</loader>"
        "<nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'/>",
    )
    assert domains(xml).returncode == 0
    report = kvmdoctor_json("--select", "FW003")
    (finding,) = [
        f for c in report["checks"] for f in c["findings"] if f["subject"] == f"domain:{name}"
    ]
    assert finding["status"] == "fail"
    assert finding["evidence"]["loader"] == {
        "path": MISSING,
        "exists": False,
        "type": None,
        "error": None,
    }
    said = started(name)
    assert said.returncode != 0
    # libvirt 9.0.0 on the lab: "error: Path '/usr/share/OVMF/kd-fw003-renamed_CODE_4M.fd' is
    # not accessible: No such file or directory"
    match = re.search(
        r"error: (Path '([^']+)' is not accessible: No such file or directory)", said.stderr
    )
    assert match is not None, said.stderr
    assert match.group(2) == finding["evidence"]["loader"]["path"]
    assert match.group(1) in finding["message"]
    assert finding["evidence"]["candidates"] == [
        "/usr/share/OVMF/OVMF_CODE_4M.ms.fd",
        "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd",
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
    ]


def test_fw002_and_fw003_both_name_a_missing_loader_that_has_no_template(
    domains: Callable[[str], Any],
) -> None:
    """Without a template libvirt looks for one first, and says so about the same path."""
    name = "kd-fw003-no-template"
    assert (
        domains(
            domain_xml(name, f"<loader readonly='yes' type='pflash'>{MISSING}</loader>")
        ).returncode
        == 0
    )
    findings = fw()
    fw003 = one(findings, "FW003", f"domain:{name}")
    fw002 = one(findings, "FW002", f"domain:{name}")
    assert (fw003.status, fw002.status) == ("fail", "fail")
    said = started(name).stderr
    assert (
        f"error: operation failed: unable to find any master var store for loader: {MISSING}"
        in said
    )
    assert f'"unable to find any master var store for loader: {MISSING}"' in fw002.message
    assert fw003.evidence["loader"]["path"] == MISSING


def test_fw003_and_fw002_pass_for_ovmf_4m_and_the_domain_starts_with_the_named_template(
    domains: Callable[[str], Any],
) -> None:
    kvm_device()
    name = "kd-fw-ovmf4m-starts"
    loader = "<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>"
    assert domains(domain_xml(name, loader)).returncode == 0
    before = fw()
    fw003 = one(before, "FW003", f"domain:{name}")
    fw002 = one(before, "FW002", f"domain:{name}")
    assert fw003.status == "info" and "does not exist yet" in fw003.message
    assert fw002.status == "pass"
    template = fw002.evidence["template"]["template"]["path"]
    assert template == "/usr/share/OVMF/OVMF_VARS_4M.fd"
    done = started(name)
    assert done.returncode == 0, done.stderr
    nvram = NVRAM / f"{name}_VARS.fd"
    assert nvram.read_bytes() == Path(template).read_bytes()  # libvirt copied that very file
    after = fw()
    assert one(after, "FW003", f"domain:{name}").status == "pass"
    assert one(after, "FW002", f"domain:{name}").message.startswith(f"its NVRAM {nvram} exists")


# --- FW002: where libvirt finds a template, or does not ----------------------------------------


def test_fw002_fails_for_a_copied_loader_as_virsh_start_does(
    domains: Callable[[str], Any], tmp_path: Path
) -> None:
    name = "kd-fw002-copied-loader"
    copy = tmp_path / "kd-fw002_CODE.fd"
    shutil.copyfile("/usr/share/OVMF/OVMF_CODE_4M.fd", copy)
    assert (
        domains(
            domain_xml(name, f"<loader readonly='yes' type='pflash'>{copy}</loader>")
        ).returncode
        == 0
    )
    finding = one(fw(), "FW002", f"domain:{name}")
    assert finding.status == "fail"
    said = started(name).stderr
    expected = f"unable to find any master var store for loader: {copy}"
    assert f"error: operation failed: {expected}" in said
    assert f'"{expected}"' in finding.message


def test_fw002_passes_for_the_2m_ovmf_through_the_built_in_list_and_libvirt_agrees(
    domains: Callable[[str], Any],
) -> None:
    kvm_device()
    require(Path("/usr/share/OVMF/OVMF_CODE.fd").exists(), "Debian 12's ovmf with the 2 MB build")
    name = "kd-fw002-ovmf2m"
    loader = "<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>"
    assert domains(domain_xml(name, loader)).returncode == 0
    finding = one(fw(), "FW002", f"domain:{name}")
    assert finding.status == "pass"
    assert finding.evidence["template"]["found_by"] == (
        "libvirt's built-in list (compiled into this distribution's build)"
    )
    done = started(name)
    assert done.returncode == 0, done.stderr
    template = finding.evidence["template"]["template"]["path"]
    assert (NVRAM / f"{name}_VARS.fd").read_bytes() == Path(template).read_bytes()


# --- FW004: Secure Boot without q35 or SMM --------------------------------------------------------

SECBOOT = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
SB_FEATURE = "<firmware><feature enabled='yes' name='secure-boot'/></firmware>"


@pytest.mark.parametrize(
    ("name", "machine", "features", "said"),
    [
        ("kd-fw004-efi-i440fx", "pc", "", "Unable to find any firmware to satisfy 'efi'"),
        (
            "kd-fw004-efi-smm-off",
            "q35",
            "<smm state='off'/>",
            "domain has SMM turned off but chosen firmware requires it",
        ),
    ],
)
def test_fw004_predicts_what_virsh_start_says_for_secure_boot_without_q35_or_smm(
    domains: Callable[[str], Any], name: str, machine: str, features: str, said: str
) -> None:
    xml = domain_xml(
        name, SB_FEATURE, machine=machine, os_attrs=" firmware='efi'", features=features
    )
    assert domains(xml).returncode == 0
    finding = one(fw(), "FW004", f"domain:{name}")
    assert finding.status == "fail"
    assert said in finding.evidence["libvirt_says"]
    done = started(name)
    assert done.returncode != 0
    assert (
        f"error: {'operation failed' if 'Unable' in said else 'Requested operation is not valid'}: {said}"
        in done.stderr
    )


@pytest.mark.parametrize(
    ("machine", "features", "said"),
    [
        ("pc", "", "Secure boot is supported with q35 machine types only"),
        ("q35", "", "Secure boot requires SMM feature enabled"),
    ],
)
def test_fw004_on_the_test_driver_predicts_what_the_real_daemon_refuses_to_define(
    domains: Callable[[str], Any], tmp_path: Path, machine: str, features: str, said: str
) -> None:
    name = "kd-fw004-secure-loader"
    xml = domain_xml(
        name,
        f"<loader readonly='yes' secure='yes' type='pflash'>{SECBOOT}</loader>",
        machine=machine,
        features=features,
    )
    node = tmp_path / "kd-node.xml"
    node.write_text(
        "<node>"
        + xml.replace(
            "<domain type='kvm'>",
            "<domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>",
        ).replace("</domain>", "<test:runstate>5</test:runstate></domain>")
        + "</node>"
    )
    predicted = one(
        run_checks(Path("/"), ("FW004",), uri=f"test://{node}"), "FW004", f"domain:{name}"
    )
    assert predicted.status == "fail"
    assert said in predicted.evidence["libvirt_says"]
    refused = domains(xml)
    assert refused.returncode != 0
    assert f"error: unsupported configuration: {said}" in refused.stderr


def test_fw004_passes_for_secure_boot_on_q35_and_libvirt_turns_smm_on(
    domains: Callable[[str], Any],
) -> None:
    name = "kd-fw004-efi-q35"
    xml = domain_xml(name, SB_FEATURE, os_attrs=" firmware='efi'")
    assert domains(xml).returncode == 0
    findings = fw()
    finding = one(findings, "FW004", f"domain:{name}")
    assert finding.status == "pass"
    assert "SMM turned on by libvirt for the chosen build" in finding.message
    # What libvirt would run, without running it: the build FW003 names, SMM on, secure flash.
    argv = virsh("domxml-to-native", "qemu-argv", "--domain", name)
    assert argv.returncode == 0, argv.stderr
    loader = one(findings, "FW003", f"domain:{name}").evidence["loader"]["path"]
    assert loader == "/usr/share/OVMF/OVMF_CODE_4M.ms.fd"
    assert f'"filename":"{loader}"' in argv.stdout
    assert re.search(r"-machine pc-q35-[\d.]+,[^ ]*smm=on", argv.stdout)
    assert "driver=cfi.pflash01,property=secure,value=on" in argv.stdout
