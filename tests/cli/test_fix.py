"""`kvmdoctor fix`: the plan as a shell script and as an Ansible playbook (checked by `sh -n`,
`ansible-playbook --syntax-check` and a `--check` run against localhost), plans from saved
reports, and what --apply may and may not do. Applying for real: tests/integration/test_fix_apply.py."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from doctor import remedy
from doctor.cli import app
from doctor.cli.fix import applicable
from doctor.repair import Applier
from doctor.rules import FixStep

from kdsnap import EditableSnapshot
from kdtest import load_ansible, require

DIR = {"type": "dir", "uid": 0, "gid": 0, "rdev": None, "acl": []}
ACL_WITHOUT_QEMU = [
    {"tag": "user", "qualifier": None, "perms": "rw-"},
    {"tag": "user", "qualifier": 1500, "perms": "rw-"},
    {"tag": "group", "qualifier": None, "perms": "rw-"},
    {"tag": "mask", "qualifier": None, "perms": "---"},
    {"tag": "other", "qualifier": None, "perms": "---"},
]


def runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
    except TypeError:
        return CliRunner()


def kvmdoctor(*args: str, **kw: Any) -> Any:
    return runner().invoke(app, list(args), **kw)


def broken_host(snap: EditableSnapshot) -> Path:
    """virtlogd down, an ACL on /dev/kvm that leaves QEMU's user out, and vhost-net missing:
    safe, disruptive and manual steps in one plan."""
    snap.missing("stat", path="/run/libvirt/virtlogd-sock")
    snap.set_stat("/dev/kvm", acl=ACL_WITHOUT_QEMU)
    return snap.save()


@pytest.fixture
def broken(edit_snapshot: Any) -> Path:
    return broken_host(edit_snapshot())


# --- shell ----------------------------------------------------------------------------------


def test_the_shell_plan_runs_safe_steps_and_comments_out_the_rest(broken: Path) -> None:
    result = kvmdoctor("fix", "--snapshot", str(broken))
    assert result.exit_code == 0, result.stderr
    script = result.stdout
    lines = script.splitlines()
    assert lines[0] == "#!/bin/sh" and "set -eu" in lines
    assert (
        "if [ -d /run/systemd/system ]; then systemctl enable --now virtlogd.socket; "
        "else virtlogd -d; fi"
    ) in lines
    assert "setfacl -m u:libvirt-qemu:rw /dev/kvm" in lines
    # The disruptive `setfacl -b` is there, commented out.
    assert "# setfacl -b /dev/kvm" in lines
    assert "setfacl -b /dev/kvm" not in lines
    done = subprocess.run(["sh", "-n"], input=script, text=True, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr


def test_host_values_are_quoted_for_the_shell(edit_snapshot: Any) -> None:
    # An image under a directory whose name a shell would split and expand.
    from test_rules import RHEL_DOMAIN, with_domains

    from kdsnap import realdata

    odd = "/srv/vm images;$(id)"
    snap = with_domains(
        edit_snapshot(),
        realdata(RHEL_DOMAIN).replace(
            "/var/lib/libvirt/images/rhel-7.4-insights.qcow2", f"{odd}/rhel.qcow2"
        ),
    )
    snap.set_value("stat", {"path": "/", **DIR, "mode": 0o755}, path="/")
    snap.set_value("stat", {"path": "/srv", **DIR, "mode": 0o755}, path="/srv")
    snap.set_value("stat", {"path": odd, **DIR, "mode": 0o700}, path=odd)
    snap.set_value(
        "stat",
        {"path": f"{odd}/rhel.qcow2", **DIR, "type": "file", "mode": 0o600},
        path=f"{odd}/rhel.qcow2",
    )
    snap.set_value(
        "stat",
        {"path": "/usr/bin/qemu-kvm", **DIR, "type": "file", "mode": 0o755},
        path="/usr/bin/qemu-kvm",
    )
    script = kvmdoctor("fix", "--snapshot", str(snap.save()), "--select", "LIB007").stdout
    assert "setfacl -m u:libvirt-qemu:x '/srv/vm images;$(id)'" in script.splitlines()


def test_a_saved_report_gives_the_same_plan(broken: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    kvmdoctor("run", "--snapshot", str(broken), "-f", "json", "-o", str(report))
    from_report = kvmdoctor("fix", "--report", str(report)).stdout
    from_run = kvmdoctor("fix", "--snapshot", str(broken)).stdout
    assert from_report == from_run
    assert "virtlogd -d" in from_report


def test_a_file_that_is_not_a_report_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("[1, 2]")
    result = kvmdoctor("fix", "--report", str(tmp_path / "x.json"))
    assert result.exit_code == 2
    assert "is not a kvmdoctor report" in result.stderr


@pytest.mark.parametrize("where", ["--snapshot", "--report", "--root"])
def test_apply_acts_only_on_this_hosts_current_findings(broken: Path, where: str) -> None:
    result = kvmdoctor("fix", "--apply", "--yes", where, str(broken))
    assert result.exit_code == 2
    assert "--apply acts on this host's current findings" in result.stderr


# --- what --apply would carry out ----------------------------------------------------------


def test_apply_chooses_only_safe_steps_with_every_value_filled(broken: Path) -> None:
    report = json.loads(kvmdoctor("run", "--snapshot", str(broken), "-f", "json").stdout)
    chosen, left = applicable(remedy.plan_from_report(report))
    assert {(s.playbook, s.action) for s in chosen} == {
        ("virtlogd-not-running", "service"),
        ("kvm-device-acl-denies", "acl"),
        ("kvm-device-acl-denies", "command"),  # chmod 0660: safe
    }
    assert all(s.safety == "safe" for s in chosen)
    reasons = {(s.playbook, s.safety): why for s, why in left}
    assert reasons[("kvm-device-acl-denies", "disruptive")] == "disruptive: for a person to decide"
    assert reasons[("vhost-net-unavailable", "needs-reboot")].startswith("needs-reboot")


def test_apply_never_runs_a_disruptive_step_even_when_asked_yes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the command itself: a saved plan's disruptive step would create a file."""
    from doctor.cli import fix as fix_cmd

    marker = tmp_path / "disruptive-ran"
    safe_marker = tmp_path / "safe-ran"
    plan = [
        remedy.PlanItem(
            "kd-test",
            "test",
            "host",
            "cause",
            ("KVM006",),
            (
                FixStep(
                    "kd-test", "command", "disruptive", "touch", {"argv": ["touch", str(marker)]}
                ),
                FixStep(
                    "kd-test", "command", "safe", "touch", {"argv": ["touch", str(safe_marker)]}
                ),
            ),
        )
    ]
    monkeypatch.setattr(fix_cmd, "_run", lambda *a, **k: {"checks": [], "exit_code": 0})
    record = tmp_path / "changes.json"
    code = fix_cmd._apply(plan, {"host": {}}, True, str(record), None, [], 1.0)
    assert code == 0
    assert safe_marker.exists() and not marker.exists()
    written = json.loads(record.read_text())
    assert [c["safety"] for c in written["changes"]] == ["safe"]
    assert written["not_applied"][0]["safety"] == "disruptive"


