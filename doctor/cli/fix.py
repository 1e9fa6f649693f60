"""`kvmdoctor fix`: the plan that fixes the current findings, as a shell script or an Ansible
playbook; with `--apply`, carry out its `safe` steps, record them, and re-run the checks that
verify them.

Only `--apply` changes the host, through doctor/repair.py, which nothing else imports.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
import sys
from typing import Any, Optional

import typer

from doctor.cli.common import (
    INVOCATION,
    ConfigOpt,
    ConnectTimeoutOpt,
    IgnoreOpt,
    Output,
    RootOpt,
    SelectOpt,
    SnapshotOpt,
    UriOpt,
    UsageError,
    cli_ignores,
    load_config,
    open_source,
    read_report,
    split_tokens,
)

FORMATS = ("shell", "ansible", "json")
RECORD_DIR = "/var/lib/kvmdoctor/changes"
EXIT_OK = 0
EXIT_NOT_FIXED = 1


def register(app: typer.Typer) -> None:
    app.command("fix")(fix)


def fix(
    uri: Optional[str] = UriOpt,
    root: Optional[str] = RootOpt,
    snapshot: Optional[str] = SnapshotOpt,
    select: Optional[list[str]] = SelectOpt,
    ignore: Optional[list[str]] = IgnoreOpt,
    config: Optional[str] = ConfigOpt,
    report: Optional[str] = typer.Option(
        None,
        "--report",
        help="Plan from a saved JSON report (kvmdoctor run -f json) instead of running the checks.",
        metavar="FILE",
    ),
    format: str = typer.Option(
        "shell", "--format", "-f", help="shell, ansible or json.", metavar="FORMAT"
    ),
    output: Optional[str] = typer.Option(
        None, "--output", "-o", help="Write the plan to FILE instead of stdout.", metavar="FILE"
    ),
    apply: bool = typer.Option(
        False,
        "--apply",
        help="Carry out the plan's safe steps on this host (asks first), then re-run the checks "
        "that verify them.",
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="With --apply: do not ask."),
    record: Optional[str] = typer.Option(
        None,
        "--record",
        help=f"With --apply: where to write the change record (default {RECORD_DIR}/TIME.json).",
        metavar="FILE",
    ),
    connect_timeout: float = ConnectTimeoutOpt,
) -> None:
    """Print the fix plan for the current findings, or apply its safe steps (--apply).

    Steps that are not `safe` (disruptive, needs-reboot, needs-relogin) and manual steps are
    written into the plan but never run by --apply. Exit codes: 0 the plan was written, or
    every verifying check passes after --apply; 1 something is still wrong after --apply (or
    nothing could be applied); 2 usage error.
    """
    from doctor import remedy

    if format not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {format!r}")
    if apply and (report or root or snapshot):
        raise UsageError(
            "--apply acts on this host's current findings: it takes no --report, --root or "
            "--snapshot (those only print a plan)"
        )
    cfg = load_config(config)
    selected = split_tokens(select) or list(cfg.select)
    ignores = [*cfg.ignores, *cli_ignores(split_tokens(ignore))]
    if report is not None:
        data = read_report(report)
    else:
        data = _run(uri, root, snapshot, selected, ignores, connect_timeout)
    plan = remedy.plan_from_report(data)
    host = str(data.get("host", {}).get("hostname") or "")
    if isinstance(data.get("fleet"), dict):  # a merged report: the plan goes host by host
        host = f"a fleet of {len(data['fleet'].get('hosts', []))} hosts"
    if not apply:
        Output(output).write(_render(plan, format, host, data))
        raise typer.Exit(EXIT_OK)
    raise typer.Exit(_apply(plan, data, yes, record, uri, ignores, connect_timeout))


def _run(
    uri: Optional[str],
    root: Optional[str],
    snapshot: Optional[str],
    selected: list[str],
    ignores: list[Any],
    connect_timeout: float,
) -> dict[str, Any]:
    from doctor.cli.run import execute

    source = open_source(uri=uri, root=root, snapshot=snapshot, connect_timeout=connect_timeout)
    return execute(source, selected=selected, ignores=ignores, fail_on="fail", uri=uri)


def _render(plan: list[Any], format: str, host: str, data: dict[str, Any]) -> str:
    from doctor import __version__, remedy

    if format == "shell":
        return remedy.shell_script(plan, host=host, version=__version__)
    if format == "ansible":
        return remedy.ansible_playbook(plan, host=host, version=__version__)
    return json.dumps({"host": host, "diagnoses": data.get("diagnoses", [])}, indent=2) + "\n"


def applicable(plan: list[Any]) -> tuple[list[Any], list[tuple[Any, str]]]:
    """(the steps --apply carries out, the others with the reason they are left out): only
    `safe` steps kvmdoctor can perform itself, with every placeholder filled."""
    chosen, left = [], []
    for item in plan:
        for step in item.steps:
            if step.safety != "safe":
                left.append((step, f"{step.safety}: for a person to decide"))
            elif step.missing:
                left.append((step, f"needs a value for {', '.join(step.missing)}"))
            elif not step.automatable:
                left.append((step, f"a {step.action} step is for a person to carry out"))
            else:
                chosen.append(step)
    return chosen, left


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")


def _confirm(count: int) -> bool:
    sys.stderr.write(f"Apply these {count} change(s) to this host? [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def _apply(
    plan: list[Any],
    data: dict[str, Any],
    yes: bool,
    record: Optional[str],
    uri: Optional[str],
    ignores: list[Any],
    connect_timeout: float,
) -> int:
    from doctor import remedy

    chosen, left = applicable(plan)
    for step, why in left:
        _say(f"not applied: [{step.safety}] {step.text} ({why})")
    if not chosen:
        _say("nothing safe to apply" + (" (see the plan: kvmdoctor fix)" if plan else ""))
        return EXIT_NOT_FIXED if plan else EXIT_OK
    for step in chosen:
        _say(f"to apply: [{step.playbook}] {step.text}")
    if not yes and not _confirm(len(chosen)):
        _say("nothing was changed")
        return EXIT_NOT_FIXED
    from doctor import repair, textsafe

    started = dt.datetime.now(dt.timezone.utc)
    changes = [repair.Applier().apply(step) for step in chosen]
    verify = remedy.verify_codes(i for i in plan if any(s in chosen for s in i.steps))
    after = _run(uri, None, None, verify, ignores, connect_timeout) if verify else None
    results = {c["code"]: c["status"] for c in (after["checks"] if after is not None else [])}
    failed = [c for c in changes if c.status != "applied"]
    code = EXIT_NOT_FIXED if failed or (after is not None and after["exit_code"]) else EXIT_OK
    document = {
        "tool": {"name": "kvmdoctor", "command": list(INVOCATION)},
        "host": data.get("host", {}).get("hostname"),
        "started": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "changes": [c.as_dict() for c in changes],
        "not_applied": [{**s.as_dict(), "reason": why} for s, why in left],
        "verify": {"checks": results, "exit_code": code},
    }
    path = record or f"{RECORD_DIR}/{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    try:
        repair.write_record(path, document)
    except OSError as exc:
        _say(f"kvmdoctor: could not write the change record {path}: {exc.strerror}")
        code = EXIT_NOT_FIXED
    for change in changes:
        detail = f": {change.detail}" if change.detail else ""
        typer.echo(f"{change.status}: [{change.playbook}] {change.text}{detail}")
    for check_code, status in results.items():
        typer.echo(f"verify {check_code}: {status}")
    for command in remedy.probe_commands(i for i in plan if any(s in chosen for s in i.steps)):
        # A probe finding is judged again only by the probe, with its own arguments.
        typer.echo(f"probe again to verify: {textsafe.one_line(shlex.join(command))}")
    typer.echo(f"change record: {path}")
    return code
