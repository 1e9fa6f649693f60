"""Checks: how they are declared, discovered through entry points, and validated.

A check is a function decorated with `@check(code, name, title=..., tags=...)` whose parameters
name the facts it needs and whose docstring holds its documentation in fixed sections. The
decorator only attaches the declaration; validation happens when the registry loads, so one bad
check is reported with its package and name while every other check still runs.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
import types
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from doctor.facts import fact_names
from doctor.model import Finding
from doctor.record import record

ENTRY_POINT_GROUP = "kvmdoctor.checks"
BUILTIN_AREAS = ("kvm", "libvirt", "tls", "firmware", "network", "logs", "domain", "probe")
# The code prefix of each built-in check module, so that a selection (`--select KVM`) imports
# only the modules whose checks it can match, and with them only the facts those checks need.
# tests/test_registry.py keeps it in sync with the codes the modules declare.
BUILTIN_PREFIXES = {
    "checks.kvm": ("KVM",),
    "checks.libvirt": ("LIB",),
    "checks.tls": ("TLS",),
    "checks.firmware": ("FW",),
    "checks.network": ("NET",),
    "checks.logs": ("LOG",),
    "checks.domain": ("DOM",),
    "checks.probe": ("PRB",),
}
CODE_RE = re.compile(r"^[A-Z]{2,4}[0-9]{3}$")
NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)+$")
SECTIONS = ("What it checks", "Why it matters", "How to fix", "References")
TAGS = frozenset(
    {
        "host",
        "libvirt",
        "network",
        "domain",
        "ci",
        "tls",
        "firmware",
        "logs",
        "probe",
        "fleet",
        "definition",
        "files",
    }
)
# Checks with this tag judge a domain or network definition alone, without a host:
# `kvmdoctor lint` runs them on files. Their other facts, if any, are optional.
DEFINITION_TAG = "definition"
# Checks with this tag judge definition files as written (their text: libvirt's schema), which
# only `kvmdoctor lint` reads: `run` leaves them out unless selected by name.
FILES_TAG = "files"
# Checks with this tag (and not `definition`) compare definitions with the host they are to
# run on (firmware files, bridges, networks, emulators): `kvmdoctor lint --host` adds them.
DOMAIN_TAG = "domain"
# Checks with this tag judge what only `kvmdoctor probe` provides: selected by name only.
ON_REQUEST_TAG = "probe"
# Checks with one of these tags judge what only one command provides (`kvmdoctor probe`: the
# guest's path; `kvmdoctor report merge`: many hosts' reports): selected by name only.
ON_REQUEST_TAGS = frozenset({ON_REQUEST_TAG, "fleet"})
DEFAULT_TIMEOUT = 10.0
_ATTR = "__kvmdoctor_check__"

CheckFunc = Callable[..., Iterable[Finding]]


@record
class Declaration:
    code: str
    name: str
    title: str
    tags: tuple[str, ...]
    timeout: Optional[float]


def check(
    code: str,
    name: str,
    *,
    title: str,
    tags: Iterable[str] = (),
    timeout: Optional[float] = None,
) -> Callable[[CheckFunc], CheckFunc]:
    """Declare a check. Parameters of the function name the facts it needs; a parameter with a
    default of None is optional (None when the fact is unavailable)."""

    def attach(func: CheckFunc) -> CheckFunc:
        setattr(func, _ATTR, Declaration(code, name, title, tuple(tags), timeout))
        return func

    return attach


@record
class CheckSpec:
    code: str
    name: str
    title: str
    tags: tuple[str, ...]
    facts: tuple[str, ...]  # required
    optional_facts: tuple[str, ...]
    func: CheckFunc
    doc: dict[str, str]  # section -> text
    origin: str  # "package (entry point name)"
    timeout: float = DEFAULT_TIMEOUT

    def all_facts(self) -> tuple[str, ...]:
        return self.facts + self.optional_facts

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "name": self.name,
            "title": self.title,
            "tags": list(self.tags),
            "facts": list(self.all_facts()),
            "origin": self.origin,
            "doc": dict(self.doc),
        }


@record
class LoadError:
    origin: str
    check: Optional[str]  # the check's code or function name, when one is to blame
    message: str

    def __str__(self) -> str:
        who = f"{self.origin}: {self.check}" if self.check else self.origin
        return f"{who}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {"origin": self.origin, "check": self.check, "message": self.message}


@dataclass
class Registry:
    checks: dict[str, CheckSpec] = field(default_factory=dict)
    errors: list[LoadError] = field(default_factory=list)
    # The tokens the registry was loaded for (see load_registry); empty: every plugin loaded.
    wanted: tuple[str, ...] = ()

    def __iter__(self) -> Iterator[CheckSpec]:
        return iter(sorted(self.checks.values(), key=lambda c: c.code))

    def find(self, token: str) -> Optional[CheckSpec]:
        """A check by exact code (any case) or name."""
        spec = self.checks.get(token.upper())
        if spec is not None:
            return spec
        return next((c for c in self.checks.values() if c.name == token.lower()), None)


_SECTION = re.compile(r"^(" + "|".join(re.escape(s) for s in SECTIONS) + r"):", re.MULTILINE)


def parse_docstring(doc: Optional[str]) -> tuple[dict[str, str], list[str]]:
    """Split a check's docstring into its sections; also return what is wrong with it."""
    text = inspect.cleandoc(doc or "")
    sections: dict[str, str] = {}
    matches = list(_SECTION.finditer(text))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = text[match.end() : end].strip()
        sections[match.group(1)] = "\n".join(line.rstrip() for line in body.splitlines())
    problems = [f"docstring lacks the section '{s}:'" for s in SECTIONS if not sections.get(s)]
    return sections, problems


