"""Small helpers shared by fact providers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from doctor.sources.base import NotFound, Source, SourceError

if TYPE_CHECKING:
    import xml.etree.ElementTree as ET


def read_text(source: Source, path: str, *, tail: Optional[int] = None) -> str:
    if tail is None:
        data = source.read_file(path)
    else:
        data = source.read_file(path, max_bytes=tail, tail=True)
    return data.decode("utf-8", "replace")


def read_optional(source: Source, path: str) -> Optional[str]:
    """The file's text, or None when it does not exist or cannot be read."""
    try:
        return read_text(source, path).strip()
    except (NotFound, SourceError):
        return None


def definition_root(xml: str, tag: str, status: str) -> ET.Element:
    """The <tag> element of a libvirt definition, or of the live definition a status file
    (<status>) wraps. ValueError when the document is neither."""
    import xml.etree.ElementTree as ET  # only the modules that read libvirt's XML need it

    root = ET.fromstring(xml)
    if root.tag == status:
        inner = root.find(tag)
        if inner is None:
            raise ValueError(f"status file without <{tag}>")
        root = inner
    if root.tag != tag:
        raise ValueError(f"<{root.tag}> is not a {tag}")
    return root
