"""Recording a source's answers and replaying them from the snapshot, directory or archive."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import pytest

from doctor.sources import open_source
from doctor.sources.base import NotFound, SourceError, StatInfo, Unavailable
from doctor.sources.live import LiveSource
from doctor.sources.redact import ScrubbedSource
from doctor.sources.snapshot import (
    FORMAT,
    FORMAT_VERSION,
    RecordingSource,
    SnapshotError,
    SnapshotSource,
)

from kdtest import HOST_SNAPSHOT, REALDATA

REAL_CPUINFO = REALDATA / "cpuinfo/virt-what__intel-core-i7-m620_baremetal_vmx.txt"
REAL_KERNEL_LOG = (
    REALDATA / "kernel-log/"
    "lkml-rrichter__dmesg__qemu-q35-guest_boot-header_DMI-QEMU_Hypervisor-detected-KVM.txt"
)

Question = tuple[str, Callable[[Any], Any]]


def outcome(source: Any, ask: Callable[[Any], Any]) -> tuple[Any, ...]:
    """What a question gave: its value, or the error's class and full text."""
    try:
        return ("value", ask(source))
    except SourceError as exc:
        return ("error", type(exc).__name__, str(exc))


def answers(source: Any, questions: Sequence[Question]) -> dict[str, tuple[Any, ...]]:
    return {name: outcome(source, ask) for name, ask in questions}


