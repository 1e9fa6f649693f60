"""doctor/textscan.py: the multi-pattern engines that pick the lines of a large text worth
trying the signatures on, the bounded reading of a stream, and `kvmdoctor explain -` reading a
stream of any size in flat memory.

The differential tests compare what each engine leads to with the reference: every line of
every message the tests hold (the message corpus, the signatures' own examples, the field
notes, the real kernel and libvirt logs, LOG001's test logs, the bench's error lines) tried
with `Playbooks.match_line`, the matcher `explain` and LOG001 used on every line before, and
variations of those lines in the ways logs and pastes vary (case, runs of whitespace, tabs,
quotes of another kind, escaped quotes, Go's dial errors, long prefixes)."""

from __future__ import annotations

import io
import json
import os
import random
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from doctor import playbooks, textscan
from doctor.playbooks import normalise, numbered_lines, pasted_lines

from kdtest import ROOT, require

REFERENCE = ROOT.parent / "shared" / "reference"
sys.path.insert(0, str(ROOT / "bench"))


@pytest.fixture(scope="module")
def book() -> playbooks.Playbooks:
    return playbooks.load()


def engine_or_fail(book: playbooks.Playbooks, name: str) -> textscan.Engine:
    try:
        return textscan.make_engine(book, name)
    except ImportError:
        require(False, f"the {name} engine (declared in pyproject.toml)")
        raise


# --- what the tests hold --------------------------------------------------------------------


def held_texts() -> list[str]:
    """Every message and log the tests hold, as text."""
    import test_playbooks
    import yaml

    texts = [m for examples in test_playbooks.SIGNATURE_EXAMPLES.values() for m in examples]
    texts += [m for m, _ in test_playbooks.FIELD_NOTES]
    for path in sorted((ROOT / "tests" / "fixtures" / "messages").glob("*.yaml")):
        texts += [e["message"] for e in yaml.safe_load(path.read_text(encoding="utf-8"))]
    realdata = ROOT / "tests" / "fixtures" / "realdata"
    texts += [p.read_text(errors="replace") for p in sorted(realdata.rglob("*")) if p.is_file()]
    texts += [p.read_text(errors="replace") for p in sorted(REFERENCE.glob("*.txt"))]
    test_logs = _checks_test_logs()
    texts += [test_logs.LIBVIRTD_LOG, test_logs.QEMU_LOG]
    import bench_explain

    texts.append("\n".join(bench_explain.error_lines()))
    return texts


def _checks_test_logs() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "kd_test_logs", ROOT / "tests" / "checks" / "test_logs.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def variations(line: str, rng: random.Random) -> list[str]:
    """A line as other logs and pastes carry it."""
    out = [
        line.upper(),
        line.swapcase(),
        line.replace(" ", "  "),
        line.replace(" ", "\t"),
        line.replace(" ", " \t "),
        line.replace("'", '"'),
        line.replace("'", "`"),
        line.replace("'", "\\'"),
        line.replace("'", "\\\\'").replace("[", "\\["),
        line.replace("Failed to connect socket to '", "dial unix ").replace("': ", ": connect: "),
        "Nov 26 07:27:53 kvm1 libvirtd[7722]:   " + line,
        "2026-11-26T07:27:53+0000 kvm1 libvirtd[7722]: error : " + line + "   ",
        "x" * 300 + " " + line,
        line.replace(" ", "\\n", 1),
        line.replace("s", "\u017f", 1),  # long s: folds onto s
        line.replace("i", "\u0131", 1),  # dotless i
        line.replace("'", "\u2019"),  # a typographic quote
        line.replace(" ", "\u00a0", 2),  # no-break spaces
    ]
    words = line.split(" ")
    if len(words) > 2:
        cut = rng.randrange(1, len(words))
        out.append(" ".join(words[:cut]) + " " * rng.randrange(2, 5) + " ".join(words[cut:]))
    return out


def all_lines() -> list[str]:
    rng = random.Random(13)
    lines: list[str] = []
    for text in held_texts():
        for raw in text.split("\n"):
            lines.append(raw)
            if raw.strip():
                lines += variations(raw, rng)
    return lines


LINES = all_lines()


_REFERENCE: dict[tuple[str, bool], list[tuple[int, list[str]]]] = {}


def reference(book: playbooks.Playbooks, text: str, pasted: bool) -> list[tuple[int, list[str]]]:
    """Every line of `text` through the matcher: (line number, playbook ids) where it found
    any."""
    if (text, pasted) in _REFERENCE:
        return _REFERENCE[text, pasted]
    out = []
    for number, raw in enumerate(text.split("\n"), start=1):
        lines = pasted_lines(raw) if pasted else [normalise(raw)]
        ids = [m.playbook.id for line in lines if line for m in book.match_line(line)]
        if ids:
            out.append((number, ids))
    _REFERENCE[text, pasted] = out
    return out


