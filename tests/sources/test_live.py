"""LiveSource on this host and on trees (`--root`), and resolve_in_root's symlink rules."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from doctor.sources.base import (
    AccessDenied,
    NotFound,
    PathEscapes,
    SourceError,
    Unavailable,
)
from doctor.sources.live import LiveSource, resolve_in_root

from kdtest import HOST_SNAPSHOT, as_user, kvm_device

SNAPSHOT_STATUS = HOST_SNAPSHOT / "files/proc/7719/status"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A small root filesystem: /etc, /usr with symlinks between them, no /dev, /proc, /sys."""
    root = tmp_path / "tree"
    (root / "etc").mkdir(parents=True)
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/share/zoneinfo").mkdir(parents=True)
    (root / "usr/lib/os-release").write_text('PRETTY_NAME="tree os"\n')
    (root / "usr/share/zoneinfo/UTC").write_text("TZif-tree\n")
    (root / "etc/hostname").write_text("tree-host\n")
    # Debian's own layout: an absolute and a relative link.
    (root / "etc/os-release").symlink_to("/usr/lib/os-release")
    (root / "etc/localtime").symlink_to("../usr/share/zoneinfo/UTC")
    return root


# --- resolve_in_root --------------------------------------------------------------------------


def test_absolute_symlink_resolves_inside_the_tree_not_on_the_host(tree: Path) -> None:
    assert resolve_in_root(str(tree), "/etc/os-release") == str(tree / "usr/lib/os-release")
    assert LiveSource(str(tree)).read_file("/etc/os-release") == b'PRETTY_NAME="tree os"\n'


def test_relative_symlink_resolves_from_the_directory_holding_it(tree: Path) -> None:
    assert resolve_in_root(str(tree), "/etc/localtime") == str(tree / "usr/share/zoneinfo/UTC")


def test_symlinked_directory_in_the_middle_of_a_path_is_followed(tree: Path) -> None:
    (tree / "lib").symlink_to("usr/lib")  # merged-/usr: /lib -> usr/lib
    (tree / "etc/alternatives").symlink_to("/lib")
    assert resolve_in_root(str(tree), "/etc/alternatives/os-release") == str(
        tree / "usr/lib/os-release"
    )


def test_dotdot_that_stays_inside_the_tree_is_followed(tree: Path) -> None:
    assert resolve_in_root(str(tree), "/etc/../usr/./lib/os-release") == str(
        tree / "usr/lib/os-release"
    )


def test_dotdot_after_a_symlink_climbs_from_the_link_target(tree: Path) -> None:
    (tree / "etc/zones").symlink_to("/usr/share/zoneinfo")
    # The kernel resolves the link first: /usr/share/zoneinfo/.. is /usr/share, not /etc.
    assert resolve_in_root(str(tree), "/etc/zones/../zoneinfo/UTC") == str(
        tree / "usr/share/zoneinfo/UTC"
    )


@pytest.mark.parametrize(
    "path",
    ["/../etc/passwd", "/etc/../../etc/passwd", "/etc/escape", "/etc/escape-abs/passwd"],
)
def test_dotdot_escaping_the_tree_raises_path_escapes(tree: Path, path: str) -> None:
    (tree / "etc/escape").symlink_to("../../../../../../../../etc/passwd")
    (tree / "etc/escape-abs").symlink_to("/..")
    with pytest.raises(PathEscapes):
        resolve_in_root(str(tree), path)
    with pytest.raises(PathEscapes):
        LiveSource(str(tree)).read_file(path)


@pytest.mark.parametrize(
    "links", [{"loop": "loop"}, {"a": "b", "b": "a"}, {"a": "/etc/b", "b": "../etc/a"}]
)
def test_symlink_loop_is_an_error_not_a_hang(tree: Path, links: dict[str, str]) -> None:
    for name, target in links.items():
        (tree / "etc" / name).symlink_to(target)
    first = next(iter(links))
    with pytest.raises(SourceError, match="too many levels of symbolic links"):
        resolve_in_root(str(tree), f"/etc/{first}")


def test_follow_last_false_keeps_the_final_symlink(tree: Path) -> None:
    assert resolve_in_root(str(tree), "/etc/os-release", follow_last=False) == str(
        tree / "etc/os-release"
    )
    assert LiveSource(str(tree)).read_link("/etc/os-release") == "/usr/lib/os-release"


def test_relative_paths_are_refused(tree: Path) -> None:
    with pytest.raises(SourceError, match="paths must be absolute"):
        resolve_in_root(str(tree), "etc/hostname")


