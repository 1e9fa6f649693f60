"""`kvmdoctor lint`: domain and network definitions checked before they reach a host.

The files are read through a source (doctor/sources/files.py), parsed once by the same parsers
as the `domains` and `networks` facts (keeping each element's line), and given to the engine as
those facts. The checks tagged `definition` run on them; with a host (`lint --host`), the
checks tagged `domain` join in, comparing the definitions with that host (firmware files,
bridges, networks, emulators). Each finding is about a file (its subject) and points at the
element it concerns: its path and the line it starts on.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any, Optional, Union

from doctor.engine import CheckRun, IgnoreRule, RunResult
from doctor.facts import RunOptions
from doctor.facts.domains import Domain, Domains, parse_domain
from doctor.facts.networks import Network, Networks, parse_network
from doctor.model import Finding, Location
from doctor.record import record
from doctor.registry import DEFINITION_TAG, DOMAIN_TAG, ON_REQUEST_TAGS, Registry
from doctor.sources.base import Source, SourceError

STDIN = "-"
ORIGIN = "definition files"
_KINDS = {
    "domain": "domain",
    "domstatus": "domain",
    "network": "network",
    "networkstatus": "network",
}


class LintInputError(ValueError):
    """Input lint cannot read: each problem, one per line (a usage error: exit 2)."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


@record
class Definitions:
    """What the files hold, in the order given (directories: their .xml files by name)."""

    files: tuple[str, ...]
    domains: tuple[Domain, ...]
    networks: tuple[Network, ...]

    def given(self, *, local: bool) -> dict[str, Any]:
        """The facts they make: `domains`, and `networks` when there are network files."""
        facts: dict[str, Any] = {"domains": Domains(self.domains, ORIGIN, local=local)}
        if self.networks:
            facts["networks"] = Networks(self.networks, ORIGIN)
        return facts


def expand(source: Source, paths: Sequence[str]) -> list[str]:
    """The files to lint: each file as named, each directory's *.xml files (recursively, by
    name). LintInputError lists every path that is neither."""
    files: list[str] = []
    problems: list[str] = []
    for path in paths:
        if path == STDIN:
            files.append(path)
            continue
        try:
            kind = source.stat(path).type
        except SourceError as exc:
            problems.append(f"{path}: {exc.reason}")
            continue
        if kind == "dir":
            found = _xml_files(source, path, problems)
            if not found:
                problems.append(f"{path}: the directory holds no .xml file")
            files.extend(found)
        else:
            files.append(path)
    if problems:
        raise LintInputError(problems)
    return files


def _xml_files(source: Source, directory: str, problems: list[str]) -> list[str]:
    try:
        names = sorted(source.list_dir(directory))
    except SourceError as exc:
        problems.append(f"{directory}: {exc.reason}")
        return []
    found = []
    for name in names:
        path = f"{directory.rstrip('/')}/{name}"
        try:
            kind = source.stat(path).type
        except SourceError:
            continue  # vanished or unreadable entries of a directory are not the user's input
        if kind == "dir":
            # As find(1) walks without -L: a link to a directory inside the tree is not
            # entered (`up -> ..` would lint the tree again, two such links without end). A
            # directory named on the command line is read even when it is a link.
            if not _is_link(source, path):
                found.extend(_xml_files(source, path, problems))
        elif kind == "file" and name.endswith(".xml"):
            found.append(path)
    return found


def _is_link(source: Source, path: str) -> bool:
    try:
        source.read_link(path)
    except SourceError:
        return False
    return True


class _Found(Exception):
    def __init__(self, tag: str) -> None:
        self.tag = tag


def root_tag(text: str) -> str:
    """The name of the document's first element, read no further than it (ET.ParseError for
    a document that is not XML before it)."""
    from xml.parsers import expat

    parser = expat.ParserCreate()

    def start(tag: str, attrs: Any) -> None:
        raise _Found(tag)

    parser.StartElementHandler = start
    try:
        parser.Parse(text, True)
    except _Found as found:
        return found.tag
    except expat.ExpatError as exc:
        raise ET.ParseError(
            f"{expat.ErrorString(exc.code)}: line {exc.lineno}, column {exc.offset}"
        ) from None
    raise ET.ParseError("no element found")


def read_definitions(source: Source, paths: Sequence[str]) -> Definitions:
    """Read and parse every file; LintInputError lists every one that is not a readable
    domain or network definition."""
    files = expand(source, paths)
    domains: list[Domain] = []
    networks: list[Network] = []
    problems: list[str] = []
    for path in files:
        shown = "<stdin>" if path == STDIN else path
        try:
            text = source.read_file(path).decode("utf-8")
        except SourceError as exc:
            problems.append(f"{shown}: {exc.reason}")
            continue
        except UnicodeDecodeError as exc:
            problems.append(f"{shown}: not UTF-8 text ({exc.reason} at byte {exc.start})")
            continue
        try:
            kind = _KINDS.get(root_tag(text))
            if kind is None:
                raise ValueError(
                    f"<{root_tag(text)}> is neither a libvirt domain nor a network definition"
                )
            if kind == "domain":
                domains.append(
                    parse_domain(text, active=False, persistent=True, origin=shown, file=shown)
                )
            else:
                networks.append(
                    parse_network(
                        text,
                        active=False,
                        persistent=True,
                        autostart=False,
                        origin=shown,
                        file=shown,
                    )
                )
        except ET.ParseError as exc:
            problems.append(f"{shown}: not well-formed XML: {exc}")
        except ValueError as exc:
            problems.append(f"{shown}: {exc}")
    if problems:
        raise LintInputError(problems)
    return Definitions(tuple(files), tuple(domains), tuple(networks))


