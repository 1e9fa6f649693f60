"""Netlink state through pyroute2, as plain JSON-able dicts, for LiveSource.

Read-only: `IPRoute(netns=NAME, flags=0)` never creates a missing namespace (the default
flags would), and nothing here sends anything but dump requests.
"""

from __future__ import annotations

from typing import Any, Optional

from doctor.sources.base import NotFound, SourceError, Unavailable

REQUESTS = ("links", "addresses", "routes", "neighbours", "fdb")
_SKIP = {"header", "attrs", "event", "value"}


def plain(value: Any) -> Any:
    """A pyroute2 message or attribute as plain data: {"field": ..., "attrs": {NAME: ...}}."""
    if hasattr(value, "items") and "attrs" in value:
        out: dict[str, Any] = {k: plain(v) for k, v in value.items() if k not in _SKIP}
        attrs: dict[str, Any] = {}
        for name, item in value["attrs"]:
            if name == "UNKNOWN":
                continue
            converted = plain(item)
            if name in attrs:  # repeated attributes (alternative names) become lists
                previous = attrs[name]
                attrs[name] = (previous if isinstance(previous, list) else [previous]) + [converted]
            else:
                attrs[name] = converted
        out["attrs"] = attrs
        return out
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items() if k != "header"}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def dump(request: str, netns: Optional[str]) -> list[dict[str, Any]]:
    if request not in REQUESTS:
        raise SourceError(request, f"unknown netlink request; known: {', '.join(REQUESTS)}")
    try:
        from pyroute2 import IPRoute
    except ImportError as exc:
        raise Unavailable("netlink", f"pyroute2 is not installed ({exc})") from None
    where = f"netns {netns}" if netns else "this namespace"
    if netns is not None:
        from pyroute2 import netns as namespaces

        if netns not in namespaces.listnetns():
            raise NotFound(f"netns {netns}", "no such network namespace")
    try:
        ipr = IPRoute(netns=netns, flags=0) if netns else IPRoute()
    except OSError as exc:
        raise SourceError(where, f"netlink: {exc}") from None
    with ipr:
        try:
            if request == "links":
                messages = ipr.get_links()
            elif request == "addresses":
                messages = ipr.get_addr()
            elif request == "routes":
                messages = ipr.get_routes()
            elif request == "neighbours":
                messages = ipr.get_neighbours()
            else:
                messages = ipr.fdb("dump")
        except OSError as exc:
            raise SourceError(f"{request} in {where}", f"netlink: {exc}") from None
        return [plain(m) for m in messages]