def test_apply_asks_first_and_changes_nothing_without_a_yes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from doctor.cli import fix as fix_cmd

    marker = tmp_path / "ran"
    plan = [
        remedy.PlanItem(
            "kd-test",
            "t",
            "host",
            "c",
            ("KVM006",),
            (FixStep("kd-test", "command", "safe", "touch", {"argv": ["touch", str(marker)]}),),
        )
    ]
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # no terminal, no answer
    code = fix_cmd._apply(plan, {"host": {}}, False, str(tmp_path / "r.json"), None, [], 1.0)
    assert code == 1
    assert not marker.exists() and not (tmp_path / "r.json").exists()


# --- the repair module's file edits (on a scratch tree) -------------------------------------


def test_put_line_replaces_the_matching_line_and_remembers_it(tmp_path: Path) -> None:
    conf = tmp_path / "etc" / "sysctl.d" / "90-kvmdoctor.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("# kept\nnet.ipv4.ip_forward = 0\n")
    conf.chmod(0o640)
    applier = Applier(root=str(tmp_path))
    step = FixStep(
        "ip-forward-disabled",
        "file_line",
        "safe",
        "t",
        {
            "path": "/etc/sysctl.d/90-kvmdoctor.conf",
            "line": "net.ipv4.ip_forward = 1",
            "regexp": r"^\s*net\.ipv4\.ip_forward\s*=",
        },
    )
    change = applier.apply(step)
    assert change.status == "applied", change.detail
    assert conf.read_text() == "# kept\nnet.ipv4.ip_forward = 1\n"
    assert change.previous["file"] == {
        "file": "/etc/sysctl.d/90-kvmdoctor.conf",
        "existed": True,
        "lines": ["net.ipv4.ip_forward = 0"],
    }
    assert conf.stat().st_mode & 0o777 == 0o640


