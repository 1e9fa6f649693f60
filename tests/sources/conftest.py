"""Fixtures for the source tests: setfacl and getfacl as the reference for ACLs. The ACL
directory, root and test identities come from tests/conftest.py."""

from __future__ import annotations

import shutil

import pytest

from kdtest import Facl, require


@pytest.fixture
def facl() -> Facl:
    """Facl.set (setfacl) and Facl.entries (getfacl); both programs must be installed."""
    require(
        shutil.which("setfacl") is not None and shutil.which("getfacl") is not None,
        "setfacl and getfacl (Debian package acl)",
    )
    return Facl()
