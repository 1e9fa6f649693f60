"""The derived inputs of the libvirt-suite corpus, confirmed again against a real libvirt.

libvirt's test suite has no failing input for some conditions the define-time checks cover
(the machine type's vCPU limit). scripts/libvirt_corpus.py derives one from an accepted
input by one change and records libvirt's words in the manifest; here a private libvirtd
(tests/kdlab.py: its own mount namespace, never the machine's daemon) defines the accepted
input and refuses the derived one with exactly those words. The inputs libvirt defines but
QEMU refuses to start (`accepted-refused-at-start`) are defined and started there too, and
QEMU's refusal is the one the manifest records.
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


# -- accepted by libvirt, refused by QEMU at start --------------------------------------------

REFUSED_AT_START = [e for e in MANIFEST["entries"] if e["verdict"] == "accepted-refused-at-start"]
IMAGES = "/var/lib/libvirt/images"  # private to the lab (tests/kdlab.py)


def startable(xml: str, name: str) -> tuple[str, dict[str, str]]:
    """The suite's input as the lab can start it: named `name`, and each image it names
    (block devices and files the lab lacks) replaced by an image file of the lab, one per
    original path, so a path two disks share stays shared. Returns the XML and the images
    to create (path inside the lab -> format)."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml)
    name_el = root.find("name")
    assert name_el is not None
    name_el.text = name
    uuid = root.find("uuid")
    if uuid is not None:
        root.remove(uuid)
    images: dict[str, str] = {}
    by_original: dict[str, str] = {}
    for disk in root.iterfind("devices/disk"):
        source = disk.find("source")
        original = source.get("dev") or source.get("file") if source is not None else None
        if source is None or original is None:
            continue
        path = by_original.setdefault(original, f"{IMAGES}/{name}-{len(by_original)}.img")
        driver = disk.find("driver")
        images[path] = (driver.get("type") if driver is not None else None) or "raw"
        disk.set("type", "file")
        source.attrib.clear()
        source.set("file", path)
    return ET.tostring(root, encoding="unicode"), images


def test_the_manifest_records_qemus_refusal_for_each_input_refused_at_start() -> None:
    assert {Path(e["file"]).stem for e in REFUSED_AT_START} >= {
        "disk-cache",
        "disk-scsi-disk-split",
    }
    for entry in REFUSED_AT_START:
        assert entry["start_error"] and entry["expected_code"], entry


@pytest.mark.parametrize(
    "entry", REFUSED_AT_START, ids=[Path(e["file"]).stem for e in REFUSED_AT_START]
)
def test_a_private_libvirtd_defines_the_input_and_qemu_refuses_to_start_it(
    entry: dict[str, Any], tmp_path: Path
) -> None:
    """libvirt defines it; `virsh start` fails with QEMU's image-lock message (recorded in
    the manifest as `start_error`)."""
    require(shutil.which("libvirtd") is not None, "libvirtd (libvirt-daemon-system)")
    require(shutil.which("qemu-img") is not None, "qemu-img (qemu-utils)")
    name = f"kd-oracle-{Path(entry['file']).stem}"
    xml, images = startable((CORPUS / entry["file"]).read_text(), name)
    with LibvirtLab(tmp_path) as lab:
        # no virtlogd inside the lab (its /run/libvirt is private): QEMU logs to a file
        lab.configure("qemu.conf", stdio_handler="file")
        started = lab.start_libvirtd()
        assert started.ok, started.errors
        lab.path(IMAGES).mkdir(mode=0o755, parents=True, exist_ok=True)
        for path, fmt in images.items():
            made = lab.run(["qemu-img", "create", "-q", "-f", fmt, path, "16M"])
            assert made.returncode == 0, made.stderr
        definition = tmp_path / f"{name}.xml"
        definition.write_text(xml)
        defined = lab.run(["virsh", "-c", URI, "define", str(definition)], timeout=120)
        assert defined.returncode == 0, defined.stderr
        try:
            start = lab.run(["virsh", "-c", URI, "start", name], timeout=120)
            assert start.returncode != 0, f"{name} started"
            assert entry["start_error"] in start.stderr, start.stderr
        finally:
            lab.run(["virsh", "-c", URI, "destroy", name])
            lab.run(["virsh", "-c", URI, "undefine", name])
