"""The report as JSON, exactly as docs/report.schema.json describes it."""

from __future__ import annotations

import json
from typing import Any


def render(report: dict[str, Any]) -> str:
    from doctor.textsafe import json_c1_escaped

    return json_c1_escaped(json.dumps(report, indent=2, ensure_ascii=False)) + "\n"
