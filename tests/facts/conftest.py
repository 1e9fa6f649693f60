"""Fixtures for the fact tests: trees made of real captured files and fact contexts over any
source. Root, ACL support and test identities come from tests/conftest.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Union

import pytest

from doctor.facts import FactContext, RunOptions
from doctor.sources.live import LiveSource


@pytest.fixture
def make_tree(tmp_path: Path) -> Callable[..., Path]:
    """make_tree({"/etc/passwd": text, "/dev/": None, ...}) lays out a host tree; a path ending
    in "/" is an empty directory. Each call makes a new tree."""
    count = 0

    def make(files: dict[str, Optional[Union[str, bytes]]]) -> Path:
        nonlocal count
        count += 1
        root = tmp_path / f"tree{count}"
        root.mkdir()
        for path, content in files.items():
            target = root / path.lstrip("/")
            if path.endswith("/"):
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content or "")
        return root

    return make


@pytest.fixture
def facts() -> Callable[..., FactContext]:
    """facts(source_or_tree, uri=None): a fresh FactContext (a Path means LiveSource(tree))."""

    def make(source: Any, uri: Optional[str] = None) -> FactContext:
        if isinstance(source, Path):
            source = LiveSource(str(source))
        return FactContext(source, RunOptions(uri=uri))

    return make
