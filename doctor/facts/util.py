"""Small helpers shared by fact providers."""

from __future__ import annotations

from typing import Optional

from doctor.sources.base import NotFound, Source, SourceError


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
