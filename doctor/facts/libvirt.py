"""libvirt configuration facts: qemu.conf and the connection URI in effect."""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any, Optional, Union

from doctor.facts import FactContext, FactUnavailable, fact
from doctor.facts.util import read_text
from doctor.record import record
from doctor.sources.base import NotFound, SourceError, Unavailable

ConfValue = Union[str, int, list]
_BLANK = " \t"
_EOL = "\n\r"
_DIGITS = "0123456789"
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_TO_EOL = re.compile(r"[^\n\r]*")
# A run of comment lines with the blank space after each (most of a shipped qemu.conf): what
# the statement loop would skip one comment and one separator at a time.
_COMMENTS = re.compile(r"#[^\n\r]*(?:[ \t\n\r]*#[^\n\r]*)*[ \t\n\r]*")
_RUNS: dict[str, re.Pattern[str]] = {}


class ConfError(ValueError):
    pass


def parse_conf(text: str) -> dict[str, ConfValue]:
    """Parse libvirt's configuration syntax (libvirtd.conf, qemu.conf, libvirt.conf) as
    libvirt's own parser does (src/util/virconf.c): `name = value` statements separated by
    newlines or `;`; values are "strings", 'strings', \"\"\"strings\"\"\" (the only kind that
    may span lines; no escapes in any), integers, and [lists] that may span lines but hold
    no comments; `#` comments on their own line or after a value. When a name is set twice,
    libvirt uses the first setting, and so does this. Raises ConfError where libvirt would
    refuse the file."""
    return _ConfParser(text).parse()


class _ConfParser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, message: str) -> ConfError:
        line = self.text.count("\n", 0, self.pos) + 1
        return ConfError(f"line {line}: {message}")

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip(self, chars: str) -> None:
        pattern = _RUNS.get(chars)
        if pattern is None:
            pattern = _RUNS[chars] = re.compile(f"[{re.escape(chars)}]*")
        match = pattern.match(self.text, self.pos)
        if match:
            self.pos = match.end()

    def skip_to_eol(self) -> None:
        match = _TO_EOL.match(self.text, self.pos)
        if match:
            self.pos = match.end()

    def parse(self) -> dict[str, ConfValue]:
        values: dict[str, ConfValue] = {}
        while self.pos < len(self.text):
            self.skip(_BLANK + _EOL)
            # Only reached at the start: a separator eats the blanks after a statement. So,
            # as in libvirt, a file of nothing but blank lines is "expecting a name".
            if self.peek() == "#":
                match = _COMMENTS.match(self.text, self.pos)
                assert match is not None  # it matches any "#"
                self.pos = match.end()
                continue
            name, value = self.statement()
            values.setdefault(name, value)
            self.separator()
        return values

    def statement(self) -> tuple[str, ConfValue]:
        match = _NAME.match(self.text, self.pos)
        if match is None:
            raise self.error("expecting a name")
        self.pos = match.end()
        self.skip(_BLANK)
        if self.peek() != "=":
            raise self.error("expecting an assignment")
        self.pos += 1
        value = self.value()
        self.skip(_BLANK)
        if self.peek() == "#":
            self.skip_to_eol()
        return match.group(), value

    def separator(self) -> None:
        self.skip(_BLANK)
        char = self.peek()
        if char == "" or char in _EOL:
            self.skip(_BLANK + _EOL)
        elif char == ";":
            self.pos += 1
            self.skip(_BLANK + _EOL)
        else:
            raise self.error("expecting a separator")

    def value(self) -> ConfValue:
        self.skip(_BLANK)
        char = self.peek()
        if char == "":
            raise self.error("expecting a value")
        if char in "\"'":
            return self.string()
        if char == "[":
            return self.list()
        if char in _DIGITS or char in "+-":
            return self.number()
        raise self.error("expecting a value")

    def string(self) -> str:
        text, start = self.text, self.pos
        if text.startswith('"""', start) and start + 6 < len(text):
            end = text.find('"""', start + 3)
            if end < 0:
                raise self.error("unterminated string")
            self.pos = end + 3
            return text[start + 3 : end]
        quote = text[start]
        self.pos += 1
        self.skip_to_quote(quote)
        if self.peek() != quote:
            raise self.error("unterminated string")
        self.pos += 1
        return text[start + 1 : self.pos - 1]

    def skip_to_quote(self, quote: str) -> None:
        while self.pos < len(self.text) and self.text[self.pos] not in quote + _EOL:
            self.pos += 1

    def list(self) -> list[ConfValue]:
        self.pos += 1
        self.skip(_BLANK + _EOL)
        items: list[ConfValue] = []
        if self.peek() not in ("", "]"):
            items.append(self.value())
            self.skip(_BLANK + _EOL)
        while self.peek() not in ("", "]"):
            if self.peek() != ",":
                raise self.error("expecting a separator in list")
            self.pos += 1
            self.skip(_BLANK + _EOL)
            if self.peek() == "]":
                break
            items.append(self.value())
            self.skip(_BLANK + _EOL)
        if self.peek() != "]":
            raise self.error("list is not closed with ]")
        self.pos += 1
        return items

    def number(self) -> int:
        start = self.pos
        if self.peek() in "+-":
            self.pos += 1
        if self.peek() == "" or self.peek() not in _DIGITS:
            raise self.error("unterminated number")
        self.skip(_DIGITS)
        return int(self.text[start : self.pos])


