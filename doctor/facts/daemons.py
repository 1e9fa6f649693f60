"""libvirt's daemons: which are installed, which sockets exist, which run, what systemd says;
which socket a local URI needs, and what happened when kvmdoctor connected."""

from __future__ import annotations

from dataclasses import asdict, field
from typing import Any, Optional

from doctor.facts import FactContext, FactUnavailable, fact
from doctor.facts.host import os_release_name
from doctor.facts.util import read_optional
from doctor.record import record
from doctor.sources.base import NotFound, SourceError, TimedOut, Unavailable

MONOLITHIC = "libvirtd"
MODULAR = (
    "virtqemud",
    "virtnetworkd",
    "virtstoraged",
    "virtproxyd",
    "virtnodedevd",
    "virtsecretd",
    "virtinterfaced",
    "virtnwfilterd",
)
HELPERS = ("virtlogd", "virtlockd")
ALL_DAEMONS = (MONOLITHIC, *MODULAR, *HELPERS)
BIN_DIRS = ("/usr/sbin", "/usr/bin", "/sbin", "/usr/local/sbin")
SYSTEM_SOCKET_DIR = "/run/libvirt"
# Distributions whose libvirt clients prefer the modular daemons when no socket exists yet
# (meson remote_default_mode=direct).
DIRECT_BY_DEFAULT = ("fedora", "rhel", "centos", "rocky", "almalinux", "ol", "opensuse-tumbleweed")


def socket_prefix(daemon: str) -> str:
    return "libvirt" if daemon in (MONOLITHIC, "virtproxyd") else daemon


@record
class Unit:
    name: str
    load: Optional[str]  # loaded, not-found, masked
    active: Optional[str]  # active, inactive, failed
    enabled: Optional[str]  # UnitFileState: enabled, disabled, static, masked


@record
class Daemon:
    name: str
    binary: Optional[str]  # where it is installed, None when not
    sockets: dict[str, bool]  # path -> exists as a socket
    pids: tuple[int, ...]
    units: tuple[Unit, ...] = ()

    @property
    def installed(self) -> bool:
        return self.binary is not None

    @property
    def running(self) -> bool:
        return bool(self.pids) or any(
            u.active == "active" for u in self.units if u.name.endswith(".service")
        )

    @property
    def main_socket(self) -> str:
        return next(iter(self.sockets))

    @property
    def listening(self) -> bool:
        return self.sockets.get(self.main_socket, False)


@record
class LibvirtDaemons:
    socket_dir: str
    daemons: dict[str, Daemon]
    systemd: bool
    distribution: Optional[str]  # os-release ID
    distribution_name: Optional[str]
    processes_known: bool = True  # False when the process list could not be read

    @property
    def installed(self) -> bool:
        return self.daemons[MONOLITHIC].installed or self.daemons["virtqemud"].installed

    @property
    def model(self) -> str:
        """How this host serves libvirt: modular, monolithic, both installed, or none."""
        mono = self.daemons[MONOLITHIC]
        qemud = self.daemons["virtqemud"]
        # A running daemon decides before a socket file, which may outlive its daemon.
        if qemud.running:
            return "modular"
        if mono.running:
            return "monolithic"
        if qemud.listening:
            return "modular"
        if mono.listening:
            return "monolithic"
        if mono.installed and qemud.installed:
            return "both installed"
        if qemud.installed:
            return "modular"
        if mono.installed:
            return "monolithic"
        return "none"

    def as_dict(self) -> dict[str, Any]:
        return {
            "socket_dir": self.socket_dir,
            "model": self.model,
            "systemd": self.systemd,
            "distribution": self.distribution,
            "processes_known": self.processes_known,
            "daemons": {
                n: {
                    "binary": d.binary,
                    "sockets": d.sockets,
                    "pids": list(d.pids),
                    "units": [asdict(u) for u in d.units],
                }
                for n, d in self.daemons.items()
                if d.installed or d.pids
            },
        }


def _binary(ctx: FactContext, name: str) -> Optional[str]:
    for directory in BIN_DIRS:
        path = f"{directory}/{name}"
        try:
            st = ctx.source.stat(path)
        except SourceError:
            continue
        if st.type == "file":
            return path
    return None


def _is_socket(ctx: FactContext, path: str) -> bool:
    try:
        return ctx.source.stat(path).type == "socket"
    except SourceError:
        return False


