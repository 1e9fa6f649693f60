"""The docstrings are the documentation: every check documents itself, docs/checks.md is fresh."""

from __future__ import annotations

import pytest

from doctor.docs import checks_markdown
from doctor.registry import SECTIONS, load_registry

from kdtest import ROOT


def test_docs_checks_md_is_generated_from_the_current_checks() -> None:
    expected = checks_markdown(load_registry())
    current = (ROOT / "docs" / "checks.md").read_text()
    assert current == expected, "docs/checks.md is stale: run `make docs`"


@pytest.mark.parametrize("spec", list(load_registry()), ids=lambda s: s.code)
def test_every_builtin_check_has_every_section_and_a_reference(spec: object) -> None:
    doc = spec.doc  # type: ignore[attr-defined]
    assert all(doc[section].strip() for section in SECTIONS)
    assert all(ref.startswith("https://") for ref in doc["References"].split())
