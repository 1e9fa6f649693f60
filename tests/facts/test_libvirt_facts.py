"""libvirt's configuration syntax, the `qemu_conf` and `uri` facts.

The configuration files in data/libvirt/ are the real ones of the lab machine (see
data/SOURCES.md). Where root and virsh are available, libvirt's own parser is the reference:
virsh reads libvirt.conf through the same code (src/util/virconf.c) that reads qemu.conf and
libvirtd.conf, and refuses to connect when it cannot parse it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

from doctor.facts import FactContext, RunOptions
from doctor.facts.libvirt import ConfError, parse_conf
from doctor.sources.live import LiveSource
from doctor.sources.snapshot import SnapshotSource

from kdsnap import ALICE_IDENTITY
from kdtest import HOST_SNAPSHOT, require

DATA = Path(__file__).resolve().parent / "data/libvirt"
_SETTING = re.compile(r"^#([a-z_]+ = .*)$")


def real(name: str) -> str:
    return (DATA / name).read_text()


def uncomment_examples(text: str) -> str:
    """Turn every commented-out setting of a shipped file into a setting, as an administrator
    does: "#name = value" at the start of a line, and the rest of a list spread over lines."""
    out, in_list = [], False
    for line in text.splitlines():
        match = _SETTING.match(line)
        if match or (in_list and line.startswith("#")):
            line = match.group(1) if match else line[1:]
            if match:
                in_list = "[" in line and "]" not in line
            elif "]" in line:
                in_list = False
        out.append(line)
    return "\n".join(out) + "\n"


# --- parse_conf on the shipped files ----------------------------------------------------------


@pytest.mark.parametrize("name", ["qemu.conf", "libvirtd.conf", "libvirt.conf"])
def test_shipped_files_are_all_comments(name: str) -> None:
    assert parse_conf(real(name)) == {}


def test_qemu_conf_with_every_example_enabled() -> None:
    values = parse_conf(uncomment_examples(real("qemu.conf")))
    assert (values["user"], values["group"]) == ("libvirt-qemu", "libvirt-qemu")
    assert values["cgroup_device_acl"] == [
        "/dev/null",
        "/dev/full",
        "/dev/zero",
        "/dev/random",
        "/dev/urandom",
        "/dev/ptmx",
        "/dev/kvm",
    ]
    assert len(values["nvram"]) == 4 and values["nvram"][0].startswith("/usr/share/OVMF/")
    assert values["remote_display_port_min"] == 5900
    assert values["security_driver"] == "selinux"  # the indented list example stays a comment
    assert values["namespaces"] == ["mount"]
    assert values["vnc_listen"] == "0.0.0.0"


def test_libvirtd_conf_with_every_example_enabled() -> None:
    values = parse_conf(uncomment_examples(real("libvirtd.conf")))
    assert values["tls_allowed_dn_list"] == ["DN1", "DN2"]
    assert values["sasl_allowed_username_list"] == ["joe@EXAMPLE.COM", "fred@EXAMPLE.COM"]
    assert values["unix_sock_group"] == "libvirt"
    assert isinstance(values["max_clients"], int)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("# a\n#b\n\n  # c\n\t\n# d", {}),
        ("# a\r\n# b\r\nx = 1 # tail\n  #e\n\ny = 'v'\n# z", {"x": 1, "y": "v"}),
        ("#\n#\nx = [ 1,\n 2 ]\n#\n", {"x": [1, 2]}),
        ("# a\n# b\n\n   \n= 1\n", "line 5: expecting a name"),
        ("# a\nx = 1 y = 2\n# b\n", "line 2: expecting a separator"),
        ("\n\n  \n", "line 4: expecting a name"),
        ("#only a comment", {}),
    ],
)
def test_runs_of_comment_lines_are_skipped_as_one_statement_at_a_time_would_be(
    text: str, expected: object
) -> None:
    if isinstance(expected, dict):
        assert parse_conf(text) == expected
    else:
        with pytest.raises(ConfError, match=expected):
            parse_conf(text)


def test_libvirt_conf_list_with_a_trailing_comma() -> None:
    values = parse_conf(uncomment_examples(real("libvirt.conf")))
    assert values["uri_aliases"] == [
        "hail=qemu+ssh://root@hail.cloud.example.com/system",
        "sleet=qemu+ssh://root@sleet.cloud.example.com/system",
    ]
    assert values["uri_default"] == "qemu:///system"


# --- the syntax, case by case ------------------------------------------------------------------

VALID = {
    "number": ("a = 1\n", {"a": 1}),
    "signed-numbers": ("a = -5\nb = +7\n", {"a": -5, "b": 7}),
    "semicolon-separator": ("a = 1; b = 2\n", {"a": 1, "b": 2}),
    "list-across-lines-with-trailing-comma": (
        'a = [\n  "x",\n  "y",\n]\n',
        {"a": ["x", "y"]},
    ),
    "nested-list": ('a = [ [1, 2], "x" ]\n', {"a": [[1, 2], "x"]}),
    "empty-list": ("a = [ ]\n", {"a": []}),
    "single-quotes": ("a = 'it \"is\"'\n", {"a": 'it "is"'}),
    "backslash-is-not-an-escape": ('a = "C:\\\\dir\\n"\n', {"a": "C:\\\\dir\\n"}),
    "triple-quoted-string-across-lines": ('a = """two\nlines"""\n', {"a": "two\nlines"}),
    "comment-after-a-value": ('a = "x" # why\n', {"a": "x"}),
    "comments-and-blank-lines-only": ("# one\n\n   # two\n", {}),
    "indented-statement": ('  a = "x"\n', {"a": "x"}),
    "empty-string": ('a = ""\n', {"a": ""}),
    "crlf-line-ends": ('a = "x"\r\nb = 2\r\n', {"a": "x", "b": 2}),
    "no-final-newline": ("a = 1", {"a": 1}),
    "empty-file": ("", {}),
    "the-first-setting-wins": ('user = "qemu"\nuser = "root"\n', {"user": "qemu"}),
}

INVALID = {
    "two-statements-on-a-line": ("a = 1 b = 2\n", "line 1: expecting a separator"),
    "list-without-commas": ('a = ["x" "y"]\n', "line 1: expecting a separator in list"),
    "comment-inside-a-list": ('a = [\n "x", # c\n "y"]\n', "line 2: expecting a value"),
    "unterminated-string": ('a = "x\nb = 1\n', "line 1: unterminated string"),
    "name-starting-with-underscore": ("_a = 1\n", "line 1: expecting a name"),
    "name-with-a-dot": ("a.b = 1\n", "line 1: expecting an assignment"),
    "missing-equals": ("a 1\n", "line 1: expecting an assignment"),
    "value-on-the-next-line": ("a =\n1\n", "line 1: expecting a value"),
    "number-with-letters": ("a = 5x\n", "line 1: expecting a separator"),
    "sign-without-digits": ("a = -x\n", "line 1: unterminated number"),
    "unclosed-list": ("a = [1\n", "line 2: list is not closed with ]"),
    "unclosed-list-after-a-comma": ("b = 1\na = [1,\n", "line 3: expecting a value"),
    "blank-lines-only": ("\n\n", "line 3: expecting a name"),
    "bare-word-value": ("a = yes\n", "line 1: expecting a value"),
}


@pytest.mark.parametrize("name", sorted(VALID))
def test_parse_conf_accepts(name: str) -> None:
    text, expected = VALID[name]
    assert parse_conf(text) == expected


@pytest.mark.parametrize("name", sorted(INVALID))
def test_parse_conf_refuses_what_libvirt_refuses(name: str) -> None:
    text, message = INVALID[name]
    with pytest.raises(ConfError) as caught:
        parse_conf(text)
    assert str(caught.value) == message


# --- libvirt's own parser as the reference -------------------------------------------------------


@pytest.fixture
def libvirt_reads(tmp_path: Path) -> Iterator[Callable[..., tuple[str, str]]]:
    """read(text, connect_default=False) writes `text` as a non-root user's libvirt.conf and
    lets virsh (as that user) read it: ("ok", the URI it used) or ("error", "line N: why")."""
    require(os.geteuid() == 0, "root: virsh must run as a user that reads ~/.config/libvirt")
    virsh = shutil.which("virsh")
    require(virsh is not None, "virsh (Debian package libvirt-clients)")
    config_home = tmp_path / "config"
    (config_home / "libvirt").mkdir(parents=True)
    for directory in (config_home, config_home / "libvirt"):
        os.chmod(directory, 0o755)
    # virsh reaches the directory through an inherited descriptor: the private directories
    # above tmp_path are never traversed as the unprivileged user.
    fd = os.open(config_home, os.O_RDONLY | os.O_DIRECTORY)
    via_fd = f"/proc/self/fd/{fd}"

    def read(text: str, connect_default: bool = False) -> tuple[str, str]:
        conf = config_home / "libvirt/libvirt.conf"
        conf.write_text(text)
        os.chmod(conf, 0o644)
        # An explicit test:/// URI still loads libvirt.conf, and starts no session daemon.
        args = ["uri"] if connect_default else ["-c", "test:///default", "uri"]
        env = {
            "XDG_CONFIG_HOME": via_fd,
            "XDG_CACHE_HOME": via_fd,
            "XDG_RUNTIME_DIR": via_fd,
            "HOME": "/nonexistent",
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LC_ALL": "C",
        }
        done = subprocess.run(
            [virsh, *args],
            user=61001,
            group=61002,
            extra_groups=[],
            env=env,
            pass_fds=(fd,),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if done.returncode == 0:
            return "ok", done.stdout.strip()
        match = re.search(r"configuration file syntax error: [^:]*:(\d+): (.*)", done.stderr)
        assert match, f"virsh failed for another reason: {done.stderr}"
        return "error", f"line {match.group(1)}: {match.group(2).strip()}"

    try:
        yield read
    finally:
        os.close(fd)


def ours(text: str) -> tuple[str, str]:
    try:
        parse_conf(text)
    except ConfError as exc:
        return "error", str(exc)
    return "ok", "test:///default"


@pytest.mark.integration
@pytest.mark.usefixtures("test_ids")
def test_parse_conf_accepts_and_refuses_exactly_what_libvirt_does(libvirt_reads) -> None:
    cases = {name: text for name, (text, _) in {**VALID, **INVALID}.items()}
    cases["qemu.conf-examples"] = uncomment_examples(real("qemu.conf"))
    cases["libvirtd.conf-examples"] = uncomment_examples(real("libvirtd.conf"))
    disagreements = {
        name: (libvirt, mine)
        for name, text in cases.items()
        if (libvirt := libvirt_reads(text)) != (mine := ours(text))
    }
    assert disagreements == {}


@pytest.mark.integration
@pytest.mark.usefixtures("test_ids")
def test_libvirt_and_parse_conf_both_take_the_first_uri_default(libvirt_reads) -> None:
    text = 'uri_default = "test:///default"\nuri_default = "test:///other"\n'
    assert libvirt_reads(text, connect_default=True) == ("ok", "test:///default")
    assert parse_conf(text)["uri_default"] == "test:///default"


# --- the qemu_conf fact -----------------------------------------------------------------------


def test_qemu_conf_fact_reads_the_trees_file(make_tree, facts) -> None:
    text = real("qemu.conf").replace('#user = "libvirt-qemu"', 'user = "+64055"')
    conf = facts(make_tree({"/etc/libvirt/qemu.conf": text})).get("qemu_conf")
    assert (conf.exists, conf.values, conf.error) == (True, {"user": "+64055"}, None)


def test_qemu_conf_fact_without_the_file_says_it_does_not_exist(make_tree, facts) -> None:
    conf = facts(make_tree({"/etc/": None})).get("qemu_conf")
    assert (conf.exists, conf.values) == (False, {})


def test_qemu_conf_fact_of_a_file_libvirt_refuses_carries_the_error(make_tree, facts) -> None:
    text = (
        real("qemu.conf") + 'cgroup_device_acl = [\n  "/dev/null", # the usual\n  "/dev/kvm"\n]\n'
    )
    conf = facts(make_tree({"/etc/libvirt/qemu.conf": text})).get("qemu_conf")
    lines = real("qemu.conf").count("\n")
    assert (conf.exists, conf.values, conf.error) == (
        True,
        {},
        f"line {lines + 2}: expecting a value",
    )


# --- the uri fact -----------------------------------------------------------------------------


def test_uri_option_wins_over_everything(monkeypatch: pytest.MonkeyPatch, facts) -> None:
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", "qemu:///session")
    uri = facts(LiveSource(), uri="qemu+ssh://host/system").get("uri")
    assert (uri.uri, uri.origin, uri.session) == ("qemu+ssh://host/system", "--uri", False)


def test_libvirt_default_uri_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", "qemu:///session")
    uri = FactContext(LiveSource(), RunOptions()).get("uri")
    assert (uri.uri, uri.origin, uri.session) == ("qemu:///session", "LIBVIRT_DEFAULT_URI", True)


def test_empty_libvirt_default_uri_is_ignored_as_libvirt_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", "")
    uri = FactContext(LiveSource()).get("uri")
    assert uri.origin != "LIBVIRT_DEFAULT_URI" and uri.uri != ""


def test_default_for_root_is_the_system_connection(facts) -> None:
    uri = facts(SnapshotSource(str(HOST_SNAPSHOT))).get("uri")
    assert (uri.uri, uri.origin, uri.session) == (None, "default", False)


def test_default_for_a_user_is_the_session_connection(edit_snapshot, facts) -> None:
    snap = edit_snapshot().set_value("identity", ALICE_IDENTITY).save()
    uri = facts(SnapshotSource(str(snap))).get("uri")
    assert (uri.uri, uri.origin, uri.session) == (None, "default", True)


def test_uri_default_of_the_system_libvirt_conf(edit_snapshot, facts) -> None:
    conf = uncomment_examples(real("libvirt.conf"))
    snap = edit_snapshot().set_file("/etc/libvirt/libvirt.conf", conf).save()
    uri = facts(SnapshotSource(str(snap))).get("uri")
    assert (uri.uri, uri.origin, uri.session) == (
        "qemu:///system",
        "uri_default in /etc/libvirt/libvirt.conf",
        False,
    )


def test_uri_default_of_a_users_own_libvirt_conf(edit_snapshot, facts) -> None:
    conf = 'uri_default = "qemu:///session"\n'
    snap = (
        edit_snapshot()
        .set_value("identity", ALICE_IDENTITY)
        .set_value("environ", None, name="XDG_CONFIG_HOME")
        .set_value("environ", "/home/alice", name="HOME")
        .set_file("/home/alice/.config/libvirt/libvirt.conf", conf)
        .set_file("/etc/libvirt/libvirt.conf", 'uri_default = "qemu:///system"\n')
        .save()
    )
    uri = facts(SnapshotSource(str(snap))).get("uri")
    assert (uri.uri, uri.origin, uri.session) == (
        "qemu:///session",
        "uri_default in /home/alice/.config/libvirt/libvirt.conf",
        True,
    )


def test_libvirt_conf_libvirt_cannot_parse_gives_no_uri_default(make_tree, facts) -> None:
    tree = make_tree({"/etc/libvirt/libvirt.conf": 'uri_default = "qemu:///system" x = 1\n'})
    uri = facts(tree).get("uri")
    assert (uri.uri, uri.origin) == (None, "default")