@pytest.fixture
def tree(acl_dir: Path, facl) -> Path:
    """A host tree made of real files: passwd/group recorded on the lab machine, a real
    cpuinfo and kernel log, a device-like file with a POSIX ACL, a /proc with one daemon."""
    root = acl_dir / "tree"
    for rel in ("etc/libvirt", "proc/7719", "var/log", "usr/lib", "dev"):
        (root / rel).mkdir(parents=True)
    for name in ("passwd", "group"):
        shutil.copy(HOST_SNAPSHOT / "files/etc" / name, root / "etc" / name)
    shutil.copy(HOST_SNAPSHOT / "files/proc/7719/status", root / "proc/7719/status")
    (root / "proc/7719/cmdline").write_bytes(b"/usr/sbin/libvirtd\0-d\0")
    shutil.copy(REAL_CPUINFO, root / "proc/cpuinfo")
    shutil.copy(REAL_KERNEL_LOG, root / "var/log/kern.log")
    (root / "usr/lib/os-release").write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n')
    (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    (root / "dev/kvm").write_bytes(b"")
    os.chmod(root / "dev/kvm", 0o660)
    facl.set(root / "dev/kvm", "u::rw-,g::rw-,o::---,u:61001:rw-,m::rw-")
    return root


TREE_QUESTIONS: list[Question] = [
    ("passwd", lambda s: s.read_file("/etc/passwd")),
    ("passwd head", lambda s: s.read_file("/etc/passwd", max_bytes=10)),
    ("kern.log tail", lambda s: s.read_file("/var/log/kern.log", max_bytes=300, tail=True)),
    ("cpuinfo", lambda s: s.read_file("/proc/cpuinfo")),
    ("os-release via link", lambda s: s.read_file("/etc/os-release")),
    ("missing file", lambda s: s.read_file("/etc/libvirt/qemu.conf")),
    ("escaping path", lambda s: s.read_file("/../../etc/shadow")),
    ("no /sys in tree", lambda s: s.read_file("/sys/hypervisor/type")),
    ("dir", lambda s: s.list_dir("/etc")),
    ("missing dir", lambda s: s.list_dir("/etc/libvirt/qemu")),
    ("stat with acl", lambda s: s.stat("/dev/kvm")),
    ("missing stat", lambda s: s.stat("/dev/vhost-net")),
    ("link", lambda s: s.read_link("/etc/os-release")),
    ("not a link", lambda s: s.read_link("/etc/passwd")),
    ("processes", lambda s: s.processes()),
    ("run", lambda s: s.run(["dmesg"])),
    ("identity", lambda s: s.identity()),
    ("uname", lambda s: s.uname()),
    ("environ", lambda s: s.environ("LIBVIRT_DEFAULT_URI")),
    ("kvm_probe", lambda s: s.kvm_probe()),
    ("msr", lambda s: s.read_msr(0x3A)),
]


def test_replay_of_a_tree_recording_gives_identical_answers_and_errors(
    tree: Path, tmp_path: Path
) -> None:
    recorder = RecordingSource(LiveSource(str(tree)))
    recorded = answers(recorder, TREE_QUESTIONS)
    recorder.write(str(tmp_path / "snap"))

    replayed = answers(SnapshotSource(str(tmp_path / "snap")), TREE_QUESTIONS)

    assert replayed == recorded
    # The recording is not trivially empty: values and each kind of refusal are in it.
    assert recorded["passwd"][1].startswith(b"root:x:0:0:")
    assert recorded["passwd head"] == ("value", b"root:x:0:0")
    assert recorded["kern.log tail"][1].endswith(b"Detected 2709.020 MHz processor\n")
    assert recorded["missing file"][:2] == ("error", "NotFound")
    assert recorded["escaping path"][:2] == ("error", "PathEscapes")
    assert recorded["no /sys in tree"][:2] == ("error", "Unavailable")
    assert recorded["not a link"][:2] == ("error", "SourceError")
    assert recorded["run"][:2] == ("error", "Unavailable")
    acl = recorded["stat with acl"][1].acl
    assert [(e.tag, e.qualifier, e.perms) for e in acl][1] == ("user", 61001, "rw-")
    assert [p.name for p in recorded["processes"][1]] == ["libvirtd"]


def test_snapshot_directory_is_readable_files_at_their_paths(tree: Path, tmp_path: Path) -> None:
    recorder = RecordingSource(LiveSource(str(tree)))
    answers(recorder, TREE_QUESTIONS)
    recorder.write(str(tmp_path / "snap"), report={"kind": "test report"})
    snap = tmp_path / "snap"

    assert (snap / "files/etc/passwd").read_bytes() == (tree / "etc/passwd").read_bytes()
    assert (snap / "files/proc/cpuinfo").read_bytes() == REAL_CPUINFO.read_bytes()
    manifest = json.loads((snap / "manifest.json").read_text())
    assert (manifest["format"], manifest["format_version"]) == (FORMAT, FORMAT_VERSION)
    assert manifest["source"]["kind"] == "root"
    missing = [a for a in manifest["answers"] if a.get("path") == "/etc/libvirt/qemu.conf"]
    assert missing[0]["error"]["type"] == "not-found"
    assert all(a["how"] for a in manifest["answers"])
    assert json.loads((snap / "report.json").read_text()) == {"kind": "test report"}
    assert json.loads((snap / "processes.json").read_text())[0]["pid"] == 7719


def test_replay_of_a_live_recording_gives_identical_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KD_TEST_VALUE", "recorded")
    monkeypatch.delenv("KD_TEST_UNSET", raising=False)
    questions: list[Question] = [
        ("command", lambda s: s.run(["sh", "-c", "echo out; echo err >&2; exit 3"])),
        ("missing command", lambda s: s.run(["kd-no-such-program", "-v"])),
        ("identity", lambda s: s.identity()),
        ("uname", lambda s: s.uname()),
        ("environ", lambda s: s.environ("KD_TEST_VALUE")),
        ("environ unset", lambda s: s.environ("KD_TEST_UNSET")),
        ("probe missing device", lambda s: s.kvm_probe(str(tmp_path / "no-kvm"))),
        ("probe not kvm", lambda s: s.kvm_probe("/dev/null")),
        ("msr", lambda s: s.read_msr(0x3A, cpu=4095)),
        ("stat device", lambda s: s.stat("/dev/null")),
        ("processes", lambda s: s.processes()),
    ]
    recorder = RecordingSource(LiveSource())
    recorded = answers(recorder, questions)
    recorder.write(str(tmp_path / "snap"))

    replayed = answers(SnapshotSource(str(tmp_path / "snap")), questions)

    assert replayed == recorded
    assert recorded["command"][1].returncode == 3
    assert recorded["missing command"][:2] == ("error", "NotFound")
    assert recorded["environ unset"] == ("value", None)
    assert recorded["probe not kvm"][1].api_errno == "ENOTTY"
    assert recorded["msr"][:2] == ("error", "Unavailable")
    assert any(p.pid == os.getpid() for p in recorded["processes"][1])


def test_a_shorter_read_does_not_replace_a_fuller_one_in_the_recording(
    tree: Path, tmp_path: Path
) -> None:
    recorder = RecordingSource(LiveSource(str(tree)))
    whole = recorder.read_file("/var/log/kern.log")
    tail = recorder.read_file("/var/log/kern.log", max_bytes=50, tail=True)
    head = recorder.read_file("/var/log/kern.log", max_bytes=50)
    recorder.write(str(tmp_path / "snap"))

    replay = SnapshotSource(str(tmp_path / "snap"))
    assert replay.read_file("/var/log/kern.log") == whole
    assert replay.read_file("/var/log/kern.log", max_bytes=50, tail=True) == tail
    assert replay.read_file("/var/log/kern.log", max_bytes=50) == head


def test_a_success_after_a_refusal_is_what_the_snapshot_keeps(tmp_path: Path) -> None:
    (tmp_path / "tree/etc").mkdir(parents=True)
    recorder = RecordingSource(LiveSource(str(tmp_path / "tree")))
    with pytest.raises(NotFound):
        recorder.read_file("/etc/hostname")
    (tmp_path / "tree/etc/hostname").write_text("late\n")
    assert recorder.read_file("/etc/hostname") == b"late\n"
    recorder.write(str(tmp_path / "snap"))
    assert SnapshotSource(str(tmp_path / "snap")).read_file("/etc/hostname") == b"late\n"


def test_paths_that_are_not_plain_are_kept_inside_the_snapshot(tmp_path: Path) -> None:
    recorder = RecordingSource(LiveSource())
    # On the host "/.." is "/": both read /etc/hostname.
    plain, climbing = recorder.read_file("/etc/hostname"), recorder.read_file("/../../etc/hostname")
    recorder.write(str(tmp_path / "snap"))
    assert not (tmp_path / "etc").exists() and not (tmp_path / "snap/etc").exists()
    replay = SnapshotSource(str(tmp_path / "snap"))
    assert replay.read_file("/../../etc/hostname") == climbing == plain
    assert replay.read_file("/etc/hostname") == plain


# --- what the snapshot does not know --------------------------------------------------------


@pytest.fixture
def small_snapshot(tmp_path: Path) -> Path:
    """A snapshot in which only /etc/hostname was read."""
    (tmp_path / "tree/etc").mkdir(parents=True)
    (tmp_path / "tree/etc/hostname").write_text("lab\n")
    recorder = RecordingSource(LiveSource(str(tmp_path / "tree")))
    recorder.read_file("/etc/hostname")
    recorder.write(str(tmp_path / "snap"))
    return tmp_path / "snap"


@pytest.mark.parametrize(
    "ask",
    [
        pytest.param(lambda s: s.read_file("/etc/passwd"), id="read_file"),
        pytest.param(lambda s: s.list_dir("/sys/module"), id="list_dir"),
        pytest.param(lambda s: s.stat("/dev/kvm"), id="stat"),
        pytest.param(lambda s: s.read_link("/etc/localtime"), id="read_link"),
        pytest.param(lambda s: s.run(["dmesg"]), id="run"),
        pytest.param(lambda s: s.processes(), id="processes"),
        pytest.param(lambda s: s.identity(), id="identity"),
        pytest.param(lambda s: s.uname(), id="uname"),
        pytest.param(lambda s: s.environ("HOME"), id="environ"),
        pytest.param(lambda s: s.kvm_probe(), id="kvm_probe"),
        pytest.param(lambda s: s.read_msr(0x3A), id="read_msr"),
    ],
)
def test_unrecorded_questions_are_unavailable(small_snapshot: Path, ask) -> None:
    source = SnapshotSource(str(small_snapshot))
    assert source.read_file("/etc/hostname") == b"lab\n"
    with pytest.raises(Unavailable, match="not recorded in the snapshot"):
        ask(source)


def test_hand_edited_and_hand_added_files_are_answered(small_snapshot: Path) -> None:
    (small_snapshot / "files/etc/hostname").write_text("edited\n")
    (small_snapshot / "files/etc/libvirt").mkdir()
    (small_snapshot / "files/etc/libvirt/qemu.conf").write_text('user = "qemu"\n')

    source = SnapshotSource(str(small_snapshot))

    assert source.read_file("/etc/hostname") == b"edited\n"
    assert source.read_file("/etc/libvirt/qemu.conf") == b'user = "qemu"\n'
    assert source.read_file("/etc/libvirt/qemu.conf", max_bytes=4, tail=True) == b'mu"\n'
    assert source.list_dir("/etc/libvirt") == ["qemu.conf"]
    assert source.list_dir("/etc") == ["hostname", "libvirt"]


@pytest.mark.parametrize(
    "ask",
    [
        pytest.param(lambda s: s.read_file("/../manifest.json"), id="read-manifest"),
        pytest.param(lambda s: s.read_file("/../../../../etc/hostname"), id="read-host-file"),
        pytest.param(lambda s: s.list_dir("/.."), id="list-snapshot-root"),
        pytest.param(lambda s: s.list_dir("/../../../../etc"), id="list-host-dir"),
    ],
)
def test_hand_placed_lookups_never_leave_files(small_snapshot: Path, ask) -> None:
    with pytest.raises(SourceError, match="outside the snapshot"):
        ask(SnapshotSource(str(small_snapshot)))


def test_file_named_in_the_manifest_but_deleted_is_an_error(small_snapshot: Path) -> None:
    (small_snapshot / "files/etc/hostname").unlink()
    with pytest.raises(SourceError, match="missing from the snapshot"):
        SnapshotSource(str(small_snapshot)).read_file("/etc/hostname")


# --- archives ---------------------------------------------------------------------------------


def test_tar_gz_archive_round_trips(tree: Path, tmp_path: Path) -> None:
    recorder = RecordingSource(LiveSource(str(tree)))
    recorded = answers(recorder, TREE_QUESTIONS)
    recorder.write(str(tmp_path / "host.tar.gz"))

    with tarfile.open(tmp_path / "host.tar.gz") as archive:
        names = {os.path.normpath(n) for n in archive.getnames()}
    assert {"manifest.json", "files/etc/passwd", "processes.json"} <= names
    source = SnapshotSource(str(tmp_path / "host.tar.gz"))
    assert answers(source, TREE_QUESTIONS) == recorded
    assert source.describe()["path"] == str(tmp_path / "host.tar.gz")


def archive_with(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    """A valid snapshot archive plus one extra member."""
    path = tmp_path / "bad.tar.gz"
    manifest = json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, "answers": []})
    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        archive.addfile(info, io.BytesIO(manifest.encode()))
        member.size = len(data) if member.isfile() else 0
        archive.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.mark.parametrize(
    "member",
    [
        pytest.param(_member("../kd-escaped"), id="dotdot"),
        pytest.param(_member("files/../../kd-escaped"), id="dotdot-inside"),
        pytest.param(_member("/tmp/kd-escaped"), id="absolute"),
        pytest.param(_member("files/etc/passwd", tarfile.SYMTYPE, "/etc/passwd"), id="symlink"),
        pytest.param(_member("files/etc/shadow", tarfile.LNKTYPE, "manifest.json"), id="hardlink"),
        pytest.param(_member("files/dev/kvm", tarfile.CHRTYPE), id="device"),
    ],
)
def test_archive_with_unsafe_member_is_refused(tmp_path: Path, member: tarfile.TarInfo) -> None:
    path = archive_with(tmp_path, member, b"escaped\n")
    with pytest.raises(SnapshotError, match="refusing archive member"):
        SnapshotSource(str(path))
    assert not (tmp_path.parent / "kd-escaped").exists()
    assert not Path("/tmp/kd-escaped").exists()