def _units(ctx: FactContext, names: list[str]) -> dict[str, Unit]:
    try:
        result = ctx.source.run(
            [
                "systemctl",
                "show",
                "--property=Id,LoadState,ActiveState,UnitFileState",
                "--",
                *names,
            ],
            timeout=10,
        )
    except SourceError:
        return {}
    units: dict[str, Unit] = {}
    for block in result.stdout.split("\n\n"):
        values = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if "Id" in values:
            units[values["Id"]] = Unit(
                values["Id"],
                values.get("LoadState"),
                values.get("ActiveState"),
                values.get("UnitFileState") or None,
            )
    return units


def daemon_socket_dir(ctx: FactContext, session: bool) -> str:
    if not session:
        return SYSTEM_SOCKET_DIR
    try:
        runtime = ctx.source.environ("XDG_RUNTIME_DIR")
    except SourceError:
        runtime = None
    if not runtime:
        try:
            runtime = f"/run/user/{ctx.source.identity().uid}"
        except SourceError:
            raise FactUnavailable("no runtime directory for a session connection") from None
    return f"{runtime.rstrip('/')}/libvirt"


def _a_daemon(name: str, exe: str) -> bool:
    return name in ALL_DAEMONS


@fact("libvirt_daemons")
def libvirt_daemons(ctx: FactContext) -> LibvirtDaemons:
    uri = ctx.get("uri")
    session = uri.session
    socket_dir = daemon_socket_dir(ctx, session)
    processes_known = True
    try:
        procs = ctx.source.processes(_a_daemon)
    except SourceError:
        procs, processes_known = [], False
    try:
        systemd = ctx.source.stat("/run/systemd/system").type == "dir"
    except SourceError:
        systemd = False
    units: dict[str, Unit] = {}
    if systemd:
        names = [f"{d}.{kind}" for d in ALL_DAEMONS for kind in ("service", "socket")]
        names += [
            "libvirtd-tls.socket",
            "libvirtd-tcp.socket",
            "virtproxyd-tls.socket",
            "virtproxyd-tcp.socket",
        ]
        units = _units(ctx, names)
    daemons = {}
    for name in ALL_DAEMONS:
        prefix = socket_prefix(name)
        paths = [f"{socket_dir}/{prefix}-sock"]
        if name not in HELPERS:
            paths.append(f"{socket_dir}/{prefix}-sock-ro")
        sockets = {p: _is_socket(ctx, p) for p in paths}
        pids = tuple(p.pid for p in procs if p.name == name)
        own = tuple(
            u
            for n, u in units.items()
            if n.split(".")[0].split("-")[0] == name or n.startswith(f"{name}.")
        )
        daemons[name] = Daemon(name, _binary(ctx, name), sockets, pids, own)
    release = read_optional(ctx.source, "/etc/os-release") or ""
    ident = next(
        (
            line.split("=", 1)[1].strip().strip("\"'")
            for line in release.splitlines()
            if line.startswith("ID=")
        ),
        None,
    )
    return LibvirtDaemons(
        socket_dir,
        daemons,
        systemd,
        ident,
        os_release_name(release) if release else None,
        processes_known,
    )


@record
class SocketChoice:
    """The UNIX socket a local URI connects to, chosen as libvirt's client chooses it
    (remoteGetUNIXSocket): the modular daemon's if it exists, else libvirtd's, else the
    build's default mode."""

    path: str
    exists: bool
    daemon: str  # the daemon that should be listening there
    mode: str  # "direct" (modular daemon) or "legacy" (libvirtd or virtproxyd)
    why: str
    alternatives: dict[str, bool] = field(default_factory=dict)


