"""`kvmdoctor lint`: definition files checked without a host: files, directories, stdin, bad
input, exit codes, the line of the offending element, every format."""

from __future__ import annotations

import json
import shutil
import subprocess
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


def test_links_to_directories_inside_the_tree_are_not_entered(tmp_path: Path) -> None:
    # Two links back up the tree once made lint walk it without end; one linted it again and
    # again. A directory named on the command line is read even through a link.
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "one.xml").write_text(domain("kd-one"))
    (tree / "sub" / "two.xml").write_text(domain("kd-two"))
    (tree / "up").symlink_to("..")
    (tree / "sub" / "loop").symlink_to("..")
    (tmp_path / "via").symlink_to("tree")
    report = report_of(kvmdoctor("lint", str(tmp_path / "via"), "-f", "json"))
    assert report["run"]["files"] == [f"{tmp_path}/via/one.xml", f"{tmp_path}/via/sub/two.xml"]


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


# --- every format, through render_as --------------------------------------------------------

IDE_ON_Q35 = (
    "    <disk type='file' device='cdrom'>\n"
    "      <target dev='hdc' bus='ide'/>\n"
    "      <readonly/>\n"
    "    </disk>\n"
)


@pytest.fixture
def linted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A lint report of a directory (given relative, as CI gives it) with two failing files and
    one clean one."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vms").mkdir()
    (tmp_path / "vms" / "cdrom.xml").write_text(domain("kd-cdrom", CDROM_ON_VIRTIO))
    (tmp_path / "vms" / "ide.xml").write_text(domain("kd-ide", IDE_ON_Q35))
    (tmp_path / "vms" / "ok.xml").write_text(domain("kd-ok"))
    result = kvmdoctor("lint", "vms", "-f", "json")
    assert result.exit_code == 1, result.stderr
    return report_of(result)


def failing(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["code"]: f for f in findings(report) if f["status"] == "fail"}


def test_the_failing_findings_point_at_their_files_and_lines(linted: dict[str, Any]) -> None:
    failed = failing(linted)
    assert set(failed) == {"DOM002", "DOM003"}
    assert failed["DOM003"]["location"] == {
        "element": "/domain/devices/disk[2]",
        "file": "vms/cdrom.xml",
        "line": 18,
    }
    assert failed["DOM002"]["location"] == {
        "element": "/domain/devices/disk",
        "file": "vms/ide.xml",
        "line": 14,
    }


@pytest.mark.parametrize("fmt", ["text", "markdown", "html", "junit"])
def test_the_human_and_ci_formats_show_file_line_and_element(
    linted: dict[str, Any], fmt: str
) -> None:
    from doctor.render import render_as
    from doctor.render.markdown import md

    text = render_as(fmt, linted, color=False)
    shown = md if fmt == "markdown" else str
    assert shown("vms/cdrom.xml:18 /domain/devices/disk[2]") in text
    assert shown("vms/ide.xml:14 /domain/devices/disk") in text
    # the check to re-run is lint's, not run's
    assert "kvmdoctor lint --select DOM003" in text
    assert "kvmdoctor run --select" not in text


