"""Loading checks: plugins built in memory, broken in every way the loader must survive."""

from __future__ import annotations

import threading
import time
import types
from collections.abc import Iterator
from typing import Any

import pytest

from doctor import engine
from doctor.model import Finding
from doctor.registry import (
    BUILTIN_AREAS,
    BUILTIN_PREFIXES,
    Plugin,
    check,
    load_registry,
    module_plugin,
    parse_docstring,
)
from doctor.sources.snapshot import SnapshotSource

DOC = """What it checks: something.

Why it matters: something else.

How to fix: do this.

References: https://example.invalid/doc
"""


def plugin(name: str, *funcs: Any) -> Plugin:
    module = types.ModuleType(name)
    for func in funcs:
        setattr(module, func.__name__, func)
    return module_plugin(module, f"{name}-dist (entry point {name})")


def make(code: str, name: str, doc: str = DOC, body: Any = None, **kw: Any) -> Any:
    def func(cpu: Any) -> Iterator[Finding]:
        if body is not None:
            yield from body(cpu)
        else:
            yield Finding("pass", f"{code} ok")

    func.__doc__ = doc
    func.__name__ = name.replace("-", "_")
    return check(code, name, title=f"title of {code}", **kw)(func)


def test_checks_of_a_good_plugin_load_with_their_facts_and_docs() -> None:
    reg = load_registry([plugin("good", make("ZZZ001", "zzz-first"))])
    assert reg.errors == []
    spec = reg.checks["ZZZ001"]
    assert spec.facts == ("cpu",)
    assert spec.doc["How to fix"] == "do this."
    assert spec.origin == "good-dist (entry point good)"


def test_a_duplicate_code_is_an_error_naming_both_and_the_first_one_stays() -> None:
    reg = load_registry(
        [
            plugin("one", make("ZZZ001", "zzz-first")),
            plugin("two", make("ZZZ001", "zzz-second"), make("ZZZ002", "zzz-third")),
        ]
    )
    assert list(reg.checks) == ["ZZZ001", "ZZZ002"]
    assert reg.checks["ZZZ001"].name == "zzz-first"
    (error,) = reg.errors
    assert error.origin.startswith("two-dist")
    assert error.check == "ZZZ001"
    assert "already zzz-first from one-dist" in error.message


def test_the_builtin_kvm_codes_cannot_be_taken_by_a_plugin() -> None:
    import checks.kvm as kvm

    reg = load_registry([module_plugin(kvm, "kvmdoctor"), plugin("evil", make("KVM001", "zzz-x"))])
    assert reg.checks["KVM001"].name == "kvm-device-missing"
    assert [e.check for e in reg.errors] == ["KVM001"]


@pytest.mark.parametrize(
    ("code", "name", "doc", "complaint"),
    [
        ("zz1", "zzz-a", DOC, "malformed code 'zz1'"),
        ("ZZZ001", "Bad_Name", DOC, "malformed name 'Bad_Name'"),
        ("ZZZ001", "zzz-a", "Just a sentence.", "lacks the section 'What it checks:'"),
        ("ZZZ001", "zzz-a", DOC.replace("How to fix: do this.", ""), "'How to fix:'"),
        ("ZZZ001", "zzz-a", None, "lacks the section 'References:'"),
    ],
)
def test_a_malformed_check_is_reported_with_its_package_and_others_still_load(
    code: str, name: str, doc: Any, complaint: str
) -> None:
    bad = make(code, name, doc=doc)
    if doc is None:
        bad.__doc__ = None
    reg = load_registry([plugin("broken", bad, make("ZZZ009", "zzz-fine"))])
    assert list(reg.checks) == ["ZZZ009"]
    assert any(complaint in e.message and e.origin.startswith("broken-dist") for e in reg.errors), (
        reg.errors
    )


def test_a_parameter_that_names_no_fact_is_rejected() -> None:
    @check("ZZZ005", "zzz-needs-nonsense", title="t")
    def needs(no_such_fact: Any) -> Iterator[Finding]:
        yield Finding("pass", "")

    needs.__doc__ = DOC
    reg = load_registry([plugin("p", needs)])
    assert not reg.checks
    assert "'no_such_fact' names no known fact" in reg.errors[0].message


def test_a_plugin_that_fails_to_import_is_reported_and_the_rest_load() -> None:
    def boom() -> Any:
        raise ImportError("No module named 'vendor_sdk'")

    reg = load_registry(
        [
            Plugin("vendor-checks (entry point vendor)", boom),
            plugin("good", make("ZZZ001", "zzz-first")),
        ]
    )
    assert list(reg.checks) == ["ZZZ001"]
    assert "cannot be loaded: ImportError: No module named 'vendor_sdk'" in str(reg.errors[0])


def test_the_installed_entry_point_provides_the_builtin_checks() -> None:
    reg = load_registry()
    assert reg.errors == []
    assert {f"KVM00{i}" for i in range(1, 9)} <= set(reg.checks)
    assert reg.checks["KVM001"].origin.startswith("kvmdoctor (entry point")