def through_engine(
    book: playbooks.Playbooks, engine: textscan.Engine, text: str, pasted: bool
) -> list[tuple[int, list[str]]]:
    out = []
    data = text.encode("utf-8", "surrogatepass")
    for number, raw in textscan.scan(engine, [data]):
        line = raw.decode("utf-8", "surrogatepass")
        lines = pasted_lines(line) if pasted else [normalise(line)]
        ids = [m.playbook.id for one in lines if one for m in book.match_line(one)]
        if ids:
            out.append((number, ids))
    return out


# --- the engines against the reference ------------------------------------------------------


def test_the_held_texts_are_many_and_varied() -> None:
    assert len(held_texts()) > 300
    assert len(LINES) > 10_000


@pytest.mark.parametrize("name", textscan.ENGINES)
@pytest.mark.parametrize("pasted", [True, False], ids=["explain", "LOG001"])
def test_each_engine_finds_what_the_matcher_finds_on_every_line(
    book: playbooks.Playbooks, name: str, pasted: bool
) -> None:
    engine = engine_or_fail(book, name)
    text = "\n".join(LINES)
    expected = reference(book, text, pasted)
    assert len(expected) > 1000  # the variations keep most lines matching
    assert through_engine(book, engine, text, pasted) == expected


@pytest.mark.parametrize("name", textscan.ENGINES)
def test_the_engine_picks_few_lines_of_a_quiet_log(book: playbooks.Playbooks, name: str) -> None:
    """Lines without any signature's text are not candidates (else nothing is gained)."""
    engine = engine_or_fail(book, name)
    quiet = "\n".join(
        f"2026-11-26T07:{i % 60:02d}:00+0000 kvm1 systemd[1]: Started Session {i} of User root."
        for i in range(2000)
    )
    assert list(textscan.scan(engine, [quiet.encode()])) == []


def test_log001_takes_only_candidate_lines_and_the_time_before_them(
    book: playbooks.Playbooks,
) -> None:
    lines = ["2026-11-26 07:27:52.290+0000: starting up", "qemu: -blockdev x", "plain"] * 3
    lines[4] = "Is another process using the image [/var/lib/libvirt/images/a.qcow2]?"
    engine = textscan.make_engine(book)
    assert list(textscan.scan_lines(engine, lines)) == [4]


def test_a_signature_without_text_to_look_for_makes_every_line_a_candidate(
    book: playbooks.Playbooks,
) -> None:
    import dataclasses

    loose = playbooks.Playbooks()
    loose.items["p"] = dataclasses.replace(
        next(iter(book)), id="p", signatures=(re.compile(r"\d+ \S+", re.IGNORECASE),)
    )
    engine = textscan.make_engine(loose)
    assert engine.name == "none"
    found = list(textscan.scan(engine, [b"a\n\nb 1\nc"]))
    assert found == [(1, b"a"), (2, b""), (3, b"b 1"), (4, b"c")]


def test_the_letters_that_fold_onto_ascii_are_all_known() -> None:
    ascii_class = re.compile(r"[\x00-\x7f]", re.IGNORECASE)
    folding = {
        chr(c)
        for c in range(0x80, 0x110000)
        if not 0xD800 <= c <= 0xDFFF and ascii_class.fullmatch(chr(c))
    }
    assert folding == set(textscan.FOLDS)
    for letter, ascii_letter in textscan.FOLDS.items():
        assert re.fullmatch(ascii_letter, letter, re.IGNORECASE)


