"""The account database parsers and the `principals` fact: who must be able to open /dev/kvm,
with which groups, learned from sudo, qemu.conf, distribution defaults and /proc/PID/status."""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path

import pytest

from doctor.facts import FactUnavailable
from doctor.facts.accounts import Accounts, parse_group, parse_passwd
from doctor.sources.live import LiveSource
from doctor.sources.snapshot import SnapshotSource

HOST_SNAPSHOT = Path(__file__).resolve().parent.parent / "fixtures/snapshots/host-kvm-pvm"
PASSWD = (HOST_SNAPSHOT / "files/etc/passwd").read_text()
GROUP = (HOST_SNAPSHOT / "files/etc/group").read_text()
QEMU_CONF = (Path(__file__).resolve().parent / "data/libvirt/qemu.conf").read_text()


def qemu_conf(**settings: str) -> str:
    """The lab machine's qemu.conf with settings added the way an administrator adds them."""
    return QEMU_CONF + "".join(f'{name} = "{value}"\n' for name, value in settings.items())


# --- parsers ------------------------------------------------------------------------------------


def test_parse_passwd_reads_every_account_of_a_real_file() -> None:
    users = parse_passwd(PASSWD)
    assert len(users) == len(PASSWD.splitlines())
    by_name = {u.name: u for u in users}
    assert (by_name["root"].uid, by_name["root"].gid) == (0, 0)
    assert (by_name["libvirt-qemu"].uid, by_name["libvirt-qemu"].gid) == (64055, 107)


def test_parse_group_reads_members_of_a_real_file() -> None:
    groups = {g.name: g for g in parse_group(GROUP)}
    assert len(groups) == len(GROUP.splitlines())
    assert (groups["kvm"].gid, groups["kvm"].members) == (107, ())
    assert groups["libvirt-qemu"].members == ("libvirt-qemu",)
    assert groups["ssl-cert"].members == ("postgres",)


def test_parsers_skip_lines_that_are_not_accounts() -> None:
    extra = "\n# a comment\n+::::::\n+@admins:::\nbroken line\nbad:x:uid:0::/:/bin/sh\n"
    assert parse_passwd(PASSWD + extra) == parse_passwd(PASSWD)
    assert parse_group(GROUP + "\n# comment\n+:::\nbad:x:gid:\n") == parse_group(GROUP)


def test_configured_gids_are_what_getgrouplist_gives_on_this_machine() -> None:
    accounts = Accounts(
        parse_passwd(Path("/etc/passwd").read_text()), parse_group(Path("/etc/group").read_text())
    )
    assert accounts.users
    for user in accounts.users:
        expected = tuple(sorted(set(os.getgrouplist(user.name, user.gid))))
        assert accounts.configured_gids(user) == expected, user.name


def test_names_fall_back_to_numbers() -> None:
    accounts = Accounts(parse_passwd(PASSWD), parse_group(GROUP))
    assert (accounts.user_name(64055), accounts.group_name(107)) == ("libvirt-qemu", "kvm")
    assert (accounts.user_name(61001), accounts.group_name(61002)) == ("61001", "61002")


def test_accounts_fact_of_this_host_matches_the_name_service() -> None:
    from doctor.facts import FactContext

    accounts = FactContext(LiveSource()).get("accounts")
    assert accounts.user("root").uid == pwd.getpwnam("root").pw_uid
    assert accounts.group_name(0) == grp.getgrgid(0).gr_name


def test_accounts_fact_without_etc_group_is_unavailable(make_tree, facts) -> None:
    with pytest.raises(FactUnavailable, match="cannot read the account database"):
        facts(make_tree({"/etc/passwd": PASSWD})).get("accounts")


# --- principals -----------------------------------------------------------------------------


def summary(principals) -> list[tuple]:
    return [(p.role, p.name, p.uid, p.gids, p.groups_from, p.pid) for p in principals.items]


def test_principals_of_the_recorded_host(facts) -> None:
    principals = facts(SnapshotSource(str(HOST_SNAPSHOT))).get("principals")
    assert summary(principals) == [
        ("invoking user", "root", 0, (0,), "the kvmdoctor process", None),
        (
            "qemu.conf user",
            "libvirt-qemu",
            64055,
            (107, 64055),
            "/etc/group (distribution default)",
            None,
        ),
        ("libvirtd", "root", 0, (0,), "/proc/7719/status", 7719),
        # libvirtd's QEMU capabilities probe, caught running: kvm (107) among its groups.
        ("QEMU process", "libvirt-qemu", 64055, (107, 64055), "/proc/8566/status", 8566),
    ]
    assert principals.notes == ()
    assert principals.items[2].subject == "process:root[7719]"


ALICE_PASSWD = "alice:x:1500:1500:Alice,,,:/home/alice:/bin/bash\n"
ALICE_GROUP = "alice:x:1500:\n"


def test_under_sudo_the_invoking_user_is_the_one_who_ran_sudo(edit_snapshot, facts) -> None:
    group = GROUP.replace("kvm:x:107:", "kvm:x:107:alice")
    snap = (
        edit_snapshot()
        .set_file("/etc/passwd", PASSWD + ALICE_PASSWD)
        .set_file("/etc/group", group + ALICE_GROUP)
        .set_value(
            "identity",
            {"uid": 0, "euid": 0, "gid": 0, "groups": [0], "sudo_user": "alice", "sudo_uid": 1500},
        )
        .save()
    )
    principals = facts(SnapshotSource(str(snap))).get("principals")
    invoking = principals.items[0]
    assert (invoking.role, invoking.name, invoking.uid, invoking.gids) == (
        "invoking user",
        "alice",
        1500,
        (107, 1500),
    )
    assert (invoking.groups_from, invoking.note) == ("/etc/group", "ran kvmdoctor through sudo")