def test_archive_member_whose_name_merely_starts_with_dots_is_accepted(tmp_path: Path) -> None:
    path = archive_with(tmp_path, _member("files/..hidden"), b"fine\n")
    assert SnapshotSource(str(path)).read_file("/..hidden") == b"fine\n"


def test_truncated_archive_is_a_snapshot_error(small_snapshot: Path, tmp_path: Path) -> None:
    big = small_snapshot / "files/etc/big"
    big.write_bytes(os.urandom(200_000))  # incompressible, so the gzip stream is long
    archive = tmp_path / "snap.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(small_snapshot, arcname=".")
    archive.write_bytes(archive.read_bytes()[:100_000])
    with pytest.raises(SnapshotError, match="cannot unpack the archive"):
        SnapshotSource(str(archive))


# --- manifests that cannot be read -------------------------------------------------------------


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        pytest.param("{not json", "manifest.json is not valid JSON", id="not-json"),
        pytest.param("[1, 2]", "is not a kvmdoctor-snapshot manifest", id="json-list"),
        pytest.param('{"format": "sosreport"}', "is not a kvmdoctor-snapshot", id="wrong-format"),
        pytest.param(
            json.dumps({"format": FORMAT, "format_version": 2}),
            "snapshot format version 2; this kvmdoctor reads 1",
            id="newer-version",
        ),
        pytest.param(
            json.dumps({"format": FORMAT}),
            "snapshot format version None",
            id="no-version",
        ),
        pytest.param(
            json.dumps({"format": FORMAT, "format_version": 1, "answers": {"a": 1}}),
            "'answers' is not a list",
            id="answers-not-a-list",
        ),
        pytest.param(
            json.dumps({"format": FORMAT, "format_version": 1, "answers": [{"kind": "command"}]}),
            "answer 0 is malformed",
            id="command-without-argv",
        ),
    ],
)
def test_bad_manifest_is_a_snapshot_error_that_says_why(
    tmp_path: Path, manifest: str, message: str
) -> None:
    (tmp_path / "manifest.json").write_text(manifest)
    with pytest.raises(SnapshotError, match=message) as caught:
        SnapshotSource(str(tmp_path))
    assert str(tmp_path) in str(caught.value)


