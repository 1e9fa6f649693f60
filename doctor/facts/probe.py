"""The `probe` fact: what `kvmdoctor probe` discovered along a guest's path and, when it sent
packets, what it observed. Only that command provides it (RunOptions.probe); elsewhere it is
unavailable, and the PRB checks that need it are not selected by default."""

from __future__ import annotations

from typing import Any

from doctor.facts import FactContext, FactUnavailable, fact


@fact("probe")
def probe(ctx: FactContext) -> Any:
    run = ctx.options.probe
    if run is None:
        raise FactUnavailable("only `kvmdoctor probe` follows a guest's path and sends packets")
    return run