@record
class QemuConf:
    path: str
    exists: bool
    values: dict[str, Any]
    error: Optional[str] = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# The configuration files libvirt's daemons and clients parse at start, with who reads them.
CONF_FILES = {
    "/etc/libvirt/libvirtd.conf": "libvirtd",
    "/etc/libvirt/qemu.conf": "the QEMU driver (libvirtd or virtqemud)",
    "/etc/libvirt/virtqemud.conf": "virtqemud",
    "/etc/libvirt/virtproxyd.conf": "virtproxyd",
    "/etc/libvirt/virtnetworkd.conf": "virtnetworkd",
    "/etc/libvirt/virtstoraged.conf": "virtstoraged",
    "/etc/libvirt/virtlogd.conf": "virtlogd",
    "/etc/libvirt/network.conf": "the network driver",
    "/etc/libvirt/libvirt.conf": "every libvirt client (virsh, virt-manager)",
}


@record
class ConfFile:
    path: str
    reader: str  # who refuses to start (or to connect) when it does not parse
    error: Optional[str] = None  # where libvirt's parser stops, as it would say it
    unreadable: Optional[str] = None


@record
class LibvirtConfFiles:
    """libvirt's configuration files on the host, each parsed as libvirt parses it."""

    files: tuple[ConfFile, ...]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@fact("libvirt_conf_files")
def libvirt_conf_files(ctx: FactContext) -> LibvirtConfFiles:
    found = []
    for path, reader in CONF_FILES.items():
        try:
            text = read_text(ctx.source, path)
        except (NotFound, Unavailable):  # absent, or a snapshot that did not record it
            continue
        except SourceError as exc:
            found.append(ConfFile(path, reader, unreadable=exc.reason))
            continue
        try:
            parse_conf(text)
        except ConfError as exc:
            found.append(ConfFile(path, reader, error=str(exc)))
        else:
            found.append(ConfFile(path, reader))
    return LibvirtConfFiles(tuple(found))


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


@record
class LibvirtUri:
    uri: Optional[str]  # None: libvirt picks its default
    origin: str  # "--uri", "LIBVIRT_DEFAULT_URI", "uri_default in <libvirt.conf>", "default"
    session: bool  # a per-user (qemu:///session) connection
    given: Optional[str] = None  # what the user wrote, when an alias was resolved
    client_conf: Optional[str] = None  # the libvirt.conf the client reads
    remote_mode: Optional[str] = None  # libvirt.conf remote_mode: auto, legacy, direct

    @property
    def effective(self) -> str:
        """The URI, or what libvirt's probe gives on a QEMU host when there is none."""
        return self.uri or ("qemu:///session" if self.session else "qemu:///system")

    @property
    def parts(self) -> UriParts:
        return split_uri(self.effective)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["effective"] = self.effective
        out["parts"] = asdict(self.parts)
        return out


@record
class UriParts:
    driver: str  # "qemu", "test", "xen", ...
    transport: Optional[str]  # "tls", "unix", "ssh", "tcp", "libssh", "libssh2", "ext"; None
    host: Optional[str]
    port: Optional[int]
    path: str  # "/system", "/session", or a test-driver file
    params: dict[str, str]

    @property
    def implied_transport(self) -> str:
        """What libvirt uses: the explicit transport; TLS for a host without one; else unix."""
        return self.transport or ("tls" if self.host else "unix")

    @property
    def remote(self) -> bool:
        return self.host is not None

    @property
    def local_daemon(self) -> bool:
        """Whether the connection goes to a daemon's UNIX socket on this host."""
        return self.driver != "test" and self.implied_transport == "unix"


def split_uri(text: str) -> UriParts:
    """Split a libvirt URI as libvirt does (remoteSplitURIScheme): driver[+transport]://..."""
    from urllib.parse import parse_qsl, urlsplit

    parsed = urlsplit(text)
    driver, _, transport = parsed.scheme.partition("+")
    try:
        port = parsed.port
    except ValueError:
        port = None
    return UriParts(
        driver=driver,
        transport=transport.lower() or None,
        host=parsed.hostname or None,
        port=port,
        path=parsed.path,
        params=dict(parse_qsl(parsed.query)),
    )


