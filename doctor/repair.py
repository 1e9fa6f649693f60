"""The only code in kvmdoctor that changes the host: `kvmdoctor fix --apply` carries out fix
steps here, one at a time, and records what each changed and what was there before.

Nothing else imports this module (tests/test_no_host_io.py and tests/cli/test_fix.py hold that
line). It applies whatever step it is given; choosing only `safe` steps is the caller's job
(doctor/cli/fix.py `applicable`), and the caller asks the operator first.

`root` prefixes the files it edits (sysctl.d, modprobe.d, udev rules and other file lines), so
that tests can point those edits at a scratch tree; /proc/sys, commands and packages always act
on the running host.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from doctor.remedy import INSTALLERS, module_lines, persist_file, sysctl_line
from doctor.rules import FixStep

COMMAND_TIMEOUT = 600.0


@dataclass
class Change:
    """What one step did: `previous` and `now` describe the things it touched."""

    playbook: str
    action: str
    safety: str
    text: str
    params: dict[str, Any]
    status: str = "applied"  # applied, failed
    previous: dict[str, Any] = field(default_factory=dict)
    now: dict[str, Any] = field(default_factory=dict)
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class StepFailed(Exception):
    pass


class Applier:
    def __init__(self, root: str = "/") -> None:
        self.root = root

    # -- helpers ---------------------------------------------------------------------------

    def _path(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def _read(self, path: str) -> Optional[str]:
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    def _run(self, argv: Sequence[str]) -> str:
        try:
            done = subprocess.run(
                list(argv),
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT,
                check=False,
                env={**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"},
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise StepFailed(f"{' '.join(argv)}: {exc}") from None
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip().splitlines()
            raise StepFailed(
                f"{' '.join(argv)} exited {done.returncode}" + (f": {said[-1]}" if said else "")
            )
        return done.stdout

    def put_line(self, path: str, regexp: Optional[str], line: str) -> dict[str, Any]:
        """Drop the lines `regexp` matches (or equal to `line`) and append `line`; return what
        the file held before: whether it existed and the lines that were replaced."""
        import re

        # A configuration file that is a link (Debian's /etc/sysctl.d/99-sysctl.conf) is
        # edited where it points: the link stays a link.
        target = os.path.realpath(self._path(path))
        before = self._read(target)
        lines = before.splitlines() if before is not None else []
        if regexp:
            pattern = re.compile(regexp)
            replaced = [x for x in lines if pattern.search(x)]
        else:
            replaced = [x for x in lines if x == line]
        kept = [x for x in lines if x not in replaced]
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        tmp = f"{target}.kvmdoctor-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write("\n".join([*kept, line]) + "\n")
        if before is not None:
            shutil.copymode(target, tmp)
        os.replace(tmp, target)
        return {"file": path, "existed": before is not None, "lines": replaced}

    # -- steps -----------------------------------------------------------------------------

    def apply(self, step: FixStep) -> Change:
        change = Change(step.playbook, step.action, step.safety, step.text, dict(step.params))
        handler = getattr(self, f"_{step.action}", None)
        try:
            if handler is None or not step.automatable:
                raise StepFailed(f"kvmdoctor cannot carry out a {step.action} step itself")
            handler(step.params, change)
        except (StepFailed, OSError) as exc:
            change.status = "failed"
            change.detail = str(exc)
        return change

    def _sysctl(self, p: dict[str, Any], change: Change) -> None:
        proc = "/proc/sys/" + p["name"].replace(".", "/")
        current = self._read(proc)
        if current is None:
            raise StepFailed(f"{proc} does not exist")
        change.previous["runtime"] = current.strip()
        with open(proc, "w", encoding="utf-8") as handle:
            handle.write(f"{p['value']}\n")
        change.now["runtime"] = (self._read(proc) or "").strip()
        if p.get("persist", True) is not False:
            step = FixStep(change.playbook, "sysctl", change.safety, change.text, p)
            regexp, line = sysctl_line(step)
            change.previous["persisted"] = self.put_line(persist_file(step), regexp, line)
            change.now["persisted"] = {"file": persist_file(step), "line": line}

    def _file_line(self, p: dict[str, Any], change: Change) -> None:
        change.previous["file"] = self.put_line(p["path"], p.get("regexp"), p["line"])
        change.now["file"] = {"file": p["path"], "line": p["line"]}

    def _module_option(self, p: dict[str, Any], change: Change) -> None:
        module = p["module"]
        change.previous["loaded"] = os.path.isdir(f"/sys/module/{module}")
        if p.get("load", True):
            options = [f"{k}={v}" for k, v in (p.get("options") or {}).items()]
            self._run(["modprobe", module, *options])
        change.now["loaded"] = os.path.isdir(f"/sys/module/{module}")
        if p.get("persist", True):
            step = FixStep(change.playbook, "module_option", change.safety, change.text, p)
            change.previous["files"] = [self.put_line(f, r, x) for f, r, x in module_lines(step)]

    def _acl(self, p: dict[str, Any], change: Change) -> None:
        change.previous["acl"] = self._run(["getfacl", "--absolute-names", "-p", p["path"]])
        entry = f"{p['etype'][0]}:{p['entity']}:{p['permissions']}"
        self._run(["setfacl", "-m", entry, p["path"]])
        change.now["acl"] = self._run(["getfacl", "--absolute-names", "-p", p["path"]])

    def _group_member(self, p: dict[str, Any], change: Change) -> None:
        change.previous["groups"] = self._run(["id", "-nG", p["user"]]).split()
        self._run(["usermod", "-aG", p["group"], p["user"]])
        change.now["groups"] = self._run(["id", "-nG", p["user"]]).split()

    def _service(self, p: dict[str, Any], change: Change) -> None:
        if os.path.isdir("/run/systemd/system"):
            name = p["name"]
            state = subprocess.run(
                ["systemctl", "is-active", name], capture_output=True, text=True, check=False
            )
            change.previous["active"] = state.stdout.strip()
            if p["state"] == "restarted":
                self._run(["systemctl", "restart", name])
            else:
                verb = ["enable", "--now"] if p.get("enabled") else ["start"]
                self._run(["systemctl", *verb, name])
            return
        fallback = p.get("without_systemd")
        if not fallback or p["state"] == "restarted":
            raise StepFailed("no systemd here, and no command is known to do this without it")
        change.previous["active"] = "unknown (no systemd)"
        self._run(fallback)

    def _package(self, p: dict[str, Any], change: Change) -> None:
        for family, names in p["packages"].items():
            tool, argv = INSTALLERS[family]
            if shutil.which(tool):
                change.previous["family"] = family
                self._run([*argv, *names])
                change.now["installed"] = list(names)
                return
        raise StepFailed(f"none of {', '.join(p['packages'])}'s package managers is here")

    def _command(self, p: dict[str, Any], change: Change) -> None:
        change.now["output"] = self._run(p["argv"])[-2000:]


def write_record(path: str, document: dict[str, Any]) -> None:
    """The change record: what --apply changed, what was there before, how the checks ended."""
    import json

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2)
        handle.write("\n")
