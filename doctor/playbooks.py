"""Playbooks: remediation knowledge as YAML (playbooks/<id>.yaml), loaded and validated.

Each file is checked against playbooks/playbook.schema.json (the same file as
docs/playbook.schema.json) and then for what a schema cannot say: the id is the file name, every
regular expression compiles, every placeholder is well formed, a condition required absent
(`not:`) contradicts none that `when` requires. A file that fails is reported
with its name (`Playbooks.errors`) and the others still load. PyYAML and jsonschema are imported
here, inside the loader, so that `kvmdoctor --help` needs neither.

This module reads its own package data (the shipped playbooks) and nothing of the host.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Optional

from doctor.lazyre import lazy
from doctor.model import Finding
from doctor.record import record

SAFETY = ("safe", "disruptive", "needs-reboot", "needs-relogin")
PROBLEM_STATUSES = ("warn", "fail")
SCHEMA_NAME = "playbook.schema.json"

# {name}, {evidence.path[0].x}, {name|default}; {{ and }} stand for literal braces.
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.:\[\]-]*)(?:\|([^{}]*))?\}")
_STEP = re.compile(r"([^.\[\]]+)|\[(-?\d+)\]")


class PlaybookInvalid(ValueError):
    """What is wrong with one playbook file."""


# --- the model ------------------------------------------------------------------------------


class Signature:
    """A signature's regular expression (case-insensitive), compiled when a line first reaches
    it: a run loads some 250 of them and most runs try none, or few. Playbooks parsed from YAML
    compile theirs at once, to name the file whose expression does not compile; compiled.json
    holds only expressions that compiled when it was written."""

    __slots__ = ("_compiled", "pattern")
    flags = re.IGNORECASE

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._compiled: Optional[re.Pattern[str]] = None

    @property
    def compiled(self) -> re.Pattern[str]:
        if self._compiled is None:
            self._compiled = re.compile(self.pattern, self.flags)
        return self._compiled

    def search(self, text: str, pos: int = 0) -> Optional[re.Match[str]]:
        return self.compiled.search(text, pos)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Signature):
            return self.pattern == other.pattern
        if isinstance(other, re.Pattern):
            return self.compiled == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.pattern)

    def __repr__(self) -> str:
        return f"Signature({self.pattern!r})"


@record
class Matcher:
    """One test on an evidence value (docs/playbook.schema.json `matcher`)."""

    op: str  # equals, in, matches, contains, present
    operand: Any

    def test(self, value: Any, found: bool) -> bool:
        if self.op == "present":
            present = found and value not in (None, "", [], {})
            return present == bool(self.operand)
        if not found:
            return False
        if self.op == "equals":
            return bool(value == self.operand)
        if self.op == "in":
            return value in self.operand
        if self.op == "matches":
            return re.search(self.operand, as_text(value), re.IGNORECASE) is not None
        if isinstance(value, (list, tuple)):
            return self.operand in value
        return isinstance(value, str) and str(self.operand) in value


@record
class Condition:
    """Findings of one check with given statuses, evidence, subject and message."""

    code: str
    statuses: tuple[str, ...]
    evidence: tuple[tuple[str, Matcher], ...] = ()
    subject: Optional[str] = None
    message: Optional[str] = None

    @property
    def weight(self) -> int:
        """How much this condition narrows the findings it accepts (for specificity)."""
        return 1 + len(self.evidence) + (self.subject is not None) + (self.message is not None)

    def matches(self, finding: Finding) -> bool:
        if finding.code != self.code or finding.status not in self.statuses:
            return False
        if self.subject and not re.search(self.subject, finding.subject, re.IGNORECASE):
            return False
        if self.message and not re.search(self.message, finding.message, re.IGNORECASE):
            return False
        for path, matcher in self.evidence:
            found, value = lookup(finding.evidence, path)
            if not matcher.test(value, found):
                return False
        return True


@record
class Action:
    """One fix step as written in the playbook (placeholders not filled yet)."""

    kind: str
    safety: str
    params: Mapping[str, Any]  # every key but `action` and `safety`, `text` included


@record
class Playbook:
    id: str
    title: str
    mode: str  # "all" or "any"
    conditions: tuple[Condition, ...]  # what must be found (the first anchors diagnoses)
    explains: tuple[str, ...]
    cause: str
    fix: tuple[Action, ...]
    verify: tuple[str, ...]
    refs: tuple[str, ...]
    signatures: tuple[Signature, ...]
    file: str
    # What must not be found (`not:` in `when.all`): a finding that matches one contradicts
    # the playbook's premise ("the CPU and the firmware allow KVM"), and it does not fire.
    contradicted_by: tuple[Condition, ...] = ()

    @property
    def codes(self) -> tuple[str, ...]:
        """The check codes whose findings reveal this problem, in `when` order."""
        return tuple(dict.fromkeys(c.code for c in self.conditions))

    @property
    def specificity(self) -> int:
        """How narrowly `when` selects the findings a diagnosis rests on: each condition counts
        1 plus its evidence, subject and message tests; `all` sums them, `any` takes the least.
        Premises (`not`) do not count: they rule a diagnosis out, they do not choose between
        two readings of one finding."""
        weights = [c.weight for c in self.conditions]
        return sum(weights) if self.mode == "all" else min(weights)

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "codes": list(self.codes),
            "explains": list(self.explains),
            "verify": list(self.verify),
        }


@record
class PlaybookError:
    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


@record
class TextMatch:
    """A signature of `playbook` found in a line of pasted text or a log."""

    playbook: Playbook
    line: str  # the line as normalised (prefixes and timestamps removed)
    matched: str  # the part of it the signature matched
    groups: Mapping[str, str]  # named groups of the signature


@dataclass
class Hit:
    """A playbook found in a text: its first match, and how many lines it was found on
    (repeats are counted, not kept), the first and the last of them (numbered from 1)."""

    match: TextMatch
    count: int
    first_line: int
    last_line: int


class Tally:
    """Playbooks found line by line, each kept once: memory grows with the playbooks found,
    not with the lines read."""

    def __init__(self) -> None:
        self.found: dict[str, tuple[tuple[int, int], Hit]] = {}

    def add(self, position: int, number: int, matches: list[TextMatch]) -> None:
        """The matches of the line at `position` (the order hits are given in), numbered
        `number` in the text."""
        for match in matches:
            entry = self.found.get(match.playbook.id)
            if entry is None:
                order = (position, len(self.found))
                self.found[match.playbook.id] = (order, Hit(match, 1, number, number))
            elif entry[1].last_line != number:
                entry[1].count += 1
                entry[1].last_line = number

    def hits(self) -> list[Hit]:
        return [hit for _, hit in sorted(self.found.values(), key=lambda e: e[0])]


class Playbooks:
    """A set of playbooks by id, and the files that did not load. Playbooks read from
    compiled.json are kept as data until one is asked for (`_defer`): `items`, iteration and
    `get` make all of them, `for_codes` only those whose `when` names one of the codes."""

    def __init__(
        self,
        items: Optional[dict[str, Playbook]] = None,
        errors: Optional[list[PlaybookError]] = None,
    ) -> None:
        self._items: dict[str, Playbook] = dict(items or {})
        self.errors: list[PlaybookError] = list(errors or [])
        self._pending: dict[str, tuple[str, Any]] = {}  # id: (label, compiled data)
        self._order: list[str] = []  # the ids in the order load() met them
        self._pending_codes: dict[str, set[str]] = {}  # check code: ids of pending playbooks
        self._runs: dict[str, list[str]] = {}  # pattern: its literal_runs (compiled.json's)

    @property
    def items(self) -> dict[str, Playbook]:
        if self._pending:
            self._make(list(self._pending))
            # in the order load() met them, as if all were made there
            ordered = {i: self._items[i] for i in self._order if i in self._items}
            self._items = {**ordered, **self._items}
        return self._items

    def _defer(self, playbook_id: str, label: str, data: Any) -> None:
        """Keep validated data (compiled.json) to parse when the playbook is asked for."""
        self._pending[playbook_id] = (label, data)
        self._order.append(playbook_id)
        for code in _when_codes(data):
            self._pending_codes.setdefault(code, set()).add(playbook_id)

    def _make(self, ids: Iterable[str]) -> None:
        for playbook_id in ids:
            entry = self._pending.pop(playbook_id, None)
            if entry is None:
                continue
            label, data = entry
            try:
                self._items[playbook_id] = parse(data, label, None)
            except Exception as exc:  # noqa: BLE001 - as load() reports a file that fails
                reason = str(exc).replace("\n", " ")
                kind = "" if isinstance(exc, PlaybookInvalid) else f"{type(exc).__name__}: "
                self.errors.append(PlaybookError(label, f"{kind}{reason}"))

    def for_codes(self, codes: Iterable[str]) -> list[Playbook]:
        """The playbooks (in id order) whose `when` has a condition, not a premise (`not`), on
        one of `codes`: the only ones whose diagnoses findings of those codes can anchor.
        Others stay unmade."""
        wanted = set(codes)
        if self._pending:
            self._make(sorted({i for code in wanted for i in self._pending_codes.get(code, ())}))
        found = [p for p in self._items.values() if wanted.intersection(p.codes)]
        return sorted(found, key=lambda p: p.id)

    def __iter__(self) -> Iterator[Playbook]:
        return iter(sorted(self.items.values(), key=lambda p: p.id))

    def __len__(self) -> int:
        return len(self.items)

    def get(self, playbook_id: str) -> Optional[Playbook]:
        return self.items.get(playbook_id)

    def _made(self, playbook_id: str) -> Optional[Playbook]:
        """The playbook `playbook_id`, made now if it was pending (None if it does not
        parse: it is then among `errors`)."""
        if playbook_id in self._pending:
            self._make([playbook_id])
        return self._items.get(playbook_id)

    def runs(self, pattern: str) -> list[str]:
        """`literal_runs(pattern)`: for the shipped signatures as compiled.json holds them
        (computed when it was written), for others computed once."""
        found = self._runs.get(pattern)
        if found is None:
            found = self._runs[pattern] = literal_runs(pattern)
        return found

    def _signatures(self) -> list[tuple[str, Any]]:
        """(playbook id, signature) of every signature, playbooks in id order, without making
        a playbook: a pending one's signatures are made from its compiled data (one whose
        data fails to parse, which `items` drops, is still read here: a superset)."""
        out: list[tuple[str, Any]] = []
        for playbook_id in sorted({*self._items, *self._pending}):
            made = self._items.get(playbook_id)
            if made is not None:
                out += [(playbook_id, s) for s in made.signatures]
                continue
            raw = self._pending[playbook_id][1].get("signatures", ())
            patterns = [p for p in raw if isinstance(p, str)] if isinstance(raw, list) else []
            out += [(playbook_id, Signature(p)) for p in patterns]
        return out

    def patterns(self) -> list[str]:
        """Every signature's expression, in playbook id order, without making a playbook (read
        from the index `match_line` builds: LOG001 asks for both)."""
        return [signature.pattern for _, signature in self._index()[1]]

    def _index(self) -> tuple[list[str], list[tuple[str, Any]]]:
        """Every signature (playbooks in id order, each's in its order) as two lists: the
        text every line it matches must contain (lower-cased; "" when there is none to be
        sure of), and (playbook id, signature). Built once per set of playbooks, from the
        signatures' expressions alone: a playbook is made when one of its signatures matches
        a line. A substring test passes over most log lines far faster than a regular
        expression, and one expression of all signatures, case-insensitive, is slower still."""
        cached = self.__dict__.get("_index_cache")
        if cached is None:
            entries = self._signatures()
            needles = [_ascii_needle(self.runs(s.pattern)) for _, s in entries]
            cached = (needles, entries)
            self.__dict__["_index_cache"] = cached
        return cached

    def for_code(self, code: str) -> list[Playbook]:
        """Playbooks revealed by findings of `code`, then those that only explain it."""
        code = code.upper()
        direct = [p for p in self if code in p.codes]
        return direct + [p for p in self if code in p.explains and p not in direct]

    def match_text(self, text: str) -> list[TextMatch]:
        """Every playbook whose signature occurs in `text` (pasted or logged), once each, in
        the order of the lines they were first found on. The text is read as people paste it
        (`pasted_lines`), and lines a terminal or a mail client wrapped are tried joined
        again: each run of two or three lines, joined with and without a space (a wrap in
        the middle of a word or a path leaves no space; one between words loses it)."""
        return [hit.match for hit in self.find(numbered_lines(text))]

    def find(self, lines: list[tuple[int, str]], rejoin: bool = True) -> list[Hit]:
        """The playbooks found in pasted lines (line number, line), as `match_text` finds
        them, each with the number of lines it was found on and the first and last of them.
        Wrapped lines are tried joined again when `rejoin` and there are MAX_JOINED_LINES
        lines or fewer; a wrapped message counts once however many ways of joining it match."""
        tally = Tally()
        for index, (number, line) in enumerate(lines):
            tally.add(index, number, self.match_line(line))
        if rejoin and len(lines) <= MAX_JOINED_LINES:
            single = set(tally.found)
            last: dict[str, int] = {}
            for index in range(len(lines) - 1):
                window = lines[index : index + 3]
                for joined in _rejoined([line for _, line in window]):
                    for match in self.match_line(joined):
                        book = match.playbook.id
                        if book in single or last.get(book, -2) >= index - 1:
                            if book in last:
                                last[book] = index
                            continue
                        last[book] = index
                        tally.add(index, window[0][0], [match])
        return tally.hits()

    def nearest(self, text: str, limit: int = 3) -> list[Nearness]:
        """The playbooks whose words come closest to `text`, for when no signature matches:
        cosine similarity of TF-IDF weighted words between the text and each playbook's
        signatures (their literal words, counted twice), title and cause. Scores run from 0
        to 1; only those of at least NEAR_SCORE are given, best first."""
        query = Counter(words(" ".join(pasted_lines(text))))
        if not query:
            return []
        vectors, idf = self._word_vectors()
        weights = {w: n * idf.get(w, 0.0) for w, n in query.items()}
        norm = math.sqrt(sum(v * v for v in weights.values()))
        if not norm:
            return []
        out = []
        for book, (vector, length) in vectors.items():
            dot = sum(weights[w] * vector[w] for w in weights if w in vector)
            if not dot:
                continue
            score = dot / (norm * length)
            if score >= NEAR_SCORE:
                shared = sorted(
                    (w for w in weights if w in vector), key=lambda w: -weights[w] * vector[w]
                )
                out.append(Nearness(self.items[book], round(score, 2), tuple(shared[:5])))
        out.sort(key=lambda n: (-n.score, n.playbook.id))
        return out[:limit]

    def _word_vectors(self) -> tuple[dict[str, tuple[dict[str, float], float]], dict[str, float]]:
        """Each playbook's TF-IDF word vector with its length, and the IDF of every word."""
        cached = self.__dict__.get("_vectors_cache")
        if cached is None:
            counts = {}
            for book in self:
                bag = Counter(words(book.title) + words(PLACEHOLDER.sub(" ", book.cause)))
                for signature in book.signatures:
                    for word in words(pattern_text(signature.pattern)):
                        bag[word] += 2
                counts[book.id] = bag
            documents = len(counts) or 1
            frequency: Counter[str] = Counter(w for bag in counts.values() for w in bag)
            idf = {w: math.log((documents + 1) / (n + 1)) + 1.0 for w, n in frequency.items()}
            vectors = {}
            for book_id, bag in counts.items():
                vector = {w: n * idf[w] for w, n in bag.items()}
                length = math.sqrt(sum(v * v for v in vector.values())) or 1.0
                vectors[book_id] = (vector, length)
            cached = (vectors, idf)
            self.__dict__["_vectors_cache"] = cached
        return cached

    def match_line(self, line: str) -> list[TextMatch]:
        """The playbooks whose signature occurs in one normalised line, best first: the one
        whose signature covers more of the line, then the more specific playbook."""
        seen: dict[str, list[TextMatch]] = self.__dict__.setdefault("_seen", {})
        if line in seen:  # logs repeat the same lines many times
            return list(seen[line])
        # Case-insensitive matching folds four letters outside ASCII onto ASCII ones (ſ and
        # s, K and k, ı and İ and i); str.lower() does not, so they are folded first.
        lower = line.lower() if line.isascii() else line.translate(_FOLD_ASCII).lower()
        out: list[TextMatch] = []
        needles, entries = self._index()
        # The signatures whose text the line holds (all of them for an empty line), in
        # order; each playbook is taken by the first of its signatures that matches.
        tried = (
            [i for i, needle in enumerate(needles) if needle in lower]
            if lower
            else range(len(needles))
        )
        found: set[str] = set()
        for i in tried:
            playbook_id, signature = entries[i]
            if playbook_id in found:
                continue
            hit = signature.search(line)
            if not hit:
                continue
            book = self._made(playbook_id)
            if book is None:  # compiled data that does not parse: not a playbook
                continue
            found.add(playbook_id)
            groups = {k: v for k, v in hit.groupdict().items() if v is not None}
            out.append(TextMatch(book, line, hit.group(0), groups))
        out.sort(key=lambda m: (-len(m.matched), -m.playbook.specificity, m.playbook.id))
        if len(seen) < 10_000 and len(line) <= 1024:  # a bounded cache: lines may be long
            seen[line] = out
        return list(out)


# The letters outside ASCII that case-insensitive matching takes for ASCII ones
# (tests/test_textscan.py checks every code point).
_FOLD_ASCII = str.maketrans({"\u0130": "i", "\u0131": "i", "\u017f": "s", "\u212a": "k"})


def _ascii_needle(runs: list[str]) -> str:
    """The text a signature requires (`required_text`, from its literal runs), lower-cased,
    when case-insensitive matching can find it only as `match_line` lower-cases the line: its
    letters are ASCII, or have no case (such as Chinese); else "" (always tried)."""
    needle = _longest(runs).lower()
    uncased = needle.isascii() or all(c.isascii() or c.lower() == c == c.upper() for c in needle)
    return needle if uncased else ""


_QUANTIFIERS = "*?{"
_REPEAT = lazy(r"\{\d*(?:,\d*)?\}")


def _escape_end(pattern: str, i: int) -> int:
    """Where the escape starting with the backslash at `i` ends."""
    kind = pattern[i + 1 : i + 2]
    if kind == "x":
        return i + 4
    if kind == "u":
        return i + 6
    if kind == "U":
        return i + 10
    if kind == "N":
        close = pattern.find("}", i)
        return close + 1 if close > 0 else len(pattern)
    if kind.isdigit():  # a group reference or an octal escape: up to three digits
        end = i + 2
        while end < min(i + 4, len(pattern)) and pattern[end].isdigit():
            end += 1
        return end
    return i + 2


def required_text(pattern: str, shortest: int = 4) -> str:
    """The longest run of plain characters that every match of `pattern` contains, or "" when
    there is none of at least `shortest` characters to be sure of. Only the pattern's top level
    is read (what is inside groups and classes may be optional or repeated), and a pattern with
    a top-level `|` has none, nor has a verbose one (`(?x)`, where spaces are not text). A
    character followed by `*`, `?` or `{` may be absent, so it ends the run without joining it;
    `+` ends the run after it."""
    return _longest(literal_runs(pattern), shortest)


def _longest(runs: list[str], shortest: int = 4) -> str:
    best = ""
    for run in runs:
        if len(run) > len(best):
            best = run
    return best if len(best) >= shortest else ""


# Flags for the whole expression, which Python admits only at its start: (?i), (?x), (?ix)...
_GLOBAL_FLAGS = lazy(r"(?:\(\?[aiLmsux]+\))+")


def literal_runs(pattern: str) -> list[str]:
    """Every run of plain characters at the top level of `pattern` (a valid expression), in
    the order every match holds them (see `required_text`); [] for a pattern with a top-level
    `|` or a verbose one. Read from the text alone: the pattern is not compiled."""
    flags = _GLOBAL_FLAGS.match(pattern)
    if flags and "x" in flags.group(0):
        return []
    runs: list[str] = []
    run: list[str] = []
    depth = 0
    i = 0

    def close() -> None:
        nonlocal run
        if run:
            runs.append("".join(run))
        run = []

    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            # an escaped punctuation character stands for itself; a letter or digit after the
            # backslash makes a class, an anchor, a reference or a character given by its
            # number or name (\x41, \u0041, \N{...}, \101): none of them plain text
            nxt = pattern[i + 1 : i + 2]
            literal = nxt if nxt and not nxt.isalnum() and not nxt.isspace() else ""
            i = _escape_end(pattern, i)
        elif c == "[":  # a class: skip to its end
            close()
            i += 1
            if pattern[i : i + 1] == "^":
                i += 1
            if pattern[i : i + 1] == "]":
                i += 1
            while i < len(pattern) and pattern[i] != "]":
                i += 2 if pattern[i] == "\\" else 1
            i += 1
            continue
        elif c == "(":
            close()
            depth += 1
            i += 1
            continue
        elif c == ")":
            close()
            depth -= 1
            i += 1
            continue
        elif c == "|":
            if depth == 0:
                return []
            i += 1
            continue
        elif c in ".^$+" or c in _QUANTIFIERS:
            close()
            repeat = _REPEAT.match(pattern, i) if c == "{" else None
            i = repeat.end() if repeat else i + 1
            continue
        else:
            literal = c
            i += 1
        if depth:
            continue
        if not literal:
            close()
            continue
        if pattern[i : i + 1] and pattern[i] in _QUANTIFIERS:
            close()  # this character may be absent: it ends the run without joining it
            continue
        run.append(literal)
    close()
    return runs


# --- pasted text ----------------------------------------------------------------------------

# Log prefixes in front of the message: timestamps (libvirt's own log, ISO 8601, syslog and
# journalctl short formats), then "host program[pid]:" and libvirt's "1234: error :".
_TIME = re.compile(
    r"^\s*(?:\[\s*\d+\.\d+\]\s*"  # dmesg [   12.345]
    r"|\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?:?\s+"
    r"|[A-Z][a-z]{2} [ \d]\d \d{2}:\d{2}:\d{2}\s+)"
)
_SYSLOG_TAG = re.compile(r"^[\w.-]+ [\w./@-]+(?:\[\d+\])?:\s+")
_LIBVIRT_THREAD = re.compile(
    r"^\d+:\s+(?:error|warning|info|debug)\s*:\s*(?:[\w:]+\s*:\d+\s*:\s*)?"
)
_PREFIXES = re.compile(
    r"^(?:libvirt\.libvirtError|libvirtError|error|erreur|fehler|错误|warning|internal error"
    r"|ERROR|virsh|virt-install|virt-manager|\[?ERROR\]?|qemu-system-[\w-]+|qemu-kvm"
    # virt-manager's dialogs
    r"|Error starting domain|Unable to complete install|Error creating virtual machine"
    r"|Error connecting to graphical console|Unable to connect to libvirt[^:]*)\s*:\s*",
    re.IGNORECASE,
)
_QUOTES = str.maketrans({"‘": "'", "’": "'", "“": '"', "”": '"', "`": "'", "＇": "'"})


def normalise(line: str) -> str:
    """One line of pasted text without what varies between tools: timestamps, log tags,
    `error:` or `libvirt.libvirtError:` prefixes, typographic quotes, repeated spaces."""
    text = line.translate(_QUOTES).strip()
    for _ in range(6):  # prefixes come stacked ("error: internal error: ...")
        before = text
        text = _TIME.sub("", text, count=1)
        if before != text:
            text = _SYSLOG_TAG.sub("", text, count=1)
        text = _LIBVIRT_THREAD.sub("", text, count=1)
        text = _PREFIXES.sub("", text, count=1)
        if text == before:
            break
    return " ".join(text.split())


def message_lines(text: str) -> list[str]:
    """The lines of a pasted text, normalised; a literal "\\n" (as error dialogs and some
    logs print it) separates lines too. Empty lines are dropped."""
    lines = []
    for raw in text.replace("\\n", "\n").splitlines():
        line = normalise(raw)
        if line:
            lines.append(line)
    return lines


# What pasting does to a message, undone before signatures are tried (`pasted_lines`):
# escapes from JSON, YAML and Python reprs (\\n, \\', \\"), Markdown's escaped brackets,
# quote and emphasis markers in front of a line, the bars of Terraform's error boxes, log
# prefixes of tools that wrap libvirt (logrus `level=error msg=`, nova's `12345 ERROR
# nova.compute.manager [req-...]`, OpenNebula's `[Z0][VMM][I]:`, elapsed-time stamps), double
# quotes or backticks where libvirt prints single quotes, a socket path left unquoted, and
# Go's "dial unix PATH: connect: ERRNO" for libvirt's own "Failed to connect socket to".
MAX_JOINED_LINES = 2000
_NEWLINE_ESCAPE = lazy(r"(?:\\+r)?\\+n")
_ESCAPED = lazy(r"\\+(['\"\[\]])")
_MARKERS = lazy(r"^(?:\s*(?:>+|\*\*|[│|┃]|\$|#|\w[\w.-]*>(?=\s)))+\s*")
_TOOL_PREFIX = lazy(
    r"^(?:\d{1,2}:\d{2}:\d{2}(?:\.\d+)?\s+"  # elapsed time (CI logs)
    r"|\w{3} \w{3} +\d+ \d{2}:\d{2}:\d{2} \d{4} (?:\[\w+\])+:\s*"  # OpenNebula
    r"|level=\w+(?: \w+=(?:\"[^\"]*\"|\S+))*? msg=\"?"  # logrus
    r"|(?:\d+ )?(?:ERROR|TRACE|WARNING|INFO|DEBUG|CRITICAL) [a-z_]\w*(?:\.\w+)+"  # oslo.log
    r"(?: \[[^\]]*\])* ?"
    r"|[EWIF]\d{4} \d{2}:\d{2}:\d{2}\.\d+ +\d+ [\w.]+:\d+\] "  # klog
    r"|(?:ERROR|WARNING|INFO|DEBUG) {2,})"  # virt-install's padded level
)
_GO_DIAL = lazy(r"\bdial unix (?P<path>/\S+?): connect: ", re.IGNORECASE)
_BARE_SOCKET = lazy(r"(?P<lead>\bsocket to )(?P<path>/[^\s']+?)(?=:\s)")


def _paste_line(raw: str) -> str:
    """One pasted line, normalised, then canonical in the ways signatures expect."""
    text = raw
    for _ in range(4):  # prefixes come stacked: a time, then a tool's, then libvirt's
        before = text
        text = _MARKERS.sub("", text, count=1)
        text = normalise(_TOOL_PREFIX.sub("", text, count=1))
        if text == before:
            break
    text = text.replace('"', "'")
    text = _GO_DIAL.sub(lambda m: f"Failed to connect socket to '{m['path']}': ", text)
    return _BARE_SOCKET.sub(lambda m: f"{m['lead']}'{m['path']}'", text)


def pasted_lines(text: str) -> list[str]:
    """The lines of a message as someone pasted it, each normalised (`normalise`) and made
    canonical: escapes undone, markers and tools' log prefixes removed, double quotes and
    backticks as single quotes, socket paths quoted, Go's dial errors in libvirt's words.
    Empty lines are dropped. Logs read by LOG001 go through `normalise` alone."""
    text = _ESCAPED.sub(r"\1", _NEWLINE_ESCAPE.sub("\n", text))
    lines = []
    for raw in text.splitlines():
        line = _paste_line(raw)
        if line:
            lines.append(line)
    return lines


def numbered_lines(text: str) -> list[tuple[int, str]]:
    """`pasted_lines` of `text`, each with the number (from 1) of the line of `text` it is on."""
    return [
        (number, line)
        for number, raw in enumerate(text.split("\n"), start=1)
        for line in pasted_lines(raw)
    ]


def line_count(text: str) -> int:
    """How many lines `text` has (a last line without its newline counts)."""
    return text.count("\n") + (not text.endswith("\n")) if text else 0


def _rejoined(window: list[str]) -> list[str]:
    """The ways a run of wrapped lines may have read before the wrap."""
    joined = [window[0]]
    for line in window[1:]:
        joined = [j + sep + line for j in joined for sep in ("", " ")]
    return joined


# --- similarity, for text no signature matches -------------------------------------------

NEAR_SCORE = 0.25
_WORD = lazy(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")
_STOP = frozenset(
    [
        "the",
        "and",
        "for",
        "not",
        "with",
        "this",
        "that",
        "from",
        "was",
        "are",
        "but",
        "has",
        "have",
        "had",
        "into",
        "its",
        "can",
        "cannot",
        "could",
        "error",
        "failed",
        "internal",
        "any",
        "all",
        "one",
        "use",
        "used",
        "when",
        "which",
        "while",
        "what",
        "there",
        "their",
        "than",
        "then",
        "been",
        "being",
        "such",
        "file",
        "directory",
        "usr",
        "lib",
        "lib64",
        "bin",
        "sbin",
        "share",
        "local",
        "var",
        "etc",
        "opt",
        "site",
        "packages",
        "python",
        "line",
        "self",
        "traceback",
        "most",
        "recent",
        "call",
    ]
)
_REGEX_SYNTAX = lazy(r"\(\?P<\w+>|\(\?[:!=<]+|\\[dDsSwWbB]|\[[^\]]*\]|[?*+]")


@record
class Nearness:
    """A playbook close to a text no signature matched: a guess, never a diagnosis."""

    playbook: Playbook
    score: float  # cosine similarity, 0..1
    shared: tuple[str, ...]  # the words that weigh most in the score


def words(text: str) -> list[str]:
    """The words that carry meaning: lower case, three letters or more, no stop words, no
    numbers or hexadecimal runs."""
    out = []
    for word in _WORD.findall(text.lower()):
        if len(word) < 3 or word in _STOP or re.fullmatch(r"[0-9a-f]{6,}", word):
            continue
        out.append(word)
    return out


def pattern_text(pattern: str) -> str:
    """The literal words of a signature, without its regular expression syntax."""
    return _REGEX_SYNTAX.sub(" ", pattern).replace("\\", "")


# --- evidence lookup and placeholders -------------------------------------------------------


def lookup(data: Any, path: str) -> tuple[bool, Any]:
    """(found, value) at a dotted path with optional [index] steps: `principal.name`,
    `kernel_lines[-1]`."""
    current = data
    for part in path.split("."):
        steps = _STEP.findall(part)
        if not steps or "".join(k or f"[{i}]" for k, i in steps) != part:
            return False, None
        for key, index in steps:
            if key:
                if not isinstance(current, Mapping) or key not in current:
                    return False, None
                current = current[key]
            else:
                if not isinstance(current, (list, tuple)):
                    return False, None
                position = int(index)
                if not -len(current) <= position < len(current):
                    return False, None
                current = current[position]
    return True, current


def as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(as_text(v) for v in value)
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True)
    return str(value)


Resolver = Callable[[str], Optional[str]]


def fill(template: str, resolve: Resolver) -> tuple[str, list[str]]:
    """The template with each placeholder replaced: by what `resolve` gives, else its default,
    else `<name>` (and the name is listed as missing)."""
    missing: list[str] = []

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = resolve(name)
        if value is not None and value != "":
            return value
        if default is not None:
            return default
        missing.append(name)
        return f"<{name}>"

    text = template.replace("{{", "\0").replace("}}", "\1")
    text = PLACEHOLDER.sub(replace, text)
    return text.replace("\0", "{").replace("\1", "}"), missing


def placeholders(template: str) -> list[str]:
    return [m.group(1) for m in PLACEHOLDER.finditer(template.replace("{{", "").replace("}}", ""))]


def subject_values(subject: str) -> dict[str, str]:
    """What a subject names: `user:alice` gives user=alice, `socket:/run/x` socket and path,
    `process:root[812]` process, user and pid, `cert:/p#2` cert and path."""
    kind, _, value = subject.partition(":")
    if not value:
        return {}
    out = {kind: value}
    if kind == "process":
        m = re.match(r"(.+)\[(\d+)\]$", value)
        if m:
            out.update(user=m.group(1), pid=m.group(2))
    if value.startswith("/"):
        out["path"] = value.split("#", 1)[0]
    return out


# --- loading --------------------------------------------------------------------------------


def _yaml_load(text: str) -> Any:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(text, Loader=loader)


def _schema_validator(schema_text: str) -> Any:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(json.loads(schema_text))


def _schema_problems(validator: Any, data: Any) -> list[str]:
    problems = []
    for error in sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        problems.append(f"{where}: {error.message}")
    return problems


def _compile(pattern: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise PlaybookInvalid(f"{where}: not a valid regular expression ({exc})") from None


def _matcher(value: Any, where: str, validate: bool) -> Matcher:
    if isinstance(value, Mapping):
        ((op, operand),) = value.items()
        if op == "matches" and validate:
            _compile(operand, where)
        return Matcher(op, operand)
    return Matcher("equals", value)


def _condition(data: Mapping[str, Any], where: str, validate: bool) -> Condition:
    """A condition of `when`; with `validate`, its expressions are compiled to be sure they
    compile (compiled.json holds only conditions that did: a run leaves them to re's cache,
    which compiles one when a finding of its check first reaches it)."""
    status = data.get("status", list(PROBLEM_STATUSES))
    statuses = (status,) if isinstance(status, str) else tuple(status)
    evidence = tuple(
        (path, _matcher(value, f"{where}/evidence/{path}", validate))
        for path, value in data.get("evidence", {}).items()
    )
    for key in ("subject", "message"):
        if key in data and validate:
            _compile(data[key], f"{where}/{key}")
    return Condition(data["code"], statuses, evidence, data.get("subject"), data.get("message"))


def _check_placeholders(text: str, where: str) -> None:
    stripped = PLACEHOLDER.sub("", text.replace("{{", "").replace("}}", ""))
    if "{" in stripped or "}" in stripped:
        raise PlaybookInvalid(
            f"{where}: a brace that is no placeholder (write {{{{ and }}}} for literal braces)"
        )


def _texts(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _texts(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _texts(item)


def _contradiction(required: Condition, absent: Condition) -> bool:
    """Whether every finding that `required` accepts is one that `absent` forbids: the same
    check, every status of `required` forbidden, and no evidence, subject or message test in
    `absent` that could tell them apart. The playbook could then never fire."""
    return (
        required.code == absent.code
        and set(required.statuses) <= set(absent.statuses)
        and not absent.evidence
        and absent.subject is None
        and absent.message is None
    )


def _when(
    data: Mapping[str, Any], validate: bool = True
) -> tuple[str, tuple[Condition, ...], tuple[Condition, ...]]:
    """(mode, the conditions to be found, the conditions to be absent) of a `when`. The schema
    admits `not` only in `all` and after the first condition, which anchors."""
    ((mode, raw_conditions),) = data.items()
    found: list[Condition] = []
    absent: list[Condition] = []
    for i, raw in enumerate(raw_conditions):
        where = f"when/{mode}/{i}"
        if "not" in raw:
            absent.append(_condition(raw["not"], f"{where}/not", validate))
        else:
            found.append(_condition(raw, where, validate))
    for condition in absent:
        clash = next((c for c in found if _contradiction(c, condition)), None)
        if clash is not None:
            raise PlaybookInvalid(
                f"when/{mode}: {condition.code} is required and required absent, "
                "so the playbook could never fire"
            )
    return mode, tuple(found), tuple(absent)


def parse(data: Any, file: str, validator: Any) -> Playbook:
    """A validated Playbook from the YAML data of `file`; PlaybookInvalid says what is wrong.
    `validator` None: the data comes from compiled.json, validated when it was compiled."""
    problems = _schema_problems(validator, data) if validator is not None else []
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise PlaybookInvalid("; ".join(problems[:3]) + more)
    stem = os.path.basename(file).rsplit(".", 1)[0]
    if data["id"] != stem:
        raise PlaybookInvalid(f"id {data['id']!r} differs from the file name {stem!r}")
    validate = validator is not None
    mode, conditions, contradicted_by = _when(data["when"], validate)
    if validate:  # compiled.json holds only texts whose placeholders were checked
        _check_placeholders(data["cause"], "cause")
    actions = []
    for index, raw in enumerate(data["fix"]):
        params = {k: v for k, v in raw.items() if k not in ("action", "safety")}
        for text in _texts(params) if validate else ():
            _check_placeholders(text, f"fix/{index}")
        actions.append(Action(raw["action"], raw["safety"], params))
    signatures = tuple(Signature(s) for s in data.get("signatures", ()))
    if validator is not None:
        for i, signature in enumerate(signatures):
            signature._compiled = _compile(signature.pattern, f"signatures/{i}")
    return Playbook(
        id=data["id"],
        title=data["title"],
        mode=mode,
        conditions=conditions,
        explains=tuple(data.get("explains", ())),
        cause=data["cause"].strip(),
        fix=tuple(actions),
        verify=tuple(data["verify"]),
        refs=tuple(data.get("refs", ())),
        signatures=signatures,
        file=file,
        contradicted_by=contradicted_by,
    )


@lru_cache(maxsize=1)
def _shipped() -> Any:
    """The shipped playbooks' directory, found once per process: a Path where the package
    is one on disk (found from its import spec; importlib.resources would first import
    zipfile and its readers, a tenth of a `run --select KVM`), else what
    importlib.resources gives (a zip archive)."""
    try:
        spec = importlib.util.find_spec("playbooks")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or ()) if spec is not None else []
    if spec is not None and spec.origin and len(locations) == 1 and os.path.isdir(locations[0]):
        return Path(locations[0])
    from importlib import resources

    return resources.files("playbooks")


COMPILED_NAME = "compiled.json"


def _sources(base: Any) -> list[tuple[str, str]]:
    """(file name, text) of every playbook in `base`, by name."""
    entries = sorted((e for e in base.iterdir() if e.name.endswith(".yaml")), key=lambda e: e.name)
    return [(e.name, e.read_text(encoding="utf-8")) for e in entries]


def _digest(sources: list[tuple[str, str]], schema_text: str) -> str:
    import hashlib

    digest = hashlib.sha256(schema_text.encode())
    for name, text in sources:
        digest.update(f"\0{name}\0".encode())
        digest.update(text.encode())
    return digest.hexdigest()


def _stamp(base: Any) -> dict[str, int]:
    """The size in bytes of every playbook in `base` and of the schema, by file name."""
    sizes = {e.name: len(e.read_bytes()) for e in base.iterdir() if e.name.endswith(".yaml")}
    sizes[SCHEMA_NAME] = len((_shipped() / SCHEMA_NAME).read_bytes())
    return dict(sorted(sizes.items()))


def _stat_stamp(base: Any) -> Optional[dict[str, int]]:
    """`_stamp` from the directory's entries, without reading a file (None when `base` is
    not a directory on disk, e.g. a zip archive)."""
    schema = _shipped() / SCHEMA_NAME
    if not isinstance(base, Path) or not isinstance(schema, Path):
        return None
    try:
        with os.scandir(base) as entries:
            sizes = {e.name: e.stat().st_size for e in entries if e.name.endswith(".yaml")}
        sizes[SCHEMA_NAME] = schema.stat().st_size
    except OSError:
        return None
    return dict(sorted(sizes.items()))


def compile_shipped() -> dict[str, Any]:
    """The shipped playbooks parsed and validated, as playbooks/compiled.json holds them: what
    a run loads instead of parsing YAML and validating every file against the schema again
    (`make docs` writes it; tests/test_playbooks.py fails when it is stale). `digest` is the
    SHA-256 of the YAML files and the schema, `stamp` their sizes: what a run compares.
    `runs` holds each signature's `literal_runs`, which a run would otherwise compute from
    every expression before reading a log line."""
    base = _shipped()
    schema_text = (base / SCHEMA_NAME).read_text(encoding="utf-8")
    sources = _sources(base)
    book = load()
    if book.errors:
        raise PlaybookInvalid("; ".join(f"{e.file}: {e.message}" for e in book.errors))
    return {
        "digest": _digest(sources, schema_text),
        "stamp": _stamp(base),
        "playbooks": {name: _yaml_load(text) for name, text in sources},
        "runs": {pattern: literal_runs(pattern) for pattern in sorted(set(book.patterns()))},
    }


def _compiled(base: Any) -> Optional[dict[str, Any]]:
    """compiled.json in `base` (its `playbooks` and `runs`) when it is current, else None.

    Current means: the same playbook files, each and the schema of the same size in bytes
    (`stamp`, read from the directory's entries: no file is read). An edit that keeps a file's
    size is not seen here; tests/test_playbooks.py compares the whole content (`digest`), so
    such a compiled.json cannot be committed. Where the files are not on disk, the digest is
    computed."""
    try:
        compiled = json.loads((base / COMPILED_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(compiled, dict) or not isinstance(compiled.get("playbooks"), dict):
        return None
    stamp = _stat_stamp(base)
    if stamp is not None:
        current = compiled.get("stamp") == stamp
    else:
        schema_text = (_shipped() / SCHEMA_NAME).read_text(encoding="utf-8")
        current = compiled.get("digest") == _digest(_sources(base), schema_text)
    return compiled if current else None


def load(directory: Optional[Path] = None, *, use_compiled: bool = False) -> Playbooks:
    """Every playbook in `directory` (default: the shipped ones). Files that do not parse or
    validate are listed in `errors` with their names; the others load. With `use_compiled`,
    they come from the directory's compiled.json when it is current (`_compiled`): no YAML is
    read, nothing validated again, and no signature compiled before a line reaches it."""
    base: Any = directory if directory is not None else _shipped()
    written = _compiled(base) if use_compiled else None
    compiled = written["playbooks"] if written is not None else None
    book = Playbooks()
    if compiled is not None:
        entries: list[tuple[str, Any]] = sorted(compiled.items())
        validator = None
        runs = written.get("runs") if written is not None else None
        if isinstance(runs, dict):
            book._runs.update(runs)
    else:
        entries = _sources(base)
        validator = _schema_validator((_shipped() / SCHEMA_NAME).read_text(encoding="utf-8"))
    for name, text in entries:
        label = f"playbooks/{name}" if directory is None else str(Path(str(base)) / name)
        if compiled is not None and _deferrable(text, name):
            if text["id"] in book._pending or text["id"] in book._items:
                book.errors.append(PlaybookError(label, f"duplicate id {text['id']!r}"))
            else:
                book._defer(text["id"], label, text)
            continue
        try:
            data = text if compiled is not None else _yaml_load(text)
            playbook = parse(data, label, validator)
        except PlaybookInvalid as exc:
            book.errors.append(PlaybookError(label, str(exc)))
            continue
        except Exception as exc:  # noqa: BLE001 - YAML syntax errors come in many classes
            reason = str(exc).replace("\n", " ")
            book.errors.append(PlaybookError(label, f"{type(exc).__name__}: {reason}"))
            continue
        if playbook.id in book._items or playbook.id in book._pending:
            book.errors.append(PlaybookError(label, f"duplicate id {playbook.id!r}"))
            continue
        book._items[playbook.id] = playbook
        book._order.append(playbook.id)
    return book


def _deferrable(data: Any, name: str) -> bool:
    """Compiled data whose parse can wait: its id is its file's name (what parse checks
    first; data that fails it is parsed at once, to report it where load reports)."""
    return (
        isinstance(data, dict)
        and isinstance(data.get("id"), str)
        and data["id"] == os.path.basename(name).rsplit(".", 1)[0]
        and isinstance(data.get("when"), dict)
    )


def _when_codes(data: Any) -> set[str]:
    """The check codes of the conditions (not the premises) of a playbook's compiled `when`,
    as written and upper-cased (a code that matches no finding only costs a parse)."""
    codes: set[str] = set()
    when = data.get("when") if isinstance(data, dict) else None
    for conditions in (when or {}).values() if isinstance(when, dict) else ():
        for raw in conditions if isinstance(conditions, list) else ():
            if isinstance(raw, dict) and "not" not in raw and isinstance(raw.get("code"), str):
                codes.update((raw["code"], raw["code"].upper()))
    return codes


@lru_cache(maxsize=1)
def shipped() -> Playbooks:
    """The playbooks kvmdoctor ships, loaded once per process (from compiled.json when it is
    current, else parsed and validated)."""
    return load(use_compiled=True)


if __name__ == "__main__":  # python -m doctor.playbooks: write playbooks/compiled.json
    import sys

    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(str(_shipped() / COMPILED_NAME))
    target.write_text(
        json.dumps(compile_shipped(), indent=1, sort_keys=True) + "\n", encoding="utf-8"
    )


def codes_without_playbook(codes: Iterable[str], book: Playbooks) -> list[str]:
    """Check codes that no playbook's `when` names."""
    covered = {code for p in book for code in p.codes}
    return sorted(set(codes) - covered)