def test_a_step_with_a_missing_value_is_refused_by_the_repair_module(tmp_path: Path) -> None:
    step = FixStep("x", "group_member", "safe", "t", {"user": "<user>", "group": "kvm"}, ("user",))
    change = Applier(root=str(tmp_path)).apply(step)
    assert change.status == "failed"
    assert "cannot carry out" in change.detail


# --- Ansible ---------------------------------------------------------------------------------


def every_action_plan() -> list[remedy.PlanItem]:
    """One step of every kind the Ansible renderer knows, values as a real plan fills them."""
    steps = (
        FixStep(
            "ip-forward-disabled",
            "sysctl",
            "safe",
            "forwarding on",
            {
                "name": "net.ipv4.ip_forward",
                "value": 1,
                "persist": "/etc/sysctl.d/90-kvmdoctor.conf",
            },
        ),
        FixStep(
            "kvm-device-root-only",
            "file_line",
            "safe",
            "udev rule",
            {
                "path": "/tmp/kd-ansible-check/65-kvm.rules",
                "line": 'KERNEL=="kvm", GROUP="kvm", MODE="0660"',
                "regexp": '^KERNEL=="kvm",',
            },
        ),
        FixStep(
            "firewall-tools-missing-iptables",
            "package",
            "safe",
            "tools",
            {"packages": {"debian": ["iptables", "ebtables"], "redhat": ["iptables"]}},
        ),
        FixStep(
            "virtlogd-not-running",
            "service",
            "safe",
            "start virtlogd",
            {
                "name": "virtlogd.socket",
                "state": "started",
                "enabled": True,
                "without_systemd": ["virtlogd", "-d"],
            },
        ),
        FixStep(
            "kvm-device-not-accessible",
            "group_member",
            "needs-relogin",
            "join kvm",
            {"user": "root", "group": "kvm"},
        ),
        FixStep(
            "kvm-device-acl-denies",
            "acl",
            "safe",
            "acl",
            {"path": "/dev/kvm", "etype": "user", "entity": "libvirt-qemu", "permissions": "rw"},
        ),
        FixStep(
            "vhost-net-module-not-loaded",
            "module_option",
            "safe",
            "load",
            {"module": "vhost_net", "load": True, "persist": True},
        ),
        FixStep(
            "kvm-device-acl-denies",
            "command",
            "disruptive",
            "setfacl -b",
            {"argv": ["setfacl", "-b", "/dev/kvm"]},
        ),
        FixStep(
            "secure-boot-needs-q35-smm",
            "domain_xml",
            "disruptive",
            "use q35",
            {"domain": "web1", "xml": "<smm state='on'/>"},
        ),
        FixStep("kvm-firmware-disabled", "manual", "needs-reboot", "enable VT-x", {}),
        FixStep(
            "libvirt-connection-denied",
            "group_member",
            "needs-relogin",
            "join",
            {"user": "<user>", "group": "libvirt"},
            ("user",),
        ),
    )
    return [remedy.PlanItem("mixed", "t", "host", "c", ("KVM002",), steps)]