@fact("libvirt_socket")
def libvirt_socket(ctx: FactContext) -> SocketChoice:
    uri = ctx.get("uri")
    parts = uri.parts
    if not parts.local_daemon:
        raise FactUnavailable(f"{uri.effective} does not use a local daemon socket")
    state: LibvirtDaemons = ctx.get("libvirt_daemons")
    direct_daemon = f"virt{parts.driver}d"
    ro = parts.params.get("readonly") is not None
    suffix = "sock-ro" if ro else "sock"
    direct = f"{state.socket_dir}/{direct_daemon}-{suffix}"
    legacy = f"{state.socket_dir}/libvirt-{suffix}"
    alternatives = {direct: _is_socket(ctx, direct), legacy: _is_socket(ctx, legacy)}
    if "socket" in parts.params:
        path = parts.params["socket"]
        return SocketChoice(
            path,
            _is_socket(ctx, path),
            direct_daemon,
            "explicit",
            "the URI names the socket",
            alternatives,
        )
    mode = parts.params.get("mode") or uri.remote_mode or "auto"
    why = (
        f"mode={mode} in the URI"
        if "mode" in parts.params
        else (f"remote_mode = {mode} in {uri.client_conf}" if uri.remote_mode else "")
    )
    if mode == "auto":
        if alternatives[direct]:
            mode, why = "direct", f"{direct} exists"
        elif alternatives[legacy]:
            mode, why = "legacy", f"{legacy} exists"
        else:
            mode, why = _default_mode(state)
    if mode == "direct":
        return SocketChoice(direct, alternatives[direct], direct_daemon, mode, why, alternatives)
    daemon = (
        MONOLITHIC
        if state.daemons[MONOLITHIC].installed or not state.daemons["virtproxyd"].installed
        else "virtproxyd"
    )
    return SocketChoice(legacy, alternatives[legacy], daemon, "legacy", why, alternatives)


def _default_mode(state: LibvirtDaemons) -> tuple[str, str]:
    mono = state.daemons[MONOLITHIC].installed
    qemud = state.daemons["virtqemud"].installed
    if qemud and not mono:
        return "direct", "neither socket exists; only the modular daemons are installed"
    if mono and not qemud:
        return "legacy", "neither socket exists; only libvirtd is installed"
    if state.distribution in DIRECT_BY_DEFAULT:
        return "direct", (
            f"neither socket exists; {state.distribution_name or state.distribution}"
            " builds libvirt to prefer the modular daemons"
        )
    return "legacy", "neither socket exists; libvirt's default is the monolithic daemon"


# --- the connection --------------------------------------------------------------------------


@record
class Connection:
    uri: str
    ok: bool
    info: Optional[dict[str, Any]] = None  # getURI, hostname, versions
    error: Optional[str] = None
    error_kind: Optional[str] = None  # daemon-not-running, permission, auth, tls, timeout, ...
    details: dict[str, Any] = field(default_factory=dict)  # libvirt's code and domain
    # Whether the connection itself opened before the failure (a request after it hung).
    opened: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def classify(exc: SourceError) -> str:
    if isinstance(exc, TimedOut):
        return "timeout"
    details = exc.details
    code = details.get("code_name") or ""
    domain = details.get("domain_name") or ""
    text = exc.reason.lower()
    if any(w in text for w in ("tls", "certificate", "gnutls", "x509")):
        return "tls"
    if ("failed to connect socket" in text or "unable to connect to server" in text) and (
        "no such file or directory" in text or "connection refused" in text
    ):
        return "daemon-not-running"
    if (
        code in ("VIR_ERR_AUTH_FAILED", "VIR_ERR_AUTH_CANCELLED", "VIR_ERR_AUTH_UNAVAILABLE")
        or domain in ("VIR_FROM_AUTH", "VIR_FROM_POLKIT", "VIR_FROM_SASL")
        or "authentication" in text
        or "polkit" in text
    ):
        return "auth"
    if "permission denied" in text or code in ("VIR_ERR_ACCESS_DENIED", "VIR_ERR_OPERATION_DENIED"):
        return "permission"
    if code == "VIR_ERR_NO_CONNECT" or "no connection driver" in text:
        return "no-driver"
    return "unknown"


@fact("libvirt_conn")
def libvirt_conn(ctx: FactContext) -> Connection:
    uri = ctx.get("uri")
    try:
        info = ctx.source.libvirt(uri.uri, "connect")
    except (Unavailable, NotFound) as exc:
        raise FactUnavailable(exc.reason) from None
    except SourceError as exc:
        return Connection(
            uri.effective,
            False,
            error=exc.reason,
            error_kind=classify(exc),
            details=exc.details,
            # The source names the step that failed: "connect to URI" is the open itself;
            # anything else ran on a connection that had opened.
            opened=not exc.what.startswith("connect to") and exc.what != "connect",
        )
    return Connection(uri.effective, True, info=info, opened=True)