def test_sudo_user_missing_from_passwd_is_noted_not_dropped(edit_snapshot, facts) -> None:
    snap = (
        edit_snapshot()
        .set_value(
            "identity",
            {"uid": 0, "euid": 0, "gid": 0, "groups": [0], "sudo_user": "ghost", "sudo_uid": 1600},
        )
        .save()
    )
    principals = facts(SnapshotSource(str(snap))).get("principals")
    assert principals.items[0].role != "invoking user"
    assert principals.notes == ("invoking user: sudo user 'ghost' is not in /etc/passwd",)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        pytest.param(
            {"user": "libvirt-qemu", "group": "kvm"},
            ("libvirt-qemu", 64055, (107, 64055), "/etc/group (qemu.conf)"),
            id="names",
        ),
        pytest.param(
            {"user": "+64055", "group": "+107"},
            ("libvirt-qemu", 64055, (107, 64055), "/etc/group (qemu.conf)"),
            id="plus-numbers-are-ids",
        ),
        pytest.param(
            {"user": "64055", "group": "+4242"},
            ("libvirt-qemu", 64055, (107, 4242, 64055), "/etc/group (qemu.conf)"),
            id="bare-number-without-such-name-is-an-id-and-a-gid-needs-no-entry",
        ),
        pytest.param(
            {"user": "+0"},
            ("root", 0, (0,), "/etc/group (qemu.conf)"),
            id="root",
        ),
    ],
)
def test_qemu_conf_user_and_group_as_libvirt_resolves_them(
    edit_snapshot, facts, settings, expected
) -> None:
    snap = edit_snapshot().set_file("/etc/libvirt/qemu.conf", qemu_conf(**settings)).save()
    principals = facts(SnapshotSource(str(snap))).get("principals")
    qemu = [p for p in principals.items if p.role == "qemu.conf user"]
    assert [(p.name, p.uid, p.gids, p.groups_from) for p in qemu] == [expected]
    assert principals.notes == ()


@pytest.mark.parametrize(
    ("settings", "note"),
    [
        pytest.param(
            {"user": "qemu"},
            "qemu.conf user 'qemu' does not exist in /etc/passwd",
            id="fedora-user-on-debian",
        ),
        pytest.param(
            {"user": "+qemu"},
            "qemu.conf user '+qemu' does not exist in /etc/passwd",
            id="plus-then-a-name",
        ),
        pytest.param(
            {"user": "libvirt-qemu", "group": "qemu"},
            "qemu.conf group 'qemu' does not exist in /etc/group",
            id="missing-group",
        ),
    ],
)
def test_qemu_conf_names_libvirt_cannot_resolve_are_noted(
    edit_snapshot, facts, settings, note
) -> None:
    snap = edit_snapshot().set_file("/etc/libvirt/qemu.conf", qemu_conf(**settings)).save()
    principals = facts(SnapshotSource(str(snap))).get("principals")
    assert note in principals.notes


def test_fedora_default_user_when_qemu_conf_is_silent(make_tree, facts) -> None:
    tree = make_tree(
        {
            "/etc/passwd": "root:x:0:0:root:/root:/bin/bash\n"
            "qemu:x:107:107:qemu user:/:/sbin/nologin\n",
            "/etc/group": "root:x:0:\nkvm:x:36:qemu\nqemu:x:107:\n",
            "/etc/libvirt/qemu.conf": QEMU_CONF,
        }
    )
    principals = facts(tree).get("principals")
    assert [(p.role, p.name, p.gids) for p in principals.items] == [
        ("qemu.conf user", "qemu", (36, 107))
    ]
    assert principals.notes[0].startswith("invoking user: only files are read under --root")
    assert principals.notes[1].startswith("processes: the tree at")


@pytest.mark.usefixtures("as_root")
def test_daemons_and_qemu_get_the_groups_their_status_file_shows(
    make_tree, facts, run_as, test_ids
) -> None:
    uid, (gid, kvm_gid) = test_ids
    # The daemon started before the user joined the kvm group; QEMU started after.
    daemon = run_as(uid, gid, (gid,), "virtqemud")
    qemu = run_as(uid, gid, (gid, kvm_gid), "qemu-system-x86_64")
    files = {
        "/etc/passwd": PASSWD + f"kd-qemu:x:{uid}:{gid}::/nonexistent:/usr/sbin/nologin\n",
        "/etc/group": GROUP + f"kd-qemu:x:{gid}:\nkd-kvm:x:{kvm_gid}:kd-qemu\n",
        "/proc/1/": None,
    }
    for pid in (daemon, qemu):
        for name in ("status", "cmdline"):
            files[f"/proc/{pid}/{name}"] = Path(f"/proc/{pid}/{name}").read_bytes()
    principals = facts(make_tree(files)).get("principals")

    by_pid = {p.pid: p for p in principals.items if p.pid is not None}
    assert {pid: (p.role, p.name, p.gids, p.configured_gids) for pid, p in by_pid.items()} == {
        daemon: ("virtqemud", "kd-qemu", (gid,), (gid, kvm_gid)),
        qemu: ("QEMU process", "kd-qemu", (gid, kvm_gid), (gid, kvm_gid)),
    }
    assert by_pid[daemon].groups_from == f"/proc/{daemon}/status"
    assert by_pid[daemon].subject == f"process:kd-qemu[{daemon}]"


def test_principals_of_this_host_start_with_this_process(facts) -> None:
    principals = facts(LiveSource()).get("principals")
    me = principals.items[0]
    assert (me.role, me.uid) == ("invoking user", os.getuid())
    assert set(me.gids) == {os.getgid(), *os.getgroups()}
