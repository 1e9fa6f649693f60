"""Log facts: the recent part of libvirt's daemon logs, of each domain's QEMU log and of the
journal, as lines. Only tails are read (a log of gigabytes costs no more than its end)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from typing import Any, Optional

from doctor.facts import FactContext, FactUnavailable, fact
from doctor.facts.util import read_text
from doctor.record import record
from doctor.sources.base import NotFound, SourceError

DAEMON_LOGS = tuple(
    f"/var/log/libvirt/{name}.log"
    for name in ("libvirtd", "virtqemud", "virtnetworkd", "virtstoraged", "virtproxyd", "virtlogd")
)
QEMU_LOG_DIR = "/var/log/libvirt/qemu"
DAEMON_TAIL_BYTES = 512 * 1024
QEMU_TAIL_BYTES = 64 * 1024
MAX_QEMU_LOGS = 64
JOURNAL_UNITS = ("libvirtd", "virtqemud", "virtnetworkd", "virtstoraged", "virtproxyd", "virtlogd")
JOURNAL_ARGV = (
    "journalctl",
    "--no-pager",
    "--quiet",
    "--output=short-iso",
    "--since=-7d",
    "--lines=5000",
    *(arg for unit in JOURNAL_UNITS for arg in ("-u", f"{unit}.service")),
)

# 2026-11-26 07:27:48.118+0000 (libvirt's logs), 2026-11-26T07:27:48.115806Z (QEMU),
# 2026-11-26T07:27:48+0000 (journalctl --output=short-iso).
_STAMP = re.compile(
    r"(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2})(?:[.,](\d+))?\s*(Z|[+-]\d{2}:?\d{2})?"
)


def line_time(line: str) -> Optional[float]:
    """The time a log line starts with (UTC when it names no zone); None when it has none."""
    match = _STAMP.match(line.lstrip())
    if not match:
        return None
    date, clock, _, zone = match.groups()
    # What strptime("%Y-%m-%d %H:%M:%S %z") reads, without its cost (~25 us a line): the
    # fields by position, checked by datetime; a zone's minutes below 60, its hours below 24.
    offset = 0
    if zone and zone != "Z":
        digits = zone.replace(":", "")
        hours, minutes = int(digits[1:3]), int(digits[3:5])
        if minutes > 59 or hours > 23:
            return None
        offset = (hours * 3600 + minutes * 60) * (-1 if digits[0] == "-" else 1)
    try:
        when = dt.datetime(
            int(date[:4]),
            int(date[5:7]),
            int(date[8:10]),
            int(clock[:2]),
            int(clock[3:5]),
            int(clock[6:8]),
            tzinfo=dt.timezone.utc,
        )
    except ValueError:
        return None
    return when.timestamp() - offset


def time_up_to(lines: Sequence[str], index: int, after: int) -> Optional[float]:
    """The time of the last of lines[after + 1 .. index] that has one; None when none has.
    A line without a time of its own (QEMU's stderr) takes that of the lines before it; a
    reader that went up to line `after` already knows the time there."""
    for back in range(index, after, -1):
        found = line_time(lines[back])
        if found:
            return found
    return None


@record
class LogText:
    origin: str  # a file path, or "journal"
    lines: tuple[str, ...]
    partial: bool  # only the tail was read

    def as_dict(self) -> dict[str, Any]:
        return {"origin": self.origin, "lines": len(self.lines), "partial": self.partial}


@record
class LibvirtLogs:
    logs: tuple[LogText, ...]
    unread: tuple[str, ...]  # "what: why" for logs that exist or may exist but gave nothing

    def as_dict(self) -> dict[str, Any]:
        return {"read": [log.as_dict() for log in self.logs], "unread": list(self.unread)}


def _tail(ctx: FactContext, path: str, limit: int, logs: list[LogText], unread: list[str]) -> None:
    try:
        text = read_text(ctx.source, path, tail=limit)
    except NotFound:
        return
    except SourceError as exc:
        unread.append(f"{path}: {exc.reason}")
        return
    lines = text.splitlines()
    partial = len(text.encode()) >= limit
    if partial and lines:
        lines = lines[1:]  # the first line of a tail is usually cut
    if lines:
        logs.append(LogText(path, tuple(lines), partial))


@fact("libvirt_logs", commands=[JOURNAL_ARGV])
def libvirt_logs(ctx: FactContext) -> LibvirtLogs:
    logs: list[LogText] = []
    unread: list[str] = []
    for path in DAEMON_LOGS:
        _tail(ctx, path, DAEMON_TAIL_BYTES, logs, unread)
    try:
        names = sorted(n for n in ctx.source.list_dir(QEMU_LOG_DIR) if n.endswith(".log"))
    except NotFound:
        names = []
    except SourceError as exc:
        names = []
        unread.append(f"{QEMU_LOG_DIR}: {exc.reason}")
    if len(names) > MAX_QEMU_LOGS:
        unread.append(f"{QEMU_LOG_DIR}: {len(names) - MAX_QEMU_LOGS} more logs not read")
        names = names[:MAX_QEMU_LOGS]
    for name in names:
        _tail(ctx, f"{QEMU_LOG_DIR}/{name}", QEMU_TAIL_BYTES, logs, unread)
    try:
        result = ctx.source.run(list(JOURNAL_ARGV), timeout=10)
        text = result.stdout
        if result.returncode == 0 and text.strip() and "No journal files" not in text:
            lines = [line for line in text.splitlines() if not line.startswith("-- ")]
            if lines:
                logs.append(LogText("journal", tuple(lines), True))
        elif result.returncode != 0:
            unread.append(f"journal: {(result.stderr.strip() or 'no output')[:200]}")
    except NotFound:
        pass  # no journalctl: no journal
    except SourceError as exc:
        unread.append(f"journal: {exc.reason}")
    if not logs and unread:
        raise FactUnavailable("no libvirt log could be read (" + "; ".join(unread) + ")")
    return LibvirtLogs(tuple(logs), tuple(unread))
