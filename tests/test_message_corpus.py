"""The message corpus (tests/fixtures/messages/): error messages as people pasted them into
public threads, each with its source and the cause the thread established. `explain` must
name that cause among its candidates for at least 95% of them, and keep the candidates few
enough to read. Entries whose cause no playbook holds (`cause: null`) test the "probably"
path and do not count towards the score."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import pytest

from doctor import playbooks

from kdtest import ROOT

MESSAGES = ROOT / "tests" / "fixtures" / "messages"
REFERENCE = ROOT.parent / "shared" / "reference"
FIELD_NOTES = "shared/reference/000_cc7aed89759ae6a4.txt (field notes)"
MIN_SCORE = 0.95
MIN_ENTRIES = 150
MAX_CANDIDATES = 9  # every cause of a missing /dev/kvm, plus permissions and the emulator


def corpus() -> list[tuple[str, dict[str, Any]]]:
    import yaml

    out = []
    for path in sorted(MESSAGES.glob("*.yaml")):
        for entry in yaml.safe_load(path.read_text(encoding="utf-8")):
            out.append((path.name, entry))
    return out


ENTRIES = corpus()


@pytest.fixture(scope="module")
def book() -> playbooks.Playbooks:
    return playbooks.load()


def test_every_entry_says_where_it_comes_from_and_what_caused_it(
    book: playbooks.Playbooks,
) -> None:
    for name, entry in ENTRIES:
        assert set(entry) <= {"message", "source", "tool", "cause", "note"}, (name, entry)
        assert isinstance(entry["message"], str) and entry["message"].strip(), (name, entry)
        assert isinstance(entry["tool"], str) and entry["tool"], (name, entry)
        source = entry["source"]
        assert re.match(r"https://\S+$", source) or source == FIELD_NOTES, (name, source)
        assert entry["cause"] is None or book.get(entry["cause"]) is not None, (name, entry)


def test_field_note_entries_are_quoted_verbatim() -> None:
    notes = "\n".join(p.read_text(encoding="utf-8") for p in REFERENCE.glob("*.txt"))
    if not notes:
        pytest.skip(f"the field notes at {REFERENCE}")
    for _, entry in ENTRIES:
        if entry["source"] == FIELD_NOTES:
            assert entry["message"].lower() in notes.lower(), entry["message"]


def test_the_corpus_is_large_and_comes_from_many_tools() -> None:
    scored = [e for _, e in ENTRIES if e["cause"]]
    assert len(scored) >= MIN_ENTRIES
    tools = Counter(e["tool"] for _, e in ENTRIES)
    for tool in (
        "virsh",
        "virt-manager",
        "virt-install",
        "nova",
        "vagrant-libvirt",
        "terraform-provider-libvirt",
        "minikube",
        "Proxmox",
        "OpenNebula",
        "CloudStack",
        "KubeVirt",
        "go-libvirt",
        "libvirt-python",
    ):
        assert tools[tool], tool


def test_explain_names_the_established_cause_for_95_percent_of_the_corpus(
    book: playbooks.Playbooks,
) -> None:
    scored = [(name, e) for name, e in ENTRIES if e["cause"]]
    misses, crowded, first = [], [], 0
    for name, entry in scored:
        ids = [m.playbook.id for m in book.match_text(entry["message"])]
        if entry["cause"] not in ids:
            misses.append(
                f"{name}: expected {entry['cause']}, got {ids or 'nothing'}: "
                f"{entry['message'][:120]!r} ({entry['source']})"
            )
        elif ids[0] == entry["cause"]:
            first += 1
        if len(ids) > MAX_CANDIDATES:
            crowded.append(f"{name}: {len(ids)} candidates for {entry['message'][:80]!r}")
    score = 1 - len(misses) / len(scored)
    print(
        f"\nmessage corpus: {len(scored) - len(misses)}/{len(scored)} = {score:.1%} "
        f"(named first: {first})"
    )
    print("\n".join(misses))
    assert not crowded, "\n".join(crowded)
    assert score >= MIN_SCORE, f"{score:.1%} < {MIN_SCORE:.0%}:\n" + "\n".join(misses)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        # What no signature matches but whose words point at a known problem.
        (
            "qemu-system-x86_64: Failed to start VNC server on `127.0.0.1:5': Failed to bind "
            "socket: Cannot assign requested address",
            "graphics-port-conflict",
        ),
        (
            "`qemu-system-x86_64: could not open /dev/net/tun: Operation not permitted`",
            "tun-device-missing",
        ),
        (
            "modprobe: FATAL: Module kvm not found in directory /lib/modules/6.5.11-8-pve",
            "kvm-module-not-loaded",
        ),
    ],
)
def test_the_nearest_playbook_of_an_unmatched_message(
    book: playbooks.Playbooks, message: str, expected: str
) -> None:
    assert book.match_text(message) == []
    nearest = book.nearest(message)
    assert nearest and nearest[0].playbook.id == expected
    assert 0 < nearest[0].score <= 1 and nearest[0].shared


def test_words_unlike_any_playbook_are_near_nothing(book: playbooks.Playbooks) -> None:
    assert book.nearest("Domain web1 started") == []
    assert book.nearest("the weather is fine today") == []
