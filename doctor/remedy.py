"""Fix plans: the fix steps of a report's diagnoses as a shell script or an Ansible playbook.

Both are views of the report's `diagnoses` (so a saved report gives the same plan). Values that
come from the host (user names, paths, domain names) are quoted for the shell with shlex and
written as YAML strings for Ansible; a step whose placeholders the evidence could not fill is
never written as a command, only as a note saying what is missing. Steps that are not `safe`
are written out but do not run by default: commented out in the shell script, tagged `never`
plus their safety class in Ansible (run them with `--tags disruptive` and the like), as
`kvmdoctor fix --apply` runs only `safe` steps.
"""

from __future__ import annotations

import re
import shlex
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional

from doctor.record import record
from doctor.rules import FixStep
from doctor.textsafe import has_controls, lines, one_line

SYSCTL_FILE = "/etc/sysctl.d/90-kvmdoctor.conf"
MODULES_LOAD_FILE = "/etc/modules-load.d/kvmdoctor.conf"
MODPROBE_FILE = "/etc/modprobe.d/kvmdoctor-{module}.conf"
FAMILIES = {"debian": "Debian", "redhat": "RedHat", "suse": "Suse", "arch": "Archlinux"}
INSTALLERS = {
    "debian": ("apt-get", ["apt-get", "install", "-y"]),
    "redhat": ("dnf", ["dnf", "install", "-y"]),
    "suse": ("zypper", ["zypper", "--non-interactive", "install"]),
    "arch": ("pacman", ["pacman", "-S", "--needed", "--noconfirm"]),
}


@record
class PlanItem:
    """One diagnosis and its fix steps."""

    playbook: str
    title: str
    subject: str
    cause: str
    verify: tuple[str, ...]
    steps: tuple[FixStep, ...]
    # In a fleet report: the hosts the steps are carried out on, and how to see the verifying
    # checks again (where, command); () and None for one host's report.
    hosts: tuple[str, ...] = ()
    rerun: Optional[tuple[str, str]] = None
    # The diagnosis rests on `kvmdoctor probe` findings: the probe to run again (its own
    # arguments from the report; `kvmdoctor run` cannot re-judge a probe), else None.
    probe_again: Optional[tuple[str, ...]] = None

    @property
    def rerun_codes(self) -> tuple[str, ...]:
        """The checks `kvmdoctor run --select` re-judges: not the PRB checks, which only
        `kvmdoctor probe` feeds."""
        return tuple(c for c in self.verify if not c.startswith(PROBE_PREFIX))


PROBE_PREFIX = "PRB"
# Options of `kvmdoctor probe` that shape its output, left out of the command to run again.
_OUTPUT_OPTIONS = {"--format": 1, "-f": 1, "--output": 1, "-o": 1, "--no-color": 0}


def probe_command(report: dict[str, Any]) -> tuple[str, ...]:
    """The `kvmdoctor probe` that made the report, without its output options; or the bare
    command when the report came from elsewhere."""
    argv = [str(a) for a in (report.get("run") or {}).get("argv") or []]
    if argv[1:2] != ["probe"]:
        return ("kvmdoctor", "probe")
    out: list[str] = ["kvmdoctor", "probe"]
    skip = 0
    for arg in argv[2:]:
        if skip:
            skip -= 1
            continue
        name = arg.split("=", 1)[0]
        if name in _OUTPUT_OPTIONS:
            skip = _OUTPUT_OPTIONS[name] if "=" not in arg else 0
            continue
        out.append(arg)
    return tuple(out)


def plan_from_report(report: dict[str, Any]) -> list[PlanItem]:
    """The report's diagnoses as plan items, in rank order. A step that an earlier diagnosis
    already holds (one ACL entry for the qemu user and for its running process, say) is kept
    once, under the first.

    A saved report is a file from anywhere: a step becomes a command only when it is one of
    the shipped playbook's own steps with its placeholders filled (what was filled in is
    quoted where it is used); any other step is shown as a note, never run."""
    import json

    from doctor.playbooks import shipped
    from doctor.render.views import rerun

    book = shipped()
    seen: set[str] = set()
    items = []
    for diag in report.get("diagnoses", []):
        if diag.get("consequence_of") is not None:
            continue  # a consequence of another diagnosis: fixing that cause fixes it
        steps = []
        hosts = tuple(str(h) for h in diag.get("hosts", ()))
        for data in diag["fix"]:
            step = _vetted(FixStep.from_dict(data), book.items.get(str(diag["playbook"])))
            # One host's step is another's too: the same sysctl on two hosts is two steps.
            key = json.dumps([hosts, step.action, step.params], sort_keys=True)
            if step.action not in ("manual", "domain_xml") and key in seen:
                continue
            seen.add(key)
            steps.append(step)
        codes = [f.get("code", "") for f in (*diag.get("findings", ()), *diag.get("explains", ()))]
        probed = any(str(c).startswith(PROBE_PREFIX) for c in codes)
        items.append(
            PlanItem(
                diag["playbook"],
                diag["title"],
                diag["subject"],
                diag["cause"],
                tuple(diag["verify"]),
                tuple(steps),
                hosts,
                rerun(report, diag) if hosts else None,
                probe_command(report) if probed else None,
            )
        )
    return items