def test_the_prefix_index_names_every_builtin_module_and_the_codes_its_checks_declare() -> None:
    import importlib

    assert set(BUILTIN_PREFIXES) == {f"checks.{area}" for area in BUILTIN_AREAS}
    for module_name, prefixes in BUILTIN_PREFIXES.items():
        reg = load_registry([module_plugin(importlib.import_module(module_name))])
        assert reg.errors == []
        codes = {spec.code for spec in reg}
        assert codes, module_name
        assert {code.rstrip("0123456789") for code in codes} == set(prefixes), module_name
    # No prefix is another's beginning: a selection token finds one area.
    every = [p for prefixes in BUILTIN_PREFIXES.values() for p in prefixes]
    assert not [(a, b) for a in every for b in every if a != b and b.startswith(a)]


def test_the_installed_entry_points_are_the_indexed_modules() -> None:
    from doctor.registry import entry_point_plugins

    ours = [p for p in entry_point_plugins() if p.origin.startswith("kvmdoctor ")]
    assert len(ours) == len(BUILTIN_PREFIXES)
    assert all(p.prefixes is not None for p in ours), [p.origin for p in ours]


def counted(name: str, prefixes: Any, *funcs: Any) -> tuple[Plugin, list[str]]:
    """A plugin that records whether it was loaded."""
    loads: list[str] = []
    inner = plugin(name, *funcs)

    def load() -> Any:
        loads.append(name)
        return inner.load()

    return Plugin(inner.origin, load, prefixes), loads


@pytest.mark.parametrize(
    ("wanted", "loaded"),
    [
        ((), {"zzz", "yyy", "third"}),
        (("ZZZ",), {"zzz", "third"}),
        (("zzz001",), {"zzz", "third"}),
        (("Z",), {"zzz", "third"}),
        (("YYY", "ZZZ002"), {"zzz", "yyy", "third"}),
        # A check's name could be any plugin's: everything loads.
        (("yyy-second",), {"zzz", "yyy", "third"}),
    ],
)
def test_a_selection_loads_only_the_plugins_whose_codes_it_can_match(
    wanted: tuple[str, ...], loaded: set[str]
) -> None:
    zzz, zzz_loads = counted("zzz", ("ZZZ",), make("ZZZ001", "zzz-first"), make("ZZZ002", "zzz-b"))
    yyy, yyy_loads = counted("yyy", ("YYY",), make("YYY001", "yyy-second"))
    # A third-party plugin declares no prefixes: it loads whatever the selection.
    third, third_loads = counted("third", None, make("XXX001", "xxx-third"))
    reg = load_registry([zzz, yyy, third], wanted=wanted)
    assert set(zzz_loads + yyy_loads + third_loads) == loaded
    assert reg.errors == []
    assert reg.wanted == wanted
    selected = engine.select(reg, wanted)
    full = engine.select(load_registry([zzz, yyy, third]), wanted)
    assert [s.code for s in selected] == [s.code for s in full]


def test_a_selection_of_the_builtin_checks_imports_only_their_module() -> None:
    import json
    import subprocess
    import sys

    from kdtest import ROOT

    probe = (
        "import json, sys; from doctor.registry import load_registry; "
        "reg = load_registry(wanted=['KVM0']); "
        "print(json.dumps([[s.code for s in reg], sorted(m for m in sys.modules "
        "if m.startswith('checks.'))]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True
    )
    codes, modules = json.loads(done.stdout)
    assert codes == [f"KVM00{i}" for i in range(1, 9)]
    assert modules == ["checks.kvm"]


def test_docstring_sections_may_span_lines_in_an_indented_docstring() -> None:
    doc = """What it checks: a
    long sentence.

    Why it matters: b.

    How to fix: do this,
    then that.

    References: https://example.invalid/a
    https://example.invalid/b
    """
    sections, problems = parse_docstring(doc)
    assert problems == []
    assert sections["What it checks"] == "a\nlong sentence."
    assert sections["How to fix"] == "do this,\nthen that."
    assert sections["References"].split() == [
        "https://example.invalid/a",
        "https://example.invalid/b",
    ]


# --- the engine runs what loaded --------------------------------------------------------------


def run_plugin(host_snapshot: Any, *funcs: Any, timeout: float = 10.0) -> engine.RunResult:
    reg = load_registry([plugin("p", *funcs)])
    return engine.run(reg, SnapshotSource(str(host_snapshot)), timeout=timeout)


def test_a_check_that_raises_becomes_an_error_finding_and_the_run_goes_on(
    host_snapshot: Any,
) -> None:
    def explode(cpu: Any) -> Iterator[Finding]:
        raise KeyError("flags")
        yield  # pragma: no cover

    result = run_plugin(
        host_snapshot, make("ZZZ001", "zzz-raises", body=explode), make("ZZZ002", "zzz-fine")
    )
    status = {run.spec.code: run for run in result.checks}
    assert status["ZZZ001"].status == "error"
    assert "ZZZ001 zzz-raises raised KeyError: 'flags'" in status["ZZZ001"].findings[0].message
    assert status["ZZZ002"].status == "pass"