@record
class Plugin:
    """Something that provides checks: usually an entry point, in tests a module built in memory."""

    origin: str
    load: Callable[[], Any]
    # The code prefixes of its checks, when known without loading it (the built-in modules);
    # None: it may hold any code, and is always loaded.
    prefixes: Optional[tuple[str, ...]] = None

    def may_match(self, tokens: Iterable[str]) -> bool:
        """Whether a check of this plugin could match one of the selection tokens (codes, code
        prefixes or names; a name can be any check's, so it matches every plugin)."""
        if self.prefixes is None:
            return True
        for token in tokens:
            token = token.strip().upper()
            if "-" in token or not token:
                return True
            if any(p.startswith(token) or token.startswith(p) for p in self.prefixes):
                return True
        return False


def entry_point_plugins() -> list[Plugin]:
    """The `kvmdoctor.checks` entry points of every installed distribution.

    They are read from the distributions' entry_points.txt (an INI file, read with
    configparser) as importlib.metadata reads them, first distribution of a name on sys.path
    winning; importlib.metadata itself is not imported because it costs more than the whole
    check run (it imports email, zipfile and csv), and `kvmdoctor run` should stay quick.
    """
    import configparser

    plugins = []
    seen: set[str] = set()
    for entry in sys.path or ["."]:
        try:
            names = sorted(os.listdir(entry or "."))
        except OSError:
            continue
        for name in names:
            if not name.endswith((".dist-info", ".egg-info")):
                continue
            dist = _dist_name(name)
            if dist in seen:
                continue
            seen.add(dist)
            path = os.path.join(entry or ".", name, "entry_points.txt")
            try:
                with open(path, encoding="utf-8") as file:
                    text = file.read()
            except (OSError, UnicodeDecodeError):
                continue
            if ENTRY_POINT_GROUP not in text:  # most distributions: not parsed at all
                continue
            parser = configparser.ConfigParser(interpolation=None, delimiters=("=",))
            parser.optionxform = str  # type: ignore[assignment,method-assign]
            try:
                parser.read_string(text, source=path)
            except configparser.Error:
                continue
            if not parser.has_section(ENTRY_POINT_GROUP):
                continue
            for ep_name, value in parser.items(ENTRY_POINT_GROUP):
                value = value.strip()
                plugins.append(
                    Plugin(
                        f"{dist} (entry point {ep_name} = {value})",
                        _importer(value),
                        BUILTIN_PREFIXES.get(value) if dist == "kvmdoctor" else None,
                    )
                )
    return plugins


def _dist_name(directory: str) -> str:
    """kvmdoctor-0.1.0.dist-info -> kvmdoctor (as the wheel spec names them)."""
    stem = directory.rsplit(".", 1)[0]
    return stem.split("-", 1)[0].replace("_", "-")


def module_plugin(module: types.ModuleType, origin: Optional[str] = None) -> Plugin:
    return Plugin(origin or module.__name__, lambda: module)


def builtin_plugins() -> list[Plugin]:
    """The built-in checks, for when kvmdoctor runs from a source tree without being installed."""
    return [
        Plugin(
            f"kvmdoctor (checks.{area})",
            _importer(f"checks.{area}"),
            BUILTIN_PREFIXES[f"checks.{area}"],
        )
        for area in BUILTIN_AREAS
    ]


def _importer(target: str) -> Callable[[], Any]:
    """Load "package.module" or "package.module:attribute" as an entry point does."""

    def load() -> Any:
        module_name, _, attrs = target.partition(":")
        loaded: Any = importlib.import_module(module_name.strip())
        for attr in filter(None, attrs.strip().split(".")):
            loaded = getattr(loaded, attr)
        return loaded

    return load