# --- a tree answers files only -----------------------------------------------------------------


@pytest.mark.parametrize(
    "ask",
    [
        pytest.param(lambda s: s.run(["true"]), id="run"),
        pytest.param(lambda s: s.identity(), id="identity"),
        pytest.param(lambda s: s.uname(), id="uname"),
        pytest.param(lambda s: s.environ("PATH"), id="environ"),
        pytest.param(lambda s: s.kvm_probe(), id="kvm_probe"),
        pytest.param(lambda s: s.read_msr(0x3A), id="read_msr"),
    ],
)
def test_tree_never_answers_with_the_examining_machine(tree: Path, ask) -> None:
    source = LiveSource(str(tree))
    assert source.kind == "root"
    with pytest.raises(Unavailable, match="only files are read under --root"):
        ask(source)


@pytest.mark.parametrize(
    "ask",
    [
        pytest.param(lambda s: s.stat("/dev/kvm"), id="stat"),
        pytest.param(lambda s: s.read_file("/proc/cpuinfo"), id="read_file"),
        pytest.param(lambda s: s.list_dir("/sys/module"), id="list_dir"),
        pytest.param(lambda s: s.processes(), id="processes"),
    ],
)
def test_kernel_filesystem_missing_from_the_tree_is_unavailable(tree: Path, ask) -> None:
    with pytest.raises(Unavailable, match="holds no /"):
        ask(LiveSource(str(tree)))


def test_dev_path_in_a_tree_with_an_empty_dev_is_not_found(tree: Path) -> None:
    (tree / "dev").mkdir()
    with pytest.raises(NotFound):
        LiveSource(str(tree)).stat("/dev/kvm")


def test_missing_file_in_the_tree_is_not_found(tree: Path) -> None:
    with pytest.raises(NotFound) as caught:
        LiveSource(str(tree)).read_file("/etc/passwd")
    assert caught.value.what == "/etc/passwd"  # the tree's path, not the examining machine's


