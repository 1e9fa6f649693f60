"""The fuzz driver behind tests/test_fuzz.py, run in a process of its own (so that its memory
can be capped and measured, and its working and temporary directories are its own):

    python tests/kdfuzz.py SEED ITERATIONS SECONDS WORKDIR

Each iteration takes a real input -- the recorded host's snapshot manifest, a snapshot archive,
a domain definition, qemu.conf and libvirtd.conf, kvmdoctor.toml -- mutates it with a seeded
generator (byte flips, cuts, repeats, splices of hostile tokens, deep nesting), and runs
`kvmdoctor run` on it in this process. It prints one JSON line: every run's input kind, exit
code and whether an internal error or a traceback was seen."""

from __future__ import annotations

import io
import json
import random
import shutil
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from kdtest import FIXTURES, HOST_SNAPSHOT, kvmdoctor  # noqa: E402

TOKENS = [
    b"\x00",
    b"\xff\xfe",
    b"'",
    b'"',
    b"<",
    b"]]>",
    b"&ent;",
    b'<!DOCTYPE d [<!ENTITY e SYSTEM "file:///etc/shadow">]>',
    b"[" * 64,
    b"{" * 64,
    b"\n" * 8,
    b"= [",
    b'"""',
    b"../../../../etc/passwd",
    b"-1",
    b"1e999",
    b"NaN",
    b"true",
    b"\x1b[2J",
    "\u2028".encode(),
]


def mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        if not out:
            out += rng.choice(TOKENS)
            continue
        at = rng.randrange(len(out))
        op = rng.randrange(6)
        if op == 0:
            out[at] = rng.randrange(256)
        elif op == 1:
            del out[at : at + rng.randint(1, 64)]
        elif op == 2:
            out[at:at] = rng.choice(TOKENS)
        elif op == 3:
            chunk = out[at : at + rng.randint(1, 256)]
            out[at:at] = chunk * rng.randint(1, 8)
        elif op == 4:
            del out[at:]
        else:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    return bytes(out)


def mutate_json(value: Any, rng: random.Random, depth: int = 0) -> Any:
    """A structural mutation: a value swapped for one of another type, somewhere inside."""
    choices: list[Any] = [None, True, -1, 1e308, "", "x" * 1000, [], {}, [[[[]]]], {"kind": 1}]
    if isinstance(value, dict) and value and depth < 6:
        key = rng.choice(sorted(value))
        value = dict(value)
        value[key] = mutate_json(value[key], rng, depth + 1) if rng.random() < 0.7 else None
        return value
    if isinstance(value, list) and value and depth < 6:
        value = list(value)
        at = rng.randrange(len(value))
        value[at] = mutate_json(value[at], rng, depth + 1)
        return value
    return rng.choice(choices)


def case_manifest(work: Path, rng: random.Random) -> list[str]:
    snap = work / "snap"
    shutil.copytree(HOST_SNAPSHOT, snap)
    manifest = snap / "manifest.json"
    if rng.random() < 0.5:
        manifest.write_bytes(mutate(manifest.read_bytes(), rng))
    else:
        data = json.loads(manifest.read_text())
        manifest.write_text(json.dumps(mutate_json(data, rng)))
    return ["--snapshot", str(snap)]


def case_archive(work: Path, rng: random.Random) -> list[str]:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        tar.add(HOST_SNAPSHOT, arcname=".")
    data = raw.getvalue()
    if rng.random() < 0.5:
        data = mutate(data, rng)  # the tar itself
    import gzip

    packed = gzip.compress(data, compresslevel=1)
    if rng.random() < 0.3:
        packed = mutate(packed, rng)  # the compressed stream
    archive = work / "snap.tar.gz"
    archive.write_bytes(packed)
    return ["--snapshot", str(archive)]


def _tree(work: Path, files: dict[str, bytes]) -> Path:
    tree = work / "tree"
    for path, data in files.items():
        target = tree / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return tree


def case_domain_xml(work: Path, rng: random.Random) -> list[str]:
    sources = sorted((FIXTURES / "realdata" / "domains").glob("*.xml"))
    xml = rng.choice(sources).read_bytes()
    tree = _tree(work, {"/etc/libvirt/qemu/kdfuzz.xml": mutate(xml, rng)})
    return ["--root", str(tree)]


def case_conf(work: Path, rng: random.Random) -> list[str]:
    qemu = b'user = "libvirt-qemu"\ngroup = "kvm"\nvnc_listen = "0.0.0.0"\nnvram = [\n "a:b"\n]\n'
    daemon = b'listen_tls = 1\nkey_file = "/etc/pki/libvirt/private/serverkey.pem"\n'
    tree = _tree(
        work,
        {
            "/etc/libvirt/qemu.conf": mutate(qemu, rng),
            "/etc/libvirt/libvirtd.conf": mutate(daemon, rng),
        },
    )
    return ["--root", str(tree)]


def case_config(work: Path, rng: random.Random) -> list[str]:
    config = b'fail_on = "warn"\n[[ignore]]\ncheck = "KVM008"\nreason = "lab"\n'
    path = work / "kvmdoctor.toml"
    path.write_bytes(mutate(config, rng))
    return ["--snapshot", str(HOST_SNAPSHOT), "--config", str(path)]


CASES: dict[str, Callable[[Path, random.Random], list[str]]] = {
    "manifest": case_manifest,
    "archive": case_archive,
    "domain-xml": case_domain_xml,
    "conf": case_conf,
    "config": case_config,
}


def main() -> int:
    seed, iterations, seconds, workdir = (
        int(sys.argv[1]),
        int(sys.argv[2]),
        float(sys.argv[3]),
        Path(sys.argv[4]),
    )
    rng = random.Random(seed)
    results = []
    deadline = time.monotonic() + seconds
    names = sorted(CASES)
    for number in range(iterations):
        if time.monotonic() > deadline:
            break
        kind = names[number % len(names)]
        work = workdir / f"case-{number}"
        work.mkdir()
        args = CASES[kind](work, rng)
        result = kvmdoctor("run", *args, "-f", "json", "--check-timeout", "10")
        stderr = result.stderr or ""
        results.append(
            {
                "kind": kind,
                "args": args,
                "exit": result.exit_code,
                "internal": "internal error" in stderr,
                "traceback": "Traceback" in stderr or "Traceback" in (result.stdout or ""),
                "stderr": stderr[-300:],
            }
        )
        shutil.rmtree(work)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
