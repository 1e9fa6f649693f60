"""doctor/lazyre.py: a pattern compiled at its first use answers as re.compile's does."""

from __future__ import annotations

import re

from doctor import lazyre


def test_a_lazy_pattern_compiles_at_first_use_and_answers_as_the_compiled_one() -> None:
    source = r"(?P<word>[a-z]+) (\d+)"
    pattern = lazyre.lazy(source, re.IGNORECASE)
    assert "search" not in vars(pattern)  # nothing compiled yet
    compiled = re.compile(source, re.IGNORECASE)
    text = "Size 12, count 3; WORD 7"
    assert pattern.search(text).groupdict() == compiled.search(text).groupdict()  # type: ignore[union-attr]
    assert "search" in vars(pattern)  # the pattern's own methods from now on
    assert pattern.sub(r"<\1>", text) == compiled.sub(r"<\1>", text)
    assert [m.span() for m in pattern.finditer(text)] == [m.span() for m in compiled.finditer(text)]
    assert pattern.findall(text) == compiled.findall(text)
    assert pattern.fullmatch("abc 1") is not None and pattern.match("1 abc") is None
    assert pattern.split(text) == compiled.split(text)
    assert (pattern.pattern, pattern.flags, pattern.groups) == (
        compiled.pattern,
        compiled.flags,
        compiled.groups,
    )
    assert pattern.groupindex == compiled.groupindex


def test_a_lazy_bytes_pattern_and_a_bad_one_fail_where_re_fails() -> None:
    assert lazyre.lazy(rb"a+").sub(b"-", b"caaab") == b"c-b"
    broken = lazyre.lazy(r"(unclosed")  # compiled when used: the error comes then
    try:
        broken.search("x")
    except re.error as exc:
        assert "missing )" in str(exc)
    else:
        raise AssertionError("a pattern that does not compile compiled")
