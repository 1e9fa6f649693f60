"""Log checks: known errors (playbook signatures) in the recent part of libvirt's logs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional

from doctor.facts.logs import LibvirtLogs, time_up_to
from doctor.facts.tls import HostClock, iso_time
from doctor.model import Finding
from doctor.playbooks import normalise, shipped
from doctor.registry import check
from doctor.sources.redact import scrub_log_line
from doctor.textscan import engine_for, scan_lines

RECENT_DAYS = 7
MAX_LINE = 400


@dataclass
class _Hit:
    playbook: str
    title: str
    codes: tuple[str, ...]
    also: tuple[str, ...]  # other playbooks the line matches, less closely
    origin: str
    line: str  # as read; scrubbed of secrets before it is reported
    time: Optional[float]
    count: int = 1


@check(
    "LOG001",
    "known-error-in-logs",
    title="A recent log line matches a known problem",
    tags=("libvirt", "logs"),
)
def known_error_in_logs(
    libvirt_logs: LibvirtLogs, host_clock: Optional[HostClock] = None
) -> Iterator[Finding]:
    """What it checks: the recent part of libvirt's daemon logs (/var/log/libvirt/libvirtd.log,
    virtqemud.log and the other modular daemons'), of every domain's QEMU log
    (/var/log/libvirt/qemu/*.log) and of the journal of the libvirt units when there is one,
    line by line, against the signatures of kvmdoctor's playbooks: the error messages libvirt,
    QEMU and the kernel print for problems kvmdoctor knows. Only the tail of each log is read
    (512 KiB of a daemon log, 64 KiB of a QEMU log, a week of journal), and a line whose
    timestamp is more than 7 days older than the host's clock is not reported. Each hit names
    the playbook, the line, the file and the time; repeats of one error in one file count as one.

    Why it matters: the checks see the host as it is now; the logs say what went wrong when a
    guest last failed to start, including problems that come and go (a daemon restarted since,
    a port that was busy, an image that another guest held). A hit is `info`: it tells what
    happened, and a check that sees the problem now is what fails the run.

    How to fix: `kvmdoctor explain PLAYBOOK` (or paste the line: `kvmdoctor explain "LINE"`)
    gives the cause and the fix; when a current check confirms the problem, its diagnosis
    already lists this hit under it.

    References: https://libvirt.org/kbase/debuglogs.html
    https://libvirt.org/logging.html
    """
    book = shipped()
    engine = engine_for(book, short=True)
    now = host_clock.time if host_clock is not None else None
    hits: dict[tuple[str, str], _Hit] = {}
    old = 0
    for log in libvirt_logs.logs:
        stamp: Optional[float] = None
        previous = -1
        # Only the lines that may hold a signature (doctor.textscan); each takes the time of
        # the last line up to it that has one (QEMU's stderr lines carry no time of their own).
        for index in scan_lines(engine, log.lines):
            raw = log.lines[index]
            stamp = time_up_to(log.lines, index, previous) or stamp
            previous = index
            line = normalise(raw)
            if not line:
                continue
            matches = book.match_line(line)
            if not matches:
                continue
            if now is not None and stamp is not None and now - stamp > RECENT_DAYS * 86400:
                old += 1
                continue
            best = matches[0].playbook
            key = (best.id, log.origin)
            hit = hits.get(key)
            if hit is None:
                hits[key] = _Hit(
                    best.id,
                    best.title,
                    best.codes,
                    tuple(m.playbook.id for m in matches[1:]),
                    log.origin,
                    raw,
                    stamp,
                )
            else:
                hit.count += 1
                hit.line, hit.time = raw, stamp  # scrubbed once, when reported
    examined = libvirt_logs.as_dict()
    if not hits:
        older = f"; {old} older than {RECENT_DAYS} days not counted" if old else ""
        yield Finding(
            "pass",
            f"no known error in the recent part of {len(libvirt_logs.logs)} log(s){older}",
            evidence={"logs": examined, "older_hits": old},
        )
        return
    for hit in sorted(hits.values(), key=lambda h: (h.origin, h.playbook)):
        hit.line = scrub_log_line(hit.line.strip())[:MAX_LINE]
        when = iso_time(hit.time) if hit.time is not None else None
        times = f"{hit.count} times, last" if hit.count > 1 else "once,"
        yield Finding(
            "info",
            f'{hit.origin} says "{hit.line}" ({times} at {when or "an unknown time"}): '
            f"{hit.title} ({hit.playbook})",
            subject=f"log:{hit.origin}",
            evidence={
                "file": hit.origin,
                "line": hit.line,
                "time": when,
                "count": hit.count,
                "playbook": hit.playbook,
                "title": hit.title,
                "codes": list(hit.codes),
                "also": list(hit.also),
            },
        )