def by_host(plan: Sequence[PlanItem]) -> list[tuple[tuple[str, ...], list[PlanItem]]]:
    """The plan's items grouped by the hosts they are carried out on, in the order the hosts
    first appear (a fleet's plan; one host's plan is one group with no hosts)."""
    groups: dict[tuple[str, ...], list[PlanItem]] = {}
    for item in plan:
        groups.setdefault(item.hosts, []).append(item)
    return list(groups.items())


def _hosts_words(hosts: Sequence[str]) -> str:
    return ("host " if len(hosts) == 1 else "hosts ") + ", ".join(hosts)


def _vetted(step: FixStep, playbook: Any) -> FixStep:
    """`step` if the playbook it names holds a step of the same shape, else a manual note."""
    if step.action == "manual":
        return step
    for action in playbook.fix if playbook is not None else ():
        template = {k: v for k, v in action.params.items() if k != "text"}
        if (
            action.kind == step.action
            and action.safety == step.safety
            and step.playbook == playbook.id
            and _fits(template, step.params)
        ):
            return step
    return FixStep(
        step.playbook,
        "manual",
        step.safety,
        f"{step.text} (this step is not one of kvmdoctor's playbook steps: shown, not written "
        "as a command)",
        {},
        step.missing,
    )


def _fits(template: Any, value: Any) -> bool:
    """Whether `value` is `template` with its placeholders filled: the same structure, the
    same literal text, anything in place of a placeholder."""
    if isinstance(template, str):
        return isinstance(value, str) and _template_pattern(template).fullmatch(value) is not None
    if isinstance(template, Mapping):
        return (
            isinstance(value, Mapping)
            and set(template) == set(value)
            and all(_fits(template[k], value[k]) for k in template)
        )
    if isinstance(template, (list, tuple)):
        return (
            isinstance(value, (list, tuple))
            and len(template) == len(value)
            and all(_fits(t, v) for t, v in zip(template, value))
        )
    return bool(template == value and type(template) is type(value))


def _template_pattern(template: str) -> re.Pattern[str]:
    from doctor.playbooks import PLACEHOLDER

    def literal(part: str) -> str:
        return re.escape(part.replace("\0", "{").replace("\1", "}"))

    text = template.replace("{{", "\0").replace("}}", "\1")  # as playbooks.fill reads it
    parts, last = [], 0
    for match in PLACEHOLDER.finditer(text):
        parts += [literal(text[last : match.start()]), "(?s:.*)"]
        last = match.end()
    parts.append(literal(text[last:]))
    return re.compile("".join(parts))


def persist_file(step: FixStep) -> str:
    value = step.params.get("persist", SYSCTL_FILE)
    return SYSCTL_FILE if value is True else str(value)


def sysctl_line(step: FixStep) -> tuple[str, str]:
    """(regexp, line) that keep a sysctl in its sysctl.d file."""
    name = step.params["name"]
    return rf"^\s*{name.replace('.', '[./]')}\s*=", f"{name} = {step.params['value']}"


def module_lines(step: FixStep) -> list[tuple[str, str, str]]:
    """(file, regexp, line) that make a module_option step last across reboots."""
    module = step.params["module"]
    out = []
    options = step.params.get("options") or {}
    if options:
        text = " ".join(f"{k}={v}" for k, v in options.items())
        out.append(
            (
                MODPROBE_FILE.format(module=module),
                rf"^options\s+{module}\s",
                f"options {module} {text}",
            )
        )
    if step.params.get("load", True):
        out.append((MODULES_LOAD_FILE, rf"^{module}$", module))
    return out


# --- shell ----------------------------------------------------------------------------------

