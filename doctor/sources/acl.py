"""Decoding of the `system.posix_acl_access` extended attribute.

The kernel's on-disk format (include/uapi/linux/posix_acl_xattr.h) is a 4-byte version (2)
followed by 8-byte entries: u16 tag, u16 permissions, u32 uid/gid. It is what getfacl reads;
decoding it here avoids a compiled dependency for twelve lines of struct unpacking.
"""

from __future__ import annotations

import struct

from doctor.sources.base import AclEntry

_TAGS = {0x01: "user", 0x02: "user", 0x04: "group", 0x08: "group", 0x10: "mask", 0x20: "other"}
_NAMED = {0x02, 0x08}
_VERSION = 2


def perms_text(bits: int) -> str:
    return ("r" if bits & 4 else "-") + ("w" if bits & 2 else "-") + ("x" if bits & 1 else "-")


def decode_posix_acl(blob: bytes) -> tuple[AclEntry, ...]:
    """Entries of an access ACL, in kernel order. Raises ValueError on a malformed blob."""
    if len(blob) < 4 or (len(blob) - 4) % 8:
        raise ValueError(f"ACL xattr of {len(blob)} bytes is not 4 + 8*n")
    (version,) = struct.unpack_from("<I", blob)
    if version != _VERSION:
        raise ValueError(f"ACL xattr version {version}, expected {_VERSION}")
    entries = []
    for offset in range(4, len(blob), 8):
        tag, perm, ident = struct.unpack_from("<HHI", blob, offset)
        if tag not in _TAGS:
            raise ValueError(f"unknown ACL tag {tag:#x}")
        entries.append(AclEntry(_TAGS[tag], ident if tag in _NAMED else None, perms_text(perm)))
    return tuple(entries)
