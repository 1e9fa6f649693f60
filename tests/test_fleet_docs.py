"""docs/fleet.md: every command in it runs as documented. The Ansible playbook it documents
(docs/examples/fleet.yml) runs with ansible-playbook against the page's own inventory, its
hosts reached by local connections; each "host" runs kvmdoctor on a snapshot of its own (the
lab's recording edited into kvm1 and kvm2: their names, a guest on each with one MAC, kvm2 on
an older libvirt), so the fleet report has what only a fleet sees."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest

import kdnet
from kdtest import ROOT, kvmdoctor

DOC = ROOT / "docs" / "fleet.md"
PLAYBOOK = ROOT / "docs" / "examples" / "fleet.yml"
GUEST_LIVE = kdnet.lab_capture("guest/run-libvirt-qemu__kd-cap-guest.xml")
HOSTS = {
    # inventory name: (the guest it runs, libvirt's version number)
    "kvm1.example.com": ("web1", 9_000_000),
    "kvm2.example.com": ("web2", 8_000_000),
}


@dataclass
class Step:
    line: str
    exit: Optional[int]  # None: 0 or 1
    output: list[str] = field(default_factory=list)


def page() -> tuple[dict[str, str], list[Step]]:
    """The files the page writes out (a block whose first line is `# NAME`) and its console
    commands with the output lines shown under them."""
    files: dict[str, str] = {}
    steps: list[Step] = []
    lang: Optional[str] = None
    body: list[str] = []
    for line in DOC.read_text().splitlines():
        if line.startswith("```") and lang is None:
            lang, body = line[3:].strip(), []
        elif line.startswith("```"):
            if lang != "console" and body and body[0].startswith("# "):
                files[body[0][2:].strip()] = "\n".join(body) + "\n"
            lang = None
        elif lang == "console" and line.startswith("$ "):
            command, _, note = line[2:].partition("  # ")
            code = note.strip().removeprefix("exit ").strip()
            steps.append(Step(command.strip(), int(code) if code.isdigit() else None))
        elif lang == "console" and line.strip() and steps:
            steps[-1].output.append(line.strip())
        elif lang is not None:
            body.append(line)
    return files, steps


def host_snapshots(edit_snapshot: Any) -> dict[str, Path]:
    out = {}
    for name, (dom, libvirt) in HOSTS.items():
        snap = edit_snapshot()
        snap.set_value("uname", {**snap.value("uname"), "nodename": name})
        connect = {"uri": None, "request": "connect", "params": {}}
        answer = {**snap.value("libvirt", **connect), "daemon_version": libvirt}
        snap.set_value("libvirt", answer, **connect)
        xml = GUEST_LIVE.replace("<name>kd-cap-guest</name>", f"<name>{dom}</name>")
        kdnet.set_domains(snap, [kdnet.domain_entry(xml, active=True)])
        out[name] = snap.save()
    return out


def ansible_playbook(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """ansible-playbook beside this interpreter, its hosts' kvmdoctor this checkout's."""
    env = {
        **os.environ,
        "PWD": str(cwd),
        "PYTHONPATH": str(ROOT),
        "ANSIBLE_HOME": str(cwd / ".ansible"),  # nothing of the run left in ~/.ansible
        "ANSIBLE_LOCAL_TEMP": str(cwd / ".ansible" / "tmp"),
        "ANSIBLE_REMOTE_TMP": str(cwd / ".ansible" / "remote"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
    }
    command = [str(Path(sys.executable).with_name("ansible-playbook")), *args]
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )


def test_every_command_in_docs_fleet_runs_as_documented(
    edit_snapshot: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files, steps = page()
    assert "inventory.ini" in files
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    # How the page's hosts are reached here: locally, each replaying its own snapshot, with
    # this checkout's kvmdoctor and without sudo (the tests run as root already).
    snapshots = host_snapshots(edit_snapshot)
    for name, path in snapshots.items():
        (tmp_path / "host_vars").mkdir(exist_ok=True)
        (tmp_path / "host_vars" / f"{name}.yml").write_text(
            json.dumps({"ansible_connection": "local", "kvmdoctor_args": ["--snapshot", str(path)]})
        )
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "all.yml").write_text(
        json.dumps(
            {
                "ansible_python_interpreter": sys.executable,
                "kvmdoctor": [sys.executable, "-m", "doctor"],
                "kvmdoctor_become": False,
            }
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NO_COLOR", "1")
    ran = []
    for step in steps:
        args = shlex.split(step.line)
        if args[0] == "ansible-playbook":
            args = [str(ROOT / a) if a == "docs/examples/fleet.yml" else a for a in args[1:]]
            done = ansible_playbook(args, tmp_path)
            code, said = done.returncode, done.stdout + done.stderr
        else:
            assert args[0] == "kvmdoctor", step.line
            args = args[1:]
            if args[0] == "run":
                args[1:1] = ["--snapshot", str(snapshots["kvm1.example.com"])]
            for i, arg in enumerate(args[:-1]):
                if arg in ("-o", "--output") and args[i + 1].startswith("/"):
                    args[i + 1] = str(tmp_path / Path(args[i + 1]).name)
            result = kvmdoctor(*args)
            code, said = result.exit_code, result.stdout + result.stderr
        where = f"docs/fleet.md: {step.line}\n{said}"
        assert code == step.exit if step.exit is not None else code in (0, 1), where
        for expected in step.output:
            assert expected in said, f"{where}\nexpected: {expected}"
        ran.append(step.line)
    # the playbook and the commands by hand all ran
    assert len(ran) >= 8 and ran[0].startswith("ansible-playbook ")

    # What the playbook left on the controller: both hosts' reports and their fleet report.
    reports = tmp_path / "kvmdoctor-reports"
    assert sorted(p.name for p in reports.iterdir()) == [
        "fleet.json",
        "kvm1.example.com.json",
        "kvm2.example.com.json",
    ]
    fleet = json.loads((reports / "fleet.json").read_text())
    assert [h["name"] for h in fleet["fleet"]["hosts"]] == list(HOSTS)
    assert fleet["exit_code"] == 1
    for output in ("fleet.xml", "fleet.sarif", "fleet.html", "fleet.md"):
        assert "mac:52:54:00:8e:d6:ee" in (tmp_path / output).read_text(), output


def test_the_playbook_gates_on_the_fleet_when_asked(edit_snapshot: Any, tmp_path: Path) -> None:
    files, _ = page()
    (tmp_path / "inventory.ini").write_text(files["inventory.ini"])
    snapshots = host_snapshots(edit_snapshot)
    inventory_vars = {
        "ansible_python_interpreter": sys.executable,
        "kvmdoctor": [sys.executable, "-m", "doctor"],
        "kvmdoctor_become": False,
        "kvmdoctor_gate": True,
        "kvmdoctor_reports": str(tmp_path / "out"),
    }
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "all.yml").write_text(json.dumps(inventory_vars))
    (tmp_path / "host_vars").mkdir()
    for name, path in snapshots.items():
        (tmp_path / "host_vars" / f"{name}.yml").write_text(
            json.dumps({"ansible_connection": "local", "kvmdoctor_args": ["--snapshot", str(path)]})
        )
    done = ansible_playbook(["-i", "inventory.ini", str(PLAYBOOK)], tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr  # a task failed: the gate
    assert "has findings at or above --fail-on" in done.stdout
    assert (tmp_path / "out" / "fleet.json").exists()
