"""Small helpers shared by fact providers."""

from __future__ import annotations

from collections.abc import Iterator
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


def element_paths(root: ET.Element, base: Optional[str] = None) -> Iterator[tuple[str, ET.Element]]:
    """Every element under `root` (and root itself) with its path in the document:
    /domain/devices/disk[2] -- the position among siblings of the same name is given when
    there are several, counted from 1 as XPath counts."""
    # Depth first with a stack of our own: a definition nested thousands deep (libvirt keeps
    # any XML under <metadata>) must not exhaust Python's recursion limit.
    stack = [(base if base is not None else f"/{root.tag}", root)]
    while stack:
        path, element = stack.pop()
        yield path, element
        stack.extend(reversed([(p, child) for child, p in child_paths(element, path)]))


def child_paths(parent: ET.Element, path: str) -> Iterator[tuple[ET.Element, str]]:
    """The element children of `parent` with their paths (see element_paths)."""
    children = [c for c in parent if isinstance(c.tag, str)]
    counts: dict[str, int] = {}
    for child in children:
        counts[child.tag] = counts.get(child.tag, 0) + 1
    seen: dict[str, int] = {}
    for child in children:
        tag = child.tag
        if counts[tag] == 1:
            yield child, f"{path}/{tag}"
        else:
            seen[tag] = number = seen.get(tag, 0) + 1
            yield child, f"{path}/{tag}[{number}]"


def parse_with_lines(xml: str, lines: dict[ET.Element, int]) -> ET.Element:
    """The document's root element, as ET.fromstring builds it, noting in `lines` the line on
    which each element starts (ElementTree keeps no positions). Slower than ET.fromstring, so
    only `kvmdoctor lint`, whose findings point at lines, parses this way. ET.ParseError for
    what is not well-formed, as ET.fromstring raises it."""
    import xml.etree.ElementTree as ET
    from xml.parsers import expat

    builder = ET.TreeBuilder()
    parser = expat.ParserCreate(namespace_separator="}")

    def start(tag: str, attrs: dict[str, str]) -> None:
        name = "{" + tag if "}" in tag else tag
        elem = builder.start(name, {_qualified(k): v for k, v in attrs.items()})
        lines[elem] = parser.CurrentLineNumber

    parser.StartElementHandler = start
    parser.EndElementHandler = lambda tag: builder.end("{" + tag if "}" in tag else tag)
    parser.CharacterDataHandler = builder.data
    parser.buffer_text = True
    try:
        parser.Parse(xml, True)
    except expat.ExpatError as exc:
        error = ET.ParseError(
            f"{expat.ErrorString(exc.code)}: line {exc.lineno}, column {exc.offset}"
        )
        error.code, error.position = exc.code, (exc.lineno, exc.offset)
        raise error from None
    return builder.close()


def _qualified(name: str) -> str:
    return "{" + name if "}" in name else name


def definition_root(
    xml: str, tag: str, status: str, *, lines: Optional[dict[ET.Element, int]] = None
) -> ET.Element:
    """The <tag> element of a libvirt definition, or of the live definition a status file
    (<status>) wraps. ValueError when the document is neither. With `lines`, the line of each
    element is noted there (see parse_with_lines)."""
    import xml.etree.ElementTree as ET  # only the modules that read libvirt's XML need it

    root = ET.fromstring(xml) if lines is None else parse_with_lines(xml, lines)
    if root.tag == status:
        inner = root.find(tag)
        if inner is None:
            raise ValueError(f"status file without <{tag}>")
        root = inner
    if root.tag != tag:
        raise ValueError(f"<{root.tag}> is not a {tag}")
    return root
