"""The live questions the probe asks that the Source API does not, by pyroute2: `route get`
with an input interface (what the kernel would do with a packet arriving from the guest), and
the path's link counters read again and again during a probe.

Read-only: `IPRoute(netns=NAME, flags=0)` never creates a missing namespace, and a route
lookup sends nothing on the wire. Kept here, beside the probe, rather than as a Source
primitive: a snapshot cannot answer it for addresses nobody asked about when it was recorded.
"""

from __future__ import annotations

import errno as errno_mod
from typing import Any, Optional

from doctor.probe.path import Counters, RouteAnswer, counters

RTN_TYPES = {
    1: "unicast",
    2: "local",
    3: "broadcast",
    4: "anycast",
    5: "multicast",
    6: "blackhole",
    7: "unreachable",
    8: "prohibit",
    9: "throw",
    10: "nat",
}


def route_get(
    dst: str,
    *,
    src: Optional[str] = None,
    iif: Optional[int] = None,
    netns: Optional[str] = None,
) -> RouteAnswer:
    """The kernel's route for a packet to `dst` (from `src`, arriving on `iif` when given)."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    ipr = IPRoute(netns=netns, flags=0) if netns else IPRoute()
    query: dict[str, Any] = {"dst": dst}
    if src:
        query["src"] = src
    if iif is not None:
        query["iif"] = iif
    with ipr:
        try:
            answer = ipr.route("get", **query)
        except NetlinkError as exc:
            code = int(exc.code)
            return RouteAnswer(
                dst=dst,
                src=src,
                iif=iif,
                error=errno_mod.errorcode.get(code, str(code)),
                error_text=str(exc.args[1]) if len(exc.args) > 1 else str(exc),
            )
        msg = answer[0]
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
    oif = msg.get_attr("RTA_OIF")
    return RouteAnswer(
        dst=dst,
        src=src,
        iif=iif,
        type=RTN_TYPES.get(msg["type"], str(msg["type"])),
        oif=names.get(oif) if oif else None,
        gateway=msg.get_attr("RTA_GATEWAY"),
        prefsrc=msg.get_attr("RTA_PREFSRC"),
    )


class LinkCounters:
    """The counters of the path's links, read through one netlink socket per namespace that is
    opened once (opening one in another namespace forks a helper process: ~100 ms)."""

    def __init__(self, wanted: dict[Optional[str], set[str]]) -> None:
        self.wanted = wanted  # namespace (None: this one) -> link names
        self.sockets: dict[Optional[str], Any] = {}

    def __enter__(self) -> LinkCounters:
        from pyroute2 import IPRoute

        try:
            for netns in self.wanted:
                self.sockets[netns] = IPRoute(netns=netns, flags=0) if netns else IPRoute()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for ipr in self.sockets.values():
            ipr.close()
        self.sockets.clear()

    def read(self) -> dict[str, Counters]:
        from doctor.sources.netlink import plain

        out = {}
        for netns, ipr in self.sockets.items():
            for message in ipr.get_links():
                row = plain(message)
                name = row.get("attrs", {}).get("IFLA_IFNAME")
                if name in self.wanted[netns]:
                    out[name] = counters(row)
        return out
