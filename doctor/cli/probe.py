"""`kvmdoctor probe`: follow a guest's path, predict where its traffic dies, and (as root)
send marked packets to find the hop where it does."""

from __future__ import annotations

import ipaddress
import sys
from typing import Optional

import typer

from doctor.cli.common import INVOCATION, ConnectTimeoutOpt, Output, UriOpt, UsageError, use_color
from doctor.render import FORMATS

PROTOS = ("icmp", "arp", "udp", "tcp")
MAX_COUNT = 100


def register(app: typer.Typer) -> None:
    app.command("probe")(probe)


def parse_proto(text: str) -> tuple[str, Optional[int]]:
    """icmp, arp, udp:PORT or tcp:PORT."""
    name, _, port = text.strip().lower().partition(":")
    if name not in PROTOS:
        raise UsageError(f"--proto must be icmp, arp, udp:PORT or tcp:PORT, not {text!r}")
    if name in ("icmp", "arp"):
        if port:
            raise UsageError(f"--proto {name} takes no port")
        return name, None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--proto {name} needs a port: {name}:PORT with PORT in 1..65535")
    return name, int(port)


def probe(
    domain: Optional[str] = typer.Option(
        None, "--domain", "-d", help="The libvirt guest whose path to probe.", metavar="NAME"
    ),
    iface: Optional[str] = typer.Option(
        None, "--iface", help="The guest's interface: its tap (vnetN) or MAC.", metavar="TAP|MAC"
    ),
    from_netns: Optional[str] = typer.Option(
        None,
        "--from-netns",
        help="A network namespace standing in for the guest (containers, labs).",
        metavar="NS",
    ),
    from_iface: Optional[str] = typer.Option(
        None, "--from-iface", help="The interface inside --from-netns.", metavar="IF"
    ),
    to: str = typer.Option(
        ..., "--to", help="The address to reach (the only one sent to).", metavar="ADDRESS"
    ),
    proto: Optional[str] = typer.Option(
        None,
        "--proto",
        help="icmp (default), arp, udp:PORT or tcp:PORT (ARP only towards an address on the "
        "guest's bridge).",
        metavar="PROTO",
    ),
    count: Optional[int] = typer.Option(
        None, "--count", "-n", help="Packets to send (default 3, at most 10 a second)."
    ),
    timeout: Optional[float] = typer.Option(
        None, "--timeout", help="Seconds to wait for the last reply (default 2).", metavar="S"
    ),
    static: bool = typer.Option(False, "--static", help="Predictions only: send nothing."),
    uri: Optional[str] = UriOpt,
    connect_timeout: float = ConnectTimeoutOpt,
    format: str = typer.Option(
        "text",
        "--format",
        "-f",
        help=f"One of {', '.join(FORMATS)} (text: the path as rows of hops).",
        metavar="FORMAT",
    ),
    output: Optional[str] = typer.Option(
        None, "--output", "-o", help="Write the report to FILE instead of stdout.", metavar="FILE"
    ),
    no_color: bool = typer.Option(False, "--no-color", help="No colour even on a terminal."),
) -> None:
    """Find where a guest's traffic to an address dies, and why.

    The path (tap or veth, bridge, forwarding, uplink) is discovered and judged first; as
    root, marked packets are then sent as the guest to --to only, captured on every hop in
    both directions, and the kernel's drop reasons are read. Every change made for that (a
    qdisc and filter on a tap, a trace instance) is undone on exit, Ctrl-C and SIGTERM.

    Exit codes: 0 the traffic goes through (or nothing predicts otherwise), 1 a drop found or
    predicted, 2 usage error or sending asked for without root, 3 internal error.
    """
    if format not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {format!r}")
    if (domain is None) == (from_netns is None):
        raise UsageError("give exactly one of --domain NAME and --from-netns NS")
    if iface is not None and domain is None:
        raise UsageError("--iface goes with --domain (use --from-iface with --from-netns)")
    if from_iface is not None and from_netns is None:
        raise UsageError("--from-iface goes with --from-netns")
    try:
        target = ipaddress.ip_address(to.strip())
    except ValueError:
        raise UsageError(f"--to takes an IP address, not {to!r}") from None
    if target.version != 4:
        raise UsageError("--to: only IPv4 is probed so far")
    proto_name, port = parse_proto(proto or "icmp")
    if count is not None and not 1 <= count <= MAX_COUNT:
        raise UsageError(f"--count must be between 1 and {MAX_COUNT}")
    if timeout is not None and not 0 < timeout <= 60:
        raise UsageError("--timeout must be more than 0 and at most 60 seconds")
    send_asked = any(v is not None for v in (proto, count, timeout))
    if static and send_asked:
        raise UsageError("--static sends nothing: --proto, --count and --timeout do not apply")
    from doctor.probe import session

    request = session.Request(
        domain=domain,
        iface=iface,
        netns=from_netns,
        netns_iface=from_iface,
        target=str(target),
        proto=proto_name,
        port=port,
        count=count or 3,
        timeout=timeout if timeout is not None else 2.0,
        send=not static,
        uri=uri,
        connect_timeout=connect_timeout,
    )
    try:
        report, view, request = session.run(
            request, argv=list(INVOCATION) or ["kvmdoctor", "probe"]
        )
    except session.ProbeError as exc:
        raise UsageError(str(exc)) from None
    out = Output(output)
    if format == "text":
        out.write(view(use_color(out, no_color)))
    else:
        from doctor.render import render_as

        out.write(render_as(format, report))
    if request.not_sent:
        sys.stderr.write(
            f"kvmdoctor: {request.not_sent}: only the static part ran (PRB001); "
            f"{request.not_sent_hint}\n"
        )
        if send_asked or not request.not_sent_needs_root:
            raise typer.Exit(2)
    raise typer.Exit(report["exit_code"])
