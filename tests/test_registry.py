"""Loading checks: plugins built in memory, broken in every way the loader must survive."""

from __future__ import annotations

import time
import types
from collections.abc import Iterator
from typing import Any

import pytest

from doctor import engine
from doctor.model import Finding
from doctor.registry import Plugin, check, load_registry, module_plugin, parse_docstring
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
