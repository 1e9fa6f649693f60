"""Secrets in every form the host writes them never reach anything kvmdoctor prints or writes:
`run` (text with -v, JSON), `collect` (the snapshot's report, its copies of the logs, its
processes.json and command outputs), and a replay of a snapshot that holds them.

The forms: quoted and bare `password=` in QEMU logs, `passwd='...'` and `passwd="..."` in
libvirtd's debug lines (define XML echoed into the log), quoted and separate-argument passwords
on process command lines, and the journal."""

from __future__ import annotations

import base64
import json
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from doctor.facts.logs import DAEMON_LOGS, JOURNAL_ARGV, QEMU_LOG_DIR
from doctor.sources.live import LiveSource
from doctor.sources.redact import REDACTED, ScrubbedSource, scrub_argv, scrub_text
from doctor.sources.snapshot import RecordingSource

from kdnet import set_command
from kdtest import REALDATA, kvmdoctor, write_tree

SECRETS = [f"kdsecret{letter}" for letter in "ABCDEFGHIJ"]

QEMU_LOG = (
    "2026-11-26 07:00:00.000+0000: starting up libvirt version: 9.0.0\n"
    "2026-11-26T07:00:00.100000Z qemu-system-x86_64: -spice port=5900,"
    "password=\"kdsecretA\" -vnc 0.0.0.0:0,password='kdsecretB' -object "
    '{"qom-type":"secret","id":"sec0","data":"kdsecretI"}: '
    "Could not open '/var/lib/libvirt/images/web1.qcow2': Permission denied\n"
)
LIBVIRTD_LOG = (
    "2026-11-26 07:00:01.000+0000: 1234: debug : virDomainDefineXMLFlags:6000 : conn=0x1, "
    "xml=<domain type='kvm'><graphics type='vnc' passwd='kdsecretC'/>"
    '<graphics type="spice" passwd="kdsecretD"/></domain>\n'
    "2026-11-26 07:00:02.000+0000: 1234: error : virPortAllocatorSetUsed:274 : internal "
    "error: Failed to reserve port 5900 for <graphics passwd='kdsecretJ'/>\n"
)
QEMU_CMDLINE = [
    "/usr/bin/qemu-system-x86_64",
    "-name",
    "guest=web1",
    "-vnc",
    '0.0.0.0:0,password="kdsecretE"',
    "-spice",
    "port=5901,password=kdsecretF",
    "--password",
    "kdsecretG",
]


def no_logs(snap: Any) -> Any:
    for path in DAEMON_LOGS:
        snap.drop("file", path=path)
    return snap.drop("dir", path=QEMU_LOG_DIR)


def encodings(secret: str) -> list[bytes]:
    raw = secret.encode()
    return [raw, base64.b64encode(raw), urllib.parse.quote(secret).encode()]


def assert_no_secret(blob: bytes, where: str) -> None:
    for secret in SECRETS:
        for form in encodings(secret):
            assert form not in blob, f"{secret} ({form!r}) in {where}"


def host_tree(root: Path) -> Path:
    status = "Name:\tqemu-system-x86\nPPid:\t1\nUid:\t64055\t64055\t64055\t64055\n"
    status += "Gid:\t64055\t64055\t64055\t64055\n"
    return write_tree(
        root,
        {
            "/var/log/libvirt/qemu/web1.log": QEMU_LOG,
            "/var/log/libvirt/libvirtd.log": LIBVIRTD_LOG,
            "/proc/4242/status": status,
            "/proc/4242/cmdline": "\0".join(QEMU_CMDLINE) + "\0",
            "/etc/libvirt/qemu.conf": 'vnc_password = "kdsecretH"\n',
        },
    )


AT = ("--at", "2026-11-26T08:00:00Z")


def test_run_on_a_tree_prints_and_reports_no_secret(tmp_path: Path) -> None:
    tree = str(host_tree(tmp_path / "tree"))
    text = kvmdoctor("run", "--root", tree, "-v", *AT)
    assert text.exit_code in (0, 1), text.stderr
    assert "Permission denied" in text.stdout  # the log hit itself is reported
    assert_no_secret(text.stdout.encode() + text.stderr.encode(), "run -v")
    report = kvmdoctor("run", "--root", tree, "-f", "json", *AT)
    assert_no_secret(report.stdout.encode(), "the JSON report")
    assert "graphics-port-conflict" in report.stdout


def test_collect_records_no_secret_anywhere_in_the_snapshot(tmp_path: Path) -> None:
    tree = str(host_tree(tmp_path / "tree"))
    snap = tmp_path / "snap"
    result = kvmdoctor("collect", "--root", tree, "-o", str(snap))
    assert result.exit_code == 0, result.stderr
    files = {p.relative_to(snap).as_posix(): p.read_bytes() for p in snap.rglob("*") if p.is_file()}
    assert "processes.json" in files and "report.json" in files
    assert any(name.endswith("qemu/web1.log") for name in files)
    for name, blob in files.items():
        assert_no_secret(blob, name)
    (qemu,) = [p for p in json.loads(files["processes.json"]) if p["pid"] == 4242]
    assert qemu["cmdline"][4] == f'0.0.0.0:0,password="{REDACTED}"'
    assert qemu["cmdline"][-2:] == ["--password", REDACTED]
    # and the replay reports no secret either
    replay = kvmdoctor("run", "--snapshot", str(snap), "-v", *AT)
    assert_no_secret(replay.stdout.encode(), "the replay")