def test_root_that_is_not_a_directory_is_not_found(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    for root in (tmp_path / "absent", tmp_path / "file"):
        with pytest.raises(NotFound):
            LiveSource(str(root))


# --- read_file ---------------------------------------------------------------------------------


def test_read_file_returns_at_most_max_bytes_from_the_start(tree: Path) -> None:
    (tree / "var/log").mkdir(parents=True)
    (tree / "var/log/kern.log").write_bytes(b"0123456789")
    source = LiveSource(str(tree))
    assert source.read_file("/var/log/kern.log", max_bytes=4) == b"0123"
    assert source.read_file("/var/log/kern.log") == b"0123456789"


def test_tail_mode_returns_the_last_max_bytes(tree: Path) -> None:
    (tree / "var/log").mkdir(parents=True)
    (tree / "var/log/kern.log").write_bytes(b"old boot\nnew boot\n")
    source = LiveSource(str(tree))
    assert source.read_file("/var/log/kern.log", max_bytes=9, tail=True) == b"new boot\n"
    assert source.read_file("/var/log/kern.log", max_bytes=100, tail=True) == (
        b"old boot\nnew boot\n"
    )


def test_tail_mode_on_a_proc_file_without_a_size_returns_its_end() -> None:
    # procfs reports st_size 0: seeking back from the size cannot find the tail.
    assert os.stat("/proc/version").st_size == 0
    source = LiveSource()
    whole = source.read_file("/proc/version")
    assert whole.startswith(b"Linux version ") and len(whole) > 32
    assert source.read_file("/proc/version", max_bytes=32, tail=True) == whole[-32:]


def test_read_file_of_a_directory_is_an_error_not_a_crash(tree: Path) -> None:
    with pytest.raises(SourceError, match="EISDIR"):
        LiveSource(str(tree)).read_file("/etc")


# --- list_dir, read_link -----------------------------------------------------------------------


def test_list_dir_is_sorted_and_includes_symlinks(tree: Path) -> None:
    assert LiveSource(str(tree)).list_dir("/etc") == ["hostname", "localtime", "os-release"]


def test_list_dir_follows_a_symlinked_directory(tree: Path) -> None:
    (tree / "lib").symlink_to("/usr/lib")
    assert LiveSource(str(tree)).list_dir("/lib") == ["os-release"]


def test_list_dir_of_missing_directory_is_not_found_and_of_a_file_an_error(tree: Path) -> None:
    source = LiveSource(str(tree))
    with pytest.raises(NotFound):
        source.list_dir("/etc/libvirt")
    with pytest.raises(SourceError, match="ENOTDIR"):
        source.list_dir("/etc/hostname")


def test_read_link_of_a_regular_file_is_an_error(tree: Path) -> None:
    with pytest.raises(SourceError, match="EINVAL"):
        LiveSource(str(tree)).read_link("/etc/hostname")


# --- stat --------------------------------------------------------------------------------------


@pytest.mark.usefixtures("as_root")
def test_stat_reports_type_mode_owner_and_the_real_acl(acl_dir: Path, facl, test_ids) -> None:
    uid, (gid, other_gid) = test_ids
    root = acl_dir / "tree"
    (root / "dev").mkdir(parents=True)
    device = root / "dev/kvm-like"
    device.write_bytes(b"")
    os.chown(device, 0, gid)
    facl.set(device, f"u::rw-,g::rw-,o::---,u:{uid}:rw-,g:{other_gid}:r--,m::rw-")
    os.chmod(device, 0o660 | stat.S_ISGID)  # chmod keeps the named entries; the mask stays rw-

    for source, path in ((LiveSource(str(root)), "/dev/kvm-like"), (LiveSource(), str(device))):
        st = source.stat(path)
        assert (st.path, st.type, st.mode, st.uid, st.gid, st.rdev) == (
            path,
            "file",
            0o2660,
            0,
            gid,
            None,
        )
        assert [(e.tag, e.qualifier, e.perms) for e in st.acl] == facl.entries(device)
        assert ("user", uid, "rw-") in [(e.tag, e.qualifier, e.perms) for e in st.acl]


def test_stat_of_a_file_without_acl_has_no_entries(tree: Path) -> None:
    os.chmod(tree / "etc/hostname", 0o644)
    st = LiveSource(str(tree)).stat("/etc/hostname")
    assert (st.type, st.mode, st.acl) == ("file", 0o644, ())


def test_stat_of_a_character_device_names_its_numbers() -> None:
    st = LiveSource().stat("/dev/null")
    assert (st.type, st.rdev, st.mode) == ("char", "1:3", 0o666)


def test_stat_follows_symlinks_and_knows_directories_and_fifos(tree: Path) -> None:
    os.mkfifo(tree / "etc/initctl")
    source = LiveSource(str(tree))
    assert source.stat("/etc/os-release").type == "file"
    assert source.stat("/etc").type == "dir"
    assert source.stat("/etc/initctl").type == "fifo"


def test_live_stat_of_missing_path_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        LiveSource().stat(str(tmp_path / "absent"))


@pytest.mark.usefixtures("as_root")
def test_unreadable_host_files_are_access_denied_for_an_unprivileged_user(test_ids) -> None:
    uid, gids = test_ids

    def ask() -> list[str]:
        source = LiveSource()
        answers = []
        for question in (
            lambda: source.read_file("/etc/shadow"),
            lambda: source.list_dir("/root"),
            lambda: source.stat("/etc/shadow"),
        ):
            try:
                question()
                answers.append("answered")
            except SourceError as exc:
                answers.append(type(exc).__name__)
        return answers

    # Reading needs the read bit; stat(2) only needs the directory search bit.
    denied = AccessDenied.__name__
    assert as_user(ask, uid, gids[0], gids) == [denied, denied, "answered"]


# --- processes ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("as_root")
def test_tree_processes_come_from_its_proc_status_and_cmdline(tree: Path, run_as, test_ids) -> None:
    uid, gids = test_ids
    pid = run_as(uid, gids[0], gids, "virtqemud")
    proc = tree / "proc"
    for source_pid, target in ((pid, str(pid)), (2, "2")):  # 2: kthreadd, an empty cmdline
        (proc / target).mkdir(parents=True)
        for name in ("status", "cmdline"):
            (proc / target / name).write_bytes(Path(f"/proc/{source_pid}/{name}").read_bytes())
    (proc / "7719").mkdir()
    (proc / "7719/status").write_bytes(SNAPSHOT_STATUS.read_bytes())  # no cmdline captured
    (proc / "7719/cmdline").write_bytes(b"libvirtd\0-d\0")
    (proc / "4242").mkdir()  # a process that exited between listdir and read
    (proc / "self").symlink_to(str(pid))
    (proc / "sys").mkdir()

    found = {p.pid: p for p in LiveSource(str(tree)).processes()}

    assert sorted(found) == sorted([pid, 2, 7719])
    child = found[pid]
    assert (child.name, child.uid, child.gid, child.ppid) == (
        "virtqemud",
        uid,
        gids[0],
        os.getpid(),
    )
    parent_argv = Path("/proc/self/cmdline").read_bytes().split(b"\0")
    assert child.cmdline == tuple(a.decode() for a in parent_argv if a)  # forked from pytest
    assert child.exe == child.cmdline[0]
    assert (found[2].name, found[2].cmdline, found[2].exe) == ("kthreadd", (), "")
    libvirtd = found[7719]
    assert (libvirtd.name, libvirtd.ppid, libvirtd.uid, libvirtd.cmdline) == (
        "libvirtd",
        1,
        0,
        ("libvirtd", "-d"),
    )


def test_tree_process_with_a_damaged_status_is_skipped_not_fatal(tree: Path) -> None:
    for pid, status in (
        ("100", b"Name:\tqemu-kvm\nPPid:\t1\nUid:\t\nGid:\t0\n"),
        ("7719", SNAPSHOT_STATUS.read_bytes()),
    ):
        (tree / "proc" / pid).mkdir(parents=True)
        (tree / "proc" / pid / "status").write_bytes(status)
    assert [p.pid for p in LiveSource(str(tree)).processes()] == [7719]


def test_live_processes_include_this_test_with_its_uid() -> None:
    mine = [p for p in LiveSource().processes() if p.pid == os.getpid()]
    assert len(mine) == 1
    assert (mine[0].uid, mine[0].gid) == (os.getuid(), os.getgid())
    assert mine[0].exe == os.path.realpath(sys.executable)


@pytest.mark.usefixtures("as_root")
def test_live_processes_report_the_real_uid_of_another_user(run_as, test_ids) -> None:
    uid, gids = test_ids
    pid = run_as(uid, gids[1], gids, "kd-probe")
    other = [p for p in LiveSource().processes() if p.pid == pid]
    assert [(p.name, p.uid, p.gid) for p in other] == [("kd-probe", uid, gids[1])]


# --- the running system ------------------------------------------------------------------------


def test_run_captures_output_and_return_code_under_the_c_locale() -> None:
    result = LiveSource().run(["sh", "-c", 'echo "$LC_ALL"; echo oops >&2; exit 3'])
    assert (result.argv, result.returncode, result.stdout, result.stderr) == (
        ("sh", "-c", 'echo "$LC_ALL"; echo oops >&2; exit 3'),
        3,
        "C\n",
        "oops\n",
    )


def test_run_of_a_missing_program_is_not_found() -> None:
    with pytest.raises(NotFound, match="kd-no-such-program is not installed"):
        LiveSource().run(["kd-no-such-program", "--version"])


def test_run_that_outlives_its_timeout_is_an_error() -> None:
    with pytest.raises(SourceError, match="did not finish within 0.2 s"):
        LiveSource().run(["sleep", "5"], timeout=0.2)


def test_identity_environ_and_uname_are_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUDO_USER", "alice")
    monkeypatch.setenv("SUDO_UID", "1500")
    monkeypatch.setenv("KD_TEST_VALUE", "set by the test")
    monkeypatch.delenv("KD_TEST_UNSET", raising=False)
    source = LiveSource()
    ident = source.identity()
    assert (ident.uid, ident.euid, ident.gid) == (os.getuid(), os.geteuid(), os.getgid())
    assert set(ident.groups) == set(os.getgroups())
    assert (ident.sudo_user, ident.sudo_uid) == ("alice", 1500)
    assert source.environ("KD_TEST_VALUE") == "set by the test"
    assert source.environ("KD_TEST_UNSET") is None
    assert source.uname().release == os.uname().release
    assert source.kind == "live"


def test_identity_ignores_a_sudo_uid_that_is_not_a_number(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUDO_UID", "alice")
    assert LiveSource().identity().sudo_uid is None


def test_read_msr_of_an_absent_cpu_is_unavailable() -> None:
    with pytest.raises(Unavailable, match="msr module"):
        LiveSource().read_msr(0x3A, cpu=4095)


# --- kvm_probe ---------------------------------------------------------------------------------


def test_kvm_probe_of_a_missing_device_says_enoent(tmp_path: Path) -> None:
    probe = LiveSource().kvm_probe(str(tmp_path / "kvm"))
    assert (probe.opened, probe.open_errno, probe.api_version) == (False, "ENOENT", None)


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        pytest.param(lambda p: p.write_bytes(b""), (True, None, "ENOTTY"), id="regular-file"),
        pytest.param(lambda p: p.mkdir(), (False, "EISDIR", None), id="directory"),
    ],
)
def test_kvm_probe_of_something_that_is_not_kvm_names_the_errno(
    tmp_path: Path, make, expected
) -> None:
    path = tmp_path / "kvm"
    make(path)
    probe = LiveSource().kvm_probe(str(path))
    assert (probe.opened, probe.open_errno, probe.api_errno) == expected
    assert probe.vm_created is None


