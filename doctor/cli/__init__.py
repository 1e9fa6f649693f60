"""The command line. One module per command; heavy imports happen inside the commands so that
`kvmdoctor --help` loads neither libvirt, pyroute2, scapy nor rich."""

from __future__ import annotations

import gc
import importlib
import os
import signal
import sys
import threading
import traceback
from collections.abc import Sequence
from typing import Any, Optional

import click
import typer
from typer.core import TyperGroup

from doctor.cli import common
from doctor.cli.common import EXIT_INTERNAL, EXIT_USAGE, UsageError
from doctor.signals import Terminated

# Click 8.2+ raises this for a bare `kvmdoctor`; Click 8.1 (the last for Python 3.9) prints the
# help itself and exits 0, and has no such class: then the clause catches nothing.
_NO_ARGS_IS_HELP: Any = getattr(click.exceptions, "NoArgsIsHelpError", ())


class _Group(TyperGroup):
    """Turns every way a command can end into one line on stderr and an exit code."""

    def main(  # type: ignore[override]
        self,
        args: Optional[Sequence[str]] = None,
        prog_name: Optional[str] = None,
        complete_var: Optional[str] = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        common.INVOCATION[:] = ["kvmdoctor", *(sys.argv[1:] if args is None else args)]
        previous = _catch_sigterm()
        try:
            rv = super().main(
                args=args,
                prog_name=prog_name or "kvmdoctor",
                complete_var=complete_var,
                standalone_mode=False,
                **extra,
            )
            code = rv if isinstance(rv, int) else 0
            if code == 130:  # typer's answer to Ctrl-C inside a command: Exit(130), returned
                click.echo("kvmdoctor: interrupted", err=True)
        except UsageError as exc:
            click.echo(f"kvmdoctor: error: {exc}", err=True)
            code = EXIT_USAGE
        except _NO_ARGS_IS_HELP as exc:  # bare `kvmdoctor`
            click.echo(exc.ctx.get_help() if exc.ctx else "")
            code = 0
        except click.UsageError as exc:
            command = exc.ctx.command_path if exc.ctx else "kvmdoctor"
            click.echo(f"{command}: error: {exc.format_message()} (see {command} --help)", err=True)
            code = EXIT_USAGE
        except click.exceptions.Exit as exc:
            code = exc.exit_code
        except click.Abort:
            click.echo("kvmdoctor: interrupted", err=True)
            code = 130
        except click.ClickException as exc:
            click.echo(f"kvmdoctor: error: {exc.format_message()}", err=True)
            code = exc.exit_code
        except KeyboardInterrupt:
            click.echo("kvmdoctor: interrupted", err=True)
            code = 130
        except Terminated:
            click.echo("kvmdoctor: terminated", err=True)
            code = 143
        except Exception as exc:
            if os.environ.get("KVMDOCTOR_DEBUG"):
                traceback.print_exc()
            click.echo(
                f"kvmdoctor: internal error: {type(exc).__name__}: {exc} "
                "(set KVMDOCTOR_DEBUG=1 for the traceback)",
                err=True,
            )
            code = EXIT_INTERNAL
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        if standalone_mode:
            sys.exit(code)
        return code


_MAIN_PID = [0]  # the process that installed the handler


def _on_sigterm(signum: int, frame: Any) -> None:
    if os.getpid() != _MAIN_PID[0]:
        # A child forked meanwhile (pyroute2 forks one to open a socket in a namespace, and
        # stops it with SIGTERM) holds a copy of this process's stack: it must not run the
        # command's clean-up or speak for it.
        os._exit(128 + signum)
    raise Terminated()


def _catch_sigterm() -> Any:
    """Turn SIGTERM into Terminated while a command runs (only in the main thread, and only
    when nobody else handles it); the handler that was there, to put back, or None."""
    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return None
    _MAIN_PID[0] = os.getpid()
    return signal.signal(signal.SIGTERM, _on_sigterm)


# The commands, in the order `kvmdoctor --help` lists them: each is the module of its name.
COMMANDS = ("run", "lint", "checks", "explain", "fix", "probe", "collect", "version", "report")


def build(names: Sequence[str] = COMMANDS) -> typer.Typer:
    """The command line with the commands `names` (every one by default)."""
    app = typer.Typer(
        cls=_Group,
        name="kvmdoctor",
        help="Diagnose KVM/libvirt hosts: find what is broken, why, and how to fix it.",
        add_completion=False,
        no_args_is_help=True,
        rich_markup_mode=None,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    # A callback keeps the app a group even with one command (typer would run a lone
    # command as the program itself, taking its name for an argument).
    app.callback()(_no_options)
    for name in names:
        importlib.import_module(f"doctor.cli.{name}").register(app)
    return app


def _no_options() -> None:
    """Diagnose KVM/libvirt hosts: find what is broken, why, and how to fix it."""


def __getattr__(name: str) -> Any:
    """`doctor.cli.app`: the whole command line, made when first asked for."""
    if name == "app":
        globals()["app"] = whole = build()
        return whole
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    # A command is one short process: the cyclic garbage collector runs when 100,000 container
    # objects more were made than freed, not 700, since each of its passes walks the objects
    # of the libraries a run imports (pyroute2, libvirt): a few MB more at most, 3% fewer
    # instructions for a full run (docs/performance.md). Cycles are still collected.
    gc.set_threshold(100_000, 10, 10)
    # A run of one command builds only that command: the others' modules and parameters are
    # not made (`kvmdoctor run --select KVM` is judged against typer's own start).
    args = sys.argv[1:]
    try:
        build((args[0],) if args and args[0] in COMMANDS else COMMANDS)()
    finally:
        # The process ends here. The interpreter's last collection would walk every object
        # the libraries made (~90 M instructions after a full run, 6% of it, ~20 ms) only to
        # free memory that the exit frees anyway: frozen objects are left to the exit. What is
        # not in a reference cycle is still freed, and finalised, as the modules are cleared;
        # kvmdoctor closes its files, connections and processes itself before this point.
        gc.freeze()
