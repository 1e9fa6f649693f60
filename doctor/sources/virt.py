"""libvirt through libvirt-python, for LiveSource: one connection per URI, every call under a
time limit, errors kept with libvirt's own code and domain.

libvirt-python releases the GIL during its calls, so a call that never returns (a socket that
accepts and never answers) is left in a daemon thread and reported as TimedOut.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Optional, TypeVar

from doctor.sources.base import LibvirtError, SourceError, TimedOut, Unavailable

T = TypeVar("T")
DEFAULT_TIMEOUT = 10.0

_STATES = {
    0: "nostate",
    1: "running",
    2: "blocked",
    3: "paused",
    4: "shutdown",
    5: "shutoff",
    6: "crashed",
    7: "pmsuspended",
}


def _constant_names(module: Any, prefix: str, skip: tuple[str, ...] = ()) -> dict[int, str]:
    names: dict[int, str] = {}
    for name in dir(module):
        if name.startswith(prefix) and name not in skip and not name.endswith("_LAST"):
            value = getattr(module, name)
            if isinstance(value, int):
                names.setdefault(value, name)
    return names


def _quiet(_ctx: Any, _err: Any) -> None:
    """libvirt's default handler prints every error on stderr; ours go into findings."""


class Libvirt:
    def __init__(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.timeout = timeout
        self._conns: dict[Optional[str], Any] = {}
        self._module: Any = None

    def _lib(self) -> Any:
        if self._module is None:
            try:
                import libvirt
            except ImportError as exc:
                raise Unavailable("libvirt", f"libvirt-python is not installed ({exc})") from None
            libvirt.registerErrorHandler(_quiet, None)
            self._module = libvirt
        return self._module

    def _call(self, what: str, func: Callable[[], T]) -> T:
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["value"] = func()
            except BaseException as exc:  # handed to the caller's thread below
                box["error"] = exc

        worker = threading.Thread(target=target, daemon=True, name="kvmdoctor-libvirt")
        worker.start()
        worker.join(self.timeout)
        if worker.is_alive():
            raise TimedOut(what, f"libvirt did not answer within {self.timeout:g} s")
        if "error" in box:
            exc = box["error"]
            if isinstance(exc, self._lib().libvirtError):
                raise self._error(what, exc) from None
            raise exc
        value: T = box["value"]
        return value

    def _error(self, what: str, exc: Any) -> LibvirtError:
        lib = self._lib()
        codes = _constant_names(
            lib, "VIR_ERR_", skip=("VIR_ERR_NONE", "VIR_ERR_WARNING", "VIR_ERR_ERROR")
        )
        domains = _constant_names(lib, "VIR_FROM_")
        code = exc.get_error_code()
        domain = exc.get_error_domain()
        message = exc.get_error_message() or str(exc)
        details = {
            "code": code,
            "code_name": codes.get(code),
            "domain": domain,
            "domain_name": domains.get(domain),
            "level": exc.get_error_level(),
            "message": message,
        }
        return LibvirtError(what, message, details)

    def connection(self, uri: Optional[str]) -> Any:
        cached = self._conns.get(uri)
        if isinstance(cached, SourceError):
            raise cached
        if cached is not None:
            return cached
        lib = self._lib()
        # No credential callbacks: kvmdoctor never prompts; an auth requirement is a finding.
        auth: list[Any] = [[], None, None]
        try:
            conn = self._call(
                f"connect to {uri or 'the default URI'}", lambda: lib.openAuth(uri, auth, 0)
            )
        except SourceError as exc:
            self._conns[uri] = exc
            raise
        self._conns[uri] = conn
        return conn

    def request(self, uri: Optional[str], request: str, params: dict[str, Any]) -> Any:
        conn = self.connection(uri)
        lib = self._lib()
        what = f"{request} on {uri or 'the default URI'}"
        if request == "connect":
            return self._call(
                what,
                lambda: {
                    "uri": conn.getURI(),
                    "hostname": conn.getHostname(),
                    "client_version": lib.getVersion(),
                    "daemon_version": conn.getLibVersion(),
                    "hypervisor": conn.getType(),
                    "hypervisor_version": conn.getVersion(),
                },
            )
        if request == "capabilities":
            return self._call(what, conn.getCapabilities)
        if request == "domcapabilities":
            return self._call(
                what,
                lambda: conn.getDomainCapabilities(
                    params.get("emulator"),
                    params.get("arch"),
                    params.get("machine"),
                    params.get("virttype"),
                    0,
                ),
            )
        if request == "domains":
            return self._call(what, lambda: [self._domain(lib, d) for d in conn.listAllDomains(0)])
        if request == "networks":
            return self._call(what, lambda: [self._network(n) for n in conn.listAllNetworks(0)])
        if request == "interface_addresses":
            return self._call(what, lambda: self._addresses(lib, conn, str(params["domain"])))
        raise SourceError(what, f"unknown libvirt request {request!r}")

    @staticmethod
    def _domain(lib: Any, dom: Any) -> dict[str, Any]:
        state = dom.state()[0]
        active = bool(dom.isActive())
        persistent = bool(dom.isPersistent())
        return {
            "name": dom.name(),
            "uuid": dom.UUIDString(),
            "id": dom.ID() if active else None,
            "state": _STATES.get(state, str(state)),
            "active": active,
            "persistent": persistent,
            "autostart": bool(dom.autostart()) if persistent else False,
            # Without VIR_DOMAIN_XML_SECURE libvirt leaves graphics passwords out.
            "xml": dom.XMLDesc(lib.VIR_DOMAIN_XML_INACTIVE) if persistent else None,
            "live_xml": dom.XMLDesc(0) if active else None,
        }

    @staticmethod
    def _addresses(lib: Any, conn: Any, name: str) -> dict[str, Any]:
        """A running domain's interface addresses as libvirt knows them without the guest's
        help: from its network's DHCP leases ("lease") and from the host's ARP table
        ("arp"); each source answers on its own (an error is kept, not raised)."""
        dom = conn.lookupByName(name)
        sources = {
            "lease": lib.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE,
            "arp": getattr(lib, "VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP", None),
        }
        out: dict[str, Any] = {}
        for key, flag in sources.items():
            if flag is None:
                out[key] = {"error": "this libvirt-python has no such source"}
                continue
            try:
                found = dom.interfaceAddresses(flag, 0) or {}
            except lib.libvirtError as exc:
                out[key] = {"error": str(exc.get_error_message() or exc)}
                continue
            out[key] = {
                "interfaces": [
                    {
                        "name": ifname,
                        "hwaddr": info.get("hwaddr"),
                        "addrs": [
                            {
                                "addr": a.get("addr"),
                                "prefix": a.get("prefix"),
                                "type": a.get("type"),
                            }
                            for a in info.get("addrs") or []
                        ],
                    }
                    for ifname, info in sorted(found.items())
                ]
            }
        return out

    @staticmethod
    def _network(net: Any) -> dict[str, Any]:
        persistent = bool(net.isPersistent())
        return {
            "name": net.name(),
            "uuid": net.UUIDString(),
            "active": bool(net.isActive()),
            "persistent": persistent,
            "autostart": bool(net.autostart()) if persistent else False,
            "xml": net.XMLDesc(0),
        }

    def close(self) -> None:
        for conn in self._conns.values():
            if isinstance(conn, SourceError) or conn is None:
                continue
            with contextlib.suppress(Exception):  # closing is best effort
                self._call("close", conn.close)
        self._conns.clear()