def test_kvm_probe_of_dev_null_opens_but_the_ioctl_fails() -> None:
    probe = LiveSource().kvm_probe("/dev/null")
    assert (probe.opened, probe.api_errno, probe.vm_created) == (True, "ENOTTY", None)


@pytest.mark.integration
@pytest.mark.usefixtures("as_root")
def test_kvm_probe_on_the_real_device_creates_a_vm() -> None:
    probe = LiveSource().kvm_probe(kvm_device())
    assert (probe.opened, probe.api_version, probe.vm_created) == (True, 12, True)
    assert probe.open_errno is None and probe.create_vm_errno is None
    assert 1 <= probe.extensions["nr_vcpus"] <= probe.extensions["max_vcpus"]


@pytest.mark.integration
@pytest.mark.usefixtures("as_root")
def test_kvm_probe_as_a_user_outside_the_device_group_is_eacces(test_ids) -> None:
    path = kvm_device()
    st = os.stat(path)
    if st.st_mode & 0o006:
        pytest.skip(f"{path} is open to everyone here (mode {stat.filemode(st.st_mode)})")
    uid, gids = test_ids
    probe = as_user(lambda: LiveSource().kvm_probe(path), uid, gids[0], gids)
    assert (probe.opened, probe.open_errno) == (False, "EACCES")
    if st.st_mode & 0o060:  # crw-rw---- root kvm: the device group is enough
        probe = as_user(lambda: LiveSource().kvm_probe(path), uid, st.st_gid, (st.st_gid,))
        assert (probe.opened, probe.vm_created) == (True, True)


