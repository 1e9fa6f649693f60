"""Fix plans from hostile text: every value that reaches a plan (a domain name with a newline,
a hostname, a saved report's titles, whatever fills a playbook placeholder) is shell-quoted
inside kvmdoctor's own commands or stays inside a comment. The script passes `sh -n`, and the
only commands it runs are kvmdoctor's own.

The plans are made for every shipped playbook with every placeholder filled by each hostile
value, and through the command line from a saved report."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from doctor import remedy, rules
from doctor.playbooks import shipped
from doctor.textsafe import has_controls

from kdtest import ROOT, AnsibleUnsafe, kvmdoctor, load_ansible, require

PAYLOADS = [
    "evil\ntouch /tmp/kdpwn\n#",
    "$(touch /tmp/kdpwn)",
    "`touch /tmp/kdpwn`",
    "'; touch /tmp/kdpwn; echo '",
    "x\rtouch /tmp/kdpwn",
    "x\x0btouch /tmp/kdpwn",
    "x\u2028touch /tmp/kdpwn",
    "x\x85touch /tmp/kdpwn",
    "x\n}\ntouch /tmp/kdpwn\n{",
    "\x1b]0;kd\x07\x1b[2J",
    '\\"; touch /tmp/kdpwn',
    "#",
    "-rf /",
]

# The words kvmdoctor's shell plans may run: the generator's own, and the programs the shipped
# playbooks name.
GENERATOR_WORDS = {
    "if", "then", "elif", "else", "fi", "[", "command", "echo", "printf", "grep", "put_line",
    "sysctl", "systemctl", "usermod", "setfacl", "modprobe", "apt-get", "dnf", "zypper", "pacman",
}  # fmt: skip
SEPARATORS = {"\n", ";", "&&", "||", "|", "&", "(", ")"}
OPENERS = {"if", "then", "elif", "else", "!"}


def playbook_programs() -> set[str]:
    words = set()
    for playbook in shipped():
        for action in playbook.fix:
            for key in ("argv", "without_systemd"):
                argv = action.params.get(key)
                if argv and "{" not in argv[0]:
                    words.add(argv[0])
    return words


ALLOWED = GENERATOR_WORDS | playbook_programs()


def command_words(script: str) -> list[str]:
    """The words a shell runs as commands, after the script's fixed header (which ends with
    the put_line function)."""
    body = script[script.index("\n}\n") + 3 :]
    lex = shlex.shlex(body, posix=True, punctuation_chars=True)
    lex.whitespace = " \t"  # newlines separate commands: keep them as tokens
    lex.commenters = "#"
    words, expect = [], True
    for token in lex:
        if token in SEPARATORS:
            expect = True
        elif expect:
            words.append(token)
            expect = token in OPENERS
    return words


def assert_safe_script(script: str) -> None:
    done = subprocess.run(["sh", "-n"], input=script, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    words = command_words(script)
    assert words, "the plan runs nothing at all: the check would prove nothing"
    assert set(words) <= ALLOWED, sorted(set(words) - ALLOWED)
    for line in script.splitlines():
        assert "\x1b" not in line and "\x07" not in line and "\r" not in line


def hostile_report(payload: str) -> dict[str, Any]:
    """A report with a diagnosis for every shipped playbook, every placeholder filled with
    `payload`, and the payload in every free-text field a plan shows."""
    diagnoses = []
    for playbook in shipped():
        steps = rules.steps_for(playbook, lambda name: payload)
        diagnoses.append(
            {
                "playbook": playbook.id,
                "title": f"{playbook.title} {payload}",
                "subject": f"domain:{payload}",
                "cause": payload,
                "verify": [*playbook.verify, payload],
                "fix": [step.as_dict() for step in steps],
            }
        )
    return {"host": {"hostname": payload}, "diagnoses": diagnoses}


@pytest.mark.parametrize("payload", PAYLOADS, ids=range(len(PAYLOADS)))
def test_shell_plans_from_hostile_values_run_only_kvmdoctors_commands(payload: str) -> None:
    plan = remedy.plan_from_report(hostile_report(payload))
    script = remedy.shell_script(plan, host=payload, version="0")
    assert_safe_script(script)
    if has_controls(payload):  # nobody could read such a value back: never run with it
        assert "# not run: a value holds a line break or a control character" in script
    else:  # the plan still does its work: safe steps are live commands, the value quoted
        assert {"setfacl", "sysctl", "put_line"} <= set(command_words(script))
        assert shlex.quote(payload) in script


@pytest.mark.parametrize("payload", PAYLOADS, ids=range(len(PAYLOADS)))
def test_ansible_plans_from_hostile_values_keep_their_structure(payload: str) -> None:
    plan = remedy.plan_from_report(hostile_report(payload))
    text = remedy.ansible_playbook(plan, host=payload, version="0")
    header, _, body = text.partition("\n---\n")
    assert all(line.startswith("#") for line in header.splitlines())
    (play,) = load_ansible(body)
    assert set(play) == {"name", "hosts", "become", "gather_facts", "tasks"}
    assert play["hosts"] == "all"
    for task in play["tasks"]:
        modules = set(task) - {"name", "tags", "when"}
        assert len(modules) == 1, task
        assert next(iter(modules)).startswith(
            ("ansible.builtin.", "ansible.posix.", "community.general.")
        )
        when = task.get("when")
        assert when is None or when.startswith("ansible_facts["), when


JINJA = "{{ lookup('pipe', 'touch /tmp/kdpwn') }}{% if true %}x{% endif %}"


def _strings(value: Any, key: str = "") -> list[tuple[str, Any]]:
    """(key, string) for every string in a parsed play, with the key it stands under."""
    if isinstance(value, str):
        return [(key, value)]
    if isinstance(value, dict):
        return [pair for k, v in value.items() for pair in _strings(v, k)]
    if isinstance(value, list):
        return [pair for v in value for pair in _strings(v, key)]
    return []


def test_ansible_never_evaluates_a_template_that_came_from_a_value() -> None:
    """Ansible renders Jinja in task names and module arguments on the machine that runs the
    plan: a domain name or a saved report's text holding "{{ lookup('pipe', ...) }}" would run
    there. Every string the plan takes from the report is written `!unsafe`; only kvmdoctor's
    own `when` expressions, tags and host patterns are plain."""
    plan = remedy.plan_from_report(hostile_report(JINJA))
    (play,) = load_ansible(remedy.ansible_playbook(plan, host=JINJA, version="0"))
    found = _strings(play)
    assert any(JINJA in text for _, text in found)  # the value is in the plan...
    for key, text in found:
        if "{{" in text or "{%" in text:
            assert isinstance(text, AnsibleUnsafe), (key, text)  # ...never as a template
        if key in ("when", "tags", "hosts"):
            assert not isinstance(text, AnsibleUnsafe) and JINJA not in text, (key, text)


def test_ansible_playbook_does_not_run_a_lookup_from_a_saved_report(tmp_path: Path) -> None:
    """The same through ansible-playbook itself, in check mode against this machine: only the
    plan's debug tasks (tag `manual`) run, and the lookup they carry is shown, not run."""
    ansible = shutil.which("ansible-playbook") or str(
        Path(sys.executable).with_name("ansible-playbook")
    )
    require(Path(ansible).exists(), "needs ansible-playbook (the `ansible` test extra)")
    marker = tmp_path / "kdpwn"
    payload = f"{{{{ lookup('pipe', 'touch {marker}') }}}}"
    data = json.loads((ROOT / "sample_reports" / "duplicate-mac.json").read_text())
    saved = tmp_path / "report.json"
    saved.write_text(json.dumps(data).replace("kdweb1", payload.replace("'", "\\u0027")))
    plan = tmp_path / "plan.yml"
    result = kvmdoctor("fix", "--report", str(saved), "-f", "ansible", "-o", str(plan))
    assert result.exit_code == 0, result.stderr
    assert payload in load_ansible(plan.read_text())[0]["tasks"][0]["ansible.builtin.debug"]["msg"]
    env = {
        **os.environ,
        "ANSIBLE_HOME": str(tmp_path / ".ansible"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / ".ansible" / "tmp"),
    }
    ran = subprocess.run(
        [ansible, "-i", "localhost,", "-c", "local", "--check", "--tags", "manual", str(plan)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "lookup('pipe'" in ran.stdout  # the debug task printed the text as it stands
    assert not marker.exists()


def test_a_domain_named_to_break_out_of_a_comment_stays_in_it(tmp_path: Path) -> None:
    name = "evil\ntouch /tmp/kdpwn\n#"
    report = ROOT / "sample_reports" / "kvm-root-only.json"
    data = json.loads(report.read_text())
    for diag in data["diagnoses"]:
        diag["subject"] = f"domain:{name}"
    saved = tmp_path / "report.json"
    saved.write_text(json.dumps(data))
    result = kvmdoctor("fix", "--report", str(saved))
    assert result.exit_code == 0, result.stderr
    assert "# === " in result.stdout and "\n# touch /tmp/kdpwn" in result.stdout
    assert_safe_script(result.stdout)


def test_a_step_that_is_no_playbook_step_is_shown_not_run() -> None:
    report = hostile_report("x")
    (diag,) = [d for d in report["diagnoses"] if d["playbook"] == "kvm-device-root-only"]
    step = next(s for s in diag["fix"] if s["action"] == "command")
    step["params"]["argv"] = ["rm", "-rf", "/var/lib/libvirt"]
    step["safety"] = "safe"
    plan = remedy.plan_from_report({"diagnoses": [diag]})
    script = remedy.shell_script(plan, host="h", version="0")
    assert "rm" not in command_words(script)
    assert "not one of kvmdoctor's playbook steps" in script


def test_every_step_of_a_real_report_is_a_playbook_step() -> None:
    for report in sorted((ROOT / "sample_reports").glob("*.json")):
        data = json.loads(report.read_text())
        planned = [s for item in remedy.plan_from_report(data) for s in item.steps]
        assert planned or not data["diagnoses"]
        assert all("not one of kvmdoctor's" not in s.text for s in planned), report.name


def test_sh_is_there() -> None:
    assert shutil.which("sh")