@pytest.mark.timed_wait
def test_a_check_that_hangs_is_stopped_at_its_time_limit(host_snapshot: Any) -> None:
    def hang(cpu: Any) -> Iterator[Finding]:
        while True:
            time.sleep(0.01)
        yield  # pragma: no cover

    result = run_plugin(
        host_snapshot,
        make("ZZZ001", "zzz-hangs", body=hang),
        make("ZZZ002", "zzz-fine"),
        timeout=0.2,
    )
    by_code = {run.spec.code: run for run in result.checks}
    assert by_code["ZZZ001"].status == "error"
    assert "did not finish within 0.2 s" in by_code["ZZZ001"].findings[0].message
    assert by_code["ZZZ001"].duration >= 0.2
    assert by_code["ZZZ002"].status == "pass"


@pytest.mark.timed_wait
def test_check_bodies_share_one_thread_until_one_hangs(host_snapshot: Any) -> None:
    """The bodies run one after another on one worker thread, never on the caller's; a body
    that hangs is abandoned at its limit and the next checks run on a new thread, each hung
    check an error of its own."""
    threads: dict[str, int] = {}
    release = threading.Event()

    def where(code: str) -> Any:
        def body(cpu: Any) -> Iterator[Finding]:
            threads[code] = threading.get_ident()
            yield Finding("pass", "ok")

        return body

    def hang(cpu: Any) -> Iterator[Finding]:
        release.wait(60)
        yield Finding("pass", "too late")

    result = run_plugin(
        host_snapshot,
        make("ZZZ001", "zzz-first", body=where("ZZZ001")),
        make("ZZZ002", "zzz-second", body=where("ZZZ002")),
        make("ZZZ003", "zzz-hangs", body=hang),
        make("ZZZ004", "zzz-hangs-too", body=hang),
        make("ZZZ005", "zzz-after", body=where("ZZZ005")),
        make("ZZZ006", "zzz-last", body=where("ZZZ006")),
        timeout=0.2,
    )
    release.set()  # the abandoned bodies may end now
    status = {run.spec.code: run.status for run in result.checks}
    assert status == {
        "ZZZ001": "pass",
        "ZZZ002": "pass",
        "ZZZ003": "error",
        "ZZZ004": "error",
        "ZZZ005": "pass",
        "ZZZ006": "pass",
    }
    assert threading.get_ident() not in threads.values()
    assert threads["ZZZ001"] == threads["ZZZ002"]
    assert threads["ZZZ005"] == threads["ZZZ006"] != threads["ZZZ001"]


def test_evidence_that_is_not_json_is_an_error_not_a_broken_report(host_snapshot: Any) -> None:
    def bad(cpu: Any) -> Iterator[Finding]:
        yield Finding("pass", "ok", evidence={"when": object()})

    result = run_plugin(host_snapshot, make("ZZZ001", "zzz-bad-evidence", body=bad))
    assert result.checks[0].status == "error"
    assert "invalid finding" in result.checks[0].findings[0].message


def test_a_check_whose_fact_is_unavailable_is_skipped_with_the_reason(tmp_path: Any) -> None:
    from doctor.sources.live import LiveSource

    reg = load_registry([plugin("p", make("ZZZ001", "zzz-cpu"))])
    result = engine.run(reg, LiveSource(str(tmp_path)))  # an empty tree: no /proc/cpuinfo
    (finding,) = result.checks[0].findings
    assert finding.status == "skip"
    assert "cpu unavailable" in finding.message
    assert "/proc/cpuinfo" in finding.message


def test_every_check_run_records_its_duration(host_snapshot: Any) -> None:
    result = run_plugin(host_snapshot, make("ZZZ001", "zzz-first"))
    assert result.checks[0].duration >= 0
    assert result.checks[0].facts_duration > 0


def test_parameters_are_those_inspect_signature_gives() -> None:
    """registry._parameters reads a plain function's code object; anything else, and the
    answer for every shape of parameter list, as inspect.signature."""
    import functools
    import inspect

    from doctor import registry

    def plain(kvm, host=None, *, cpu, links=None): ...  # type: ignore[no-untyped-def]
    def star(a, b=1, /, c=2, *rest, d, e=None, **more): ...  # type: ignore[no-untyped-def]
    def bare(): ...  # type: ignore[no-untyped-def]

    @functools.wraps(plain)
    def wrapped(*args, **kwargs): ...  # type: ignore[no-untyped-def]

    class Callable:
        def __call__(self, kvm, cpu=None): ...  # type: ignore[no-untyped-def]

    for func in (plain, star, bare, wrapped, Callable(), lambda kvm, cpu=None: None):
        expected = [(p.name, p.default) for p in inspect.signature(func).parameters.values()]
        assert registry._parameters(func) == expected, func
