"""The `fleet` fact: many hosts' reports, as `kvmdoctor report merge` read them. Only that
command provides it; elsewhere the fleet checks (tagged `fleet`) do not run.

A fleet names each host by its report's hostname. A host's finding keeps its subject with the
host in front (`host:web-a` for the host itself, `host:web-a/domain:db1` for the rest); a
finding only the fleet can make names what it is about across hosts (`mac:52:54:00:..`,
`uuid:...`, `version:libvirt`; `report:FILE` for what one host's report lacks) and the hosts
in its message and evidence.
"""

from __future__ import annotations

from typing import Any, Optional

from doctor.facts import FactContext, FactUnavailable, fact
from doctor.facts.domains import Domain, Domains, Interface
from doctor.record import record

# The versions a report's host section carries, by component, with the name people use.
COMPONENTS = (("libvirt", "libvirt"), ("qemu", "QEMU"), ("firmware", "firmware (OVMF)"))


def host_subject(host: str, subject: str) -> str:
    """A host's subject as the fleet names it: `host:NAME`, or `host:NAME/SUBJECT`."""
    return f"host:{host}" if subject == "host" else f"host:{host}/{subject}"


@record
class Guest:
    """A domain as a host's report lists it (report `host.guests`)."""

    name: str
    uuid: Optional[str]
    active: bool
    persistent: bool
    interfaces: tuple[tuple[Optional[str], str], ...]  # (MAC, interface type)


@record
class FleetHost:
    name: str
    file: str  # the report it came from
    versions: dict[str, Optional[str]]  # component -> version; None: the report cannot tell
    guests: Optional[tuple[Guest, ...]]  # None: the report lists no guests (older report)


@record
class HostDomain(Domain):
    """A domain of one host of the fleet: its subject names the host, so that a check on
    many hosts' domains (NET010) names each interface's host."""

    host: str = ""

    @property
    def subject(self) -> str:
        return host_subject(self.host, f"domain:{self.name}")


@record
class Fleet:
    hosts: tuple[FleetHost, ...]

    def report_of(self, name: str) -> str:
        """The file a host's report came from."""
        return next(h.file for h in self.hosts if h.name == name)

    def without_guests(self) -> list[str]:
        """Hosts whose reports do not list their guests."""
        return [h.name for h in self.hosts if h.guests is None]

    def domains(self) -> Domains:
        """Every host's guests as one set of domains (for NET010 across hosts). Not local:
        no host's interfaces are compared with them."""
        items = []
        for host in self.hosts:
            for guest in host.guests or ():
                items.append(
                    HostDomain(
                        name=guest.name,
                        uuid=guest.uuid,
                        type="kvm",
                        active=guest.active,
                        persistent=guest.persistent,
                        origin=f"report {host.file}",
                        interfaces=tuple(
                            Interface(
                                type=kind,
                                mac=mac,
                                source={},
                                target=None,
                                model=None,
                                virtualport=None,
                            )
                            for mac, kind in guest.interfaces
                        ),
                        host=host.name,
                    )
                )
        return Domains(tuple(items), f"{len(self.hosts)} hosts' reports", local=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "hosts": [h.name for h in self.hosts],
            "without_guests": self.without_guests(),
        }


@fact("fleet")
def fleet(ctx: FactContext) -> Fleet:
    # `kvmdoctor report merge` computes its checks on a context that already holds the fleet.
    raise FactUnavailable("only `kvmdoctor report merge` sees many hosts at once")
