"""Finding, in one pass over a large text, the few lines that may hold a playbook signature.

`kvmdoctor explain -` and LOG001 read logs of any size: whole journals, support bundles. Trying
every signature on every line costs microseconds a line; here a multi-pattern engine scans
blocks of bytes for what every match of a signature must contain, and only the lines it
flags (the candidates) go on to the signatures themselves (`Playbooks.match_line`), so the
results are those of trying every signature on every line.

What a line must contain: each signature's top-level literal runs (`playbooks.literal_runs`),
in order, lower-cased, written so that they also find what normalising a line would turn into
them: any run of whitespace where the run has a space (normalising collapses them), quotes of
any kind, with or without backslashes before them, where it has a quote (pasted text has its
escapes undone and double quotes made single), and brackets after backslashes. Pasting also
rewrites Go's "dial unix PATH: connect:" and a bare "socket to PATH" into libvirt's words, so
lines with those are candidates too. A line with any byte outside ASCII is always a candidate:
case-insensitive matching folds a few other letters onto ASCII ones (ſ, K, ı, İ) and
normalising turns typographic quotes and Unicode spaces into ASCII.

How a block is searched: the engine looks for one phrase per signature, the longest piece of
its runs between quotes and brackets that the fewest signatures share (whitespace as single
spaces), in the block with its whitespace made spaces; a line where one is found is confirmed
with the signature's whole expression above. Lines with runs of whitespace are searched again
with their runs squeezed. Engines, best first (docs/performance.md, "explain throughput", says
why): hyperscan (a database of the phrases as literals), RE2 (`google-re2`, one alternation),
Aho-Corasick (`pyahocorasick`), and `bytes.find` for each phrase, which needs nothing
installed. For a short text (LOG001's log tails, a few megabytes at most) the first is
`hyperscan-literals`: the phrases through hyperscan's literal compiler, none joined to
another and no line confirmed, since compiling the joined phrases (~25 ms) and the
confirming expressions costs more there than the few extra lines the matcher then tries
(docs/performance.md, "fifth pass").

Input is read in blocks of CHUNK bytes and cut into complete lines; a line longer than
MAX_LINE bytes is read up to MAX_LINE bytes and the rest of it skipped, so memory stays flat
however large the input or its lines.
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Optional

from doctor.playbooks import _FOLD_ASCII, Playbooks

CHUNK = 1 << 20
MAX_LINE = 64 * 1024
SHORT_PHRASE = 12  # a phrase shorter than this is common in logs ("network", "is not")
# Every engine; best first for a stream (`explain -`), and for a short text (LOG001).
ENGINES = ("hyperscan", "hyperscan-literals", "re2", "ahocorasick", "python")
STREAM = ("hyperscan", "re2", "ahocorasick", "python")
SHORT = ("hyperscan-literals", "re2", "ahocorasick", "python")

# The letters outside ASCII that case-insensitive matching takes for ASCII ones
# (tests/test_textscan.py checks this against every code point).
FOLDS = {chr(c): letter for c, letter in _FOLD_ASCII.items()}
# Lines that pasting rewrites into a signature's words (doctor.playbooks._GO_DIAL, _BARE_SOCKET).
REWRITTEN = ("dial unix ", "socket to ")

_WS_CHARS = "\t\x0b\x0c\r\x1c\x1d\x1e\x1f "
_WS = rb"[\t\x0b\x0c\r\x1c-\x1f ]+"
_SPLIT_PIECES = re.compile(r"['\"`\[\]\\]+")
# Whitespace as spaces, and \x01 for every byte outside ASCII (\x01 itself stays).
_SPACED = bytes.maketrans(
    b"\t\x0b\x0c\r\x1c\x1d\x1e\x1f" + bytes(range(128, 256)), b" " * 8 + b"\x01" * 128
)


def signature_keys(book: Playbooks) -> Optional[list[list[str]]]:
    """For each signature that can match an ASCII line, the runs it requires (lower case,
    in order), then the texts of REWRITTEN; None when some signature requires no text (every
    line is then a candidate)."""
    keys: list[list[str]] = []
    for pattern in book.patterns():
        runs = []
        possible = True
        for run in book.runs(pattern):
            folded = (
                "".join(FOLDS.get(c, c) for c in run).lower() if not run.isascii() else run.lower()
            )
            if not folded.isascii():
                possible = False  # needs a letter no ASCII line holds
                break
            if folded.strip(_WS_CHARS):
                runs.append(folded)
        if not possible:
            continue
        strong = [r for r in runs if len(r) >= 3]
        if not strong:
            return None
        keys.append(strong)
    keys += [[text] for text in REWRITTEN]
    return keys


def tolerant(run: str) -> bytes:
    """A byte regex (case aside) that finds `run` in a raw line wherever it may be found in
    the normalised one."""
    out: list[bytes] = []
    for c in run:
        if c in _WS_CHARS:
            if not out or out[-1] != _WS:
                out.append(_WS)
        elif c in "'\"`":
            out.append(rb"\\*['\"`]")
        elif c in "[]":
            out.append(rb"\\*" + re.escape(c.encode()))
        else:
            out.append(re.escape(c.encode()))
    return b"".join(out)


def expressions(keys: list[list[str]]) -> list[bytes]:
    return [b".*".join(tolerant(run) for run in runs) for runs in keys]


def pieces(runs: list[str]) -> list[str]:
    """The pieces of the runs between quotes, brackets and backslashes, their whitespace made
    single spaces: text a raw line holds as it is (case aside) unless its whitespace comes in
    runs."""
    out = [" ".join(p.split()) for run in runs for p in _SPLIT_PIECES.split(run)]
    return [p for p in out if p]


# --- engines: each gives the start offsets of the lines of a block that hold a key ---------


class Engine:
    name = ""

    def starts(self, block: bytes, spaced: bytes) -> list[int]:  # pragma: no cover
        """The start offsets of the lines of `block` that hold a key, in order; `spaced` is
        the block with its whitespace made spaces and each byte outside ASCII \\x01."""
        raise NotImplementedError


class _Everything(Engine):
    """When a signature requires no text: every line is a candidate."""

    name = "none"

    def starts(self, block: bytes, spaced: bytes) -> list[int]:
        return [0] + [m.end() for m in re.finditer(rb"\n(?=.)", block, re.DOTALL)]


class _Phrases(Engine):
    """Each key's phrase (`phrase`) found by a multi-pattern engine (`_hits`) in the block
    with its whitespace made spaces, then the expressions of the keys with that phrase tried
    on the line. Lines with a run of whitespace are searched again with their runs made
    single spaces."""

    name = ""
    overlapping = True  # `_hits` gives every phrase found, also inside another

    joins = False  # the engine takes expressions: a short phrase goes with the key's others
    # A line holding a phrase is a candidate only if a key's whole expression is found in it.
    # Without, every line holding a phrase is one: cheaper where few lines are read.
    confirms = True

    def __init__(self, keys: list[list[str]]) -> None:
        by_key = [pieces(runs) for runs in keys]
        if not all(by_key):
            raise ValueError("a key without a phrase")
        # A piece many signatures share (": no such file or directory") is common in logs:
        # each key is found by its longest piece that fewest keys share.
        shared = Counter(p for found in by_key for p in set(found))
        by_phrase: dict[bytes, list[list[str]]] = {}
        for runs, found in zip(keys, by_key):
            chosen = min(found, key=lambda p: (len(p) < 6, shared[p], -len(p)))
            if self.joins and len(chosen) < SHORT_PHRASE and len(found) > 1:
                pattern = b".*".join(re.escape(p.encode()) for p in found)
            else:
                pattern = re.escape(chosen.encode()) if self.joins else chosen.encode()
            by_phrase.setdefault(pattern, []).append(runs)
        self.phrases = list(by_phrase)
        self._confirm = list(by_phrase.values())  # the keys (their runs) of each phrase
        self._compiled: dict[int, list[re.Pattern[bytes]]] = {}

    def _expressions(self, index: int) -> list[re.Pattern[bytes]]:
        """The expressions of the keys found by phrase `index`, written and compiled when
        first needed (a text of a few lines needs a few of them)."""
        out = self._compiled.get(index)
        if out is None:
            out = self._compiled[index] = [
                re.compile(b".*".join(tolerant(run) for run in runs), re.IGNORECASE)
                for runs in self._confirm[index]
            ]
        return out

    def _hits(self, text: bytes) -> Iterable[tuple[int, int]]:  # pragma: no cover
        """(end offset, phrase index) of the phrases in `text` (case aside), by end offset."""
        raise NotImplementedError

    def _holds(self, block: bytes, start: int, end: int, found: int) -> bool:
        if not self.confirms:
            return True
        if self.overlapping:
            tries = self._expressions(found)
        else:  # another phrase may hide inside the one found
            line = b" ".join(block[start:end].lower().translate(_SPACED).split())
            tries = [
                e for i, p in enumerate(self.phrases) if p in line for e in self._expressions(i)
            ]
        return any(e.search(block, start, end) for e in tries)

    def starts(self, block: bytes, spaced: bytes) -> list[int]:
        starts = set()
        taken = -1  # where the last line taken ends
        for end, found in self._hits(spaced):
            if end <= taken:
                continue
            start = spaced.rfind(b"\n", 0, end) + 1
            line_end = spaced.find(b"\n", end)
            if line_end < 0:
                line_end = len(spaced)
            if self._holds(block, start, line_end, found):
                starts.add(start)
                taken = line_end
        # Lines with runs of whitespace, their runs made single spaces, searched together.
        irregular: list[tuple[int, int]] = []
        at = spaced.find(b"  ")
        while at >= 0:
            start = spaced.rfind(b"\n", 0, at) + 1
            line_end = spaced.find(b"\n", at)
            if line_end < 0:
                line_end = len(spaced)
            if start not in starts:
                irregular.append((start, line_end))
            at = spaced.find(b"  ", line_end)
        if irregular:
            squeezed = [b" ".join(spaced[s:e].split()) for s, e in irregular]
            offsets = []
            position = 0
            for line in squeezed:
                offsets.append(position)
                position += len(line) + 1
            taken_index = -1
            for end, found in self._hits(b"\n".join(squeezed)):
                index = bisect.bisect_right(offsets, end - 1) - 1
                if index == taken_index:
                    continue
                start, line_end = irregular[index]
                if self._holds(block, start, line_end, found):
                    starts.add(start)
                    taken_index = index
        return sorted(starts)


class _Hyperscan(_Phrases):
    """The phrases as one hyperscan database of literals, scanned in block mode. (The keys'
    expressions themselves take ~0.5 s to compile into hyperscan: too long for one command.)"""

    name = "hyperscan"
    joins = True

    def __init__(self, keys: list[list[str]]) -> None:
        import hyperscan

        super().__init__(keys)
        self._db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        arguments: dict[str, Any] = {
            "expressions": self.phrases,
            "ids": list(range(len(self.phrases))),
            "elements": len(self.phrases),
            "flags": [hyperscan.HS_FLAG_CASELESS] * len(self.phrases),
        }
        if not self.joins:  # plain literals: hyperscan's literal compiler
            arguments["literal"] = True
        self._db.compile(**arguments)

    def _hits(self, text: bytes) -> Iterable[tuple[int, int]]:
        found: list[tuple[int, int]] = []

        def on_match(ident: int, _start: int, end: int, _flags: int, _ctx: Any) -> None:
            found.append((end, ident))

        self._db.scan(text, match_event_handler=on_match)
        found.sort()
        return found


class _HyperscanLiterals(_Hyperscan):
    """The phrases as plain literals (hyperscan's literal compiler), never joined: a database
    made in a few milliseconds instead of some 30, for a text of a few megabytes at most
    (LOG001's log tails), where the lines a short phrase brings in cost less than that."""

    name = "hyperscan-literals"
    joins = False
    confirms = False  # the matcher tries the signatures next: compiling the keys' costs more


class _RE2(_Phrases):
    """The phrases as one RE2 alternation, searched over the block."""

    name = "re2"
    overlapping = False

    def __init__(self, keys: list[list[str]]) -> None:
        import re2

        super().__init__(keys)
        options = re2.Options()
        options.case_sensitive = False
        options.encoding = re2.Options.Encoding.LATIN1  # bytes, not UTF-8: no folding of ſ
        alternation = b"|".join(re.escape(p) for p in self.phrases)
        self._search = re2.compile(alternation, options=options).finditer

    def _hits(self, text: bytes) -> Iterable[tuple[int, int]]:
        # Not overlapping: `_holds` tries every phrase the line holds, whichever was found.
        return [(m.end(), 0) for m in self._search(text)]


class _AhoCorasick(_Phrases):
    """The phrases in an Aho-Corasick automaton (pyahocorasick) over the lower-cased block."""

    name = "ahocorasick"

    def __init__(self, keys: list[list[str]]) -> None:
        import ahocorasick

        super().__init__(keys)
        self._automaton = ahocorasick.Automaton()
        for index, p in enumerate(self.phrases):
            self._automaton.add_word(p.decode("latin-1"), index)
        self._automaton.make_automaton()

    def _hits(self, text: bytes) -> Iterable[tuple[int, int]]:
        lower = text.lower().decode("latin-1")
        return [(end + 1, index) for end, index in self._automaton.iter(lower)]


class _Python(_Phrases):
    """Nothing to install: bytes.find for each phrase over the lower-cased block."""

    name = "python"

    def _hits(self, text: bytes) -> Iterable[tuple[int, int]]:
        lower = text.lower()
        hits = []
        for index, p in enumerate(self.phrases):
            at = lower.find(p)
            while at >= 0:
                end = at + len(p)
                hits.append((end, index))
                line_end = lower.find(b"\n", end)
                if line_end < 0:
                    break
                at = lower.find(p, line_end)
        hits.sort()
        return hits


_ENGINES: dict[str, Callable[[list[list[str]]], Engine]] = {
    "hyperscan": _Hyperscan,
    "hyperscan-literals": _HyperscanLiterals,
    "re2": _RE2,
    "ahocorasick": _AhoCorasick,
    "python": _Python,
}


def make_engine(book: Playbooks, name: Optional[str] = None, *, short: bool = False) -> Engine:
    """The engine `name`, or the best one installed: for a stream of any size (STREAM), or
    with `short` for a text of a few megabytes at most (SHORT: the quickest to make). ImportError
    when `name` is not installed."""
    keys = signature_keys(book)
    if keys is None:
        return _Everything()
    if name is not None:
        return _ENGINES[name](keys)
    for candidate in SHORT if short else STREAM:
        try:
            return _ENGINES[candidate](keys)
        except ValueError:
            return _Everything()
        except Exception:  # not installed, or its library refuses this CPU: the next one
            continue
    raise AssertionError("the python engine needs nothing")  # pragma: no cover


def engine_for(book: Playbooks, *, short: bool = False) -> Engine:
    """The best engine installed for `book` (see make_engine), built once per set of
    playbooks."""
    slot = "_engine_short" if short else "_engine"
    engine = book.__dict__.get(slot)
    if engine is None:
        engine = make_engine(book, short=short)
        book.__dict__[slot] = engine
    return engine


# --- candidate lines ----------------------------------------------------------------------


def candidate_starts(engine: Engine, block: bytes) -> list[int]:
    """The start offsets of the lines of `block` that may match a signature, in order."""
    spaced = block.translate(_SPACED)
    starts = engine.starts(block, spaced)
    if not block.isascii():
        others: list[int] = []
        at = spaced.find(b"\x01")
        while at >= 0:
            others.append(spaced.rfind(b"\n", 0, at) + 1)
            line_end = spaced.find(b"\n", at)
            if line_end < 0:
                break
            at = spaced.find(b"\x01", line_end)
        starts = sorted(set(starts).union(others))
    return starts


@dataclass
class Reading:
    """What a scan read: lines, and long lines read only up to MAX_LINE bytes (those longer
    than a block, and the candidates)."""

    lines: int = 0
    cut: int = 0
    pending: bool = field(default=False, repr=False)  # a last line without its newline


def blocks(stream: IO[bytes], reading: Reading, size: int = CHUNK) -> Iterator[bytes]:
    """The stream in blocks of complete lines, each at most MAX_LINE bytes (plus its newline):
    what is beyond that in a longer line is skipped."""
    carry = b""
    skipping = False
    while True:
        data = stream.read(size)
        if not data:
            break
        if skipping:
            newline = data.find(b"\n")
            if newline < 0:
                continue
            data = data[newline + 1 :]
            skipping = False
        buffer = carry + data if carry else data
        cut = buffer.rfind(b"\n") + 1
        block, carry = buffer[:cut], buffer[cut:]
        if block:
            yield block
        if len(carry) > MAX_LINE:
            reading.cut += 1
            yield carry[:MAX_LINE] + b"\n"
            carry = b""
            skipping = True
    if carry:
        yield carry


def scan(
    engine: Engine, source: Iterable[bytes], reading: Optional[Reading] = None
) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, the line without its newline) of each candidate line in blocks of
    complete lines (`blocks`). A line longer than MAX_LINE inside a block is cut too."""
    reading = reading if reading is not None else Reading()
    base = 0
    for block in source:
        counted, at = 0, 0
        for start in candidate_starts(engine, block):
            counted += block.count(b"\n", at, start)
            at = start
            end = block.find(b"\n", start)
            if end < 0:
                end = len(block)
            if end - start > MAX_LINE:
                reading.cut += 1
                end = start + MAX_LINE
            yield base + counted + 1, block[start:end]
        base += counted + block.count(b"\n", at)
        reading.pending = not block.endswith(b"\n")
        reading.lines = base + reading.pending
    reading.lines = base + reading.pending


def scan_lines(engine: Engine, lines: Sequence[str]) -> Iterator[int]:
    """The indexes of the candidate lines among `lines` (each without a line break)."""
    block = "\n".join(lines).encode("utf-8", "surrogatepass")
    for number, _ in scan(engine, [block]):
        yield number - 1
