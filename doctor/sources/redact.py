"""Secrets never leave the host through kvmdoctor: passwords and secret values in files, logs,
command output, process command lines and libvirt's answers are blanked where the source
answers (ScrubbedSource), before any check, report, renderer or snapshot sees them; private
key files and libvirt's secret store are never recorded at all.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any, Optional

from doctor.lazyre import lazy
from doctor.sources.base import (
    CommandResult,
    Identity,
    KeyInfo,
    KvmProbe,
    ProcessFilter,
    ProcessInfo,
    Source,
    StatInfo,
    Uname,
)

# No `<`, `>`, `&`, quotes or spaces: the blanked value stays valid in XML attributes (a
# domain definition with a graphics password must still parse), JSON, and unquoted options.
REDACTED = "REDACTED-by-kvmdoctor"

# Directories and names whose contents are never recorded: libvirt secrets and private keys.
_NEVER_DIRS = ("/etc/libvirt/secrets/", "/var/lib/libvirt/secrets/", "/run/libvirt/secrets/")
_NEVER_NAME = lazy(r"(^|/)(private/|[^/]*key\.pem$|[^/]*\.key$)")


def never_recorded(path: str) -> Optional[str]:
    """Why the file's contents must not enter a snapshot, or None when they may."""
    if path.startswith(_NEVER_DIRS):
        return "libvirt secret values are never recorded"
    if _NEVER_NAME.search(path):
        return "private key material is never recorded"
    return None


# A PEM private key inside any other file (a certificate file that also holds its key): the
# block is replaced, up to its END line or, when it has none, to the end of the file.
_PEM_PRIVATE_KEY = lazy(
    rb"-----BEGIN (?P<label>[A-Z0-9 ]*PRIVATE KEY)-----.*?(?:-----END (?P=label)-----|\Z)",
    re.DOTALL,
)


def scrub(path: str, data: bytes) -> tuple[bytes, list[str]]:
    """The contents to give or record for `path`, and the names of the settings blanked out."""
    keys: list[str] = []

    def blank_key(match: re.Match[bytes]) -> bytes:
        keys.append("private key")
        return REDACTED.encode()

    if b"PRIVATE KEY" in data:
        data = _PEM_PRIVATE_KEY.sub(blank_key, data)
    data, settings = scrub_bytes(data)
    return data, sorted(set(keys + settings))


# A secret as a setting, an option or an attribute, in every form the host writes one:
#   qemu.conf / libvirtd.conf   vnc_password = "x"    spice_password = 'x'
#   QEMU's command line         -spice port=5901,password=x   -vnc ...,password="x"
#   libvirtd's debug log        <graphics type='vnc' passwd='x'/> (define XML echoed)
#   secret objects              -object secret,id=s0,data=x   {"qom-type":"secret","data":"x"}
#   other tools                 --password=x   password: "x"
# The key names what is secret; the value runs to its closing quote, or to a comma, space or
# the end of the line when it is not quoted. `data=` counts only near the word "secret".
_SETTING = re.compile(
    r"""
    (?P<key>
        (?<![A-Za-z0-9])[A-Za-z0-9_-]*(?:password|passwd|secret)[A-Za-z0-9_]*
      | (?<![A-Za-z0-9_])data
    )
    (?P<sep>
        \s*=\s*                     # key=value, key = "value", passwd='value'
      | ["']\s*:\s*(?=["'])         # "key": "value" (JSON)
      | \s*:\s+(?=["'])             # key: "value" (YAML, prose)
    )
    (?P<value>
        "(?:[^"\\\n]|\\.)*"
      | '(?:[^'\\\n]|\\.)*'
      | &quot;.*?&quot; | &apos;.*?&apos;
      | [^,\s"'<>}]+
    )
    """,
    re.IGNORECASE | re.VERBOSE,
)
_HINT = re.compile(rb"(?i)passw|secret")
# Every key _SETTING blanks holds one of these words (a `data=` value only near "secret"), so
# text without them is returned as it is, without running _SETTING over each of its lines.
_TEXT_HINT = re.compile(r"(?i)passw|secret")
_QUOTES = ('"', "'", "&quot;", "&apos;")


