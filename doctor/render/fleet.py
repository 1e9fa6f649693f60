"""The text view of a fleet report (`kvmdoctor report merge`): a table of the hosts, then what
only the fleet sees (findings whose subject is no single host's). The rest of the report --
diagnoses, problems, the summary -- is shown as for one host, each subject naming its host."""

from __future__ import annotations

from typing import Any


def is_fleet(report: dict[str, Any]) -> bool:
    return isinstance(report.get("fleet"), dict)


def header(console: Any, report: dict[str, Any], *, verbose: bool) -> None:
    from rich.markup import escape

    from doctor.render.text import LABEL, STYLE

    hosts = report["fleet"].get("hosts", [])
    console.print(
        escape(f"kvmdoctor {report['tool']['version']} · fleet of {len(hosts)} hosts"),
        style="bold",
    )
    rows = [("host", "libvirt", "QEMU", "firmware", "guests", "fail", "warn", "error", "exit")]
    for host in hosts:
        summary = host.get("summary") or {}
        guests = host.get("guests")
        rows.append(
            (
                str(host.get("name")),
                host.get("libvirt_version") or "?",
                host.get("qemu_version") or "?",
                host.get("firmware_version") or "?",
                "?" if guests is None else str(guests),
                str(summary.get("fail", 0)),
                str(summary.get("warn", 0)),
                str(summary.get("error", 0)),
                str(host.get("exit_code", "?")),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for number, row in enumerate(rows):
        cells = [
            cell.ljust(width) if i < 5 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths))
        ]
        line = escape("  ".join(cells).rstrip())
        console.print(f"[bold]{line}[/]" if number == 0 else line)
    for note in report["fleet"].get("left_out", []):
        console.print(f"[dim]{escape(note)}[/]")
    across = [
        (chk, f)
        for chk in report["checks"]
        for f in chk["findings"]
        if not str(f["subject"]).startswith("host:") and (verbose or f["status"] != "pass")
    ]
    if across:
        console.print("\nAcross hosts", style="bold underline")
        for chk, finding in across:
            status = finding["status"]
            console.print(
                f"[{STYLE[status]}]{LABEL[status]:5}[/] [bold]{chk['code']}[/] "
                f"{escape(finding['subject'])}: {escape(finding['message'])}"
            )