_SHELL_HEADER = """#!/bin/sh
# Fix plan written by kvmdoctor {version} for {host} from its diagnoses.
# Review before running, as root. Steps that are not `safe` are commented out: uncomment
# them when their cost (a restart, a reboot, a re-login) is acceptable.
set -eu

# put_line FILE REGEXP LINE: drop the lines REGEXP matches from FILE, then append LINE.
put_line() {{
    mkdir -p "$(dirname "$1")"
    touch "$1"
    grep -Ev "$2" "$1" > "$1.kvmdoctor-new" || true
    printf '%s\\n' "$3" >> "$1.kvmdoctor-new"
    cat "$1.kvmdoctor-new" > "$1"
    rm -f "$1.kvmdoctor-new"
}}
"""


def _q(value: Any) -> str:
    return shlex.quote(str(value))


def shell_commands(step: FixStep) -> list[str]:
    """The shell lines for one step (empty for manual steps)."""
    p = step.params
    kind = step.action
    if kind == "sysctl":
        setting = f"{p['name']}={p['value']}"
        lines = [f"sysctl -w {_q(setting)}"]
        if p.get("persist", True) is not False:
            regexp, line = sysctl_line(step)
            lines.append(f"put_line {_q(persist_file(step))} {_q(regexp)} {_q(line)}")
        return lines
    if kind == "file_line":
        if p.get("regexp"):
            return [f"put_line {_q(p['path'])} {_q(p['regexp'])} {_q(p['line'])}"]
        return [
            f"grep -qxF {_q(p['line'])} {_q(p['path'])} 2>/dev/null || "
            f"printf '%s\\n' {_q(p['line'])} >> {_q(p['path'])}"
        ]
    if kind == "package":
        branches = []
        for family, names in p["packages"].items():
            tool, argv = INSTALLERS[family]
            command = " ".join(_q(a) for a in [*argv, *names])
            branches.append(f"command -v {tool} >/dev/null 2>&1; then {command}")
        return ["if " + "\nelif ".join(branches) + "\nfi"]
    if kind == "service":
        name = p["name"]
        if p["state"] == "restarted":
            systemd = f"systemctl restart {_q(name)}"
        elif p.get("enabled"):
            systemd = f"systemctl enable --now {_q(name)}"
        else:
            systemd = f"systemctl start {_q(name)}"
        fallback = p.get("without_systemd")
        other = (
            " ".join(_q(a) for a in fallback)
            if fallback and _command_word(fallback[0])
            else f"echo {_q(f'no systemd: {step.text} by hand')} >&2"
        )
        return [f"if [ -d /run/systemd/system ]; then {systemd}; else {other}; fi"]
    if kind == "group_member":
        return [f"usermod -aG {_q(p['group'])} {_q(p['user'])}"]
    if kind == "acl":
        entry = f"{p['etype'][0]}:{p['entity']}:{p['permissions']}"
        return [f"setfacl -m {_q(entry)} {_q(p['path'])}"]
    if kind == "module_option":
        options = [f"{k}={v}" for k, v in (p.get("options") or {}).items()]
        lines = []
        if p.get("load", True):
            lines.append(" ".join(_q(a) for a in ["modprobe", p["module"], *options]))
        if p.get("persist", True):
            lines += [f"put_line {_q(f)} {_q(r)} {_q(line)}" for f, r, line in module_lines(step)]
        return lines
    if kind == "command":
        if not _command_word(p["argv"][0] if p["argv"] else ""):
            return []
        return [" ".join(_q(a) for a in p["argv"])]
    return []


_COMMAND_WORD = re.compile(r"/?[A-Za-z0-9_][A-Za-z0-9_.+-]*(/[A-Za-z0-9_][A-Za-z0-9_.+-]*)*")


def _command_word(word: str) -> bool:
    """Whether a filled-in value may name the command a line runs: a plain program name or
    path, nothing a shell would read as more than that."""
    return _COMMAND_WORD.fullmatch(str(word)) is not None


def _comment(text: str, prefix: str = "# ") -> list[str]:
    """`text` as comment lines: whatever the text holds (a domain named with a newline, a
    report's title), each of its lines starts with `prefix` and none can end the comment."""
    return [f"{prefix}{line}".rstrip() for line in lines(str(text))]


def shell_script(plan: Sequence[PlanItem], *, host: str, version: str) -> str:
    """The plan as a POSIX shell script. Only kvmdoctor's own commands are live lines; every
    value from the host, a tree, a snapshot or a saved report is either shell-quoted inside
    them or a comment."""
    out = [_SHELL_HEADER.format(version=one_line(version), host=one_line(host or "this host"))]
    if not plan:
        out.append("# Nothing to fix: no diagnosis.\n")
    for hosts, items in by_host(plan):
        if not hosts:
            out += _shell_items(items)
            continue
        # A fleet's plan: each host's steps under its name, and live only on that host (the
        # name its report gave, uname's nodename), so the one script can go to every host.
        words = one_line(_hosts_words(hosts))
        out += [f"# {'=' * 30} on {words} {'=' * 30}".rstrip()]
        names = "|".join(_q(one_line(h)) for h in hosts)
        out += [f'case "$(uname -n)" in {names})', ""]
        out += _shell_items(items)
        out += [f";; esac  # end of the steps on {words}", ""]
    return "\n".join(out).rstrip() + "\n"


