"""accounts.access() must agree with the kernel.

Every case is a real file with a real owner, mode and POSIX ACL; a child process takes the test
credentials and opens it O_RDONLY, O_WRONLY and O_RDWR. The kernel's answers are compared with
what access() computes from LiveSource().stat() of the same file, and with the intended answer.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from doctor.facts.accounts import Accounts, Group, User, access, mode_string
from doctor.sources.base import AclEntry, StatInfo
from doctor.sources.live import LiveSource
from doctor.sources.snapshot import SnapshotSource

from kdtest import HOST_SNAPSHOT, TEST_GIDS, TEST_UID, Facl, as_user, kvm_device

# The principal being checked: 61001, member of 61002 (primary) and 61003.
ME, (MY_GID, MY_EXTRA_GID) = TEST_UID, TEST_GIDS
OWNER, OWNER_GID = 61010, 61011  # owns the file when the principal does not
STRANGER, STRANGER_GID = 61020, 61021  # named in ACL entries that do not concern the principal

ACCOUNTS = Accounts(
    users=(User("kd-me", ME, MY_GID), User("kd-owner", OWNER, OWNER_GID)),
    groups=(
        Group("kd-me", MY_GID, ()),
        Group("kd-extra", MY_EXTRA_GID, ("kd-me",)),
        Group("kd-owner", OWNER_GID, ()),
    ),
)
MY_GROUPS = (MY_GID, MY_EXTRA_GID)


@dataclass(frozen=True)
class Case:
    owner: int
    group: int
    mode: Optional[int]  # chmod; None when `acl` sets the mode bits
    acl: Optional[str] = None  # setfacl --set specification
    expect: tuple[bool, bool, bool] = (False, False, False)  # O_RDONLY, O_WRONLY, O_RDWR
    uid: int = ME
    groups: tuple[int, ...] = MY_GROUPS  # the first is the primary group


R, W, RW, NONE = (True, False, False), (False, True, False), (True, True, True), (False,) * 3

CASES = {
    # --- mode bits only -------------------------------------------------------------------
    "owner-rw": Case(ME, OWNER_GID, 0o600, expect=RW),
    "owner-read-only": Case(ME, OWNER_GID, 0o400, expect=R),
    "owner-class-decides-although-group-and-other-grant": Case(ME, MY_GID, 0o066, expect=NONE),
    "owning-group-rw": Case(OWNER, MY_GID, 0o060, expect=RW),
    "owning-group-read-only": Case(OWNER, MY_GID, 0o040, expect=R),
    "owning-group-write-only": Case(OWNER, MY_GID, 0o020, expect=W),
    "supplementary-group-grants": Case(OWNER, MY_EXTRA_GID, 0o060, expect=RW),
    "group-class-decides-although-other-grants": Case(OWNER, MY_GID, 0o606, expect=NONE),
    "other-rw": Case(OWNER, OWNER_GID, 0o666, expect=RW),
    "other-read-only": Case(OWNER, OWNER_GID, 0o664, expect=R),
    "other-nothing-like-dev-kvm": Case(OWNER, OWNER_GID, 0o660, expect=NONE),
    "root-ignores-mode-0": Case(OWNER, OWNER_GID, 0o000, expect=RW, uid=0, groups=(0,)),
    # --- POSIX ACLs -----------------------------------------------------------------------
    "acl-named-user-rw": Case(
        OWNER, OWNER_GID, None, "u::rw-,g::rw-,o::---,u:61001:rw-,m::rw-", RW
    ),
    "acl-mask-masks-the-named-user": Case(
        OWNER, OWNER_GID, None, "u::rw-,g::rw-,o::---,u:61001:rw-,m::r--", R
    ),
    "acl-named-user-beats-the-owning-group-and-other": Case(
        OWNER, MY_GID, None, "u::rw-,g::rw-,o::rw-,u:61001:---,m::rw-", NONE
    ),
    "acl-named-user-entry-for-the-owner-is-ignored": Case(
        ME, OWNER_GID, None, "u::r--,g::---,o::---,u:61001:rw-,m::rw-", R
    ),
    "acl-mask-does-not-limit-the-owner": Case(
        ME, OWNER_GID, None, "u::rw-,g::---,o::---,u:61020:rw-,m::---", RW
    ),
    "acl-named-group-rw": Case(
        OWNER, OWNER_GID, None, "u::rw-,g::---,o::---,g:61003:rw-,m::rw-", RW
    ),
    "acl-mask-masks-the-named-group": Case(
        OWNER, OWNER_GID, None, "u::rw-,g::---,o::---,g:61003:rw-,m::r--", R
    ),
    "acl-mask-masks-the-owning-group": Case(
        OWNER, MY_GID, None, "u::rw-,g::rw-,o::---,u:61020:r--,m::---", NONE
    ),
    "acl-owning-group-denies-named-group-grants": Case(
        OWNER, MY_GID, None, "u::rw-,g::---,o::---,g:61003:rw-,m::rw-", RW
    ),
    "acl-owning-group-grants-named-group-denies": Case(
        OWNER, MY_GID, None, "u::rw-,g::rw-,o::---,g:61003:---,m::rw-", RW
    ),
    "acl-one-group-reads-another-writes-no-single-entry-grants-both": Case(
        OWNER, MY_GID, None, "u::rw-,g::r--,o::---,g:61003:-w-,m::rw-", (True, True, False)
    ),
    "acl-group-class-decides-although-other-grants": Case(
        OWNER, OWNER_GID, None, "u::rw-,g::rw-,o::rw-,g:61003:---,m::rw-", NONE
    ),
    "acl-entries-for-others-fall-back-to-other": Case(
        OWNER, OWNER_GID, None, "u::rw-,g::rw-,o::r--,u:61020:rw-,g:61021:rw-,m::rw-", R
    ),
    "acl-mask-does-not-limit-other": Case(
        OWNER, OWNER_GID, None, "u::rw-,g::rw-,o::rw-,u:61020:rw-,m::---", RW
    ),
    "acl-root-ignores-the-acl": Case(
        OWNER, OWNER_GID, None, "u::---,g::---,o::---,u:0:---,m::---", RW, uid=0, groups=(0,)
    ),
}


@pytest.fixture
def case_dir(acl_dir: Path) -> Iterator[tuple[Path, int]]:
    """A directory any test uid may search, and a descriptor for it opened as root: the child
    opens files relative to it, so the (private) directories above tmp_path do not matter."""
    directory = acl_dir / "access"
    directory.mkdir()
    os.chmod(directory, 0o711)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield directory, fd
    finally:
        os.close(fd)


def kernel_answers(dir_fd: int, name: str, uid: int, groups: tuple[int, ...]) -> tuple[str, ...]:
    """What open(2) says for O_RDONLY, O_WRONLY, O_RDWR in a child with these credentials:
    "ok", "denied" (EACCES) or another errno name, which no case expects."""

    def try_opens() -> tuple[str, ...]:
        results = []
        for flags in (os.O_RDONLY, os.O_WRONLY, os.O_RDWR):
            try:
                os.close(os.open(name, flags | os.O_CLOEXEC, dir_fd=dir_fd))
                results.append("ok")
            except OSError as exc:
                denied = exc.errno == errno.EACCES
                results.append("denied" if denied else errno.errorcode[exc.errno or 0])
        return tuple(results)

    return as_user(try_opens, uid, groups[0], groups)


def make_file(directory: Path, name: str, case: Case) -> Path:
    path = directory / name
    path.write_bytes(b"")
    os.chown(path, case.owner, case.group)
    if case.acl is not None:
        Facl.set(path, case.acl)
    else:
        assert case.mode is not None
        os.chmod(path, case.mode)
    return path


@pytest.mark.integration
@pytest.mark.usefixtures("as_root")
@pytest.mark.parametrize("name", sorted(CASES))
def test_access_agrees_with_the_kernel(name: str, case_dir, test_ids) -> None:
    case = CASES[name]
    directory, dir_fd = case_dir
    path = make_file(directory, name, case)
    st = LiveSource().stat(str(path))
    if case.acl is not None:
        assert st.acl, "setfacl left no extended ACL: the case tests nothing"

    kernel = kernel_answers(dir_fd, name, case.uid, case.groups)
    verdict = access(st, case.uid, tuple(sorted(set(case.groups))), ACCOUNTS)

    assert kernel == tuple("ok" if ok else "denied" for ok in case.expect), (
        f"the kernel disagrees with the case's intent ({mode_string(st)})"
    )
    assert (verdict.read, verdict.write, verdict.read_write) == case.expect, verdict.detail


@pytest.mark.integration
@pytest.mark.usefixtures("as_root")
def test_access_to_the_real_dev_kvm_agrees_with_the_kernel(test_ids) -> None:
    st = LiveSource().stat(kvm_device())
    dev_fd = os.open("/dev", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for groups in (MY_GROUPS, (MY_GID, st.gid)):
            kernel = kernel_answers(dev_fd, "kvm", ME, groups)
            verdict = access(st, ME, tuple(sorted(set(groups))), ACCOUNTS)
            assert kernel[2] == ("ok" if verdict.read_write else "denied"), (groups, verdict)
            assert kernel[0] == ("ok" if verdict.read else "denied"), (groups, verdict)
    finally:
        os.close(dev_fd)


# --- what access() says, on recorded and hand-described devices ---------------------------------


def test_recorded_dev_kvm_admits_the_kvm_group_only() -> None:
    st = SnapshotSource(str(HOST_SNAPSHOT)).stat("/dev/kvm")
    assert mode_string(st) == "crw-rw----"
    libvirt_qemu = access(st, 64055, (107, 64055), ACCOUNTS)
    assert libvirt_qemu.read_write and libvirt_qemu.via == "group 107"
    alice = access(st, 1500, (1500,), ACCOUNTS)
    assert not alice.read and not alice.write and alice.via == "other"


def test_detail_names_the_mask_that_took_the_write_bit_away() -> None:
    st = StatInfo(
        "/dev/kvm",
        "char",
        0o640,
        0,
        OWNER_GID,
        "10:232",
        (
            AclEntry("user", None, "rw-"),
            AclEntry("user", ME, "rw-"),
            AclEntry("group", None, "rw-"),
            AclEntry("mask", None, "r--"),
            AclEntry("other", None, "---"),
        ),
    )
    verdict = access(st, ME, MY_GROUPS, ACCOUNTS)
    assert (verdict.read, verdict.read_write, verdict.via) == (True, False, "ACL user:kd-me")
    assert verdict.detail == "ACL entry user:kd-me:rw- (masked to r--)"
    assert mode_string(st) == "crw-r-----+"


def test_detail_of_split_group_grants_names_every_group_entry() -> None:
    st = StatInfo(
        "/dev/kvm",
        "char",
        0o660,
        0,
        MY_GID,
        "10:232",
        (
            AclEntry("user", None, "rw-"),
            AclEntry("group", None, "r--"),
            AclEntry("group", MY_EXTRA_GID, "-w-"),
            AclEntry("mask", None, "rw-"),
            AclEntry("other", None, "---"),
        ),
    )
    verdict = access(st, ME, MY_GROUPS, ACCOUNTS)
    assert (verdict.read, verdict.write, verdict.read_write) == (True, True, False)
    assert "group kd-me: r--" in verdict.detail and "ACL group:kd-extra: -w-" in verdict.detail


def test_mode_string_marks_only_extended_acls() -> None:
    minimal = (
        AclEntry("user", None, "rw-"),
        AclEntry("group", None, "rw-"),
        AclEntry("other", None, "---"),
    )
    st = StatInfo("/dev/kvm", "char", 0o660 | stat.S_ISGID, 0, 107, "10:232", minimal)
    assert mode_string(st) == "crw-rwS---"