def test_directory_without_manifest_and_non_snapshot_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match="no manifest.json"):
        SnapshotSource(str(tmp_path))
    (tmp_path / "notes.txt").write_text("not a snapshot\n")
    with pytest.raises(SnapshotError, match="not a snapshot directory or archive"):
        SnapshotSource(str(tmp_path / "notes.txt"))
    with pytest.raises(SnapshotError, match="not a snapshot directory or archive"):
        SnapshotSource(str(tmp_path / "absent"))


# --- the snapshot recorded on the lab machine ---------------------------------------------------


def ask_recorded(source: SnapshotSource, entry: dict[str, Any]) -> Any:
    kind = entry["kind"]
    if kind == "file":
        return source.read_file(entry["path"])
    if kind == "dir":
        return source.list_dir(entry["path"])
    if kind == "stat":
        return source.stat(entry["path"])
    if kind == "command":
        return source.run(entry["argv"])
    if kind == "environ":
        return source.environ(entry["name"])
    if kind == "msr":
        return source.read_msr(int(entry["register"], 16), int(entry["cpu"]))
    if kind == "kvm_probe":
        return source.kvm_probe(entry["path"])
    if kind == "key_info":
        return source.key_info(entry["path"])
    if kind == "libvirt":
        return source.libvirt(entry["uri"], entry["request"], **entry.get("params", {}))
    if kind == "link":
        return source.read_link(entry["path"])
    if kind == "netlink":
        return source.netlink(entry["request"], entry.get("netns"))
    return getattr(source, kind)()