def test_a_snapshot_that_holds_secrets_is_scrubbed_when_replayed(edit_snapshot: Any) -> None:
    """A snapshot from elsewhere (an older kvmdoctor, a hand-made bundle) with secrets in its
    journal and logs: the report made from it carries none."""
    snap = no_logs(edit_snapshot())
    journal = (
        "2026-11-26T07:00:02+0000 vm libvirtd[1234]: internal error: Failed to reserve port "
        "5900 for <graphics passwd='kdsecretJ'/> password=\"kdsecretA\"\n"
    )
    set_command(snap, list(JOURNAL_ARGV), journal)
    snap.set_file("/var/log/libvirt/libvirtd.log", LIBVIRTD_LOG)
    path = str(snap.save())
    report = kvmdoctor("run", "--snapshot", path, "-f", "json", *AT)
    assert "graphics-port-conflict" in report.stdout
    assert_no_secret(report.stdout.encode(), "the report of a replay")
    text = kvmdoctor("run", "--snapshot", path, "-v", *AT)
    assert_no_secret(text.stdout.encode(), "run -v of a replay")


def test_the_journal_is_recorded_scrubbed(edit_snapshot: Any, tmp_path: Path) -> None:
    from doctor.sources.snapshot import SnapshotSource

    snap = no_logs(edit_snapshot())
    set_command(snap, list(JOURNAL_ARGV), "x: spice password='kdsecretB' passwd=kdsecretC\n")
    recorder = RecordingSource(ScrubbedSource(SnapshotSource(str(snap.save()))))
    assert "kdsecretB" not in recorder.run(list(JOURNAL_ARGV)).stdout
    out = tmp_path / "out"
    recorder.write(str(out))
    for path in out.rglob("*"):
        if path.is_file():
            assert_no_secret(path.read_bytes(), str(path))


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ('password="kdsecretA" port=5900', "port=5900"),
        ("password='kdsecretA',addr=::", ",addr=::"),
        ("-spice port=5900,password=kdsecretA,addr=127.0.0.1", ",addr=127.0.0.1"),
        ("<graphics type='vnc' passwd='kdsecretA' port='5900'/>", "port='5900'"),
        ('<graphics passwd = "kdsecretA"/>', "<graphics passwd"),
        ("passwd=&quot;kdsecretA&quot; x", " x"),
        ('{"password": "kdsecretA", "port": 5900}', '"port": 5900'),
        ("vnc_password = 'kdsecretA'", "vnc_password"),
        ("--password=kdsecretA --port 1", "--port 1"),
        ("data=kdsecretA after -object secret,id=x,", "data=kdsecretA"),  # not a secret object
    ],
)
def test_every_form_of_a_secret_is_blanked(text: str, kept: str) -> None:
    scrubbed, _ = scrub_text(text)
    assert kept in scrubbed
    if text.startswith("data="):
        assert scrubbed == text
    else:
        assert "kdsecretA" not in scrubbed and REDACTED in scrubbed


SCRUB_CASES = [
    'password="kdsecretA" port=5900',
    "-object secret,id=s0,data=kdsecretA",
    '{"qom-type":"secret","id":"s0","data":"kdsecretA"}',
    "data=plain without the word",
    "-object SECRET,id=s0,data=kdsecretA",
    "-object \u017fecret,id=s0,data=kdsecretA",  # long s: folds to "s" under IGNORECASE
    "PASSWD=kdsecretA",
    "Spice_Passw0rd=kept since it is no password key",
    "vnc_passWord = 'kdsecretA'\nport = 5900\n",
    "x" * 200 + " secret " + "y" * 100 + " data=kdsecretA",
    "no key at all: port=5900 data=1",
    "",
]


@pytest.mark.parametrize("text", SCRUB_CASES)
def test_text_without_a_secret_word_is_returned_as_it_is_and_the_rest_scrubbed_alike(
    text: str,
) -> None:
    from doctor.sources.redact import _scrub_settings

    # The quick return for text that holds no "passw" or "secret" never hides a secret:
    # the result is the full pass's on every case.
    assert scrub_text(text) == _scrub_settings(text, whole=True)
    for line in text.splitlines():
        assert scrub_text(line) == _scrub_settings(line, whole=True)


MULTILINE_SECRETS = [
    "password\n\n   = 'kdhiddenA'",
    'passwd:\n  "kdhiddenA"',
    "x passwd=1 y password\n=\n'kdhiddenA'",
    "-object secret,id=s0,\ndata=kdhiddenA",
    '{"qom-type": "secret",\n "data": "kdhiddenA"}',
    "PA\u017f\u017fWORD=kdhiddenA",
    "\u212aey \u017fecret_value=kdhiddenA",
    'vnc_password = "kd\\"secretA" tail',
    "data=plain with no secret near",
    "\tspice_password='kdhiddenA',port=1",
]