def _shell_items(items: Sequence[PlanItem]) -> list[str]:
    out: list[str] = []
    for item in items:
        subject = "" if item.subject == "host" else f" ({item.subject})"
        out += _comment(f"=== {item.title}{subject} [{item.playbook}]")
        out += _comment(_wrap(item.cause))
        for step in item.steps:
            out += _comment(_wrap(f"[{step.safety}] {step.text}"))
            commands = shell_commands(step)
            if step.missing:
                out += _comment(f"needs a value for: {', '.join(step.missing)}")
            if not commands:
                if step.action == "domain_xml" and step.params.get("xml"):
                    out += _comment(step.params["xml"], "#   ")
                if step.action == "command":
                    out += _comment(
                        "not written as a command (it names no plain program): "
                        f"{step.params.get('argv')!r}"
                    )
                continue
            runnable = step.safety == "safe" and not step.missing
            if has_controls(step.params):
                out += _comment("not run: a value holds a line break or a control character")
                runnable = False
            for command in commands:
                # Runnable as built (a quoted value may span lines), or wholly commented out.
                out += [command] if runnable else _comment(command)
        if item.rerun is not None:
            place, command = item.rerun
            out += _comment(f"then check {place}: {command}")
        elif item.rerun_codes:
            out += _comment(f"then check: kvmdoctor run --select {','.join(item.rerun_codes)}")
        if item.probe_again:
            out += _comment(f"then probe again: {one_line(shlex.join(item.probe_again))}")
        out.append("")
    return out


def _wrap(text: str) -> str:
    return "\n".join(textwrap.wrap(text, width=96))


# --- Ansible --------------------------------------------------------------------------------


def _tags(step: FixStep) -> list[str]:
    """`safe` steps run by default; the others only when their class is asked for."""
    return ["safe"] if step.safety == "safe" else ["never", step.safety]


def ansible_tasks(step: FixStep, label: str) -> list[dict[str, Any]]:
    """The tasks of one step, with standard modules."""
    p = step.params
    name = f"{label}: {step.text}"
    kind = step.action
    if step.missing or kind in ("manual", "domain_xml"):
        msg = step.text
        if step.missing:
            msg += f" (needs a value for: {', '.join(step.missing)})"
        if p.get("xml"):
            msg += f" -- {p['xml']}"
        return [{"name": name, "ansible.builtin.debug": {"msg": msg}, "tags": ["manual"]}]
    tasks: list[dict[str, Any]] = []
    if kind == "sysctl":
        if p.get("persist", True) is False:
            module: dict[str, Any] = {
                "ansible.builtin.command": {"argv": ["sysctl", "-w", f"{p['name']}={p['value']}"]}
            }
        else:
            module = {
                "ansible.posix.sysctl": {
                    "name": p["name"],
                    "value": str(p["value"]),
                    "sysctl_file": persist_file(step),
                    "state": "present",
                    "sysctl_set": True,
                    "reload": False,
                }
            }
        tasks.append({"name": name, **module})
    elif kind == "file_line":
        args = {"path": p["path"], "line": p["line"], "create": True}
        if p.get("regexp"):
            args["regexp"] = p["regexp"]
        tasks.append({"name": name, "ansible.builtin.lineinfile": args})
    elif kind == "package":
        for family, names in p["packages"].items():
            tasks.append(
                {
                    "name": f"{name} ({FAMILIES[family]})",
                    "ansible.builtin.package": {"name": list(names), "state": "present"},
                    "when": f"ansible_facts['os_family'] == '{FAMILIES[family]}'",
                }
            )
    elif kind == "service":
        args = {"name": p["name"], "state": p["state"]}
        if p.get("enabled") is not None:
            args["enabled"] = bool(p["enabled"])
        task: dict[str, Any] = {"name": name, "ansible.builtin.service": args}
        fallback = p.get("without_systemd")
        if fallback:
            # As the shell plan does: systemd units where systemd runs, the command elsewhere.
            task["when"] = "ansible_facts['service_mgr'] == 'systemd'"
            tasks.append(task)
            tasks.append(
                {
                    "name": f"{name} (without systemd)",
                    "ansible.builtin.command": {"argv": list(fallback)},
                    "when": "ansible_facts['service_mgr'] != 'systemd'",
                }
            )
        else:
            tasks.append(task)
    elif kind == "group_member":
        tasks.append(
            {
                "name": name,
                "ansible.builtin.user": {"name": p["user"], "groups": [p["group"]], "append": True},
            }
        )
    elif kind == "acl":
        tasks.append(
            {
                "name": name,
                "ansible.posix.acl": {
                    "path": p["path"],
                    "etype": p["etype"],
                    "entity": p["entity"],
                    "permissions": p["permissions"],
                    "state": "present",
                },
            }
        )
    elif kind == "module_option":
        options = " ".join(f"{k}={v}" for k, v in (p.get("options") or {}).items())
        args = {
            "name": p["module"],
            "state": "present",
            "persistent": "present" if p.get("persist", True) else "disabled",
        }
        if options:
            args["params"] = options
        tasks.append({"name": name, "community.general.modprobe": args})
    elif kind == "command":
        tasks.append({"name": name, "ansible.builtin.command": {"argv": list(p["argv"])}})
    for task in tasks:
        task["tags"] = _tags(step)
    return tasks