def test_the_ansible_plan_uses_the_standard_modules_and_tags_by_safety() -> None:
    text = remedy.ansible_playbook(every_action_plan(), host="kvm1", version="0")
    (play,) = load_ansible(text)
    modules = {
        key for task in play["tasks"] for key in task if key.startswith(("ansible.", "community."))
    }
    assert modules == {
        "ansible.posix.sysctl",
        "ansible.builtin.lineinfile",
        "ansible.builtin.package",
        "ansible.builtin.service",
        "ansible.builtin.user",
        "ansible.posix.acl",
        "community.general.modprobe",
        "ansible.builtin.command",
        "ansible.builtin.debug",
    }
    tags = {t["name"].split(":")[1].strip(): t["tags"] for t in play["tasks"]}
    assert tags["forwarding on"] == ["safe"]
    assert tags["setfacl -b"] == ["never", "disruptive"]
    assert tags["join kvm"] == ["never", "needs-relogin"]
    assert tags["join"] == ["manual"]  # a value is missing: only a note


def ansible_playbook_bin() -> str:
    path = Path(sys.executable).with_name("ansible-playbook")
    require(path.exists(), "ansible-playbook (pip install -e '.[test]')")
    return str(path)


def run_ansible(*args: str, plan: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    playbook = tmp_path / "plan.yml"
    playbook.write_text(plan)
    env = {
        **os.environ,
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"),
        "ANSIBLE_HOME": str(tmp_path / "home"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3"
        if Path("/usr/bin/python3").exists()
        else sys.executable,
    }
    return subprocess.run(
        [ansible_playbook_bin(), "-i", "localhost,", "-c", "local", *args, str(playbook)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


@pytest.mark.slow
def test_the_ansible_plan_passes_syntax_check(tmp_path: Path) -> None:
    plan = remedy.ansible_playbook(every_action_plan(), host="kvm1", version="0")
    done = run_ansible("--syntax-check", plan=plan, tmp_path=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
@pytest.mark.integration
def test_the_ansible_plan_of_a_real_run_checks_cleanly_against_localhost(
    tmp_path: Path, edit_snapshot: Any
) -> None:
    """`--check` on this machine: the plan of a derived host plus every module the renderer
    uses, none of which changes anything in check mode."""
    require(os.geteuid() == 0, "root (the plan's tasks need it)")
    require(shutil.which("setfacl") is not None, "setfacl (Debian package acl)")
    report = json.loads(
        kvmdoctor("run", "--snapshot", str(broken_host(edit_snapshot())), "-f", "json").stdout
    )
    plan = [*remedy.plan_from_report(report), *every_action_plan()]
    if not Path("/proc/modules").exists():
        # community.general.modprobe reads /proc/modules, which a kernel without loadable
        # modules (this lab's) lacks; the syntax check above still covers the task.
        plan = [
            remedy.PlanItem(
                i.playbook,
                i.title,
                i.subject,
                i.cause,
                i.verify,
                tuple(s for s in i.steps if s.action != "module_option"),
            )
            for i in plan
        ]
    text = remedy.ansible_playbook(plan, host="kvm1", version="0")
    done = run_ansible("--check", "-e", "ansible_become=false", plan=text, tmp_path=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "failed=0" in output
    assert not Path("/tmp/kd-ansible-check").exists()  # check mode wrote nothing


# --- what each command loads ---------------------------------------------------------------

PROBE = """
import sys
from typer.testing import CliRunner
from doctor.cli import app
result = CliRunner().invoke(app, sys.argv[1:])
wanted = ("yaml", "jsonschema", "doctor.playbooks", "doctor.repair")
print(result.exit_code, " ".join(m for m in wanted if m in sys.modules))
"""


def loaded_by(*args: str) -> tuple[int, set[str]]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, check=True
    )
    code, _, modules = done.stdout.strip().partition(" ")
    return int(code), set(modules.split())


def test_help_loads_neither_yaml_nor_jsonschema() -> None:
    assert loaded_by("--help") == (0, set())


def test_only_apply_loads_the_module_that_changes_the_host(broken: Path) -> None:
    code, modules = loaded_by("fix", "--snapshot", str(broken))
    assert code == 0
    assert "doctor.playbooks" in modules  # the plan came from the playbooks...
    assert "doctor.repair" not in modules  # ...and nothing that changes the host was loaded
    _, explained = loaded_by("explain", "kvm: disabled by bios")
    assert "doctor.repair" not in explained


# --- after a probe: `kvmdoctor run` re-judges the NET checks, the probe is run again -----------

PROBE_REPORT = Path(__file__).resolve().parents[2] / "sample_reports" / "probe-ip-forward-off.json"


def test_a_plan_from_a_probe_report_says_to_probe_again_with_the_probes_own_arguments() -> None:
    report = json.loads(PROBE_REPORT.read_text())
    assert report["run"]["argv"][:2] == ["kvmdoctor", "probe"]
    [item] = remedy.plan_from_report(report)
    assert item.playbook == "ip-forward-disabled"
    # The output options are left out: the operator reads the probe again.
    netns = report["run"]["argv"][report["run"]["argv"].index("--from-netns") + 1]
    again = ("kvmdoctor", "probe", "--from-netns", netns, "--to", "203.0.113.2")
    assert item.probe_again == again
    assert (item.verify, item.rerun_codes) == (("NET004",), ("NET004",))
    script = remedy.shell_script([item], host="kvm1", version="0")
    assert "# then check: kvmdoctor run --select NET004" in script
    assert f"# then probe again: kvmdoctor probe --from-netns {netns} --to 203.0.113.2" in script
    ansible = remedy.ansible_playbook([item], host="kvm1", version="0")
    assert "# Checks to re-run afterwards: NET004\n" in ansible
    assert f"# Then probe again: kvmdoctor probe --from-netns {netns} --to 203.0.113.2\n" in ansible


def test_a_prb_check_is_never_re_run_by_kvmdoctor_run_and_a_hostile_argv_stays_a_comment() -> None:
    report = {
        "run": {"argv": ["kvmdoctor", "probe", "--domain", "a\nrm -rf /", "--to", "192.0.2.1"]},
        "diagnoses": [
            {
                "playbook": "probe-traffic-dropped",
                "title": "t",
                "subject": "iface:kdb0",
                "cause": "c",
                "findings": [{"code": "PRB002"}],
                "explains": [],
                "fix": [],
                "verify": ["PRB002"],
            }
        ],
    }
    [item] = remedy.plan_from_report(report)
    assert item.rerun_codes == () and remedy.verify_codes([item]) == []
    script = remedy.shell_script([item], host="kvm1", version="0")
    assert "kvmdoctor run --select" not in script
    [line] = [x for x in script.splitlines() if "probe again" in x]
    assert line.startswith("# then probe again: kvmdoctor probe --domain ")
    assert not any(x.startswith("rm") for x in script.splitlines())


def test_a_plan_from_a_run_report_names_no_probe() -> None:
    report = {
        "run": {"argv": ["kvmdoctor", "run"]},
        "diagnoses": [
            {
                "playbook": "ip-forward-disabled",
                "title": "t",
                "subject": "host",
                "cause": "c",
                "findings": [{"code": "NET004"}],
                "explains": [],
                "fix": [],
                "verify": ["NET004"],
            }
        ],
    }
    [item] = remedy.plan_from_report(report)
    assert item.probe_again is None
    assert "probe again" not in remedy.shell_script([item], host="kvm1", version="0")
