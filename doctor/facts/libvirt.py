"""libvirt configuration facts: qemu.conf and the connection URI in effect."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Optional, Union

from doctor.facts import FactContext, FactUnavailable, fact
from doctor.facts.util import read_text
from doctor.sources.base import NotFound, SourceError

ConfValue = Union[str, int, list]
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<comment>\#[^\n]*)
      | (?P<string>"(?:[^"\\]|\\.)*"|'[^']*')
      | (?P<number>-?\d+)
      | (?P<name>[A-Za-z_][A-Za-z0-9_.]*)
      | (?P<punct>[=\[\],;])
      | (?P<newline>\n)
    )""",
    re.VERBOSE,
)


class ConfError(ValueError):
    pass


def parse_conf(text: str) -> dict[str, ConfValue]:
    """Parse libvirt's configuration syntax (libvirtd.conf, qemu.conf, libvirt.conf):
    `name = "string" | number | [ "list", ... ]`, `#` comments, lists across lines."""
    tokens = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            if text[pos:].strip() == "":
                break
            line = text.count("\n", 0, pos) + 1
            raise ConfError(f"line {line}: cannot parse {text[pos:pos + 20].strip()!r}")
        pos = match.end()
        kind = match.lastgroup
        if kind in ("comment", None):
            continue
        tokens.append((kind, match.group(kind), text.count("\n", 0, match.start()) + 1))
    values: dict[str, ConfValue] = {}
    i = 0

    def expect_value(i: int) -> tuple[ConfValue, int]:
        while tokens[i][0] == "newline":
            i += 1
        kind, value, line = tokens[i]
        if kind == "string":
            return _unquote(value), i + 1
        if kind == "number":
            return int(value), i + 1
        if kind == "punct" and value == "[":
            items: list[ConfValue] = []
            i += 1
            while True:
                while tokens[i][0] == "newline":
                    i += 1
                if tokens[i][1] == "]":
                    return items, i + 1
                item, i = expect_value(i)
                items.append(item)
                while tokens[i][0] == "newline":
                    i += 1
                if tokens[i][1] == ",":
                    i += 1
        raise ConfError(f"line {line}: expected a value, found {value!r}")

    try:
        while i < len(tokens):
            kind, value, line = tokens[i]
            if kind in ("newline",) or value == ";":
                i += 1
                continue
            if kind != "name" or tokens[i + 1][1] != "=":
                raise ConfError(f"line {line}: expected 'name = value'")
            values[value], i = expect_value(i + 2)
    except IndexError:
        raise ConfError("unexpected end of file") from None
    return values


def _unquote(token: str) -> str:
    if token.startswith("'"):
        return token[1:-1]
    return re.sub(r"\\(.)", r"\1", token[1:-1])


@dataclass(frozen=True)
class QemuConf:
    path: str
    exists: bool
    values: dict[str, Any]
    error: Optional[str] = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@fact("qemu_conf")
def qemu_conf(ctx: FactContext) -> QemuConf:
    path = "/etc/libvirt/qemu.conf"
    try:
        text = read_text(ctx.source, path)
    except NotFound:
        return QemuConf(path, False, {})
    except SourceError as exc:
        raise FactUnavailable(f"{path}: {exc.reason}") from None
    try:
        return QemuConf(path, True, parse_conf(text))
    except ConfError as exc:
        return QemuConf(path, True, {}, error=str(exc))


@dataclass(frozen=True)
class LibvirtUri:
    uri: Optional[str]  # None: libvirt picks its default
    origin: str  # "--uri", "LIBVIRT_DEFAULT_URI", "default"
    session: bool  # a per-user (qemu:///session) connection

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@fact("uri")
def uri(ctx: FactContext) -> LibvirtUri:
    if ctx.options.uri:
        return LibvirtUri(ctx.options.uri, "--uri", "/session" in ctx.options.uri)
    try:
        env = ctx.source.environ("LIBVIRT_DEFAULT_URI")
    except SourceError:
        env = None
    if env:
        return LibvirtUri(env, "LIBVIRT_DEFAULT_URI", "/session" in env)
    # Without a URI libvirt connects non-root users to qemu:///session.
    try:
        ident = ctx.source.identity()
        session = ident.euid != 0
    except SourceError:
        session = False
    return LibvirtUri(None, "default", session)
