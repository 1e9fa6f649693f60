"""tests/probe imports its lab helper (probelab.py) beside the shared ones in tests/."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
