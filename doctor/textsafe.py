"""Text from the host or a stranger's file, made safe to put where a person or a program reads
it: no control character reaches a terminal raw, and no line break ends a comment early."""

from __future__ import annotations

import re
from typing import Any

from doctor.lazyre import lazy

# Every character that ends a line for a shell, YAML, Python's str.splitlines or an editor.
LINE_BREAK = lazy(r"\r\n|[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
# The other control characters (C0 and C1, terminal escapes among them), tab excepted.
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")


def _escape(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def escape_controls(text: str) -> str:
    """`text` with control characters (not line breaks or tabs) shown as \\xNN."""
    return _CONTROL.sub(_escape, text)


def lines(text: str) -> list[str]:
    """`text` split at every line break any reader knows, control characters escaped."""
    return [escape_controls(line) for line in LINE_BREAK.split(text)]


def one_line(text: str) -> str:
    """`text` on one line: its line breaks shown as spaces, control characters escaped."""
    return " ".join(lines(text))


def has_controls(value: object) -> bool:
    """Whether a value (or any string inside a list or dict of them) holds a line break or
    another control character: nothing a person could read back from a plan or a terminal."""
    if isinstance(value, str):
        return bool(LINE_BREAK.search(value) or _CONTROL.search(value))
    if isinstance(value, dict):
        return any(has_controls(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(has_controls(v) for v in value)
    return False


# What must never reach a terminal raw: C0 controls but tab and newline, DEL, and C1 (0x9b is
# an 8-bit CSI to some terminals).
_TERMINAL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def for_terminal(value: Any) -> Any:
    """A report (or any JSON-like value) with every string safe to print: escape sequences
    from the host (os-release, log lines, domain names) shown as \\xNN, never sent raw."""
    if isinstance(value, str):
        return _TERMINAL.sub(_escape, value) if _TERMINAL.search(value) else value
    if isinstance(value, dict):
        return {k: for_terminal(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [for_terminal(v) for v in value]
    return value


def json_c1_escaped(text: str) -> str:
    """JSON text with DEL and C1 characters written as \\u escapes (json.dumps writes them raw
    with ensure_ascii=False, and they can only stand inside strings)."""
    return re.sub(r"[\x7f-\x9f]", lambda m: f"\\u{ord(m.group()):04x}", text)
