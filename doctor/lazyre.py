"""Regular expressions compiled when first used.

A module-level `re.compile` runs when the module is imported, whether or not the command uses
the expression: `kvmdoctor run` imports doctor.playbooks, whose expressions for pasted text
only `explain` uses (compiling one costs 0.05-0.7 ms). `lazy(...)` stands for the compiled
pattern and compiles it at its first attribute (`search`, `sub`, `pattern`...); from then on
its methods are the pattern's own. Use it only for patterns called through their methods:
it is not an `re.Pattern` (isinstance, pickling, `re.sub(PATTERN, ...)`).
"""

from __future__ import annotations

import re
from typing import Any, AnyStr, cast

_ATTRIBUTES = (
    "search",
    "match",
    "fullmatch",
    "sub",
    "subn",
    "split",
    "finditer",
    "findall",
    "scanner",
    "pattern",
    "flags",
    "groups",
    "groupindex",
)


class _Lazy:
    def __init__(self, pattern: Any, flags: int) -> None:
        self._source = (pattern, flags)

    def __getattr__(self, name: str) -> Any:
        compiled = re.compile(*self._source)
        for attribute in _ATTRIBUTES:  # found in the instance from now on, not here
            self.__dict__[attribute] = getattr(compiled, attribute)
        return getattr(compiled, name)

    def __repr__(self) -> str:
        return f"lazy({self._source[0]!r})"


def lazy(pattern: AnyStr, flags: int = 0) -> re.Pattern[AnyStr]:
    """`re.compile(pattern, flags)`, done when the pattern is first used."""
    return cast("re.Pattern[AnyStr]", _Lazy(pattern, flags))