def test_a_long_text_is_scrubbed_as_a_whole_pass_scrubs_it() -> None:
    from doctor.sources.redact import _scrub_settings

    # A long text is tried only where a key can start; the result must be the whole pass's:
    # secrets whose separator and value run over lines, unicode that IGNORECASE folds to a key
    # word, data= near a secret object on the line before, real logs.
    filler = [
        f"2026-01-01 00:00:{i % 60:02d}.000+0000: 812: info : line {i} data flow" for i in range(40)
    ]
    lines: list[str] = []
    for i, secret in enumerate(MULTILINE_SECRETS * 3):
        lines += filler[: 5 + i % 7] + [secret] + [""] * (i % 3)
    texts = ["\n".join(lines)]
    for path in sorted(REALDATA.rglob("*")):
        if path.is_file() and path.stat().st_size > 4096:
            texts.append(path.read_text(errors="surrogateescape"))
    assert len(texts) > 1
    for text in texts:
        assert len(text) > 4096
        assert _scrub_settings(text) == _scrub_settings(text, whole=True)
    scrubbed, keys = _scrub_settings(texts[0])
    assert scrubbed.count(REDACTED) >= 3 * 8
    assert {"password", "passwd", "data"} <= {k.lower() for k in keys}


def test_a_password_given_as_the_next_argument_is_blanked() -> None:
    assert scrub_argv(["x", "--spice-password", "kdsecretA", "-k"]) == (
        "x",
        "--spice-password",
        REDACTED,
        "-k",
    )


def test_checks_see_the_scrubbed_answer_and_the_inner_source_keeps_the_key(
    tmp_path: Path,
) -> None:
    tree = host_tree(tmp_path / "tree")
    source = ScrubbedSource(LiveSource(str(tree)))
    assert b"kdsecretH" not in source.read_file("/etc/libvirt/qemu.conf")
    assert source.kind == "root"


def test_the_quick_secret_hint_answers_as_the_case_blind_expression() -> None:
    """scrub_text and scrub_bytes pass a text on untouched when it holds no key word; the test
    is now `in` on the lower case of an ASCII text. Over every text the tests hold and words
    written in every case, with letters that IGNORECASE folds to ASCII (the long s, the Kelvin
    sign), it answers as `_TEXT_HINT` / `_HINT`, and scrub_text gives what _SETTING gives."""
    import itertools

    from doctor.sources import redact

    texts = [QEMU_LOG, "", "nothing here", "\u017fecret=x", "pa\u017f\u017fword=x", "\u212aey"]
    for word in ("passw", "secret", "PassW", "sEcReT", "pasw", "secre t"):
        texts += [word, f"x {word}=1 \u00e9", f"{word.upper()}: 'v'", f"[\u00fc] {word}"]
    texts += ["".join(p) for p in itertools.product(["pa", "ss", "\u017fs", "w", "S"], repeat=3)]
    for path in sorted(REALDATA.rglob("*"))[:200]:
        if path.is_file() and path.stat().st_size < 2_000_000:
            texts.append(path.read_bytes().decode("utf-8", "replace"))
    assert len(texts) > 100
    hinted = 0
    for text in texts:
        expected = redact._TEXT_HINT.search(text) is not None
        assert redact._hinted(text) is expected, text[:80]
        data = text.encode("utf-8", "surrogateescape")
        assert redact._hinted_bytes(data) is (redact._HINT.search(data) is not None), text[:80]
        whole = redact._scrub_settings(text, whole=True) if expected else (text, [])
        assert scrub_text(text) == whole, text[:80]
        hinted += expected
    assert 0 < hinted < len(texts)
    assert redact._TEXT_HINT.search("\u017fecret")  # the fold that keeps the expression


def test_key_starts_found_in_the_whole_text_are_those_found_line_by_line() -> None:
    """_key_starts looks for the key words in an ASCII text's lower case at once; the
    positions it gives are those of trying each line, over every text the tests hold."""
    from doctor.sources import redact

    texts = [QEMU_LOG, "", "\n", "password=x", "a\n\nDATA=1\nsecret: 'x'\n", "x\npassw"]
    texts += ["\n".join([f"line {i} data=1 Secret=2 PassWord=3"] * 3) for i in range(3)]
    texts.append("\u00e9 password=1\nsecret=2")  # outside ASCII: line by line
    for path in sorted(REALDATA.rglob("*")):
        if path.is_file() and path.stat().st_size < 2_000_000:
            texts.append(path.read_bytes().decode("utf-8", "replace"))
    found = 0
    for text in texts:
        expected = list(redact._key_starts_by_line(text))
        assert list(redact._key_starts(text)) == expected, text[:80]
        found += len(expected)
    assert found > 10