def as_json(answer: Any) -> Any:
    if dataclasses.is_dataclass(answer):
        answer = dataclasses.asdict(answer)
    return json.loads(json.dumps(answer))


def with_files(value: Any) -> Any:
    """The recorded value with its {"$file": path} references read, as replay answers it."""
    if isinstance(value, dict) and set(value) == {"$file"}:
        return (HOST_SNAPSHOT / value["$file"]).read_text()
    if isinstance(value, list):
        return [with_files(v) for v in value]
    if isinstance(value, dict):
        return {k: with_files(v) for k, v in value.items()}
    return value


def test_every_answer_of_the_recorded_host_snapshot_replays() -> None:
    source = SnapshotSource(str(HOST_SNAPSHOT))
    manifest = json.loads((HOST_SNAPSHOT / "manifest.json").read_text())
    assert len(manifest["answers"]) > 20
    for entry in manifest["answers"]:
        if "error" in entry:
            with pytest.raises(SourceError) as caught:
                ask_recorded(source, entry)
            assert (caught.value.kind, caught.value.reason) == (
                entry["error"]["type"],
                entry["error"]["message"],
            ), entry
            continue
        answer = ask_recorded(source, entry)
        if entry["kind"] == "file":
            assert answer == (HOST_SNAPSHOT / entry["data"]).read_bytes()
        elif entry["kind"] == "command":
            assert answer.stdout == (HOST_SNAPSHOT / entry["stdout"]).read_text()
            assert answer.returncode == entry["returncode"]
        elif entry["kind"] == "processes":
            rows = json.loads((HOST_SNAPSHOT / "processes.json").read_text())
            assert [as_json(p) for p in answer] == rows
        elif entry["kind"] == "libvirt":
            assert as_json(answer) == with_files(entry["value"]), entry
        elif entry["kind"] == "netlink":
            assert answer == json.loads((HOST_SNAPSHOT / entry["data"]).read_text())
        else:
            assert as_json(answer) == entry["value"], entry


