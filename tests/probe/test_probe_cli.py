"""`kvmdoctor probe` options and the Lab's promises, without packets or root."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from doctor.cli import app
from doctor.probe.lab import Busy, Lab, Terminated


def kvmdoctor(*args: str) -> Any:
    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
    except TypeError:
        runner = CliRunner()
    return runner.invoke(app, list(args))


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--to", "198.51.100.2"], "exactly one of --domain NAME and --from-netns NS"),
        (["--domain", "a", "--from-netns", "b", "--to", "198.51.100.2"], "exactly one"),
        (["--from-netns", "kdx", "--to", "example.org"], "--to takes an IP address"),
        (["--from-netns", "kdx", "--to", "198.51.100.2", "--proto", "udp:0"], "udp:PORT"),
        (["--from-netns", "kdx", "--to", "198.51.100.2", "--proto", "sctp"], "--proto must be"),
        (["--from-netns", "kdx", "--to", "198.51.100.2", "--count", "0"], "--count"),
        (["--from-netns", "kdx", "--to", "198.51.100.2", "--static", "--count", "2"], "--static"),
        (["--from-netns", "kdx", "--iface", "vnet0", "--to", "198.51.100.2"], "--iface goes with"),
        (["--domain", "kdx", "--to", "198.51.100.2", "--format", "xml"], "--format"),
    ],
)
def test_bad_options_are_one_line_usage_errors(args: list[str], needle: str) -> None:
    result = kvmdoctor("probe", *args)
    assert result.exit_code == 2, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr


def test_help_names_every_option() -> None:
    result = kvmdoctor("probe", "--help")
    assert result.exit_code == 0
    for option in ("--domain", "--iface", "--from-netns", "--from-iface", "--to", "--proto",
                   "--count", "--timeout", "--static", "--format", "--output"):  # fmt: skip
        assert option in result.stdout


def test_run_does_not_select_the_probe_checks_but_checks_documents_them() -> None:
    from doctor.engine import select
    from doctor.registry import load_registry

    registry = load_registry()
    assert {"PRB001", "PRB002", "PRB003"} <= set(registry.checks)
    assert not [s.code for s in select(registry) if s.code.startswith("PRB")]
    assert [s.code for s in select(registry, ["PRB"])] == ["PRB001", "PRB002", "PRB003"]
    result = kvmdoctor("checks", "PRB002")
    assert result.exit_code == 0 and "What it checks" in result.stdout


def test_a_second_lab_is_refused_while_one_is_active(tmp_path: Path) -> None:
    lock = str(tmp_path / "run" / "probe.lock")
    with Lab(lock), pytest.raises(Busy, match="another kvmdoctor probe is running"), Lab(lock):
        pass
    with Lab(lock):  # free again afterwards
        pass


def test_every_change_is_undone_in_reverse_on_an_exception(tmp_path: Path) -> None:
    done: list[str] = []
    with pytest.raises(RuntimeError), Lab(str(tmp_path / "lock")) as lab:
        lab.change("a", lambda: done.append("+a"), lambda: done.append("-a"))
        lab.change("b", lambda: done.append("+b"), lambda: done.append("-b"))
        raise RuntimeError("boom")
    assert done == ["+a", "+b", "-b", "-a"]


def test_a_change_that_fails_is_not_undone_and_a_failing_undo_does_not_stop_the_others(
    tmp_path: Path,
) -> None:
    done: list[str] = []

    def fail() -> None:
        raise OSError("nope")

    with Lab(str(tmp_path / "lock")) as lab:
        lab.change("a", lambda: done.append("+a"), lambda: done.append("-a"))
        lab.change("b", lambda: None, fail)
        with pytest.raises(OSError):
            lab.change("c", fail, lambda: done.append("-c"))
    assert done == ["+a", "-a"]
    assert lab.undo_errors == ["undo b: OSError: nope"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_unwinds_the_lab_and_the_old_handlers_come_back(
    tmp_path: Path, signum: int
) -> None:
    before = signal.getsignal(signum)
    done: list[str] = []
    expected = KeyboardInterrupt if signum == signal.SIGINT else Terminated
    with pytest.raises(expected), Lab(str(tmp_path / "lock")) as lab:
        lab.change("a", lambda: done.append("+a"), lambda: done.append("-a"))
        os.kill(os.getpid(), signum)
    assert done == ["+a", "-a"]
    assert signal.getsignal(signum) is before


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_change_waits_until_its_undo_is_recorded(
    tmp_path: Path, signum: int
) -> None:
    done: list[str] = []
    expected = KeyboardInterrupt if signum == signal.SIGINT else Terminated

    def make() -> None:
        os.kill(os.getpid(), signum)  # arrives between the change and its record
        done.append("+a")

    with pytest.raises(expected), Lab(str(tmp_path / "lock")) as lab:
        lab.change("a", make, lambda: done.append("-a"))
        done.append("after a")  # never reached: the held signal arrives as the change ends
    assert done == ["+a", "-a"]


def test_sigint_ignored_at_start_still_stops_the_lab_and_stays_ignored_after(
    tmp_path: Path,
) -> None:
    # A shell starts a background job (`kvmdoctor probe ... &`) with SIGINT ignored.
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        done: list[str] = []
        with pytest.raises(KeyboardInterrupt), Lab(str(tmp_path / "lock")) as lab:
            lab.change("a", lambda: done.append("+a"), lambda: done.append("-a"))
            os.kill(os.getpid(), signal.SIGINT)
        assert done == ["+a", "-a"]
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_forked_child_stopped_by_sigterm_exits_without_running_the_commands_clean_up() -> None:
    from doctor import cli

    before = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        assert cli._catch_sigterm() is signal.SIG_DFL
        pid = os.fork()
        if pid == 0:  # the child: SIGTERM as pyroute2 stops its helper processes
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                os._exit(0)
            except BaseException:  # the handler raised in the child: the wrong outcome
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 128 + signal.SIGTERM
        # In the process that installed it, SIGTERM still unwinds the command.
        with pytest.raises(cli.Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_forked_child_never_undoes_its_parents_changes(tmp_path: Path) -> None:
    marker = tmp_path / "undone"
    with Lab(str(tmp_path / "lock")) as lab:
        lab.change("a", lambda: None, lambda: marker.write_text("x"))
        pid = os.fork()
        if pid == 0:  # the child: SIGTERM as pyroute2 stops its helper processes
            os.kill(os.getpid(), signal.SIGTERM)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 128 + signal.SIGTERM
        assert not marker.exists()
    assert marker.exists()