SYSTEM_CLIENT_CONF = "/etc/libvirt/libvirt.conf"


@fact("uri")
def uri(ctx: FactContext) -> LibvirtUri:
    """The URI libvirt's client library would connect to, in its own order of precedence
    (virConnectOpen): an explicit URI, $LIBVIRT_DEFAULT_URI, `uri_default` in the client's
    libvirt.conf (/etc/libvirt for root, ~/.config/libvirt for other users), and then its
    probe, which gives non-root users qemu:///session. Names in the client's `uri_aliases`
    are resolved as libvirt resolves them."""
    try:
        root = ctx.source.identity().euid == 0
    except SourceError:
        root = True  # a tree or a snapshot without it: the host's own (system) configuration
    path = SYSTEM_CLIENT_CONF if root else _user_client_conf(ctx)
    conf = _client_conf(ctx, path) if path else {}
    mode = conf.get("remote_mode")
    extra = {"client_conf": path, "remote_mode": mode if isinstance(mode, str) else None}
    chosen: Optional[str] = None
    origin = "default"
    if ctx.options.uri:
        chosen, origin = ctx.options.uri, "--uri"
    elif env := _environ(ctx, "LIBVIRT_DEFAULT_URI"):
        chosen, origin = env, "LIBVIRT_DEFAULT_URI"
    elif isinstance(conf.get("uri_default"), str) and conf["uri_default"]:
        chosen, origin = str(conf["uri_default"]), f"uri_default in {path}"
    if chosen is None:
        return LibvirtUri(None, origin, not root, **extra)
    resolved = _alias(conf, chosen)
    if resolved is not None:
        return LibvirtUri(
            resolved,
            f"{origin}, alias in uri_aliases of {path}",
            "/session" in resolved,
            given=chosen,
            **extra,
        )
    return LibvirtUri(chosen, origin, "/session" in chosen, **extra)


def _alias(conf: dict[str, Any], name: str) -> Optional[str]:
    """libvirt resolves a URI without ':' through uri_aliases ("name=uri" strings)."""
    if ":" in name:
        return None
    for entry in conf.get("uri_aliases") or []:
        if isinstance(entry, str) and "=" in entry:
            alias, _, target = entry.partition("=")
            if alias == name:
                return target
    return None


def _client_conf(ctx: FactContext, path: str) -> dict[str, Any]:
    try:
        return parse_conf(read_text(ctx.source, path))
    except (SourceError, ConfError):
        return {}


def _environ(ctx: FactContext, name: str) -> Optional[str]:
    try:
        return ctx.source.environ(name)
    except SourceError:
        return None


def _user_client_conf(ctx: FactContext) -> Optional[str]:
    config_home = _environ(ctx, "XDG_CONFIG_HOME")
    if not config_home:
        home = _environ(ctx, "HOME")
        config_home = f"{home.rstrip('/')}/.config" if home else None
    return f"{config_home.rstrip('/')}/libvirt/libvirt.conf" if config_home else None


# --- libvirt's RelaxNG schemas -----------------------------------------------------------------

SCHEMA_DIR = "/usr/share/libvirt/schemas"  # installed by libvirt-daemon / libvirt-clients
DOMAIN_SCHEMA = "domain.rng"


@record
class LibvirtSchemas:
    """The RelaxNG schemas libvirt installs (domain.rng and the files it includes), as text:
    what `virsh define --validate` validates a definition against."""

    directory: str
    files: dict[str, str]  # file name -> text

    def as_dict(self) -> dict[str, Any]:
        return {"directory": self.directory, "files": sorted(self.files)}


@fact("libvirt_schemas")
def libvirt_schemas(ctx: FactContext) -> LibvirtSchemas:
    try:
        names = [n for n in ctx.source.list_dir(SCHEMA_DIR) if n.endswith(".rng")]
    except SourceError as exc:
        raise FactUnavailable(
            f"libvirt's schemas ({SCHEMA_DIR}, installed with libvirt): {exc.reason}"
        ) from None
    if DOMAIN_SCHEMA not in names:
        raise FactUnavailable(f"libvirt's schemas: {SCHEMA_DIR} has no {DOMAIN_SCHEMA}")
    files = {}
    for name in sorted(names):
        try:
            files[name] = read_text(ctx.source, f"{SCHEMA_DIR}/{name}")
        except SourceError as exc:
            raise FactUnavailable(f"libvirt's schemas: {name}: {exc.reason}") from None
    return LibvirtSchemas(SCHEMA_DIR, files)