def test_a_missing_wheel_leaves_the_python_engine(
    book: playbooks.Playbooks, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in ("hyperscan", "re2", "ahocorasick"):
        monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    engine = textscan.make_engine(book)
    assert engine.name == "python"
    text = "\n".join(LINES[:3000])
    assert through_engine(book, engine, text, True) == reference(book, text, True)


def test_the_best_installed_engine_is_hyperscan(book: playbooks.Playbooks) -> None:
    """pyproject.toml declares hyperscan where it has wheels (x86_64, aarch64)."""
    import platform

    best = textscan.make_engine(book).name
    if platform.machine() in ("x86_64", "aarch64"):
        assert best == "hyperscan"
    else:
        assert best in textscan.ENGINES


# --- reading a stream -----------------------------------------------------------------------


def test_blocks_hold_whole_lines_and_cut_long_ones() -> None:
    text = b"one\ntwo\n" + b"x" * (textscan.MAX_LINE + 500) + b"\nthree\nfour"
    reading = textscan.Reading()
    blocks = list(textscan.blocks(io.BytesIO(text), reading, size=1000))
    joined = b"".join(blocks)
    assert all(b.endswith(b"\n") for b in blocks[:-1])
    assert joined.split(b"\n") == [b"one", b"two", b"x" * textscan.MAX_LINE, b"three", b"four"]
    assert reading.cut == 1


def test_scan_numbers_lines_across_blocks(book: playbooks.Playbooks) -> None:
    line = "error: Failed to connect socket to '/var/run/libvirt/libvirt-sock': No such file"
    text = "\n".join(line if i in (3, 2500, 7001) else f"noise {i}" for i in range(1, 7002))
    engine = textscan.make_engine(book)
    reading = textscan.Reading()
    blocks = textscan.blocks(io.BytesIO(text.encode()), reading, 999)
    found = list(textscan.scan(engine, blocks, reading))
    assert [number for number, _ in found] == [3, 2500, 7001]
    assert reading.lines == 7001


# --- explain - ------------------------------------------------------------------------------

KVMDOCTOR = "import sys; sys.argv[0] = 'kvmdoctor'; from doctor.cli import main; main()"


def kvmdoctor_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def explain_json(data: bytes) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", KVMDOCTOR, "explain", "-", "--format", "json"],
        input=data,
        capture_output=True,
        env=kvmdoctor_env(),
        check=False,
    )
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads(proc.stdout)


def noise(count: int, start: int = 0) -> list[str]:
    return [
        f"2026-11-26T07:24:{i % 60:02d}+0000 kvm1 sshd[{i}]: Accepted publickey for admin"
        for i in range(start, start + count)
    ]


def test_a_long_log_is_matched_like_every_line_of_it(book: playbooks.Playbooks) -> None:
    """Longer than a paste (MAX_JOINED_LINES): read as a stream, each problem once with its
    count and first and last lines, in the order the reference finds them."""
    errors = [line for line in LINES if line.strip() and "\u017f" not in line][::7][:400]
    lines = noise(3000)
    for i, error in enumerate(errors):
        lines.insert(5 * i + 2, error)
    lines += errors[:50]  # repeats
    text = "\n".join(lines) + "\n"
    data = explain_json(text.encode())
    expected = reference(book, text, True)
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    count: dict[str, int] = {}
    for number, ids in expected:
        for playbook in dict.fromkeys(ids):
            first.setdefault(playbook, number)
            last[playbook] = number
            count[playbook] = count.get(playbook, 0) + 1
    assert data["lines"] == len(lines)
    assert [m["id"] for m in data["matches"]] == list(first)  # ordered by first line
    for match in data["matches"]:
        assert (match["count"], match["first_line"], match["last_line"]) == (
            count[match["id"]],
            first[match["id"]],
            last[match["id"]],
        )


def test_repeats_are_counted_with_their_first_and_last_line() -> None:
    line = (
        "2026-11-26T07:27:53+0000 kvm1 libvirtd[7722]: internal error: Failed to reserve port 5977"
    )
    text = "\n".join(noise(10) + [line] + noise(2500, 10) + [line, line] + noise(5)) + "\n"
    data = explain_json(text.encode())
    (match,) = [m for m in data["matches"] if m["id"] == "graphics-port-conflict"]
    assert (match["count"], match["first_line"], match["last_line"]) == (3, 11, 2513)
    proc = subprocess.run(
        [sys.executable, "-c", KVMDOCTOR, "explain", "-"],
        input=text.encode(),
        capture_output=True,
        env=kvmdoctor_env(),
        check=False,
    )
    assert 'matched: "Failed to reserve port 5977" (3 lines, first 11, last 2513)' in (
        proc.stdout.decode()
    )


