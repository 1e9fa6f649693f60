"""Element paths of libvirt XML (doctor/facts/util.py element_paths), which `kvmdoctor lint`
uses to name the line of every element: in document order, and for a definition of any depth
(libvirt keeps whatever XML a user puts under <metadata>)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from doctor.facts.util import element_paths

from kdtest import kvmdoctor


def test_paths_are_in_document_order_with_positions_among_namesakes() -> None:
    root = ET.fromstring(
        "<domain><devices><disk><target/></disk><disk/><interface/></devices><os/></domain>"
    )
    assert [path for path, _ in element_paths(root)] == [
        "/domain",
        "/domain/devices",
        "/domain/devices/disk[1]",
        "/domain/devices/disk[1]/target",
        "/domain/devices/disk[2]",
        "/domain/devices/interface",
        "/domain/os",
    ]


def test_a_definition_nested_deeper_than_the_recursion_limit_is_linted(tmp_path: Path) -> None:
    depth = 5000  # past Python's default recursion limit of 1000
    definition = tmp_path / "deep.xml"
    nested = "<kd:a xmlns:kd='urn:kd'>" * depth + "</kd:a>" * depth
    definition.write_text(
        "<domain type='kvm'><name>kddeep</name><memory unit='MiB'>128</memory>"
        f"<metadata>{nested}</metadata>"
        "<os><type arch='x86_64' machine='pc'>hvm</type></os><features><acpi/></features>"
        "<devices><disk type='file' device='disk'><source file='/a.img'/>"
        "<target dev='vda' bus='virtio'/></disk><disk type='file' device='disk'>"
        "<source file='/b.img'/><target dev='vda' bus='virtio'/></disk></devices></domain>"
    )
    root = ET.parse(definition).getroot()
    assert len(list(element_paths(root))) > depth
    result = kvmdoctor("lint", str(definition))
    assert result.exit_code == 1, result.stderr  # the duplicated target, not an internal error
    assert "DOM010" in result.stdout and f"{definition}:1" in result.stdout
