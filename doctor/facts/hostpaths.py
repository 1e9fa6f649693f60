"""Paths libvirt depends on: QEMU emulators, the network driver's firewall tools, and the
directories and files of domains' disk images."""

from __future__ import annotations

from dataclasses import asdict, field
from typing import Any, Optional

from doctor.facts import FactContext, FactUnavailable, fact
from doctor.facts.libvirt import ConfError, parse_conf
from doctor.facts.util import read_text
from doctor.record import record
from doctor.sources.base import NotFound, SourceError, StatInfo

SEARCH_PATH = ("/usr/sbin", "/sbin", "/usr/bin", "/bin", "/usr/local/sbin", "/usr/local/bin")


@record
class PathState:
    path: str
    exists: bool
    type: Optional[str] = None
    mode: Optional[int] = None
    uid: Optional[int] = None
    gid: Optional[int] = None
    error: Optional[str] = None  # why it could not be examined (other than not existing)

    @property
    def executable(self) -> bool:
        return self.exists and self.type == "file" and bool((self.mode or 0) & 0o111)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.mode is not None:
            out["mode"] = f"{self.mode:04o}"
        return out


def path_state(ctx: FactContext, path: str) -> PathState:
    try:
        st = ctx.source.stat(path)
    except NotFound:
        return PathState(path, False)
    except SourceError as exc:
        return PathState(path, False, error=exc.reason)
    return PathState(path, True, st.type, st.mode, st.uid, st.gid)


def stat_of(state: PathState) -> StatInfo:
    return StatInfo(
        state.path, state.type or "file", state.mode or 0, state.uid or 0, state.gid or 0
    )


# --- emulators -----------------------------------------------------------------------------


@record
class Emulator:
    state: PathState
    named_by: tuple[str, ...]  # "capabilities (x86_64)", "domain:web1"


@record
class Emulators:
    items: tuple[Emulator, ...]
    capabilities_read: bool
    not_here: Optional[str] = None  # why the URI's emulators are not this host's


@fact("emulators")
def emulators(ctx: FactContext) -> Emulators:
    named: dict[str, list[str]] = {}
    uri = ctx.get("uri")
    if uri.parts.driver != "qemu" or uri.parts.remote:
        # The test driver's emulators are fictitious, a remote host's are not here.
        return Emulators((), False, f"{uri.effective} is not this host's QEMU")
    caps = ctx.optional("capabilities")
    if caps is not None:
        for path, arch in caps.emulators().items():
            named.setdefault(path, []).append(f"capabilities ({arch})")
    doms = ctx.optional("domains")
    if doms is not None:
        for dom in doms.items:
            if dom.emulator:
                named.setdefault(dom.emulator, []).append(dom.subject)
    if caps is None and doms is None:
        raise FactUnavailable("neither libvirt's capabilities nor any domain could be read")
    items = tuple(Emulator(path_state(ctx, p), tuple(n)) for p, n in sorted(named.items()))
    return Emulators(items, caps is not None)


# --- the network driver's firewall ----------------------------------------------------------


@record
class FirewallTools:
    backend: str  # "iptables" or "nftables"
    backend_from: str
    tools: dict[str, Optional[str]]  # tool -> where found, None when missing
    needed: tuple[str, ...]
    network_driver: bool  # libvirtd or virtnetworkd is installed
    networks: tuple[str, ...]  # active or autostarted libvirt networks

    def missing(self) -> list[str]:
        return [t for t in self.needed if self.tools.get(t) is None]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_tool(ctx: FactContext, name: str) -> Optional[str]:
    for directory in SEARCH_PATH:
        state = path_state(ctx, f"{directory}/{name}")
        if state.executable:
            return state.path
    return None


NETWORK_CONF = "/etc/libvirt/network.conf"


@fact("firewall_tools")
def firewall_tools(ctx: FactContext) -> FirewallTools:
    daemons = ctx.get("libvirt_daemons")
    driver = daemons.daemons["libvirtd"].installed or daemons.daemons["virtnetworkd"].installed
    backend, origin = "iptables", "libvirt's default before 10.4 (no network.conf setting)"
    try:
        conf = parse_conf(read_text(ctx.source, NETWORK_CONF))
    except (SourceError, ConfError):
        conf = {}
    if isinstance(conf.get("firewall_backend"), str):
        backend, origin = str(conf["firewall_backend"]), f"firewall_backend in {NETWORK_CONF}"
    else:
        conn = ctx.optional("libvirt_conn")
        version = (conn.info or {}).get("daemon_version") if conn is not None and conn.ok else None
        if version is not None and version >= 10_004_000:
            backend = "nftables"
            origin = f"libvirt {version // 1_000_000}.{version // 1000 % 1000}'s default"
    needed = ("nft",) if backend == "nftables" else ("iptables", "ip6tables", "ebtables")
    tools = {name: find_tool(ctx, name) for name in ("iptables", "ip6tables", "ebtables", "nft")}
    names = []
    uri = ctx.get("uri")
    try:
        for net in ctx.source.libvirt(uri.uri, "networks"):
            if net.get("active") or net.get("autostart"):
                names.append(str(net.get("name")))
    except SourceError:
        pass
    return FirewallTools(backend, origin, tools, needed, driver, tuple(names))


# --- disk images -----------------------------------------------------------------------------


@record
class DiskPath:
    domain: str
    target: Optional[str]
    path: str
    readonly: bool
    chain: tuple[PathState, ...]  # "/", "/var", ..., the image itself


@record
class DiskPaths:
    items: tuple[DiskPath, ...]
    dynamic_ownership: bool
    origin: str = ""
    skipped: tuple[str, ...] = field(default_factory=tuple)  # disks not on a local path


@fact("disk_paths")
def disk_paths(ctx: FactContext) -> DiskPaths:
    doms = ctx.get("domains")
    conf = ctx.optional("qemu_conf")
    dyn = conf.values.get("dynamic_ownership", 1) if conf is not None else 1
    if not doms.local:
        return DiskPaths((), bool(dyn), f"{doms.origin} (not this host: images not examined)")
    cache: dict[str, PathState] = {}
    items, skipped = [], []
    for dom in doms.items:
        for disk in dom.disks:
            if disk.type not in ("file", "block") or not disk.source:
                if disk.source:
                    skipped.append(f"{dom.name} {disk.target}: {disk.type} {disk.source}")
                continue
            if not disk.source.startswith("/"):
                skipped.append(f"{dom.name} {disk.target}: relative path {disk.source}")
                continue
            parts = [p for p in disk.source.split("/") if p]
            chain = []
            for depth in range(len(parts) + 1):
                path = "/" + "/".join(parts[:depth])
                if path not in cache:
                    cache[path] = path_state(ctx, path)
                chain.append(cache[path])
                if not cache[path].exists:
                    break
            items.append(
                DiskPath(
                    dom.name,
                    disk.target,
                    disk.source,
                    disk.readonly or disk.device == "cdrom",
                    tuple(chain),
                )
            )
    return DiskPaths(tuple(items), bool(dyn), doms.origin, tuple(skipped))