def test_json_is_the_report_and_prometheus_has_a_sample_per_file(linted: dict[str, Any]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from doctor.render import render_as

    assert json.loads(render_as("json", linted)) == linted
    samples = [
        s
        for family in text_string_to_metric_families(render_as("prometheus", linted))
        for s in family.samples
    ]
    subjects = {s.labels.get("subject") for s in samples if s.labels.get("code") == "DOM003"}
    assert "file:vms/cdrom.xml" in subjects


def sarif_results(report: dict[str, Any]) -> list[dict[str, Any]]:
    from doctor.render import render_as

    return [r for run in json.loads(render_as("sarif", report))["runs"] for r in run["results"]]


def test_sarif_results_carry_the_file_and_line(linted: dict[str, Any]) -> None:
    by_rule = {r["ruleId"]: r for r in sarif_results(linted)}
    physical = by_rule["DOM003"]["locations"][0]["physicalLocation"]
    assert physical == {
        "artifactLocation": {"uri": "vms/cdrom.xml", "uriBaseId": "SRCROOT"},
        "region": {"startLine": 18},
    }
    assert by_rule["DOM002"]["locations"][0]["physicalLocation"]["region"] == {"startLine": 14}
    logical = by_rule["DOM003"]["locations"][0]["logicalLocations"][0]
    assert logical["fullyQualifiedName"] == "vms/cdrom.xml#/domain/devices/disk[2]"


@pytest.mark.integration
def test_lint_sarif_is_valid_for_the_sarif_multitool(
    linted: dict[str, Any], tmp_path: Path
) -> None:
    from doctor.render import render_as

    from kdtest import ROOT, require

    multitool = ROOT / ".sarif-tools" / "node_modules" / ".bin" / "sarif-multitool"
    require(multitool.exists(), "the SARIF Multitool (scripts/setup.sh --lab installs it)")
    path = tmp_path / "lint.sarif"
    path.write_text(render_as("sarif", linted), encoding="utf-8")
    out = tmp_path / "validation.sarif"
    proc = subprocess.run(
        [str(multitool), "validate", str(path), "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = json.loads(out.read_text(encoding="utf-8-sig"))
    results = [r for run in log["runs"] for r in run.get("results", [])]
    assert not [r for r in results if r.get("level") == "error"], results
    # the one warning every kvmdoctor log gets: no web address (informationUri); no
    # SARIF2017 (a location without a region): every lint result has its line
    assert {r["ruleId"] for r in results} == {"SARIF2005"}, results


def test_lint_sarif_matches_the_sarif_schema(linted: dict[str, Any]) -> None:
    import jsonschema

    from doctor.render import render_as

    from kdtest import ROOT, require

    schema_path = (
        ROOT / ".sarif-tools/node_modules/@microsoft/sarif-multitool-linux/sarif-2.1.0.json"
    )
    require(schema_path.exists(), "the SARIF 2.1.0 schema of the SARIF Multitool")
    schema = json.loads(schema_path.read_text(encoding="utf-8-sig"))
    errors = [
        e.message
        for e in jsonschema.Draft202012Validator(schema).iter_errors(
            json.loads(render_as("sarif", linted))
        )
    ]
    assert not errors, errors[:5]


def test_output_writes_the_report_to_a_file(tmp_path: Path) -> None:
    path = tmp_path / "cdrom.xml"
    path.write_text(domain("kd-cdrom", CDROM_ON_VIRTIO))
    out = tmp_path / "lint.sarif"
    result = kvmdoctor("lint", str(path), "-f", "sarif", "-o", str(out))
    assert result.exit_code == 1 and result.stdout == ""
    sarif = json.loads(out.read_text())
    assert sarif["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["region"]


# --- lint --host: the definitions compared with a host ---------------------------------------

ELSEWHERE = """<domain type='kvm'>
  <name>kd-lint-elsewhere</name>
  <memory unit='MiB'>128</memory>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <loader readonly='yes' type='pflash'>/usr/share/OVMF/kd-lint-no-such-code.fd</loader>
    <nvram template='/usr/share/OVMF/kd-lint-no-such-vars.fd'/>
  </os>
  <features><acpi/></features>
  <devices>
    <emulator>/usr/bin/kd-lint-no-such-qemu</emulator>
    <interface type='bridge'>
      <source bridge='kdnosuchbr0'/>
      <model type='virtio'/>
    </interface>
    <interface type='network'>
      <source network='kd-lint-no-such-net'/>
      <model type='virtio'/>
    </interface>
  </devices>
</domain>
"""
HOST_CHECKS = {"FW003", "LIB004", "NET001", "NET011"}


def test_without_host_no_host_check_runs_and_host_options_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere.xml"
    path.write_text(ELSEWHERE)
    report = report_of(kvmdoctor("lint", str(path), "-f", "json"))
    assert not HOST_CHECKS & {c["code"] for c in report["checks"]}
    refused = kvmdoctor("lint", str(path), "--uri", "qemu:///system")
    assert refused.exit_code == 2 and "lint --host" in refused.stderr


def host_failures(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The host checks' failures (one per check here)."""
    return {
        f["code"]: f for f in findings(report) if f["status"] == "fail" and f["code"] in HOST_CHECKS
    }


def test_lint_host_against_the_recorded_lab_host(tmp_path: Path, host_snapshot: Path) -> None:
    """The lab machine as recorded: no such bridge or network there."""
    path = tmp_path / "elsewhere.xml"
    path.write_text(ELSEWHERE)
    result = kvmdoctor("lint", "--host", "--snapshot", str(host_snapshot), str(path), "-f", "json")
    report = report_of(result)
    assert result.exit_code == 1
    assert report["run"]["source"]["kind"] == "snapshot"
    failed = host_failures(report)
    assert set(failed) == {"NET001", "NET011"}, {f["code"]: f["message"] for f in findings(report)}
    for code in ("NET001", "NET011"):
        assert failed[code]["subject"] == f"file:{path}", code
        assert failed[code]["location"]["file"] == str(path)
    assert "kdnosuchbr0" in failed["NET001"]["message"]
    assert "kd-lint-no-such-net" in failed["NET011"]["message"]
    # files the snapshot did not record cannot be judged from it: a skip saying so
    (fw003,) = findings(report, "FW003")
    assert fw003["status"] == "skip" and "not recorded in the snapshot" in fw003["message"]
    assert fw003["subject"] == f"file:{path}"
    # the host's own domains are not linted: every DOM finding is about the file
    assert {f["subject"] for f in findings(report, "DOM")} == {f"file:{path}"}


@pytest.mark.integration
def test_lint_host_against_this_lab_host(tmp_path: Path) -> None:
    from kdtest import answers, require

    require(answers("/run/libvirt/libvirt-sock"), "libvirtd (make setup-lab starts it)")
    path = tmp_path / "elsewhere.xml"
    path.write_text(ELSEWHERE)
    result = kvmdoctor("lint", "--host", str(path), "-f", "json")
    report = report_of(result)
    assert result.exit_code == 1
    assert report["run"]["source"]["kind"] == "live"
    failed = host_failures(report)
    assert set(failed) == HOST_CHECKS, {f["code"]: f["message"] for f in findings(report)}
    assert "Network not found" in failed["NET011"]["message"]
    assert "kd-lint-no-such-code.fd" in failed["FW003"]["message"]
    assert failed["FW003"]["subject"] == f"file:{path}"
    assert f"file:{path}" in failed["LIB004"]["message"]
    # a definition that fits this host: its bridge-less, network-less, firmware-less guest
    fits = tmp_path / "fits.xml"
    fits.write_text(domain("kd-lint-fits"))
    fitting = kvmdoctor("lint", "--host", str(fits), "-f", "json")
    assert fitting.exit_code == 0, [
        (f["code"], f["message"]) for f in findings(report_of(fitting)) if f["status"] == "fail"
    ]


# --- each DOM check points at its element ----------------------------------------------------

POINTED = {
    # code: (devices or a replacement, the element's opening tag on the line it names)
    "DOM002": ("<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/></disk>\n", "<disk"),
    "DOM004": (
        "<disk type='file' device='disk'><source file='/i/a.qcow2'/>"
        "<target dev='vda' bus='virtio'/><boot order='1'/></disk>\n"
        "<disk type='file' device='disk'><source file='/i/b.qcow2'/>"
        "<target dev='vdb' bus='virtio'/>\n<boot order='1'/></disk>\n",
        "<boot",
    ),
    "DOM005": (
        "<disk type='file' device='disk'><source file='/i/a.qcow2'/>"
        "<target dev='vda' bus='virtio'/></disk>\n"
        "<disk type='file' device='disk'><source file='/i/a.qcow2'/>"
        "<target dev='vdb' bus='virtio'/></disk>\n",
        "<disk",
    ),
    "DOM006": (
        "<graphics type='vnc' port='5901' autoport='no' websocket='5901'/>\n",
        "<graphics",
    ),
}


@pytest.mark.parametrize("code", sorted(POINTED))
def test_each_dom_finding_points_at_the_line_of_its_element(tmp_path: Path, code: str) -> None:
    devices, tag = POINTED[code]
    path = tmp_path / f"{code}.xml"
    path.write_text(domain(f"kd-{code.lower()}", devices))
    report = report_of(kvmdoctor("lint", str(path), "--select", code, "-f", "json"))
    (found,) = findings(report, code)
    assert found["status"] in ("warn", "fail"), found["message"]
    line = path.read_text().splitlines()[found["location"]["line"] - 1]
    assert line.lstrip().startswith(tag), (found["location"], line)
    assert found["location"]["element"].rsplit("/", 1)[-1].startswith(tag[1:])


@pytest.mark.parametrize(
    ("code", "old", "new", "element"),
    [
        ("DOM007", "<memory unit='MiB'>512</memory>", "<memory>2048</memory>", "/domain/memory"),
        ("DOM008", "<vcpu>2</vcpu>", "<vcpu current='1'>288</vcpu>", "/domain/vcpu"),
    ],
)
def test_the_memory_and_vcpu_findings_point_at_their_elements(
    tmp_path: Path, code: str, old: str, new: str, element: str
) -> None:
    text = domain("kd-size").replace(old, new)
    path = tmp_path / "size.xml"
    path.write_text(text)
    report = report_of(kvmdoctor("lint", str(path), "--select", code, "-f", "json"))
    (found,) = findings(report, code)
    assert found["status"] in ("warn", "fail")
    assert found["location"]["element"] == element
    assert text.splitlines()[found["location"]["line"] - 1].strip() == new


def test_a_mac_shared_inside_a_file_is_about_that_file_and_its_second_interface(
    tmp_path: Path,
) -> None:
    nic = (
        "    <interface type='network'>\n"
        "      <mac address='52:54:00:aa:bb:cc'/>\n"
        "      <source network='default'/>\n"
        "    </interface>\n"
    )
    path = tmp_path / "mac.xml"
    path.write_text(domain("kd-mac", nic + nic))
    report = report_of(kvmdoctor("lint", str(path), "--select", "NET010", "-f", "json"))
    (shared,) = [f for f in findings(report, "NET010") if f["status"] != "pass"]
    assert shared["status"] == "warn"  # libvirt and QEMU start it (test_network.py)
    assert shared["subject"] == f"file:{path}"
    assert shared["location"]["element"] == "/domain/devices/interface[2]"
    line = path.read_text().splitlines()[shared["location"]["line"] - 1]
    assert line.strip() == "<interface type='network'>"


def test_one_kvmdoctor_toml_serves_run_and_lint(tmp_path: Path) -> None:
    """Its ignores may name checks lint does not run (a runner's vhost-net); they apply where
    they match and the report lists them all."""
    path = tmp_path / "cdrom.xml"
    path.write_text(domain("kd-cdrom", CDROM_ON_VIRTIO))
    config = tmp_path / "kvmdoctor.toml"
    config.write_text(
        '[[ignore]]\ncheck = "vhost-net-unavailable"\nreason = "CI runners use user-mode networking"\n'
        '\n[[ignore]]\ncheck = "DOM003"\nreason = "the seed ISO is attached by the pipeline"\n'
    )
    result = kvmdoctor("lint", str(path), "--config", str(config), "-f", "json")
    assert result.exit_code == 0, result.stderr
    report = report_of(result)
    assert [r["check"] for r in report["run"]["ignores"]] == ["vhost-net-unavailable", "DOM003"]
    (dom003,) = findings(report, "DOM003")
    assert dom003["ignored"]["reason"] == "the seed ISO is attached by the pipeline"
    # an ignore that names no check at all is still an error
    config.write_text('[[ignore]]\ncheck = "NOPE999"\nreason = "typo"\n')
    assert kvmdoctor("lint", str(path), "--config", str(config)).exit_code == 2


def test_network_files_join_the_hosts_networks_with_host(
    tmp_path: Path, host_snapshot: Path
) -> None:
    """A domain linted with the network it uses: the network is known (defined by the file,
    not yet started: NET011's warning), and the host's own networks stay known."""
    net = tmp_path / "net.xml"
    net.write_text(
        "<network>\n  <name>kd-lint-net</name>\n  <bridge name='kdlintbr0'/>\n"
        "  <ip address='192.0.2.1' netmask='255.255.255.0'/>\n</network>\n"
    )
    nics = "".join(
        f"    <interface type='network'><source network='{name}'/></interface>\n"
        for name in ("kd-lint-net", "default", "kd-lint-nowhere")
    )
    dom = tmp_path / "guest.xml"
    dom.write_text(domain("kd-lint-nets", nics))
    args = ("--host", "--snapshot", str(host_snapshot), "--select", "NET011", "-f", "json")
    report = report_of(kvmdoctor("lint", *args, str(dom), str(net)))
    (finding,) = [f for f in findings(report, "NET011") if f["subject"] == f"file:{dom}"]
    messages = finding["message"]
    assert "network 'kd-lint-nowhere' does not exist" in messages
    assert "kd-lint-net' does not exist" not in messages
    assert "'default' does not exist" not in messages
    assert finding["evidence"]["networks_from"] == "definition files and libvirt qemu:///system"


# --- DOM016 with a host: the limit of the host's QEMU ----------------------------------------


def big_q35(name: str, vcpus: int) -> str:
    """Plain `q35` (the newest machine type of whichever QEMU runs it) with many vCPUs."""
    return (
        domain(name)
        .replace("<vcpu>2</vcpu>", f"<vcpu>{vcpus}</vcpu>")
        .replace("machine='pc-q35-7.2'", "machine='q35'")
    )


def dom016(report: dict[str, Any]) -> dict[str, Any]:
    (finding,) = findings(report, "DOM016")
    return finding


def test_dom016_judges_plain_q35_only_with_a_host(tmp_path: Path, host_snapshot: Path) -> None:
    """Without a host plain q35's limit is unknown (it is the running QEMU's); with the
    recorded lab host (QEMU 7.2: pc-q35-7.2, `<vcpu max='288'/>` in its domcapabilities)
    289 vCPUs are refused and 288 are not."""
    over, at = tmp_path / "over.xml", tmp_path / "at.xml"
    over.write_text(big_q35("kd-lint-289", 289))
    at.write_text(big_q35("kd-lint-288", 288))
    alone = dom016(report_of(kvmdoctor("lint", str(over), "-f", "json")))
    assert alone["status"] == "pass", alone["message"]
    hosted = dom016(
        report_of(
            kvmdoctor("lint", "--host", "--snapshot", str(host_snapshot), str(over), "-f", "json")
        )
    )
    assert hosted["status"] == "fail", hosted["message"]
    assert "Maximum CPUs greater than specified machine type limit 288" in hosted["message"]
    assert "the host's QEMU for pc-q35-7.2 (domcapabilities)" in hosted["message"]
    assert hosted["location"]["line"] == 4  # <vcpu>
    fits = dom016(
        report_of(
            kvmdoctor("lint", "--host", "--snapshot", str(host_snapshot), str(at), "-f", "json")
        )
    )
    assert fits["status"] == "pass", fits["message"]
    assert fits["evidence"]["max_cpus"] == 288


@pytest.mark.integration
def test_dom016_reads_the_limit_of_this_hosts_qemu(tmp_path: Path) -> None:
    from kdtest import answers, require

    require(answers("/run/libvirt/libvirt-sock"), "libvirtd (make setup-lab starts it)")
    path = tmp_path / "big.xml"
    path.write_text(big_q35("kd-lint-big", 1000))
    finding = dom016(report_of(kvmdoctor("lint", "--host", str(path), "-f", "json")))
    assert finding["status"] == "fail", finding["message"]
    assert finding["evidence"]["limit_from"].startswith("the host's QEMU for pc-q35-")
    assert f'limit {finding["evidence"]["max_cpus"]}"' in finding["message"]


def test_text_output_asks_to_lint_the_changed_file_again(tmp_path: Path) -> None:
    """kvmdoctor fix changes hosts, not files: lint's text says what to run once the file is
    edited (the checks to re-run on that file), and never points at fix."""
    path = tmp_path / "cdrom.xml"
    path.write_text(domain("kd-cdrom", CDROM_ON_VIRTIO))
    result = kvmdoctor("lint", str(path), "--no-color")
    assert result.exit_code == 1
    assert "kvmdoctor fix" not in result.stdout
    assert (
        f"then: kvmdoctor lint --select DOM003 {path} (once the file is changed; lint changes "
        "no file)"
    ) in result.stdout