def _hinted(text: str) -> bool:
    """`_TEXT_HINT.search(text)`: an ASCII text by `in` on its lower case (the same answer,
    ~40 times faster on a kernel log than the case-blind expression); other text, where
    IGNORECASE also folds some letters outside ASCII (the long s), by the expression."""
    if text.isascii():
        lower = text.lower()
        return "passw" in lower or "secret" in lower
    return _TEXT_HINT.search(text) is not None


def _hinted_bytes(data: bytes) -> bool:
    """`_HINT.search(data)`: a bytes expression's IGNORECASE folds ASCII only, as bytes.lower."""
    lower = data.lower()
    return b"passw" in lower or b"secret" in lower


def scrub_text(text: str) -> tuple[str, list[str]]:
    """`text` with every secret value blanked (the key and its quotes kept), and the keys."""
    if not _hinted(text):
        return text, []
    return _scrub_settings(text)


# Where a match of _SETTING can start: its key's first character. In a long text (a log
# tail, the journal) _SETTING is tried only there, on lines that hold a key word, and matched
# against the whole text (a separator and value may run over lines): the same matches as
# _SETTING.sub over the whole text, without trying it at every character. An ASCII line
# without the words cannot hold a key (IGNORECASE folds some other characters to ASCII
# letters: any other line is tried).
_KEY_START = re.compile(
    r"(?<![A-Za-z0-9])(?=[A-Za-z0-9_-]*(?:password|passwd|secret))|(?<![A-Za-z0-9_])(?=data)",
    re.IGNORECASE,
)
_KEY_WORDS = ("passw", "secret", "data")
_WHOLE_TEXT = 4096


def _key_starts(text: str) -> Iterator[int]:
    """Every position in `text` where a key of _SETTING may start, in order. In an ASCII
    text the lines that hold a key word are found by searching the whole text's lower case
    for each word (a word holds no newline, so a line holds one exactly when its lower case
    does), not by lowering and searching every line; other text line by line."""
    if not text.isascii():
        yield from _key_starts_by_line(text)
        return
    lower = text.lower()
    starts: set[int] = set()
    for word in _KEY_WORDS:
        position = lower.find(word)
        while position >= 0:
            starts.add(lower.rfind("\n", 0, position) + 1)
            end = lower.find("\n", position)
            if end < 0:
                break
            position = lower.find(word, end)
    for start in sorted(starts):
        end = text.find("\n", start)
        for key in _KEY_START.finditer(text, start, len(text) if end < 0 else end):
            yield key.start()


def _key_starts_by_line(text: str) -> Iterator[int]:
    """_key_starts, trying each line: any line outside ASCII, or that holds a key word."""
    start = 0
    for line in text.split("\n"):
        end = start + len(line)
        if not line.isascii() or any(word in line.lower() for word in _KEY_WORDS):
            for key in _KEY_START.finditer(text, start, end):
                yield key.start()
        start = end + 1


def _scrub_settings(text: str, whole: bool = False) -> tuple[str, list[str]]:
    """`whole`: run _SETTING over every character (what _key_starts spares long texts)."""
    found: list[str] = []

    def blank(match: re.Match[str]) -> str:
        key, value = match.group("key"), match.group("value")
        if key.lower() == "data":
            before = text[max(0, match.start() - 80) : match.start()].lower()
            if "secret" not in before:
                return match.group(0)  # data=... outside a secret object is not a secret
        quote = next((q for q in _QUOTES if value.startswith(q) and len(value) > len(q)), "")
        found.append(key)
        return f"{key}{match.group('sep')}{quote}{REDACTED}{quote}"

    if whole or len(text) < _WHOLE_TEXT:
        return _SETTING.sub(blank, text), sorted(set(found))
    parts = []
    done = 0
    for position in _key_starts(text):
        if position < done:
            continue
        match = _SETTING.match(text, position)
        if match is not None:
            parts += [text[done:position], blank(match)]
            done = match.end()
    parts.append(text[done:])
    return "".join(parts), sorted(set(found))


