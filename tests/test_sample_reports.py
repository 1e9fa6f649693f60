"""sample_reports/ is what kvmdoctor produces today for the recorded scenarios."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kdtest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import sample_reports  # noqa: E402


@pytest.mark.parametrize("name", sorted(sample_reports.SCENARIOS))
def test_sample_reports_are_current(name: str, tmp_path: Path) -> None:
    data, text = sample_reports.generate(name)
    assert (ROOT / "sample_reports" / f"{name}.json").read_text() == data, (
        "stale: run make sample-reports"
    )
    assert (ROOT / "sample_reports" / f"{name}.txt").read_text() == text