def load_registry(
    plugins: Optional[Iterable[Plugin]] = None,
    known_facts: Optional[Iterable[str]] = None,
    wanted: Sequence[str] = (),
) -> Registry:
    """The checks of every plugin; with `wanted` (selection tokens: codes, code prefixes,
    names), only of the plugins that may hold a check matching one of them, so that a
    selection imports neither the other check modules nor their facts and libraries. Plugins
    of unknown codes (third-party ones) always load."""
    if plugins is None:
        plugins = entry_point_plugins() or builtin_plugins()
    given = set(known_facts) if known_facts is not None else None
    registry = Registry(wanted=tuple(wanted))
    for plugin in plugins:
        if wanted and not plugin.may_match(wanted):
            continue
        try:
            loaded = plugin.load()
        except Exception as exc:  # a broken plugin must not stop the others
            registry.errors.append(
                LoadError(plugin.origin, None, f"cannot be loaded: {type(exc).__name__}: {exc}")
            )
            continue
        # Facts by name; a plugin may register its own when it loads.
        facts = given if given is not None else fact_names()
        for func in _declared(loaded):
            spec, problems = _validate(func, plugin.origin, facts)
            label = getattr(func, _ATTR).code or func.__name__
            if problems:
                for problem in problems:
                    registry.errors.append(LoadError(plugin.origin, label, problem))
                continue
            assert spec is not None
            other = registry.checks.get(spec.code)
            if other is not None:
                registry.errors.append(
                    LoadError(
                        plugin.origin,
                        spec.code,
                        f"duplicate code: {spec.code} is already {other.name} from {other.origin}",
                    )
                )
                continue
            clash = next((c for c in registry.checks.values() if c.name == spec.name), None)
            if clash is not None:
                registry.errors.append(
                    LoadError(
                        plugin.origin,
                        spec.code,
                        f"duplicate name: {spec.name} is already {clash.code} from {clash.origin}",
                    )
                )
                continue
            registry.checks[spec.code] = spec
    return registry


def _declared(loaded: Any) -> list[CheckFunc]:
    if callable(loaded) and hasattr(loaded, _ATTR):
        return [loaded]
    members: Iterable[Any]
    if isinstance(loaded, types.ModuleType):
        members = vars(loaded).values()
    elif isinstance(loaded, (list, tuple)):
        members = loaded
    else:
        return []
    found = [m for m in members if callable(m) and hasattr(m, _ATTR)]
    return sorted(found, key=lambda f: getattr(f, _ATTR).code)


_NO_DEFAULT = inspect.Parameter.empty


def _parameters(func: Any) -> list[tuple[str, Any]]:
    """(name, default or inspect.Parameter.empty) of each parameter, as inspect.signature
    gives them; a plain function's read from its code object (inspect.signature costs more
    than the rest of loading a check), anything else (a wrapper, a callable object) by
    inspect.signature."""
    code = getattr(func, "__code__", None)
    if not isinstance(func, types.FunctionType) or hasattr(func, "__wrapped__") or code is None:
        return [(p.name, p.default) for p in inspect.signature(func).parameters.values()]
    positional = code.co_argcount  # positional-only ones included
    names = list(code.co_varnames[: positional + code.co_kwonlyargcount])
    if code.co_flags & inspect.CO_VARARGS:
        names.insert(positional, code.co_varnames[positional + code.co_kwonlyargcount])
    if code.co_flags & inspect.CO_VARKEYWORDS:
        extra = positional + code.co_kwonlyargcount + bool(code.co_flags & inspect.CO_VARARGS)
        names.append(code.co_varnames[extra])
    defaults = func.__defaults__ or ()
    kwdefaults = func.__kwdefaults__ or {}
    first_default = positional - len(defaults)
    out: list[tuple[str, Any]] = []
    for index, name in enumerate(names):
        if index < positional:
            default = defaults[index - first_default] if index >= first_default else _NO_DEFAULT
        else:
            default = kwdefaults.get(name, _NO_DEFAULT)
        out.append((name, default))
    return out


def _validate(
    func: CheckFunc, origin: str, facts: set[str]
) -> tuple[Optional[CheckSpec], list[str]]:
    decl: Declaration = getattr(func, _ATTR)
    problems = []
    if not CODE_RE.match(decl.code or ""):
        problems.append(
            f"malformed code {decl.code!r}: expected 2-4 capitals and 3 digits (KVM001)"
        )
    if not NAME_RE.match(decl.name or ""):
        problems.append(f"malformed name {decl.name!r}: expected kebab-case (kvm-device-missing)")
    if not decl.title:
        problems.append("no title")
    unknown_tags = sorted(set(decl.tags) - TAGS)
    if unknown_tags:
        problems.append(f"unknown tags {unknown_tags}; known: {sorted(TAGS)}")
    doc, doc_problems = parse_docstring(func.__doc__)
    problems.extend(doc_problems)
    required, optional = [], []
    for name, default in _parameters(func):
        if name not in facts:
            problems.append(f"parameter {name!r} names no known fact")
        elif default is None:
            optional.append(name)
        else:
            required.append(name)
    if problems:
        return None, problems
    return (
        CheckSpec(
            code=decl.code,
            name=decl.name,
            title=decl.title,
            tags=decl.tags,
            facts=tuple(required),
            optional_facts=tuple(optional),
            func=func,
            doc=doc,
            origin=origin,
            timeout=decl.timeout or DEFAULT_TIMEOUT,
        ),
        [],
    )