def ansible_playbook(plan: Sequence[PlanItem], *, host: str, version: str) -> str:
    import yaml

    plays = []
    for hosts, items in by_host(plan) or [((), [])]:
        tasks: list[dict[str, Any]] = []
        for item in items:
            for step in item.steps:
                tasks += ansible_tasks(step, item.playbook)
        plays.append(
            {
                # A fleet's plan: one play per host, named as the fleet names it (its
                # hostname: the inventory's name for it when they agree).
                "name": "kvmdoctor fix plan for "
                + (_hosts_words(hosts) if hosts else host or "this host"),
                "hosts": _pattern(hosts),
                "become": True,
                "gather_facts": any("when" in t for t in tasks),
                "tasks": tasks
                or [{"name": "nothing to fix", "ansible.builtin.debug": {"msg": "no diagnosis"}}],
            }
        )
    header = (
        f"# Fix plan written by kvmdoctor {one_line(version)} for "
        f"{one_line(host or 'this host')}.\n"
        "# Safe steps run by default; the others are tagged `never` and their safety class:\n"
        "# add --tags disruptive (needs-reboot, needs-relogin) to run them too.\n"
        "# Checks to re-run afterwards: "
        + one_line(", ".join(verify_codes(plan) or ["-"]))
        + "\n"
        + "".join(
            f"# Then probe again: {one_line(shlex.join(command))}\n"
            for command in probe_commands(plan)
        )
    )
    body = yaml.dump(
        _unsafe(plays), Dumper=_dumper(), sort_keys=False, default_flow_style=False, width=100
    )
    return header + "---\n" + body


class _Unsafe(str):
    """A value Ansible must take as it stands: written with Ansible's `!unsafe` tag, so that
    text from the host or from a saved report ("{{ lookup('pipe', ...) }}" in a domain name)
    is never evaluated as a template on the machine that runs the plan."""


_OURS = ("when", "tags", "hosts")  # kvmdoctor's own expressions and patterns


def _unsafe(value: Any, key: Optional[str] = None) -> Any:
    if key in _OURS:
        return value
    if isinstance(value, str):
        return _Unsafe(value)
    if isinstance(value, dict):
        return {k: _unsafe(v, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_unsafe(v) for v in value]
    return value


def _dumper() -> Any:
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def unsafe(dumper: Any, data: _Unsafe) -> Any:
        return dumper.represent_scalar("!unsafe", str(data))

    Dumper.add_representer(_Unsafe, unsafe)
    return Dumper


_HOST_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _pattern(hosts: Sequence[str]) -> Any:
    """The play's `hosts`: every host for one host's plan; a fleet's hosts by name, joined as
    Ansible's patterns join them. A name that is not a plain host name (a saved report's
    "all", "*", "a:b") would reach other hosts: such a play matches no host."""
    if not hosts:
        return "all"
    if all(_HOST_NAME.fullmatch(h) and h != "all" for h in hosts):
        return ":".join(hosts)
    return []


def verify_codes(items: Iterable[PlanItem]) -> list[str]:
    """The checks `kvmdoctor run` re-judges after the plan (never the PRB checks)."""
    return sorted({code for item in items for code in item.rerun_codes})


def probe_commands(items: Iterable[PlanItem]) -> list[tuple[str, ...]]:
    """The probes to run again after the plan, each once."""
    return sorted({item.probe_again for item in items if item.probe_again})