def test_a_fifo_in_a_tree_is_refused_instead_of_blocking_the_run(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "etc/libvirt").mkdir(parents=True)
    os.mkfifo(tree / "etc/libvirt/qemu.conf")
    with pytest.raises(Unavailable, match="not a regular file"):
        LiveSource(str(tree)).read_file("/etc/libvirt/qemu.conf")


def _wait_for_zombie(pid: int) -> None:
    """Block until `pid` (a child of this test) has exited and is left unreaped."""
    # waitid with WNOWAIT waits for the exit but leaves the child a zombie.
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    assert state == "Z"


def test_a_zombie_is_not_a_running_process() -> None:
    # A daemon that exited and is not yet reaped (its parent, or a PID 1 that reaps late)
    # keeps its name in /proc; it runs nothing and holds no socket.
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        _wait_for_zombie(child.pid)
        pids = {p.pid for p in LiveSource().processes()}
        assert child.pid not in pids
        assert os.getpid() in pids
    finally:
        child.wait()


def test_a_zombie_in_a_tree_is_not_a_running_process(tree: Path) -> None:
    for pid, state in (("100", "Z (zombie)"), ("7719", "S (sleeping)")):
        (tree / "proc" / pid).mkdir(parents=True)
        (tree / "proc" / pid / "status").write_bytes(
            f"Name:\tlibvirtd\nState:\t{state}\nPPid:\t1\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n".encode()
        )
    assert [p.pid for p in LiveSource(str(tree)).processes()] == [7719]


# --- processes a fact asks for by name (read from /proc without psutil) -----------------------


def _rows(procs: list) -> dict[int, tuple]:
    return {p.pid: (p.ppid, p.name, p.exe, p.cmdline, p.uid, p.gid) for p in procs}


def test_wanted_processes_read_from_proc_are_those_psutil_lists() -> None:
    """Every process of this host, read from /proc as a fact that wants only some reads them,
    is the one psutil's full list describes (name, executable, arguments, parent, real ids).
    Processes that changed between the readings (started, exited, exec'd) are left out: the
    list is read with psutil before and after, and only processes alike in both compare."""
    before = _rows(LiveSource().processes())
    direct = _rows(LiveSource().processes(lambda name, exe: True))
    after = _rows(LiveSource().processes())
    steady = {pid for pid in before if after.get(pid) == before[pid] and pid in direct}
    assert os.getpid() in steady and len(steady) >= 10
    assert {pid: direct[pid] for pid in steady} == {pid: before[pid] for pid in steady}
    assert set(direct) <= set(before) | set(after)