def scrub_bytes(data: bytes) -> tuple[bytes, list[str]]:
    if not _hinted_bytes(data):
        return data, []
    text, found = scrub_text(data.decode("utf-8", "surrogateescape"))
    return text.encode("utf-8", "surrogateescape"), found


def scrub_log_line(line: str) -> str:
    """A log line (or a command-line argument) with its secrets blanked."""
    return scrub_text(line)[0]


# A command-line option whose value is the next argument: `--password x`.
_SECRET_OPTION = re.compile(r"-{1,2}[A-Za-z0-9_-]*(?:password|passwd|secret)[A-Za-z0-9_-]*", re.I)


def scrub_argv(argv: Sequence[str]) -> tuple[str, ...]:
    """A process's command line with its secrets blanked: inline ones, and the argument after
    an option such as --password."""
    out: list[str] = []
    for arg in argv:
        if out and _SECRET_OPTION.fullmatch(out[-1]) and not arg.startswith("-"):
            out.append(REDACTED)
        else:
            out.append(scrub_log_line(arg))
    return tuple(out)


def _scrub_value(value: Any) -> Any:
    """A libvirt answer (XML text, or lists and dicts of them) with its secrets blanked."""
    if isinstance(value, str):
        return scrub_log_line(value) if _hinted_bytes(value.encode("utf-8", "replace")) else value
    if isinstance(value, list):
        return [_scrub_value(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_scrub_value(v) for v in value)
    if isinstance(value, dict):
        return {k: _scrub_value(v) for k, v in value.items()}
    return value


class ScrubbedSource:
    """Any source, with every answer that can carry a secret scrubbed: file contents, command
    output (the journal among them), process command lines, libvirt's XML. This is the one
    redaction layer: checks, reports, renderers and recorded snapshots all see its answers.
    A private key is still loaded inside the inner source (`key_info`), which gives out only
    the public half."""

    def __init__(self, inner: Source) -> None:
        self.inner: Any = inner
        self.kind = inner.kind

    def __getattr__(self, name: str) -> Any:  # what a particular source offers besides
        return getattr(self.inner, name)

    # Answers that carry no secret pass as they are.
    def list_dir(self, path: str) -> list[str]:
        return self.inner.list_dir(path)

    def stat(self, path: str) -> StatInfo:
        return self.inner.stat(path)

    def read_link(self, path: str) -> str:
        return self.inner.read_link(path)

    def identity(self) -> Identity:
        return self.inner.identity()

    def uname(self) -> Uname:
        return self.inner.uname()

    def environ(self, name: str) -> Optional[str]:
        return self.inner.environ(name)

    def kvm_probe(self, path: str = "/dev/kvm") -> KvmProbe:
        return self.inner.kvm_probe(path)

    def read_msr(self, register: int, cpu: int = 0) -> int:
        return self.inner.read_msr(register, cpu)

    def clock(self) -> float:
        return self.inner.clock()

    def key_info(self, path: str) -> KeyInfo:
        return self.inner.key_info(path)

    def netlink(self, request: str, netns: Optional[str] = None) -> list[dict[str, Any]]:
        return self.inner.netlink(request, netns)

    def describe(self) -> dict[str, Any]:
        return dict(self.inner.describe())

    def read_file(self, path: str, **kw: Any) -> bytes:
        return scrub(path, self.inner.read_file(path, **kw))[0]

    def prefetch(self, commands: Sequence[Sequence[str]]) -> None:
        start = getattr(self.inner, "prefetch", None)
        if start is not None:
            start(commands)

    def run(self, argv: Sequence[str], **kw: Any) -> CommandResult:
        result = self.inner.run(argv, **kw)
        return replace(
            result,
            argv=scrub_argv(result.argv),
            stdout=scrub_text(result.stdout)[0],
            stderr=scrub_text(result.stderr)[0],
        )

    def processes(self, wanted: Optional[ProcessFilter] = None) -> list[ProcessInfo]:
        procs = self.inner.processes(wanted)
        return [replace(p, cmdline=scrub_argv(p.cmdline)) for p in procs]

    def libvirt(self, uri: Optional[str], request: str, **params: Any) -> Any:
        return _scrub_value(self.inner.libvirt(uri, request, **params))

    def close(self) -> None:
        self.inner.close()
