"""Facts: typed values computed from a source's answers, once per run.

A fact provider is a function `(ctx) -> value` registered under a name with `@fact("name")`.
Checks name the facts they need as parameters; the engine asks the FactContext. A provider that
cannot compute its value raises FactUnavailable(reason), and checks that need it are skipped
with that reason. Providers never touch the host: they ask `ctx.source`.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterable, Sequence
from typing import Any, Callable, Optional

from doctor.record import record
from doctor.sources.base import Source, SourceError


class FactUnavailable(Exception):
    """The fact cannot be computed on this host or from this source."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@record
class RunOptions:
    """What the user asked for that facts may depend on."""

    uri: Optional[str] = None
    # The time to judge the host at (certificate validity, the age of log lines), in seconds
    # since the epoch: `run --at`, or a test's fixed moment. None: the source's own clock.
    at: Optional[float] = None
    # What `kvmdoctor probe` discovered and observed (doctor.probe.verdict.ProbeRun): the
    # `probe` fact. None in every other command, where the PRB checks do not run.
    probe: Optional[Any] = None


Provider = Callable[["FactContext"], Any]
_PROVIDERS: dict[str, Provider] = {}
_COMMANDS: dict[str, tuple[tuple[str, ...], ...]] = {}
# Which module of doctor/facts/ provides each built-in fact, so that a run imports only the
# modules of the facts its checks ask for (`kvmdoctor run --select KVM` loads neither the
# network nor the libvirt facts). tests/facts/test_fact_context.py keeps it in sync.
FACT_MODULES = {
    "host": "host",
    "virt": "host",
    "cpu": "cpu",
    "kernel_log": "kernel",
    "modules": "kernel",
    "kvm": "kvm",
    "net_devices": "kvm",
    "firmware_control": "kvm",
    "accounts": "accounts",
    "principals": "accounts",
    "libvirt_conf_files": "libvirt",
    "qemu_conf": "libvirt",
    "uri": "libvirt",
    "libvirt_schemas": "libvirt",
    "libvirt_daemons": "daemons",
    "libvirt_socket": "daemons",
    "libvirt_conn": "daemons",
    "domains": "domains",
    "capabilities": "domains",
    "machine_limits": "domains",
    "tcp_listeners": "sockets",
    "emulators": "hostpaths",
    "firewall_tools": "hostpaths",
    "disk_paths": "hostpaths",
    "tls": "tls",
    "host_names": "tls",
    "host_clock": "tls",
    "firmware": "firmware",
    "domain_firmware": "firmware",
    "links": "links",
    "sysctl": "netfilter",
    "firewall": "netfilter",
    "networks": "networks",
    "libvirt_logs": "logs",
    "probe": "probe",
    "fleet": "fleet",
    "ovs": "ovs",
}
_loaded = False


def fact(name: str, *, commands: Sequence[Sequence[str]] = ()) -> Callable[[Provider], Provider]:
    """Register a provider. `commands`: the commands it always runs (read-only ones), which
    a run starts before the provider is asked (`FactContext.prefetch`)."""

    def register(func: Provider) -> Provider:
        if name in _PROVIDERS and _PROVIDERS[name] is not func:
            raise ValueError(f"fact {name!r} is registered twice")
        _PROVIDERS[name] = func
        _COMMANDS[name] = tuple(tuple(argv) for argv in commands)
        return func

    return register


def commands_of(name: str) -> tuple[tuple[str, ...], ...]:
    """The commands the provider of `name` always runs (importing its module); () if none."""
    return _COMMANDS.get(name, ()) if provider(name) is not None else ()


def fact_names() -> set[str]:
    """The name of every known fact, without importing the modules that provide them."""
    return set(FACT_MODULES) | set(_PROVIDERS)


def provider(name: str) -> Optional[Provider]:
    """The provider of a fact, importing its module on first use; None for an unknown name."""
    found = _PROVIDERS.get(name)
    if found is None and name in FACT_MODULES:
        importlib.import_module(f"doctor.facts.{FACT_MODULES[name]}")
        found = _PROVIDERS.get(name)
    return found


def providers() -> dict[str, Provider]:
    """Every known fact, by name (importing every built-in fact module on first use)."""
    global _loaded
    if not _loaded:
        for module in sorted(set(FACT_MODULES.values())):
            importlib.import_module(f"doctor.facts.{module}")
        _loaded = True
    return _PROVIDERS


class FactContext:
    """Computes facts on demand and caches values and unavailability alike."""

    def __init__(
        self,
        source: Source,
        options: Optional[RunOptions] = None,
        given: Optional[dict[str, Any]] = None,
    ) -> None:
        """`given`: facts already known, used instead of their providers (`kvmdoctor lint`
        gives the domains and networks read from files)."""
        self.source = source
        self.options = options or RunOptions()
        self._values: dict[str, Any] = dict(given or {})
        self._missing: dict[str, FactUnavailable] = {}
        self.durations: dict[str, float] = {}

    def get(self, name: str) -> Any:
        if name in self._values:
            return self._values[name]
        if name in self._missing:
            raise self._missing[name]
        compute = provider(name)
        if compute is None:
            raise FactUnavailable(f"no fact named {name!r}")
        started = time.perf_counter()
        try:
            value = compute(self)
        except FactUnavailable as exc:
            self._missing[name] = exc
            raise
        except SourceError as exc:
            # A provider that did not expect this refusal: the fact is still just unavailable.
            self._missing[name] = FactUnavailable(str(exc))
            raise self._missing[name] from None
        finally:
            self.durations[name] = time.perf_counter() - started
        self._values[name] = value
        return value

    def optional(self, name: str) -> Any:
        """The fact, or None when it is unavailable."""
        try:
            return self.get(name)
        except FactUnavailable:
            return None

    def prefetch(self, names: Iterable[str]) -> None:
        """Have the source start now the commands the providers of `names` always run, so
        that they run beside what the process does until a provider asks for their output
        (on a live host; other sources answer from what they hold)."""
        start = getattr(self.source, "prefetch", None)
        if start is None:
            return
        wanted = [
            argv
            for name in sorted(set(names))
            if name not in self._values and name not in self._missing
            for argv in commands_of(name)
        ]
        if wanted:
            start(wanted)

    def known(self, name: str) -> Any:
        """The fact if the run has already computed it, else None: asks the source nothing
        (the report's inventory takes only what the checks looked at)."""
        return self._values.get(name)

    def offer(self, name: str, value: Any) -> None:
        """Keep `value` as fact `name` when it is not computed yet: a value made elsewhere from
        the answers the fact's provider reads (the probe parses the netlink dump of links it
        takes for its path), so that the report can show it without asking the host again."""
        if name not in self._values and name not in self._missing:
            self._values[name] = value
