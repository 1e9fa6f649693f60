"""Documentation generated from the checks' docstrings: `kvmdoctor checks CODE` and
docs/checks.md (`python -m doctor.docs docs/checks.md`; a test fails when the file is stale)."""

from __future__ import annotations

import sys

from doctor.registry import SECTIONS, CheckSpec, Registry, load_registry

HEADER = """# Checks

Generated from the checks' docstrings by `make docs` (`python -m doctor.docs docs/checks.md`).
Do not edit by hand: tests/test_docs.py fails when this file is stale.

Each check has a stable code; `kvmdoctor checks CODE` prints the same text.
"""


def check_doc(spec: CheckSpec) -> str:
    lines = [
        f"{spec.code} {spec.name}: {spec.title}",
        f"tags: {', '.join(spec.tags) or '-'}; facts: {', '.join(spec.all_facts()) or '-'}",
        f"from: {spec.origin}",
        "",
    ]
    for section in SECTIONS:
        lines.append(f"{section}:")
        lines.extend(f"  {line}" if line else "" for line in spec.doc[section].splitlines())
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def checks_markdown(registry: Registry) -> str:
    parts = [HEADER, "| code | name | title | tags |", "|---|---|---|---|"]
    specs = list(registry)
    for spec in specs:
        parts.append(
            f"| [{spec.code}](#{spec.code.lower()}) | {spec.name} | {spec.title} | "
            f"{', '.join(spec.tags)} |"
        )
    for spec in specs:
        parts.append(f"\n## {spec.code}\n\n`{spec.name}`: {spec.title}\n")
        parts.append(f"Facts: {', '.join(f'`{f}`' for f in spec.all_facts())}\n")
        for section in SECTIONS:
            body = spec.doc[section]
            if section == "References":
                refs = body.split()
                body = "\n".join(f"- <{ref}>" for ref in refs)
            parts.append(f"**{section}**\n\n{body}\n")
    return "\n".join(parts).rstrip() + "\n"


def main(argv: list[str]) -> int:
    text = checks_markdown(load_registry())
    if not argv or argv[0] == "-":
        sys.stdout.write(text)
        return 0
    with open(argv[0], "w", encoding="utf-8") as handle:
        handle.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