def lint_registry(registry: Registry, *, host: bool) -> Registry:
    """The checks lint runs: those tagged `definition`; with a host, those tagged `domain` too
    (but never those only another command can feed, such as the fleet's)."""
    wanted = {DEFINITION_TAG, DOMAIN_TAG} if host else {DEFINITION_TAG}
    return Registry(
        {
            spec.code: spec
            for spec in registry
            if wanted & set(spec.tags) and not ON_REQUEST_TAGS & set(spec.tags)
        },
        list(registry.errors),
    )


def run(
    registry: Registry,
    definitions: Definitions,
    source: Source,
    *,
    host: bool = False,
    selected: Sequence[str] = (),
    ignores: Sequence[IgnoreRule] = (),
    options: Optional[RunOptions] = None,
    timeout: Optional[float] = None,
) -> RunResult:
    """Run lint's checks on the definitions; `source` is the host's with `host`, else the
    files' own (which answers nothing of a host). SelectionError as engine.run raises it."""
    from doctor import engine

    given = definitions.given(local=host)
    if host and definitions.networks:
        given["networks"] = _with_host_networks(definitions, source, options)
    result = engine.run(
        registry,
        source,
        selected=selected,
        ignores=ignores,
        options=options,
        timeout=timeout,
        given=given,
        within=[spec.code for spec in lint_registry(registry, host=host)],
    )
    by_subject = subjects(definitions)
    result.checks = [_located(run, by_subject) for run in result.checks]
    return result


def subjects(definitions: Definitions) -> dict[str, Union[Domain, Network]]:
    """The definitions by the subjects findings give them: their files, and domain:NAME or
    network:NAME for checks that name them so (facts built from the domains, such as
    domain_firmware), when one file alone defines the name."""
    found: dict[str, Union[Domain, Network]] = {}
    named: dict[str, list[Union[Domain, Network]]] = {}
    items: list[Union[Domain, Network]] = [*definitions.domains, *definitions.networks]
    for item in items:
        found[item.subject] = item
        kind = "domain" if isinstance(item, Domain) else "network"
        named.setdefault(f"{kind}:{item.name}", []).append(item)
    for subject, items in named.items():
        if len(items) == 1:
            found.setdefault(subject, items[0])
    return found


def _with_host_networks(
    definitions: Definitions, source: Source, options: Optional[RunOptions]
) -> Networks:
    """The files' networks, and the host's that the files do not define."""
    from doctor.facts import FactContext

    host = FactContext(source, options).optional("networks")
    named = {n.name for n in definitions.networks}
    others = tuple(n for n in host.items if n.name not in named) if host is not None else ()
    origin = f"{ORIGIN} and {host.origin}" if host is not None else ORIGIN
    return Networks((*definitions.networks, *others), origin)


def _located(run: CheckRun, by_subject: dict[str, Union[Domain, Network]]) -> CheckRun:
    return replace(run, findings=tuple(locate(f, by_subject) for f in run.findings))


def locate(finding: Finding, by_subject: dict[str, Union[Domain, Network]]) -> Finding:
    """The finding about the file, with its line: that of the element it names, else of the
    definition's root element; its evidence names the domain or network the file defines."""
    definition = by_subject.get(finding.subject)
    if definition is None and finding.subject.startswith("mac:"):
        # NET010: a MAC several interfaces share is about the interface to change
        definition = by_subject.get(f"domain:{finding.evidence.get('domain')}")
    if definition is None or definition.file is None:
        return finding
    finding = replace(finding, subject=definition.subject)
    root = "/domain" if isinstance(definition, Domain) else "/network"
    element = finding.location.element if finding.location is not None else root
    line = definition.lines.get(element)
    if line is None:  # an element the check names but the file lacks: its nearest ancestor
        parts = element.split("/")
        while line is None and len(parts) > 2:
            parts.pop()
            line = definition.lines.get("/".join(parts))
    # The name the file defines, for playbooks' {domain}/{network} (`virsh edit {domain}`),
    # which a domain:NAME subject would have given.
    kind = "domain" if isinstance(definition, Domain) else "network"
    evidence = finding.evidence
    if kind not in evidence and definition.name:
        evidence = {**evidence, kind: definition.name}
    return replace(finding, location=Location(element, definition.file, line), evidence=evidence)


def files_of(definitions: Definitions) -> Iterable[str]:
    return ("<stdin>" if f == STDIN else f for f in definitions.files)
