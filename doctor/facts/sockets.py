"""TCP sockets listening on the host, from /proc/net/tcp and /proc/net/tcp6.

The kernel prints each address as the hexadecimal of its 32-bit words in the host's byte order
(little-endian on x86, arm64 and ppc64le), and the port in network order; the state 0A is
LISTEN. The answer describes the network namespace the files were read in: the host's own
for QEMU processes started by the system libvirt daemon.
"""

from __future__ import annotations

import ipaddress
from functools import cached_property
from typing import Any, Optional

from doctor.facts import FactContext, FactUnavailable, fact
from doctor.facts.util import read_text
from doctor.record import record
from doctor.sources.base import SourceError

FILES = (("/proc/net/tcp", "ipv4"), ("/proc/net/tcp6", "ipv6"))
LISTEN = "0A"
# Architectures whose kernels print the address words big-endian.
BIG_ENDIAN = frozenset({"s390x", "s390", "ppc64", "ppc", "sparc64", "mips", "mips64"})
WILDCARDS = frozenset({"0.0.0.0", "::"})


@record
class Listener:
    address: str  # "127.0.0.1", "::", "0.0.0.0"
    port: int
    family: str  # ipv4, ipv6
    uid: int
    inode: int

    def overlaps(self, address: str) -> bool:
        """Whether binding `address` on the same port would collide with this socket: the same
        address, or either side the wildcard ("::" is taken as dual-stack, as Linux binds it
        unless IPV6_V6ONLY is set, which /proc does not show)."""
        if address in WILDCARDS or self.address == "::":
            return True
        if self.address == "0.0.0.0":
            return _family(address) != "ipv6"
        return _same_address(self.address, address)


@record
class Listeners:
    items: tuple[Listener, ...]
    read: tuple[str, ...]  # the files that answered
    problems: tuple[str, ...] = ()  # the files that did not, and why

    def on_port(self, port: int) -> list[Listener]:
        return list(self._by_port.get(port, ()))

    @cached_property
    def _by_port(self) -> dict[int, list[Listener]]:
        index: dict[int, list[Listener]] = {}
        for item in self.items:
            index.setdefault(item.port, []).append(item)
        return index

    def as_dict(self) -> dict[str, Any]:
        return {
            "items": [vars(item) for item in self.items],
            "read": list(self.read),
            "problems": list(self.problems),
        }


def _family(address: str) -> Optional[str]:
    try:
        return "ipv6" if ipaddress.ip_address(address).version == 6 else "ipv4"
    except ValueError:
        return None


def _same_address(left: str, right: str) -> bool:
    try:
        a, b = ipaddress.ip_address(left), ipaddress.ip_address(right)
    except ValueError:
        return left == right
    mapped_a = a.ipv4_mapped if isinstance(a, ipaddress.IPv6Address) else None
    mapped_b = b.ipv4_mapped if isinstance(b, ipaddress.IPv6Address) else None
    return (mapped_a or a) == (mapped_b or b)


def _address(hex_text: str, *, big_endian: bool) -> str:
    raw = bytes.fromhex(hex_text)
    if not big_endian:  # every 32-bit word is printed in host order
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(raw))


def parse_proc_net_tcp(text: str, family: str, *, big_endian: bool = False) -> list[Listener]:
    """The LISTEN entries of /proc/net/tcp or /proc/net/tcp6."""
    found = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != LISTEN:
            continue
        address, _, port = fields[1].partition(":")
        try:
            found.append(
                Listener(
                    address=_address(address, big_endian=big_endian),
                    port=int(port, 16),
                    family=family,
                    uid=int(fields[7]),
                    inode=int(fields[9]),
                )
            )
        except ValueError:
            continue
    return found


@fact("tcp_listeners")
def tcp_listeners(ctx: FactContext) -> Listeners:
    host = ctx.optional("host")
    big_endian = bool(host is not None and host.arch in BIG_ENDIAN)
    items: list[Listener] = []
    read, problems = [], []
    for path, family in FILES:
        try:
            text = read_text(ctx.source, path)
        except SourceError as exc:
            problems.append(f"{path}: {exc.reason}")
            continue
        read.append(path)
        items.extend(parse_proc_net_tcp(text, family, big_endian=big_endian))
    if not read:
        raise FactUnavailable("; ".join(problems))
    return Listeners(
        tuple(sorted(set(items), key=lambda i: (i.port, i.address))), tuple(read), tuple(problems)
    )
