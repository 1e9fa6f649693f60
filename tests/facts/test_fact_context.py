"""FactContext: facts computed once, unavailability cached with its reason."""

from __future__ import annotations

from typing import Any

import pytest

from doctor.facts import FACT_MODULES, FactContext, FactUnavailable, fact, fact_names, providers
from doctor.sources.live import LiveSource

from kdtest import REALDATA

CPUINFO = REALDATA / "cpuinfo/virt-what__intel-core-i7-m620_baremetal_vmx.txt"


class CountingSource(LiveSource):
    """A tree source that counts the files it is asked for."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.reads: list[str] = []

    def read_file(self, path: str, **kwargs: Any) -> bytes:
        self.reads.append(path)
        return super().read_file(path, **kwargs)


def test_a_fact_is_computed_once(make_tree) -> None:
    source = CountingSource(str(make_tree({"/proc/cpuinfo": CPUINFO.read_text()})))
    ctx = FactContext(source)
    first = ctx.get("cpu")
    assert ctx.get("cpu") is first
    assert source.reads == ["/proc/cpuinfo"]
    assert ctx.durations["cpu"] >= 0


def test_unavailability_is_cached_with_its_reason(make_tree) -> None:
    source = CountingSource(str(make_tree({"/proc/": None})))
    ctx = FactContext(source)
    with pytest.raises(FactUnavailable) as first:
        ctx.get("cpu")
    with pytest.raises(FactUnavailable) as second:
        ctx.get("cpu")
    assert second.value is first.value
    assert source.reads == ["/proc/cpuinfo"]
    assert ctx.optional("cpu") is None


def test_a_source_error_the_provider_did_not_expect_makes_the_fact_unavailable(make_tree) -> None:
    # "modules" handles a missing /proc/modules; a directory in its place is another error.
    ctx = FactContext(LiveSource(str(make_tree({"/proc/modules/": None, "/sys/module/": None}))))
    with pytest.raises(FactUnavailable, match="/proc/modules: Is a directory"):
        ctx.get("modules")
    assert "modules" in ctx.durations


def test_unknown_fact_is_unavailable() -> None:
    with pytest.raises(FactUnavailable, match="no fact named 'kd-nothing'"):
        FactContext(LiveSource()).get("kd-nothing")


def test_a_name_cannot_be_registered_by_two_providers() -> None:
    assert "cpu" in providers()
    with pytest.raises(ValueError, match="registered twice"):
        fact("cpu")(lambda ctx: None)


def test_the_index_names_the_module_of_every_builtin_fact() -> None:
    registered = {
        name: func.__module__
        for name, func in providers().items()
        if func.__module__.startswith("doctor.facts.")
    }
    assert registered == {name: f"doctor.facts.{mod}" for name, mod in FACT_MODULES.items()}
    assert set(registered) <= fact_names()


def test_a_fact_imports_only_the_module_that_provides_it(make_tree) -> None:
    import json
    import subprocess
    import sys

    from kdtest import ROOT

    tree = make_tree({"/proc/cpuinfo": CPUINFO.read_text()})
    probe = (
        "import json, sys; from doctor.facts import FactContext; "
        "from doctor.sources.live import LiveSource; "
        f"cpu = FactContext(LiveSource({str(tree)!r})).get('cpu'); "
        "print(json.dumps([cpu.vendor, sorted(m for m in sys.modules "
        "if m.startswith('doctor.facts.'))]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True
    )
    vendor, modules = json.loads(done.stdout)
    assert vendor == "GenuineIntel"
    assert "doctor.facts.cpu" in modules
    assert not {"doctor.facts.links", "doctor.facts.domains", "doctor.facts.tls"} & set(modules)


class _Starts:
    """A source that only notes the commands it is asked to start ahead."""

    kind = "live"

    def __init__(self) -> None:
        self.started: list[tuple[str, ...]] = []

    def prefetch(self, commands: Any) -> None:
        self.started += [tuple(argv) for argv in commands]


def test_prefetch_starts_the_commands_the_wanted_facts_always_run() -> None:
    from doctor.facts.logs import JOURNAL_ARGV
    from doctor.facts.netfilter import FIREWALL_COMMANDS

    source = _Starts()
    ctx = FactContext(source, given={"libvirt_logs": None})  # type: ignore[arg-type]
    ctx.prefetch(["kernel_log", "cpu", "firewall", "libvirt_logs", "kernel_log"])
    # sorted by fact: firewall, kernel_log; a given fact is not computed, so not prefetched
    assert source.started == [argv for _, argv in FIREWALL_COMMANDS] + [("dmesg",)]
    source.started.clear()
    FactContext(source, given={}).prefetch(["libvirt_logs"])  # type: ignore[arg-type]
    assert source.started == [JOURNAL_ARGV]


def test_prefetch_starts_nothing_in_a_tree_or_a_source_without_commands(make_tree) -> None:
    tree = LiveSource(str(make_tree({"/etc/hostname": "kd-tree\n"})))
    FactContext(tree).prefetch(["kernel_log", "firewall"])
    assert not tree._started  # a tree runs no command, now or later

    class Answers:  # a snapshot's kind of source: it holds answers, starts nothing
        kind = "snapshot"

    FactContext(Answers()).prefetch(["kernel_log"])  # type: ignore[arg-type]
