"""decode_posix_acl on the xattr blobs the kernel stores, with getfacl as the reference."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from doctor.sources.acl import decode_posix_acl, perms_text
from doctor.sources.base import AclEntry

ACL_ACCESS = "system.posix_acl_access"
ACL_DEFAULT = "system.posix_acl_default"


def as_tuples(entries: tuple[AclEntry, ...]) -> list[tuple[str, object, str]]:
    return [(e.tag, e.qualifier, e.perms) for e in entries]


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param("u::rw-,g::r--,o::---,u:61001:rw-,m::rw-", id="named-user"),
        pytest.param("u::rw-,g::---,o::---,g:61002:rw-,m::rw-", id="named-group"),
        pytest.param(
            "u::rwx,g::r-x,o::r--,u:61001:rwx,u:61004:-w-,g:61002:r--,g:61003:--x,m::r--",
            id="several-named-and-a-mask-that-masks",
        ),
        pytest.param("u::r--,g::---,o::---,u:0:rw-,m::rw-", id="named-root"),
    ],
)
def test_decode_matches_getfacl_for_blobs_written_by_setfacl(
    acl_dir: Path, facl, spec: str
) -> None:
    path = acl_dir / "device"
    path.write_bytes(b"")
    facl.set(path, spec)
    blob = os.getxattr(path, ACL_ACCESS)
    assert as_tuples(decode_posix_acl(blob)) == facl.entries(path)


def test_decode_reads_a_directory_default_acl_in_the_same_format(acl_dir: Path, facl) -> None:
    directory = acl_dir / "images"
    directory.mkdir()
    facl.set(directory, "u::rwx,g::r-x,o::---,d:u::rwx,d:g::r-x,d:o::---,d:u:61001:rw-,d:m::rw-")
    blob = os.getxattr(directory, ACL_DEFAULT)
    assert as_tuples(decode_posix_acl(blob)) == facl.entries(directory, default=True)


def test_unnamed_entries_have_no_qualifier_although_the_kernel_stores_an_undefined_id(
    acl_dir: Path, facl
) -> None:
    path = acl_dir / "file"
    path.write_bytes(b"")
    facl.set(path, "u::rw-,g::r--,o::---,u:61001:r--,m::r--")
    blob = os.getxattr(path, ACL_ACCESS)
    stored_ids = [struct.unpack_from("<I", blob, 4 + 8 * i + 4)[0] for i in range(5)]
    assert stored_ids[0] == 0xFFFFFFFF  # user_obj: ACL_UNDEFINED_ID
    # Kernel order: user_obj, named users, group_obj, named groups, mask, other.
    assert [e.qualifier for e in decode_posix_acl(blob)] == [None, 61001, None, None, None]


def real_blob(acl_dir: Path, facl) -> bytes:
    path = acl_dir / "sample"
    path.write_bytes(b"")
    facl.set(path, "u::rw-,g::r--,o::---,u:61001:rw-,m::rw-")
    return os.getxattr(path, ACL_ACCESS)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        pytest.param(lambda b: b[:-1], "not 4 \\+ 8\\*n", id="truncated-entry"),
        pytest.param(lambda b: b[:3], "not 4 \\+ 8\\*n", id="shorter-than-the-header"),
        pytest.param(lambda b: b"", "not 4 \\+ 8\\*n", id="empty"),
        pytest.param(lambda b: struct.pack("<I", 1) + b[4:], "version 1", id="version-1"),
        pytest.param(
            lambda b: b[:4] + struct.pack("<HHI", 0x40, 6, 0) + b[12:],
            "unknown ACL tag 0x40",
            id="unknown-tag",
        ),
    ],
)
def test_malformed_blobs_raise_value_error(acl_dir: Path, facl, damage, message: str) -> None:
    blob = real_blob(acl_dir, facl)
    decode_posix_acl(blob)  # the undamaged blob decodes
    with pytest.raises(ValueError, match=message):
        decode_posix_acl(damage(blob))


def test_header_only_blob_is_an_empty_acl() -> None:
    assert decode_posix_acl(struct.pack("<I", 2)) == ()


@pytest.mark.parametrize(
    ("bits", "text"), [(0, "---"), (1, "--x"), (2, "-w-"), (4, "r--"), (6, "rw-"), (7, "rwx")]
)
def test_perms_text_spells_bits_like_getfacl(bits: int, text: str) -> None:
    assert perms_text(bits) == text
