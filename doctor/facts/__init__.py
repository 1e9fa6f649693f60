"""Facts: typed values computed from a source's answers, once per run.

A fact provider is a function `(ctx) -> value` registered under a name with `@fact("name")`.
Checks name the facts they need as parameters; the engine asks the FactContext. A provider that
cannot compute its value raises FactUnavailable(reason), and checks that need it are skipped
with that reason. Providers never touch the host: they ask `ctx.source`.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from doctor.sources.base import Source, SourceError


class FactUnavailable(Exception):
    """The fact cannot be computed on this host or from this source."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
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
_MODULES = (
    "host",
    "cpu",
    "kernel",
    "kvm",
    "accounts",
    "libvirt",
    "daemons",
    "domains",
    "sockets",
    "hostpaths",
    "tls",
    "firmware",
    "links",
    "netfilter",
    "networks",
    "ovs",
    "logs",
    "probe",
    "fleet",
)
_loaded = False


def fact(name: str) -> Callable[[Provider], Provider]:
    def register(func: Provider) -> Provider:
        if name in _PROVIDERS and _PROVIDERS[name] is not func:
            raise ValueError(f"fact {name!r} is registered twice")
        _PROVIDERS[name] = func
        return func

    return register


def providers() -> dict[str, Provider]:
    """Every known fact, by name (importing the built-in fact modules on first use)."""
    global _loaded
    if not _loaded:
        for module in _MODULES:
            importlib.import_module(f"doctor.facts.{module}")
        _loaded = True
    return _PROVIDERS


class FactContext:
    """Computes facts on demand and caches values and unavailability alike."""

    def __init__(self, source: Source, options: Optional[RunOptions] = None) -> None:
        self.source = source
        self.options = options or RunOptions()
        self._values: dict[str, Any] = {}
        self._missing: dict[str, FactUnavailable] = {}
        self.durations: dict[str, float] = {}
        self._providers = providers()

    def get(self, name: str) -> Any:
        if name in self._values:
            return self._values[name]
        if name in self._missing:
            raise self._missing[name]
        provider = self._providers.get(name)
        if provider is None:
            raise FactUnavailable(f"no fact named {name!r}")
        started = time.perf_counter()
        try:
            value = provider(self)
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

    def known(self, name: str) -> Any:
        """The fact if the run has already computed it, else None: asks the source nothing
        (the report's inventory takes only what the checks looked at)."""
        return self._values.get(name)
