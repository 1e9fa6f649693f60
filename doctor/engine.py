"""The engine: resolves facts, runs each selected check under a time limit, applies ignores."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Optional

from doctor.facts import FactContext, FactUnavailable, RunOptions
from doctor.model import Finding, Ignore, Status, worst
from doctor.record import record
from doctor.registry import FILES_TAG, ON_REQUEST_TAGS, CheckSpec, LoadError, Registry
from doctor.sources.base import Source


class SelectionError(ValueError):
    """A --select/--ignore token or config entry that matches no check."""


@record
class IgnoreRule:
    token: str  # a code, a code prefix or a check name
    reason: str
    by: str
    subject: Optional[str] = None  # only findings about this subject


@record
class CheckRun:
    spec: CheckSpec
    status: Status
    findings: tuple[Finding, ...]
    duration: float
    facts_duration: float


@dataclass
class RunResult:
    checks: list[CheckRun]
    load_errors: list[LoadError]
    facts: FactContext
    started: float
    finished: float
    ignores: list[IgnoreRule] = field(default_factory=list)
    diagnoses: list[Any] = field(default_factory=list)  # doctor.rules.Diagnosis, by rank

    def findings(self) -> list[Finding]:
        return [f for run in self.checks for f in run.findings]


def matches(spec: CheckSpec, token: str) -> bool:
    token = token.strip()
    return spec.name == token.lower() or spec.code.startswith(token.upper())


def select(
    registry: Registry, select: Sequence[str] = (), within: Optional[Iterable[str]] = None
) -> list[CheckSpec]:
    """The checks to run: those matching a code, code prefix or name; by default all but the
    probe's (tagged `probe`), whose fact only `kvmdoctor probe` provides, and the fleet's
    (tagged `fleet`), whose fact only `kvmdoctor report merge` provides. `within`: the codes
    a command runs at most (`kvmdoctor lint`'s); without it, the checks of definition files
    as written (tagged `files`, lint's) are left out too."""
    specs = list(registry)
    hidden = set(ON_REQUEST_TAGS)
    if within is not None:
        allowed = set(within)
        specs = [s for s in specs if s.code in allowed]
    else:
        hidden.add(FILES_TAG)
    if not select:
        return [s for s in specs if not hidden & set(s.tags)]
    unknown = [t for t in select if not any(matches(s, t) for s in specs)]
    if unknown:
        raise SelectionError(f"--select: no check matches {', '.join(map(repr, unknown))}")
    return [s for s in specs if any(matches(s, t) for t in select)]


def validate_ignores(registry: Registry, ignores: Iterable[IgnoreRule]) -> None:
    specs = list(registry)
    for rule in ignores:
        if not any(matches(s, rule.token) for s in specs):
            raise SelectionError(f"ignore ({rule.by}): no check matches {rule.token!r}")


def _plain(evidence: Any) -> Any:
    """The evidence as plain JSON values (tuples become lists), as the report will hold it.
    Raises TypeError or ValueError for what JSON cannot hold."""
    return json.loads(json.dumps(evidence, allow_nan=False))


class _Outcome:
    def __init__(self) -> None:
        self.findings: list[Finding] = []
        self.error: Optional[BaseException] = None
        self.done = threading.Event()


def _call(spec: CheckSpec, kwargs: dict[str, Any], outcome: _Outcome) -> None:
    try:
        for item in spec.func(**kwargs):
            outcome.findings.append(item)
    except Exception as exc:  # reported as an `error` finding naming the check
        outcome.error = exc


class Worker:
    """One daemon thread that runs check bodies one after another, each under its time limit:
    starting a thread per check costs little CPU, but on a busy host each start and join waits
    for the scheduler. A body still running at its limit is abandoned with its thread (checks
    are pure functions of facts, but a plugin may loop forever) and a new thread takes the
    next checks, so the run goes on and the process can exit."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Optional[tuple[CheckSpec, dict[str, Any], _Outcome]]]
        self._jobs = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None

    def _loop(self, jobs: queue.SimpleQueue[Any]) -> None:
        while True:
            job = jobs.get()
            if job is None:
                return
            spec, kwargs, outcome = job
            _call(spec, kwargs, outcome)
            outcome.done.set()

    def run(self, spec: CheckSpec, kwargs: dict[str, Any], outcome: _Outcome) -> bool:
        """Run the check's body; False when it did not finish within its limit."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, args=(self._jobs,), daemon=True, name="kvmdoctor-checks"
            )
            self._thread.start()
        self._jobs.put((spec, kwargs, outcome))
        if outcome.done.wait(spec.timeout):
            return True
        self._jobs = queue.SimpleQueue()  # the stuck thread keeps the old queue
        self._thread = None
        return False

    def stop(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread = None


def _failed(spec: CheckSpec, message: str, duration: float, facts_duration: float) -> CheckRun:
    """The run of a check that could not finish: one `error` finding naming it."""
    return CheckRun(
        spec, "error", (Finding("error", message, code=spec.code),), duration, facts_duration
    )


def run_check(spec: CheckSpec, ctx: FactContext, worker: Optional[Worker] = None) -> CheckRun:
    """Run one check: its facts here, its body on `worker` (by default a thread of its own)."""
    if worker is None:
        worker = Worker()
        try:
            return run_check(spec, ctx, worker)
        finally:
            worker.stop()
    started = time.perf_counter()
    kwargs: dict[str, Any] = {}
    try:
        for name in spec.facts:
            kwargs[name] = ctx.get(name)
        for name in spec.optional_facts:
            kwargs[name] = ctx.optional(name)
    except FactUnavailable as exc:
        findings = [Finding("skip", f"{name} unavailable: {exc.reason}", code=spec.code)]
        return CheckRun(spec, "skip", tuple(findings), 0.0, time.perf_counter() - started)
    except Exception as exc:
        message = f"fact {name!r} failed: {type(exc).__name__}: {exc}"
        return _failed(spec, message, 0.0, time.perf_counter() - started)
    facts_done = time.perf_counter()

    outcome = _Outcome()
    finished = worker.run(spec, kwargs, outcome)
    duration = time.perf_counter() - facts_done
    if not finished:
        message = f"{spec.code} {spec.name} did not finish within {spec.timeout:g} s"
        return _failed(spec, message, duration, facts_done - started)
    if outcome.error is not None:
        raised = outcome.error
        message = f"{spec.code} {spec.name} raised {type(raised).__name__}: {raised}"
        return _failed(spec, message, duration, facts_done - started)
    findings = []
    for item in outcome.findings:
        try:
            if not isinstance(item, Finding):
                raise TypeError(f"yielded {type(item).__name__}, not a Finding")
            findings.append(replace(item, code=spec.code, evidence=_plain(item.evidence)))
        except (TypeError, ValueError) as exc:
            message = f"{spec.code} {spec.name} produced an invalid finding: {exc}"
            findings = [Finding("error", message, code=spec.code)]
            break
    if not findings:
        findings = [Finding("pass", "nothing to report", code=spec.code)]
    status = worst([f.status for f in findings])
    return CheckRun(spec, status, tuple(findings), duration, facts_done - started)


def apply_ignores(run: CheckRun, ignores: Sequence[IgnoreRule]) -> CheckRun:
    if not ignores:
        return run
    changed = []
    for item in run.findings:
        rule = next(
            (
                r
                for r in ignores
                if matches(run.spec, r.token) and (r.subject is None or r.subject == item.subject)
            ),
            None,
        )
        changed.append(replace(item, ignored=Ignore(rule.reason, rule.by)) if rule else item)
    return replace(run, findings=tuple(changed))


def run(
    registry: Registry,
    source: Source,
    *,
    selected: Sequence[str] = (),
    ignores: Sequence[IgnoreRule] = (),
    options: Optional[RunOptions] = None,
    timeout: Optional[float] = None,
    given: Optional[dict[str, Any]] = None,
    within: Optional[Iterable[str]] = None,
) -> RunResult:
    """Run the selected checks against `source`; `given` facts are used as they are. Ignores
    may name any check of the registry (one kvmdoctor.toml serves `run` and `lint`)."""
    specs = select(registry, selected, within)
    validate_ignores(registry, ignores)
    ctx = FactContext(source, options, given)
    ctx.prefetch(name for spec in specs for name in spec.all_facts())
    started = time.time()
    runs = []
    worker = Worker()
    try:
        for spec in specs:
            if timeout is not None:
                spec = replace(spec, timeout=timeout)
            runs.append(apply_ignores(run_check(spec, ctx, worker), ignores))
    finally:
        worker.stop()
    return RunResult(runs, list(registry.errors), ctx, started, time.time(), list(ignores))
