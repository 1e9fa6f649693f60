"""Kernel facts: the kernel log of the current boot, and loaded or built-in modules."""

from __future__ import annotations

import re
from dataclasses import field
from functools import cached_property
from typing import Any, Optional

from doctor.facts import FactContext, FactUnavailable, fact
from doctor.facts.util import read_text
from doctor.record import record
from doctor.sources.base import NotFound, SourceError, Unavailable

# Files that hold kernel messages when the ring buffer cannot be read (or under --root).
LOG_FILES = ("/var/log/kern.log", "/var/log/dmesg", "/var/log/messages", "/var/log/syslog")
LOG_TAIL_BYTES = 4 * 1024 * 1024
_BOOT_MARK = re.compile(r"\bLinux version \d")
# What makes a pattern's match depend on where a line starts or ends: such a pattern is tried
# line by line only (KernelLog.search).
_LINE_BOUND = re.compile(r"[$^]|\\[AZ]|\(\?")


@record
class KernelLog:
    origin: str  # "dmesg" or the log file the lines came from
    lines: tuple[str, ...]  # the current boot only
    tried: tuple[str, ...] = ()  # what was tried before, and why it did not answer

    def search(self, pattern: re.Pattern[str], needles: tuple[str, ...] = ()) -> list[str]:
        """The lines in which `pattern` is found. `needles`: texts of which every match holds
        one (in any case); a log that holds none of them is not searched at all.

        A log holds thousands of lines and a pattern is in few: the whole text is searched,
        and a line only tried alone when a match starts in it and runs past its end. A
        pattern that looks at where a line starts or ends is tried line by line."""
        if needles and not any(needle.lower() in self.lower for needle in needles):
            return []
        if _LINE_BOUND.search(pattern.pattern):
            return [line for line in self.lines if pattern.search(line)]
        text = self.text
        found: list[str] = []
        position = 0
        while True:
            match = pattern.search(text, position)
            if match is None:
                return found
            start = text.rfind("\n", 0, match.start()) + 1
            end = text.find("\n", start)
            end = len(text) if end < 0 else end
            line = text[start:end]
            if match.end() <= end or pattern.search(line):
                found.append(line)
            position = end + 1

    @cached_property
    def text(self) -> str:
        return "\n".join(self.lines)

    @cached_property
    def lower(self) -> str:
        return self.text.lower()

    def as_dict(self) -> dict[str, Any]:
        return {"origin": self.origin, "lines": len(self.lines), "tried": list(self.tried)}


def current_boot(lines: list[str]) -> list[str]:
    """The lines after the last boot banner; all of them when there is none."""
    for index in range(len(lines) - 1, -1, -1):
        if _BOOT_MARK.search(lines[index]):
            return lines[index:]
    return lines


@fact("kernel_log", commands=[["dmesg"]])
def kernel_log(ctx: FactContext) -> KernelLog:
    tried = []
    try:
        result = ctx.source.run(["dmesg"], timeout=10)
        if result.returncode == 0 and result.stdout.strip():
            return KernelLog("dmesg", tuple(result.stdout.splitlines()))
        tried.append(f"dmesg: {(result.stderr.strip() or 'no output')[:200]}")
    except SourceError as exc:
        tried.append(f"dmesg: {exc.reason}")
    for path in LOG_FILES:
        try:
            text = read_text(ctx.source, path, tail=LOG_TAIL_BYTES)
        except SourceError as exc:
            tried.append(f"{path}: {exc.reason}")
            continue
        if text.strip():
            lines = current_boot(text.splitlines())
            return KernelLog(path, tuple(lines), tuple(tried))
        tried.append(f"{path}: empty")
    raise FactUnavailable("no kernel log could be read (" + "; ".join(tried) + ")")


@record
class KernelModules:
    modular: bool  # /proc/modules exists (the kernel loads modules at all)
    loaded: tuple[str, ...]  # listed in /proc/modules
    present: tuple[str, ...]  # /sys/module entries: loaded, or built in
    parameters: dict[str, dict[str, str]] = field(default_factory=dict)

    def has(self, name: str) -> bool:
        return name in self.loaded or name in self.present

    def built_in(self, name: str) -> bool:
        return name in self.present and name not in self.loaded

    def state(self, name: str) -> str:
        if name in self.loaded:
            return "loaded"
        if name in self.present:
            return "built in"
        return "absent"

    def as_dict(self) -> dict[str, Any]:
        interesting = sorted(
            {m for m in (*self.loaded, *self.present) if m.startswith(("kvm", "vhost", "tun"))}
        )
        return {
            "modular": self.modular,
            "kvm_related": {m: self.state(m) for m in interesting},
            "parameters": self.parameters,
        }


# Module parameters that matter to the checks, read from /sys/module/<m>/parameters/<p>.
PARAMETERS = {"kvm_intel": ("nested",), "kvm_amd": ("nested",)}


@fact("modules")
def modules(ctx: FactContext) -> KernelModules:
    source = ctx.source
    loaded: list[str] = []
    modular = True
    try:
        text = read_text(source, "/proc/modules")
        loaded = [line.split()[0] for line in text.splitlines() if line.strip()]
    except NotFound:
        modular = False
    except Unavailable as exc:
        raise FactUnavailable(exc.reason) from None
    try:
        present = source.list_dir("/sys/module")
    except SourceError as exc:
        if not loaded:
            raise FactUnavailable(f"neither /proc/modules nor /sys/module: {exc.reason}") from None
        present = []
    params: dict[str, dict[str, str]] = {}
    for module, names in PARAMETERS.items():
        if module not in present:
            continue
        for name in names:
            value = _param(ctx, module, name)
            if value is not None:
                params.setdefault(module, {})[name] = value
    return KernelModules(modular, tuple(loaded), tuple(present), params)


def _param(ctx: FactContext, module: str, name: str) -> Optional[str]:
    try:
        return read_text(ctx.source, f"/sys/module/{module}/parameters/{name}").strip()
    except SourceError:
        return None
