"""Fixtures for the fact tests: trees made of real captured files and fact contexts over any
source. Root, ACL support and test identities come from tests/conftest.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Union

import pytest

from doctor.facts import FactContext, RunOptions
from doctor.sources.live import LiveSource

from kdtest import write_tree


@pytest.fixture
def make_tree(tmp_path: Path) -> Callable[..., Path]:
    """make_tree({"/etc/passwd": text, "/dev/": None, ...}) lays out a host tree; a path ending
    in "/" is an empty directory. Each call makes a new tree."""
    count = 0

    def make(files: dict[str, Optional[Union[str, bytes]]]) -> Path:
        nonlocal count
        count += 1
        return write_tree(tmp_path / f"tree{count}", files)

    return make


@pytest.fixture
def facts() -> Callable[..., FactContext]:
    """facts(source_or_tree, uri=None): a fresh FactContext (a Path means LiveSource(tree))."""

    def make(source: Any, uri: Optional[str] = None) -> FactContext:
        if isinstance(source, Path):
            source = LiveSource(str(source))
        return FactContext(source, RunOptions(uri=uri))

    return make
