"""The derived inputs of the libvirt-suite corpus, confirmed again against a real libvirt.

libvirt's test suite has no failing input for some conditions the define-time checks cover
(the machine type's vCPU limit). scripts/libvirt_corpus.py derives one from an accepted
input by one change and records libvirt's words in the manifest; here a private libvirtd
(tests/kdlab.py: its own mount namespace, never the machine's daemon) defines the accepted
input and refuses the derived one with exactly those words.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from kdlab import LibvirtLab
from kdtest import require

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "libvirt-suite"
MANIFEST = json.loads((CORPUS / "manifest.json").read_text())
DERIVED = [e for e in MANIFEST["entries"] if "derived_from" in e]
URI = "qemu:///system"


def _base(entry: dict[str, Any]) -> Path:
    """The accepted suite input the derived one was made from (kept in the corpus)."""
    return CORPUS / "inputs" / Path(entry["derived_from"]).name


def test_every_derived_input_comes_from_an_accepted_input_of_the_corpus() -> None:
    assert DERIVED, "the manifest holds no derived inputs"
    accepted = {e["file"] for e in MANIFEST["entries"] if e["verdict"] == "accepted"}
    for entry in DERIVED:
        assert f"inputs/{_base(entry).name}" in accepted, entry
        assert entry["error"], entry


def test_a_private_libvirtd_refuses_each_derived_input_with_the_recorded_words(
    tmp_path: Path,
) -> None:
    require(shutil.which("libvirtd") is not None, "libvirtd (libvirt-daemon-system)")
    with LibvirtLab(tmp_path) as lab:
        started = lab.start_libvirtd()
        assert started.ok, started.errors
        for entry in DERIVED:
            base = _base(entry)
            defined = lab.run(["virsh", "-c", URI, "define", str(base)], timeout=120)
            assert defined.returncode == 0, (base.name, defined.stderr)
            name = defined.stdout.split("Domain '")[1].split("'")[0]
            assert lab.run(["virsh", "-c", URI, "undefine", name]).returncode == 0
            refused = lab.run(["virsh", "-c", URI, "define", str(CORPUS / entry["file"])])
            assert refused.returncode != 0, entry["file"]
            assert entry["error"] in refused.stderr, (entry["file"], refused.stderr)
