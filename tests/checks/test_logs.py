"""LOG001 known-error-in-logs on the lab host's snapshot with log files put in: real lines as
the lab's libvirtd 9.0 and QEMU 7.2 wrote them (timestamps kept), repeats, age, and what is
said when there is nothing to read."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from doctor.facts.logs import DAEMON_LOGS, JOURNAL_ARGV, QEMU_LOG_DIR, line_time

from kdsnap import one, run_checks

LIBVIRTD_LOG = """\
2026-11-26 07:24:21.858+0000: 7722: error : virQEMUCapsNewForBinaryInternal:5859 : Cannot check QEMU binary /usr/libexec/qemu-kvm: No such file or directory
2026-11-26 07:24:22.001+0000: 7722: info : libvirt version: 9.0.0, package: 9.0.0-4+deb12u2 (Debian)
2026-11-26 07:26:21.858+0000: 7722: error : virQEMUCapsNewForBinaryInternal:5859 : Cannot check QEMU binary /usr/libexec/qemu-kvm: No such file or directory
2026-11-26 07:27:53.901+0000: 11006: error : virPortAllocatorSetUsed:274 : internal error: Failed to reserve port 5977
"""
# A QEMU log: libvirt's lines carry the time, QEMU's own stderr lines after them do not.
QEMU_LOG = """\
2026-11-26 07:27:52.290+0000: starting up libvirt version: 9.0.0, package: 9.0.0-4+deb12u2 (Debian), qemu version: 7.2.0Debian 1:7.2+dfsg-7+deb12u6, kernel: 6.18.44, hostname: vm
LC_ALL=C \\
/usr/bin/qemu-system-x86_64 \\
-name guest=kd-exp-b,debug-threads=on \\
qemu-system-x86_64: -blockdev {"node-name":"libvirt-1-format","read-only":false,"driver":"qcow2","file":"libvirt-1-storage","backing":null}: Failed to get "write" lock
Is another process using the image [/var/lib/libvirt/images/kd-exp.qcow2]?
2026-11-26 07:27:52.313+0000: shutting down, reason=failed
"""


def no_logs(snap: Any) -> Any:
    """Forget whatever logs the recording holds: each test puts in its own."""
    for path in DAEMON_LOGS:
        snap.drop("file", path=path)
    snap.drop("dir", path=QEMU_LOG_DIR)
    return snap.drop("command", argv=list(JOURNAL_ARGV))


def with_logs(snap: Any, **files: str) -> Any:
    snap = no_logs(snap)
    for path, text in files.items():
        snap.set_file(path, text)
    return snap


def test_log001_reports_each_known_error_once_per_file_with_its_last_time(
    edit_snapshot: Any,
) -> None:
    snap = with_logs(edit_snapshot(), **{"/var/log/libvirt/libvirtd.log": LIBVIRTD_LOG})
    findings = run_checks(snap.save(), select=("LOG001",))["LOG001"]
    by_playbook = {f.evidence["playbook"]: f for f in findings}
    assert set(by_playbook) == {
        "rhel-emulator-path-on-other-distribution",
        "graphics-port-conflict",
    }
    emulator = by_playbook["rhel-emulator-path-on-other-distribution"]
    assert emulator.status == "info"  # history: the checks judge the present
    assert emulator.subject == "log:/var/log/libvirt/libvirtd.log"
    assert emulator.evidence["count"] == 2
    assert emulator.evidence["time"] == "2026-11-26T07:26:21Z"
    assert emulator.evidence["also"] == ["qemu-emulator-missing"]
    assert emulator.evidence["line"].endswith(
        "Cannot check QEMU binary /usr/libexec/qemu-kvm: No such file or directory"
    )
    assert "(2 times, last at 2026-11-26T07:26:21Z)" in emulator.message


def test_log001_dates_a_qemu_error_by_the_libvirt_line_before_it(edit_snapshot: Any) -> None:
    snap = no_logs(edit_snapshot()).set_value("dir", ["kd-exp-b.log"], path=QEMU_LOG_DIR)
    snap.set_file("/var/log/libvirt/qemu/kd-exp-b.log", QEMU_LOG)
    finding = one(
        run_checks(snap.save(), select=("LOG001",)),
        "LOG001",
        "log:/var/log/libvirt/qemu/kd-exp-b.log",
    )
    assert finding.evidence["playbook"] == "disk-used-twice"
    assert finding.evidence["time"] == "2026-11-26T07:27:52Z"
    assert finding.evidence["count"] == 2  # the lock line and "Is another process using ..."


def test_log001_leaves_out_errors_older_than_a_week(edit_snapshot: Any) -> None:
    old = LIBVIRTD_LOG.replace("2026-11-26", "2026-10-01")
    snap = with_logs(edit_snapshot(), **{"/var/log/libvirt/libvirtd.log": old})
    clock = snap.value("clock")
    assert dt.datetime.fromtimestamp(clock, dt.timezone.utc).strftime("%Y-%m") == "2026-11"
    finding = one(run_checks(snap.save(), select=("LOG001",)), "LOG001")
    assert finding.status == "pass"
    assert finding.message.endswith("; 3 older than 7 days not counted")


def test_log001_passes_on_logs_without_known_errors(edit_snapshot: Any) -> None:
    quiet = "2026-11-26 07:24:22.001+0000: 7722: info : libvirt version: 9.0.0\n"
    snap = with_logs(edit_snapshot(), **{"/var/log/libvirt/libvirtd.log": quiet})
    finding = one(run_checks(snap.save(), select=("LOG001",)), "LOG001")
    assert finding.status == "pass"
    assert finding.evidence["logs"]["read"] == [
        {"origin": "/var/log/libvirt/libvirtd.log", "lines": 1, "partial": False}
    ]


def test_log001_skips_when_no_log_could_be_read(edit_snapshot: Any) -> None:
    finding = one(run_checks(no_logs(edit_snapshot()).save(), select=("LOG001",)), "LOG001")
    assert finding.status == "skip"
    assert "no libvirt log could be read" in finding.message


def test_line_times_in_the_formats_libvirt_qemu_and_journalctl_write() -> None:
    expected = dt.datetime(2026, 11, 26, 7, 27, 52, tzinfo=dt.timezone.utc).timestamp()
    assert line_time("2026-11-26 07:27:52.313+0000: shutting down") == expected
    assert line_time("2026-11-26T07:27:52.311823Z qemu-system-x86_64: x") == expected
    assert line_time("2026-11-26T08:27:52+0100 vm libvirtd[7719]: x") == expected
    assert line_time("qemu-system-x86_64: -blockdev ...") is None


def _strptime_time(line: str) -> Any:
    """line_time as it was written with strptime: the reference for the fields it reads."""
    import re

    match = re.match(
        r"(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2})(?:[.,](\d+))?\s*(Z|[+-]\d{2}:?\d{2})?",
        line.lstrip(),
    )
    if not match:
        return None
    date, clock, _, zone = match.groups()
    zone = (zone or "Z").replace("Z", "+0000").replace(":", "")
    try:
        stamp = f"{date} {clock} {zone}"
        return dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S %z").timestamp()
    except ValueError:
        return None


def test_line_times_are_those_strptime_reads_for_every_field_value() -> None:
    """Each field at its edges and beyond them (month 0 and 13, day 31 of a short month,
    February 29th, hour 24, second 60, zones of 24 hours or of 60 minutes), in each format."""
    dates = ["2026-11-26", "2024-02-29", "2026-02-29", "2026-04-31", "2026-00-10", "2026-13-01"]
    dates += ["0000-01-01", "0001-01-01", "9999-12-31", "2026-12-00"]
    clocks = ["00:00:00", "23:59:59", "24:00:00", "12:60:00", "12:00:60", "12:00:61", "07:27:52"]
    tails = ["", ".313+0000", ".311823Z", "+0100", "-05:30", "+2359", "+2400", "-0060"]
    tails += [" +0000", ",5Z", "Z", "+01:00: x"]
    checked = 0
    for date in dates:
        for sep in (" ", "T"):
            for clock in clocks:
                for tail in tails:
                    line = f"  {date}{sep}{clock}{tail} libvirtd: x"
                    assert line_time(line) == _strptime_time(line), line
                    checked += 1
    assert checked == len(dates) * 2 * len(clocks) * len(tails)
    assert _strptime_time("2026-11-26 07:27:52+0000") is not None  # the reference reads


def test_log001_findings_never_carry_a_qemu_password(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "var/log/libvirt/qemu").mkdir(parents=True)
    (tree / "var/log/libvirt/qemu/web1.log").write_text(
        "2026-11-26T07:00:00.000000Z qemu-system-x86_64: -spice port=5900,password=kdsecret3: "
        "Could not open '/var/lib/libvirt/images/web1.qcow2': Permission denied\n"
    )
    # The tree has no clock: judge it an hour after the line, whatever today's date is.
    at = dt.datetime(2026, 11, 26, 8, 0, tzinfo=dt.timezone.utc).timestamp()
    findings = run_checks(tree, select=("LOG001",), at=at)
    assert [f.status for f in findings["LOG001"]] == ["info"]  # a recent error, reported
    text = json.dumps([f.as_dict() for f in findings["LOG001"]])
    assert "kdsecret3" not in text
    assert "Permission denied" in text  # the hit itself is still reported


def test_log001_matches_what_every_line_gives_with_the_time_before_it() -> None:
    """LOG001 reads only the lines the engine flags (doctor/textscan.py) and looks back for
    the time; the reference reads every line, as LOG001 did: same hits, counts and times."""
    import random

    from checks.logs import RECENT_DAYS, known_error_in_logs
    from doctor.facts.logs import LibvirtLogs, LogText
    from doctor.facts.tls import HostClock
    from doctor.playbooks import normalise, shipped

    rng = random.Random(7)
    errors = [line for line in (LIBVIRTD_LOG + QEMU_LOG).splitlines() if "rror" in line]
    errors += ["qemu-system-x86_64: Could not access KVM kernel module: Permission denied"]
    lines = []
    for i in range(3000):
        pick = rng.random()
        if pick < 0.01:
            lines.append(rng.choice(errors))
        elif pick < 0.4:
            day = 10 + i // 200  # older and newer than a week before the clock
            lines.append(f"2026-11-{day:02d} 07:{i % 60:02d}:00.000+0000: 7722: info : x {i}")
        else:
            lines.append(f"-device virtio-net-pci,netdev=hostnet{i} \\")
    logs = LibvirtLogs((LogText("/var/log/libvirt/qemu/web1.log", tuple(lines), False),), ())
    now = dt.datetime(2026, 11, 24, tzinfo=dt.timezone.utc).timestamp()
    clock = HostClock(now, "2026-11-24T00:00:00Z", "given")
    found = {
        f.evidence["playbook"]: (f.evidence["count"], f.evidence["time"])
        for f in known_error_in_logs(logs, clock)
        if f.status == "info"
    }
    book = shipped()
    expected: dict[str, tuple[int, Any]] = {}
    stamp = None
    for raw in lines:
        stamp = line_time(raw) or stamp
        matches = book.match_line(normalise(raw))
        if not matches or (stamp is not None and now - stamp > RECENT_DAYS * 86400):
            continue
        count, _ = expected.get(matches[0].playbook.id, (0, None))
        when = dt.datetime.fromtimestamp(stamp, dt.timezone.utc) if stamp else None
        expected[matches[0].playbook.id] = (
            count + 1,
            when.strftime("%Y-%m-%dT%H:%M:%SZ") if when else None,
        )
    assert len(expected) >= 3
    assert found == expected