def test_wanted_processes_keep_only_what_the_test_accepts_and_lengthen_cut_names(
    tmp_path: Path,
) -> None:
    """The kernel cuts a process name at 15 characters; like psutil, the name is taken from
    the command line when it starts with the cut one (qemu-system-x86 -> qemu-system-x86_64)."""
    long_name = tmp_path / "qemu-system-kd-x86_64"
    long_name.symlink_to(sys.executable)
    child = subprocess.Popen(
        [str(long_name), "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        # (Popen returns once the child has exec'd)
        seen: list[tuple[str, str]] = []

        def wanted(name: str, exe: str) -> bool:
            seen.append((name, exe))
            return name.startswith("qemu-system")

        found = LiveSource().processes(wanted)
        assert len(seen) > len(found)
        mine = [p for p in found if p.pid == child.pid]
        assert [(p.name, p.exe, p.ppid) for p in mine] == [
            ("qemu-system-kd-x86_64", os.path.realpath(sys.executable), os.getpid())
        ]
        assert all(p.name.startswith("qemu-system") for p in found)
    finally:
        child.communicate(b"")


def test_wanted_processes_leave_zombies_out() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        _wait_for_zombie(child.pid)
        pids = {p.pid for p in LiveSource().processes(lambda name, exe: True)}
        assert child.pid not in pids
        assert os.getpid() in pids
    finally:
        child.wait()


def test_a_source_that_listed_every_process_answers_a_wanted_one_from_that_list() -> None:
    """Once the whole list is taken, every fact sees that moment, whatever it wants of it."""
    source = LiveSource()
    every = source.processes()
    mine = source.processes(lambda name, exe: exe == os.path.realpath(sys.executable))
    assert mine == [p for p in every if p.exe == os.path.realpath(sys.executable)]
    assert os.getpid() in {p.pid for p in mine}


# --- commands started ahead of their run (prefetch) ------------------------------------------


def test_a_prefetched_command_runs_before_it_is_asked_for_and_answers_as_run_does() -> None:
    argv = ["sh", "-c", 'echo "$LC_ALL"; echo oops >&2; exit 3']
    source = LiveSource()
    try:
        source.prefetch([argv, argv])  # the same command once
        (started,) = source._started.values()
        assert started.process.wait(timeout=30) == 3  # it ended before anyone asked for it
        assert source.run(argv) == LiveSource().run(argv)
        assert not source._started  # taken once: a second run runs it again
        assert source.run(argv).stdout == "C\n"
    finally:
        source.close()


def test_a_prefetched_command_may_say_more_than_its_pipes_hold() -> None:
    argv = ["sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' x; echo done >&2"]
    source = LiveSource()
    try:
        source.prefetch([argv])
        result = source.run(argv)
    finally:
        source.close()
    assert (len(result.stdout), set(result.stdout), result.stderr) == (3_000_000, {"x"}, "done\n")


def test_a_prefetched_command_that_outlives_its_run_timeout_is_killed() -> None:
    # Its child holds the pipes for a while after it is killed: nothing waits for that.
    argv = ["sh", "-c", "sleep 2 & sleep 30"]
    source = LiveSource()
    source.prefetch([argv])
    (started,) = source._started.values()
    with pytest.raises(SourceError, match="did not finish within 0.2 s"):
        source.run(argv, timeout=0.2)
    assert started.process.returncode == -9  # killed and reaped
    assert started.process.stdout is not None and started.process.stdout.closed
    source.close()


def test_a_prefetched_command_never_asked_for_is_killed_at_close() -> None:
    source = LiveSource()
    source.prefetch([["sleep", "30"]])
    (started,) = source._started.values()
    assert started.process.poll() is None
    source.close()
    assert started.process.returncode == -9 and not source._started


def test_a_missing_program_is_not_prefetched_and_run_still_says_why() -> None:
    source = LiveSource()
    source.prefetch([["kd-no-such-program", "--version"]])
    assert not source._started
    with pytest.raises(NotFound, match="kd-no-such-program is not installed"):
        source.run(["kd-no-such-program", "--version"])


def test_a_tree_prefetches_nothing(tree: Path) -> None:
    source = LiveSource(str(tree))
    source.prefetch([["true"]])
    assert not source._started