def test_a_file_is_read_as_a_stream_too(tmp_path: Path) -> None:
    log = tmp_path / "libvirtd.log"
    log.write_text(
        "\n".join(
            noise(2100)
            + ["Cannot check QEMU binary /usr/libexec/qemu-kvm: No such file or directory"]
        )
    )
    proc = subprocess.run(
        [sys.executable, "-c", KVMDOCTOR, "explain", str(log), "-f", "json"],
        capture_output=True,
        env=kvmdoctor_env(),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["lines"] == 2101
    assert data["matches"][0]["id"] == "rhel-emulator-path-on-other-distribution"
    assert data["matches"][0]["first_line"] == 2101


def test_a_huge_line_is_cut_and_what_follows_is_still_read() -> None:
    error = "error: internal error: Failed to reserve port 5977"
    text = noise(2100) + ["y" * (3 * textscan.MAX_LINE) + " " + error, error]
    proc = subprocess.run(
        [sys.executable, "-c", KVMDOCTOR, "explain", "-", "-f", "json"],
        input="\n".join(text).encode(),
        capture_output=True,
        env=kvmdoctor_env(),
        check=False,
    )
    data = json.loads(proc.stdout)
    assert data["lines_cut"] == 1
    assert "only their first 64 KiB were matched" in proc.stderr.decode()
    (match,) = data["matches"]
    # The error past the first 64 KiB of the long line is not read; the next line's is.
    assert (match["count"], match["first_line"]) == (1, 2102)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_explain_reads_an_endless_stream_in_flat_memory() -> None:
    """A pipe fed without end: the RSS after 300 MB is within 20 MB of the RSS after the
    first 40 MB. Driven by the bytes written, never by the clock."""
    rng = random.Random(5)
    errors = [line for line in LINES if line.strip() and line.isascii()][:2000]
    chunks = []
    for _ in range(8):
        lines = noise(4000, rng.randrange(100_000))
        for _ in range(3):
            lines.insert(rng.randrange(len(lines)), rng.choice(errors))
        lines.append("z" * rng.randrange(1000, 200_000))  # a long line now and then
        chunks.append(("\n".join(lines) + "\n").encode())
    proc = subprocess.Popen(
        [sys.executable, "-c", KVMDOCTOR, "explain", "-", "-f", "json"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=kvmdoctor_env(),
    )
    assert proc.stdin is not None and proc.stdout is not None
    output: list[bytes] = []
    reader = threading.Thread(target=lambda: output.append(proc.stdout.read()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    written = 0
    warm = None
    try:
        index = 0
        while written < 300_000_000:
            chunk = chunks[index % len(chunks)]
            index += 1
            proc.stdin.write(chunk)
            written += len(chunk)
            if warm is None and written >= 40_000_000:
                proc.stdin.flush()
                warm = rss_kib(proc.pid)
        proc.stdin.flush()
        later = rss_kib(proc.pid)
    finally:
        proc.stdin.close()
        proc.wait()
    reader.join()
    assert warm is not None
    assert later - warm < 20 * 1024, (warm, later)
    data = json.loads(output[0])
    assert data["lines"] > 1_000_000 and data["matches"]


# --- a message given whole: the matcher as it was ------------------------------------------


def old_match_text(book: playbooks.Playbooks, text: str) -> list[playbooks.TextMatch]:
    """`Playbooks.match_text` as it was before it counted lines: the reference."""
    from doctor.playbooks import MAX_JOINED_LINES, _rejoined

    lines = pasted_lines(text)
    found: dict[str, tuple[int, int, playbooks.TextMatch]] = {}

    def add(index: int, line: str) -> None:
        for match in book.match_line(line):
            if match.playbook.id not in found:
                found[match.playbook.id] = (index, len(found), match)

    for index, line in enumerate(lines):
        add(index, line)
    if len(lines) <= MAX_JOINED_LINES:
        for index in range(len(lines) - 1):
            for joined in _rejoined(lines[index : index + 3]):
                add(index, joined)
    return [m for _, _, m in sorted(found.values(), key=lambda f: (f[0], f[1]))]


def test_numbered_lines_are_the_pasted_lines(book: playbooks.Playbooks) -> None:
    for text in held_texts():
        numbered = numbered_lines(text)
        assert [line for _, line in numbered] == pasted_lines(text)
        assert [n for n, _ in numbered] == sorted(n for n, _ in numbered)


def test_a_message_given_whole_matches_as_before(book: playbooks.Playbooks) -> None:
    texts = held_texts()
    texts += ["\n".join(LINES[i : i + 40]) for i in range(0, 4000, 40)]
    for text in texts:
        assert book.match_text(text) == old_match_text(book, text), text[:200]


@pytest.mark.slow
@pytest.mark.parametrize("pasted", [True, False], ids=["explain", "LOG001"])
def test_the_matcher_finds_what_every_signature_finds(
    book: playbooks.Playbooks, pasted: bool
) -> None:
    """The reference itself: match_line (which tries a signature only on lines that hold its
    required text, folded as case-insensitive matching folds) against every signature of
    every playbook, on every line outside ASCII (where the folding matters) and every fifth of
    the others (tests/test_playbooks.py tries all the unvaried ones)."""
    for index, raw in enumerate(LINES):
        if raw.isascii() and index % 5:
            continue
        for line in pasted_lines(raw) if pasted else [normalise(raw)]:
            every = {}
            for playbook in book:
                for signature in playbook.signatures:
                    hit = signature.search(line)
                    if hit:
                        every[playbook.id] = hit.group(0)
                        break
            found = {m.playbook.id: m.matched for m in book.match_line(line)}
            assert found == every, line
