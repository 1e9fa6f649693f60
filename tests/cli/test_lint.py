"""`kvmdoctor lint`: definition files checked without a host: files, directories, stdin, bad
input, exit codes, the line of the offending element, every format."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from kdtest import REALDATA, kvmdoctor

REAL = REALDATA / "domains"
Q35 = (
    REAL
    / "lkml-danmoulding__virsh-dumpxml__q35-running_fedora-virt-manager_libvirt-pcie-root-ports.xml"
)
I440FX = REAL / "insights__etc-libvirt-qemu__i440fx_rhel7.4_virt-manager-persistent.xml"


def report_of(result: Any) -> dict[str, Any]:
    assert result.stdout, result.stderr
    return json.loads(result.stdout)


def findings(report: dict[str, Any], code: str = "") -> list[dict[str, Any]]:
    return [f for c in report["checks"] if c["code"].startswith(code) for f in c["findings"]]


def domain(name: str, devices: str = "", *, memory: str = "<memory unit='MiB'>512</memory>") -> str:
    """A small q35 guest written line by line, as people keep them in repositories."""
    return (
        "<domain type='kvm'>\n"
        f"  <name>{name}</name>\n"
        f"  {memory}\n"
        "  <vcpu>2</vcpu>\n"
        "  <os>\n"
        "    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>\n"
        "  </os>\n"
        "  <features><acpi/></features>\n"
        "  <devices>\n"
        "    <controller type='pci' model='pcie-root'/>\n"
        "    <controller type='pci' model='pcie-root-port'/>\n"
        "    <controller type='pci' model='pcie-root-port'/>\n"
        "    <controller type='pci' model='pcie-root-port'/>\n"
        f"{devices}"
        "  </devices>\n"
        "</domain>\n"
    )


CDROM_ON_VIRTIO = (
    "    <disk type='file' device='disk'>\n"
    "      <source file='/var/lib/libvirt/images/a.qcow2'/>\n"
    "      <target dev='vda' bus='virtio'/>\n"
    "    </disk>\n"
    "    <disk type='file' device='cdrom'>\n"
    "      <source file='/var/lib/libvirt/images/b.iso'/>\n"
    "      <target dev='vdb' bus='virtio'/>\n"
    "      <readonly/>\n"
    "    </disk>\n"
)


def test_lint_of_the_real_guests_runs_the_definition_checks_with_files_as_subjects() -> None:
    result = kvmdoctor("lint", str(Q35), "--format", "json")
    report = report_of(result)
    assert result.exit_code == report["exit_code"] == 0
    assert report["run"]["source"] == {"kind": "files", "paths": [str(Q35)]}
    assert report["run"]["files"] == [str(Q35)]
    codes = {c["code"] for c in report["checks"]}
    assert {f"DOM00{n}" for n in range(1, 9)} <= codes
    assert not any(code.startswith(("KVM", "LIB", "TLS", "LOG")) for code in codes)
    subjects = {f["subject"] for f in findings(report, "DOM")}
    assert subjects == {f"file:{Q35}"}
    assert all(f["location"]["file"] == str(Q35) for f in findings(report, "DOM"))


def test_lint_reads_no_host_file(tmp_path: Path) -> None:
    path = tmp_path / "guest.xml"
    path.write_text(domain("kd-lint"))
    report = report_of(kvmdoctor("lint", str(path), "-f", "json"))
    # the host summary comes from /etc/os-release and the like: lint does not read them
    assert report["host"]["os"] is None and report["host"]["kernel"] is None


def test_lint_of_a_directory_reads_its_xml_files_recursively(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.xml").write_text(domain("kd-one"))
    (tmp_path / "two.xml").write_text(domain("kd-two"))
    (tmp_path / "notes.txt").write_text("not a definition")
    report = report_of(kvmdoctor("lint", str(tmp_path), "-f", "json"))
    assert report["run"]["files"] == [f"{tmp_path}/a/one.xml", f"{tmp_path}/two.xml"]
    subjects = {f["subject"] for f in findings(report, "DOM001")}
    assert subjects == {f"file:{tmp_path}/a/one.xml", f"file:{tmp_path}/two.xml"}


def test_a_failing_definition_exits_1_with_the_line_of_the_offending_element(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cdrom.xml"
    path.write_text(domain("kd-cdrom", CDROM_ON_VIRTIO))
    result = kvmdoctor("lint", str(path), "-f", "json")
    report = report_of(result)
    assert result.exit_code == report["exit_code"] == 1
    (dom003,) = findings(report, "DOM003")
    assert dom003["status"] == "fail"
    lines = path.read_text().splitlines()
    location = dom003["location"]
    assert location["file"] == str(path)
    assert location["element"] == "/domain/devices/disk[2]"
    assert lines[location["line"] - 1].strip() == "<disk type='file' device='cdrom'>"


def test_lint_reads_one_definition_from_stdin() -> None:
    text = domain("kd-stdin", CDROM_ON_VIRTIO)
    result = kvmdoctor("lint", "-", "-f", "json", input=text)
    report = report_of(result)
    assert result.exit_code == 1
    (dom003,) = findings(report, "DOM003")
    assert dom003["subject"] == "file:<stdin>"
    assert (
        dom003["location"]["line"]
        == text.splitlines().index("    <disk type='file' device='cdrom'>") + 1
    )


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("<domain><name>x</name>", "not well-formed XML"),
        ("just text", "not well-formed XML"),
        ("<volume><name>x</name></volume>", "<volume> is neither a libvirt domain nor a network"),
        (b"<domain>\xff</domain>", "not UTF-8"),
    ],
)
def test_bad_input_is_a_usage_error_naming_the_file(
    tmp_path: Path, content: Any, needle: str
) -> None:
    good = tmp_path / "good.xml"
    good.write_text(domain("kd-good"))
    bad = tmp_path / "bad.xml"
    if isinstance(content, bytes):
        bad.write_bytes(content)
    else:
        bad.write_text(content)
    out = tmp_path / "report.json"
    out.write_text("previous report")
    result = kvmdoctor("lint", str(good), str(bad), "-f", "json", "-o", str(out))
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert f"{bad}: " in result.stderr and needle in result.stderr
    assert str(good) + ":" not in result.stderr
    assert result.stdout == ""
    assert out.read_text() == "previous report"  # nothing lost


def test_a_missing_file_and_an_empty_directory_are_usage_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = tmp_path / "missing.xml"
    result = kvmdoctor("lint", str(empty), str(missing), "-f", "json")
    assert result.exit_code == 2
    assert f"{empty}: the directory holds no .xml file" in result.stderr
    assert f"{missing}: " in result.stderr


def test_lint_without_a_path_is_a_usage_error() -> None:
    assert kvmdoctor("lint").exit_code == 2


def test_select_and_ignore_work_as_in_run(tmp_path: Path) -> None:
    path = tmp_path / "cdrom.xml"
    path.write_text(domain("kd-cdrom", CDROM_ON_VIRTIO))
    selected = report_of(kvmdoctor("lint", str(path), "--select", "DOM003", "-f", "json"))
    assert [c["code"] for c in selected["checks"]] == ["DOM003"]
    result = kvmdoctor("lint", str(path), "--ignore", "cdrom-on-virtio-bus", "-f", "json")
    assert result.exit_code == 0
    (dom003,) = findings(report_of(result), "DOM003")
    assert dom003["status"] == "fail" and dom003["ignored"]["by"] == "command line"
    refused = kvmdoctor("lint", str(path), "--select", "KVM006")
    assert refused.exit_code == 2 and "KVM006" in refused.stderr


def test_lint_copies_of_the_real_guests_in_a_directory(tmp_path: Path) -> None:
    shutil.copy(Q35, tmp_path / "q35.xml")
    shutil.copy(I440FX, tmp_path / "i440fx.xml")
    report = report_of(kvmdoctor("lint", str(tmp_path), "-f", "json"))
    statuses = {f["subject"]: f["status"] for f in findings(report, "DOM001")}
    assert statuses == {f"file:{tmp_path}/i440fx.xml": "pass", f"file:{tmp_path}/q35.xml": "pass"}
