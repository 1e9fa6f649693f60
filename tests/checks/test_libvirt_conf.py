"""LIB008 libvirt-conf-unparseable on host trees: each libvirt configuration file parsed as
libvirt's own parser reads it. The refusing examples are the ones the lab's real libvirtd 9.0
refuses (tests/integration/test_libvirt_conf.py runs it on them)."""

from __future__ import annotations

from pathlib import Path

import pytest
from kdconfs import BAD, GOOD

from kdsnap import one, run_checks
from kdtest import write_tree


def test_lib008_passes_files_libvirt_parses(tmp_path: Path) -> None:
    found = run_checks(write_tree(tmp_path / "tree", GOOD), ("LIB008",))
    assert {f.subject: f.status for f in found["LIB008"]} == {
        "file:/etc/libvirt/libvirtd.conf": "pass",
        "file:/etc/libvirt/qemu.conf": "pass",
    }


@pytest.mark.parametrize("case", sorted(BAD))
def test_lib008_fails_a_file_libvirt_refuses_and_says_where(tmp_path: Path, case: str) -> None:
    text, error = BAD[case]
    tree = write_tree(tmp_path / "tree", {**GOOD, "/etc/libvirt/libvirtd.conf": text})
    found = run_checks(tree, ("LIB008",))
    bad = one(found, "LIB008", "file:/etc/libvirt/libvirtd.conf")
    assert bad.status == "fail"
    assert error in bad.evidence["error"]
    assert "libvirtd does not start with it" in bad.message
    assert one(found, "LIB008", "file:/etc/libvirt/qemu.conf").status == "pass"


def test_lib008_skips_a_host_without_libvirt_configuration(tmp_path: Path) -> None:
    found = run_checks(write_tree(tmp_path / "tree", {"/etc/hostname": "x\n"}), ("LIB008",))
    (finding,) = found["LIB008"]
    assert finding.status == "skip"
