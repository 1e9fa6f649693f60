"""The rule engine: playbooks matched against findings give ranked diagnoses.

For each playbook, the findings of its first `when` condition anchor diagnoses (one per finding,
about that finding's subject); with `all`, every other condition must match some finding too,
and no finding may match a condition under `not` (a premise the problem needs: "the CPU and the
firmware allow KVM" does not hold beside a failing KVM003 or KVM004). Candidates are accepted
most specific first (more conditions and evidence tests, then more symptoms explained): a
candidate whose anchor a more specific diagnosis already accounts for is dropped, so "/dev/kvm
is missing" does not stand beside "VT-x is disabled in the firmware", which explains it.
Accepted diagnoses mark the findings they rest on and the symptoms they explain
(`explained_by`); a finding whose evidence names a playbook (a LOG001 hit) is explained by that
playbook's diagnosis when there is one.

Diagnoses are ranked by causal depth (how many problem findings a diagnosis rests on or
explains, then how many findings), then severity, then specificity. One whose problem findings
another diagnosis all rests on or explains is a consequence of it: it is listed after every
root cause with `consequence_of` (the rank of its cause), shown under that cause, and its fix
is not part of the plan, since fixing the cause is what fixes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Optional

from doctor.engine import RunResult
from doctor.model import SEVERITY, Finding, Status, worst
from doctor.playbooks import (
    PROBLEM_STATUSES,
    Action,
    Playbook,
    PlaybookError,
    Playbooks,
    Resolver,
    as_text,
    fill,
    lookup,
    subject_values,
)
from doctor.record import record
from doctor.registry import LoadError

# Actions kvmdoctor can carry out itself (`kvmdoctor fix --apply`, when also `safe`).
AUTOMATABLE = frozenset(
    {"sysctl", "file_line", "package", "service", "group_member", "acl", "module_option", "command"}
)


@record
class FixStep:
    """One action of a diagnosis's fix with its placeholders filled."""

    playbook: str
    action: str
    safety: str
    text: str  # what it does, in words
    params: dict[str, Any]  # the action's keys, filled
    missing: tuple[str, ...] = ()  # placeholders the evidence could not fill

    @property
    def automatable(self) -> bool:
        return self.action in AUTOMATABLE and not self.missing

    def as_dict(self) -> dict[str, Any]:
        return {
            "playbook": self.playbook,
            "action": self.action,
            "safety": self.safety,
            "text": self.text,
            "params": self.params,
            "missing": list(self.missing),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FixStep:
        return cls(
            data["playbook"],
            data["action"],
            data["safety"],
            data["text"],
            dict(data["params"]),
            tuple(data.get("missing", ())),
        )


@record
class Diagnosis:
    playbook: Playbook
    subject: str
    status: Status
    findings: tuple[Finding, ...]  # what revealed it (the anchor first)
    explains: tuple[Finding, ...]  # its symptoms
    cause: str
    fix: tuple[FixStep, ...]
    missing: tuple[str, ...]  # placeholders of the cause left unfilled
    # The rank of the diagnosis that rests on or explains every problem this one rests on or
    # explains (its cause), and the ranks of those this one so explains.
    consequence_of: Optional[int] = None
    consequences: tuple[int, ...] = ()

    def as_dict(self, rank: int) -> dict[str, Any]:
        def ref(f: Finding) -> dict[str, Any]:
            return {"code": f.code, "subject": f.subject, "status": f.status, "message": f.message}

        out: dict[str, Any] = {
            "rank": rank,
            "playbook": self.playbook.id,
            "title": self.playbook.title,
            "status": self.status,
            "subject": self.subject,
            "codes": list(self.playbook.codes),
            "specificity": self.playbook.specificity,
            "cause": self.cause,
            "findings": [ref(f) for f in self.findings],
            "explains": [ref(f) for f in self.explains],
            "fix": [step.as_dict() for step in self.fix],
            "verify": list(self.playbook.verify),
            "refs": list(self.playbook.refs),
        }
        if self.consequence_of is not None:
            out["consequence_of"] = self.consequence_of
        if self.consequences:
            out["consequences"] = list(self.consequences)
        return out


def _is_problem(finding: Finding) -> bool:
    return finding.status in (*PROBLEM_STATUSES, "error") and finding.ignored is None


def _names(finding: Finding, playbook: str) -> bool:
    """Whether the finding's evidence names this playbook (a LOG001 hit, info or worse)."""
    return (
        finding.evidence.get("playbook") == playbook
        and finding.status in ("info", *PROBLEM_STATUSES)
        and finding.ignored is None
    )


class _Resolver:
    """Placeholder values for one diagnosis: the anchor's subject, then each matched finding's
    evidence (the anchor's first). `{evidence.x}` and `{x}` both look into the evidence."""

    def __init__(self, findings: Sequence[Finding]) -> None:
        self.findings = findings
        anchor = findings[0]
        self.fixed = {
            **subject_values(anchor.subject),
            "subject": anchor.subject,
            "code": anchor.code,
            "status": anchor.status,
            "message": anchor.message.rstrip("."),  # causes go on after it with their own
        }

    def __call__(self, name: str) -> Optional[str]:
        if name in self.fixed:
            return self.fixed[name]
        path = name[len("evidence.") :] if name.startswith("evidence.") else name
        for finding in self.findings:
            found, value = lookup(finding.evidence, path)
            if found and value is not None:
                return as_text(value)
        return None


def _fill_value(value: Any, resolver: Resolver, missing: list[str]) -> Any:
    if isinstance(value, str):
        text, lacking = fill(value, resolver)
        missing.extend(lacking)
        return text
    if isinstance(value, dict):
        return {k: _fill_value(v, resolver, missing) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill_value(v, resolver, missing) for v in value]
    return value


def describe(action: str, params: dict[str, Any]) -> str:
    """A one-line account of an action, for when the playbook gives no `text`."""
    if action == "sysctl":
        return f"set {params['name']} = {params['value']}"
    if action == "file_line":
        return f"put `{params['line']}` in {params['path']}"
    if action == "package":
        names = sorted({n for names in params["packages"].values() for n in names})
        return f"install {' / '.join(names)}"
    if action == "service":
        verb = "restart" if params["state"] == "restarted" else "start"
        return f"{verb} {params['name']}"
    if action == "group_member":
        return f"add {params['user']} to the group {params['group']}"
    if action == "acl":
        who = f"{params['etype']} {params['entity']}"
        return f"grant {who} {params['permissions']} on {params['path']}"
    if action == "module_option":
        opts = " ".join(f"{k}={v}" for k, v in params.get("options", {}).items())
        return f"load {params['module']} {opts}".strip()
    if action == "command":
        return " ".join(params["argv"])
    return str(params.get("text", action))


def _step(playbook_id: str, action: Action, resolver: Resolver) -> FixStep:
    missing: list[str] = []
    params = _fill_value(dict(action.params), resolver, missing)
    text = params.pop("text", None) or describe(action.kind, params)
    return FixStep(
        playbook_id, action.kind, action.safety, text, params, tuple(dict.fromkeys(missing))
    )


def steps_for(playbook: Playbook, resolve: Resolver) -> tuple[FixStep, ...]:
    """The playbook's fix with placeholders filled by `resolve` (unfilled ones as <name>)."""
    return tuple(_step(playbook.id, action, resolve) for action in playbook.fix)


@dataclass
class _Candidate:
    playbook: Playbook
    anchor: int
    matched: list[int]
    status: Status


def _candidates(
    playbook: Playbook, findings: Sequence[Finding], by_code: dict[str, list[int]]
) -> list[_Candidate]:
    """Where the playbook's conditions hold. `by_code` indexes the unignored findings by check
    code, so the work grows with the findings of the playbook's codes, not with all of them."""
    per_condition = [
        [i for i in by_code.get(c.code, ()) if c.matches(findings[i])] for c in playbook.conditions
    ]
    if playbook.mode == "all" and not all(per_condition):
        return []
    # What contradicts the playbook's premises: a finding that matches a `not` condition with
    # a subject test, about whatever subject (`anywhere`), or one without, about these subjects.
    anywhere = False
    contradicting: set[str] = set()
    for c in playbook.contradicted_by:
        for i in by_code.get(c.code, ()):
            if c.matches(findings[i]):
                if c.subject is not None:
                    anywhere = True
                else:
                    contradicting.add(findings[i].subject)
    if anywhere:
        return []
    anchors = (
        per_condition[0]
        if playbook.mode == "all"
        else list(dict.fromkeys(i for matches in per_condition for i in matches))
    )
    # For "all" playbooks: each further condition's findings by subject, to pair them with the
    # anchor's subject in one lookup.
    by_subject: list[dict[str, list[int]]] = []
    if playbook.mode == "all":
        for matches in per_condition[1:]:
            index: dict[str, list[int]] = {}
            for i in matches:
                index.setdefault(findings[i].subject, []).append(i)
            by_subject.append(index)
    out = []
    for anchor in anchors:
        subject = findings[anchor].subject
        if contradicting and (
            subject == "host" or subject in contradicting or "host" in contradicting
        ):
            continue  # a host-wide anchor by any subject's finding, else by its own or the host's
        matched = [anchor]
        if playbook.mode == "all":
            seen = {anchor}
            for matches, index in zip(per_condition[1:], by_subject):
                near = index.get(findings[anchor].subject)
                for i in near or matches:
                    if i not in seen:
                        seen.add(i)
                        matched.append(i)
        problems = [findings[i].status for i in matched if _is_problem(findings[i])]
        status = worst(problems) if problems else findings[anchor].status
        out.append(_Candidate(playbook, anchor, matched, status))
    return out


def diagnose(findings: Sequence[Finding], book: Playbooks) -> tuple[list[Diagnosis], list[Finding]]:
    """(diagnoses, root causes by rank and then their consequences; the findings with
    `explained_by` set)."""
    by_code: dict[str, list[int]] = {}
    problems_by_code: dict[str, list[int]] = {}
    by_code_subject: dict[tuple[str, str], list[int]] = {}
    naming: dict[str, list[int]] = {}
    for i, f in enumerate(findings):
        if f.ignored is not None:
            continue
        by_code.setdefault(f.code, []).append(i)
        if _is_problem(f):
            problems_by_code.setdefault(f.code, []).append(i)
            by_code_subject.setdefault((f.code, f.subject), []).append(i)
        named = f.evidence.get("playbook")
        if isinstance(named, str) and _names(f, named):
            naming.setdefault(named, []).append(i)
    # Only a playbook with a condition on a code among the findings can have a candidate
    # (its anchors are findings of its conditions): the others are not even made.
    candidates = [c for p in book.for_codes(by_code) for c in _candidates(p, findings, by_code)]

    def names_playbook(c: _Candidate) -> bool:
        return "playbook" in findings[c.anchor].evidence

    candidates.sort(
        key=lambda c: (
            names_playbook(c),
            -c.playbook.specificity,
            -len(c.playbook.explains),
            -SEVERITY[c.status],
            c.playbook.id,
            c.anchor,
        )
    )
    claimed: set[int] = set()
    explained_by: dict[int, list[str]] = {}
    accepted: list[tuple[_Candidate, list[int]]] = []
    for cand in candidates:
        if cand.anchor in claimed:
            continue
        anchor = findings[cand.anchor]
        matched_set = set(cand.matched)
        related: list[int] = []
        for code in cand.playbook.explains:
            if anchor.subject == "host":  # a host-wide cause explains every subject's symptom
                related += problems_by_code.get(code, ())
            else:  # the same subject, or a host-wide symptom
                related += by_code_subject.get((code, anchor.subject), ())
                related += by_code_subject.get((code, "host"), ())
        symptoms = sorted(
            {i for i in (*related, *naming.get(cand.playbook.id, ())) if i not in matched_set}
        )
        accepted.append((cand, symptoms))
        for i in [*cand.matched, *symptoms]:
            if _is_problem(findings[i]) or i == cand.anchor or i in symptoms:
                claimed.add(i)
                ids = explained_by.setdefault(i, [])
                if cand.playbook.id not in ids:
                    ids.append(cand.playbook.id)

    marked = [
        replace(f, explained_by=tuple(explained_by[i])) if i in explained_by else f
        for i, f in enumerate(findings)
    ]
    built: list[_Built] = []
    for cand, symptoms in accepted:
        matched = [marked[i] for i in cand.matched]
        resolver = _Resolver(matched)
        cause, missing = fill(cand.playbook.cause, resolver)
        diagnosis = Diagnosis(
            playbook=cand.playbook,
            subject=matched[0].subject,
            status=cand.status,
            findings=tuple(matched),
            explains=tuple(marked[i] for i in symptoms),
            cause=cause,
            fix=tuple(_step(cand.playbook.id, a, resolver) for a in cand.playbook.fix),
            missing=tuple(dict.fromkeys(missing)),
        )
        cover = frozenset((*cand.matched, *symptoms))
        problems = frozenset(i for i in cover if _is_problem(findings[i]))
        built.append(_Built(diagnosis, cover, problems or cover, len(problems)))
    return _fold(built), marked


@record
class _Built:
    """An accepted diagnosis with the findings it rests on or explains (`cover`, by index)
    and those of them another diagnosis must cover to make it a consequence (`own`: its
    problem findings, or all of them when it has none)."""

    diagnosis: Diagnosis
    cover: frozenset[int]
    own: frozenset[int]
    reach: int  # the problem findings in `cover`

    @property
    def rank_key(self) -> tuple[int, int, int, int, str, str]:
        d = self.diagnosis
        return (
            -self.reach,
            -len(self.cover),
            -SEVERITY[d.status],
            -d.playbook.specificity,
            d.playbook.id,
            d.subject,
        )


def _fold(built: list[_Built]) -> list[Diagnosis]:
    """The diagnoses ranked by causal depth, then severity, then specificity; each one whose
    problem findings a higher-ranked diagnosis all covers is folded under the first such root
    cause and listed after every root.

    A diagnosis that covers another's problems without being covered by it in turn explains
    more, so it ranks higher: looking only at higher ranks finds every cause, and two that
    cover each other fold the lower-ranked under the higher."""
    ranked = sorted(built, key=lambda b: b.rank_key)
    holders: dict[int, list[int]] = {}  # finding -> positions of the diagnoses covering it
    for position, item in enumerate(ranked):
        for i in item.cover:
            holders.setdefault(i, []).append(position)
    root_of: dict[int, int] = {}
    for position, item in enumerate(ranked):
        rarest = min(item.own, key=lambda i: len(holders[i]))
        for other in holders[rarest]:
            if other >= position:
                break
            if item.own <= ranked[other].cover:
                root_of[position] = root_of.get(other, other)
                break
    roots = [p for p in range(len(ranked)) if p not in root_of]
    under: dict[int, list[int]] = {p: [] for p in roots}
    for position in sorted(root_of):
        under[root_of[position]].append(position)
    order = [*roots, *(p for root in roots for p in under[root])]
    rank = {position: number for number, position in enumerate(order, start=1)}
    out = []
    for position in order:
        diagnosis = ranked[position].diagnosis
        if position in root_of:
            diagnosis = replace(diagnosis, consequence_of=rank[root_of[position]])
        elif under[position]:
            diagnosis = replace(diagnosis, consequences=tuple(rank[p] for p in under[position]))
        out.append(diagnosis)
    return out


def apply(result: RunResult, book: Playbooks) -> RunResult:
    """The run with its diagnoses, its findings marked `explained_by`, and the playbooks that
    could not be loaded among its load errors."""
    diagnoses, marked = diagnose(result.findings(), book)
    position = 0
    checks = []
    for run in result.checks:
        count = len(run.findings)
        checks.append(replace(run, findings=tuple(marked[position : position + count])))
        position += count
    errors = [*result.load_errors, *(playbook_load_error(e) for e in book.errors)]
    return replace(result, checks=checks, diagnoses=diagnoses, load_errors=errors)


def playbook_load_error(error: PlaybookError) -> LoadError:
    return LoadError(f"playbook {error.file}", None, error.message)