def test_recorded_host_snapshot_says_kvm_works_without_vmx() -> None:
    source = SnapshotSource(str(HOST_SNAPSHOT))

    assert source.describe()["recorded_from"]["kind"] == "live"
    probe = source.kvm_probe("/dev/kvm")
    assert (probe.opened, probe.api_version, probe.vm_created) == (True, 12, True)
    assert source.stat("/dev/kvm") == StatInfo("/dev/kvm", "char", 0o660, 0, 107, "10:232", ())
    cpuinfo = source.read_file("/proc/cpuinfo").decode()
    assert " hypervisor " in cpuinfo and " vmx " not in cpuinfo and " svm " not in cpuinfo
    with pytest.raises(NotFound):
        source.read_file("/proc/modules")  # the kernel is not modular
    assert "kvm_pvm" in source.list_dir("/sys/module")
    with pytest.raises(Unavailable, match="msr module"):
        source.read_msr(0x3A)
    assert source.environ("LIBVIRT_DEFAULT_URI") is None
    dmesg = source.run(["dmesg"])
    assert dmesg.returncode == 0 and "Hypervisor detected: KVM" in dmesg.stdout
    assert [(p.pid, p.uid) for p in source.processes() if p.name == "libvirtd"] == [(7719, 0)]
    with pytest.raises(Unavailable):
        source.read_file("/etc/hostname")  # never read by the checks that recorded it


def test_open_source_picks_snapshot_tree_or_host(small_snapshot: Path, tmp_path: Path) -> None:
    snapshot = open_source(snapshot=str(small_snapshot))
    assert isinstance(snapshot, ScrubbedSource)  # every source answers through the scrubber
    assert isinstance(snapshot.inner, SnapshotSource)
    tree = open_source(root=str(tmp_path / "tree"))
    assert (tree.kind, tree.describe()["root"]) == ("root", str(tmp_path / "tree"))
    live = open_source(uri="qemu:///system")
    assert (live.kind, live.describe()["uri"]) == ("live", "qemu:///system")
    with pytest.raises(NotFound, match="--root must name a directory"):
        open_source(root=str(tmp_path / "absent"))


def test_recording_source_describes_what_it_wraps(tmp_path: Path) -> None:
    recorder = RecordingSource(LiveSource(str(tmp_path)))
    assert recorder.kind == "root"
    assert recorder.describe() == {**LiveSource(str(tmp_path)).describe(), "recording": True}


def test_an_archive_packed_with_its_directory_on_top_replays(tmp_path: Path) -> None:
    """`tar czf host.tar.gz host-snapshot/` puts everything one level down."""
    archive = tmp_path / "host.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(HOST_SNAPSHOT, arcname="host-snapshot")
    replay = SnapshotSource(str(archive))
    assert replay.read_file("/proc/cpuinfo") == (HOST_SNAPSHOT / "files/proc/cpuinfo").read_bytes()
