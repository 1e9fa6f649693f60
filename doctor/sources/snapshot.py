"""Snapshots: record what a live source answered, and answer from the record later.

A snapshot is a directory a person can read and edit (docs/snapshot-format.md):

    manifest.json        format, tool, time, and one entry per answer (how it was obtained);
                         a refusal is recorded as {"type", "message", "what"}
    files/<path>         host files at their paths, e.g. files/proc/cpuinfo
    files-other/<name>   files asked for by a path that is not plain (with `.`, `..`, `//`)
    commands/<n>.stdout  command outputs (and .stderr)
    processes.json       the process list
    report.json          the report of the run that recorded it

`kvmdoctor collect -o NAME.tar.gz` packs the same directory into an archive.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import stat
import tarfile
import tempfile
import time
import zlib
from collections.abc import Sequence
from typing import Any, Callable, Optional, TypeVar

from doctor import __version__
from doctor.sources.base import (
    DEFAULT_MAX_BYTES,
    ERROR_KINDS,
    CommandResult,
    Identity,
    KeyInfo,
    KvmProbe,
    PathEscapes,
    ProcessFilter,
    ProcessInfo,
    SourceError,
    StatInfo,
    Uname,
    Unavailable,
    wanted_processes,
)
from doctor.sources.redact import never_recorded, scrub, scrub_argv

FORMAT = "kvmdoctor-snapshot"
FORMAT_VERSION = 1
T = TypeVar("T")

# How the live source obtains each kind of answer; written into the manifest.
HOW = {
    "file": "read(2) of the file",
    "dir": "listdir of the directory",
    "stat": "stat(2) and the system.posix_acl_access xattr",
    "link": "readlink(2)",
    "command": "ran the command with LC_ALL=C",
    "processes": "psutil process list (under --root: the tree's /proc files)",
    "identity": "getuid/geteuid/getgroups of the kvmdoctor process, SUDO_USER/SUDO_UID",
    "uname": "uname(2)",
    "environ": "environment of the kvmdoctor process",
    "kvm_probe": "open(2) of the device, KVM_GET_API_VERSION, KVM_CHECK_EXTENSION, KVM_CREATE_VM",
    "msr": "pread(2) of /dev/cpu/N/msr",
    "clock": "time(2) when the answer was needed",
    "key_info": "the private key loaded inside the source; only its public half is kept",
    "libvirt": "libvirt-python on the URI, under a time limit",
    "netlink": "pyroute2 dump (IPRoute with flags=0: never creates a namespace)",
}


def _key(kind: str, arg: str = "") -> str:
    return f"{kind}:{arg}"


def _cmd_arg(argv: Sequence[str]) -> str:
    return json.dumps(list(argv))


def _msr_arg(register: int, cpu: int) -> str:
    return f"{cpu}:{register:#x}"


class RecordingSource:
    """Wraps a LiveSource and remembers every answer (and every refusal) it gives."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.entries: dict[str, dict[str, Any]] = {}
        self.blobs: dict[str, bytes] = {}  # entry key -> file or command output

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "recording": True}

    def _record(
        self,
        kind: str,
        arg: str,
        meta: dict[str, Any],
        call: Callable[[], T],
        store: Callable[[T, dict[str, Any]], None],
    ) -> T:
        key = _key(kind, arg)
        entry: dict[str, Any] = {"kind": kind, **meta, "how": HOW[kind]}
        try:
            value = call()
        except SourceError as exc:
            entry["error"] = {"type": exc.kind, "message": exc.reason, "what": exc.what}
            if exc.details:
                entry["error"]["details"] = exc.details
            self.entries.setdefault(key, entry)
            raise
        store(value, entry)
        self.entries[key] = entry
        return value

    def read_file(
        self, path: str, *, max_bytes: int = DEFAULT_MAX_BYTES, tail: bool = False
    ) -> bytes:
        key = _key("file", path)
        kept, kept_entry = self.blobs.get(key), self.entries.get(key)

        def store(data: bytes, entry: dict[str, Any]) -> None:
            if kept is not None and kept_entry is not None and len(kept) >= len(data):
                # An earlier read saw at least as much of the file (a whole read, then a
                # limited one): keep it, so replaying either question gives the live answer.
                entry.clear()
                entry.update(kept_entry)
                return
            self.blobs[key] = data
            if tail:
                entry["tail_bytes"] = max_bytes

        return self._record(
            "file",
            path,
            {"path": path},
            lambda: self.inner.read_file(path, max_bytes=max_bytes, tail=tail),
            store,
        )

    def list_dir(self, path: str) -> list[str]:
        return self._record(
            "dir",
            path,
            {"path": path},
            lambda: self.inner.list_dir(path),
            lambda v, e: e.__setitem__("value", v),
        )

    def stat(self, path: str) -> StatInfo:
        return self._record(
            "stat",
            path,
            {"path": path},
            lambda: self.inner.stat(path),
            lambda v, e: e.__setitem__("value", v.as_dict()),
        )

    def read_link(self, path: str) -> str:
        return self._record(
            "link",
            path,
            {"path": path},
            lambda: self.inner.read_link(path),
            lambda v, e: e.__setitem__("value", v),
        )

    def prefetch(self, commands: Sequence[Sequence[str]]) -> None:
        """Started early by the live source; recorded when `run` takes them."""
        start = getattr(self.inner, "prefetch", None)
        if start is not None:
            start(commands)

    def run(self, argv: Sequence[str], *, timeout: float = 10.0) -> CommandResult:
        arg = _cmd_arg(argv)

        def store(result: CommandResult, entry: dict[str, Any]) -> None:
            entry["returncode"] = result.returncode
            self.blobs[_key("command", arg)] = result.stdout.encode()
            self.blobs[_key("command", arg) + ":stderr"] = result.stderr.encode()

        return self._record(
            "command",
            arg,
            {"argv": list(argv)},
            lambda: self.inner.run(argv, timeout=timeout),
            store,
        )

    def processes(self, wanted: Optional[ProcessFilter] = None) -> list[ProcessInfo]:
        """The whole list is recorded, whatever this fact wants of it."""

        def store(procs: list[ProcessInfo], entry: dict[str, Any]) -> None:
            entry["data"] = "processes.json"
            rows = []
            for proc in procs:
                row = proc.as_dict()
                # A command line may carry a secret (QEMU's -spice password=...).
                row["cmdline"] = list(scrub_argv(row["cmdline"]))
                rows.append(row)
            self.blobs[_key("processes")] = json.dumps(rows, indent=1).encode()

        procs = self._record("processes", "", {}, self.inner.processes, store)
        return wanted_processes(procs, wanted)

    def identity(self) -> Identity:
        return self._record(
            "identity",
            "",
            {},
            self.inner.identity,
            lambda v, e: e.__setitem__("value", v.as_dict()),
        )

    def uname(self) -> Uname:
        return self._record(
            "uname", "", {}, self.inner.uname, lambda v, e: e.__setitem__("value", v.as_dict())
        )

    def environ(self, name: str) -> Optional[str]:
        return self._record(
            "environ",
            name,
            {"name": name},
            lambda: self.inner.environ(name),
            lambda v, e: e.__setitem__("value", v),
        )

    def kvm_probe(self, path: str = "/dev/kvm") -> KvmProbe:
        return self._record(
            "kvm_probe",
            path,
            {"path": path},
            lambda: self.inner.kvm_probe(path),
            lambda v, e: e.__setitem__("value", v.as_dict()),
        )

    def read_msr(self, register: int, cpu: int = 0) -> int:
        return self._record(
            "msr",
            _msr_arg(register, cpu),
            {"cpu": cpu, "register": f"{register:#x}"},
            lambda: self.inner.read_msr(register, cpu),
            lambda v, e: e.__setitem__("value", f"{v:#018x}"),
        )

    def clock(self) -> float:
        return self._record(
            "clock", "", {}, self.inner.clock, lambda v, e: e.__setitem__("value", v)
        )

    def key_info(self, path: str) -> KeyInfo:
        return self._record(
            "key_info",
            path,
            {"path": path},
            lambda: self.inner.key_info(path),
            lambda v, e: e.__setitem__("value", v.as_dict()),
        )

    def libvirt(self, uri: Optional[str], request: str, **params: Any) -> Any:
        meta = {"uri": uri, "request": request, "params": params}
        return self._record(
            "libvirt",
            _libvirt_arg(uri, request, params),
            meta,
            lambda: self.inner.libvirt(uri, request, **params),
            lambda v, e: e.__setitem__("value", v),
        )

    def netlink(self, request: str, netns: Optional[str] = None) -> list[dict[str, Any]]:
        def store(value: list[dict[str, Any]], entry: dict[str, Any]) -> None:
            entry["data"] = f"netlink/{_slug([netns or 'host'])}/{request}.json"
            self.blobs[_key("netlink", _netlink_arg(request, netns))] = json.dumps(
                value, indent=1
            ).encode()

        return self._record(
            "netlink",
            _netlink_arg(request, netns),
            {"request": request, "netns": netns},
            lambda: self.inner.netlink(request, netns),
            store,
        )

    def close(self) -> None:
        self.inner.close()

    def write(
        self,
        target: str,
        *,
        report: Optional[dict[str, Any]] = None,
        redactor: Any = None,
    ) -> None:
        """Write the snapshot directory (or, for a .tar.gz/.tgz target, an archive of it).
        With a doctor.redaction.Redactor, every answer, every name in the snapshot and the
        report (already redacted by the caller) carry tokens instead of identifying values."""
        if target.endswith((".tar.gz", ".tgz")):
            from doctor.output import write_file

            with tempfile.TemporaryDirectory(prefix="kvmdoctor-") as tmp:
                inner = os.path.join(tmp, "snapshot")
                self._write_dir(inner, report, redactor)
                packed = os.path.join(tmp, "snapshot.tar.gz")
                with tarfile.open(packed, "w:gz") as archive:
                    archive.add(inner, arcname=".")
                with open(packed, "rb") as handle:
                    # Atomic onto a file, through to a device or link: as every -o.
                    write_file(target, handle.read())
            return
        self._write_dir(target, report, redactor)

    def _write_dir(
        self, target: str, report: Optional[dict[str, Any]], redactor: Any = None
    ) -> None:
        os.makedirs(target, exist_ok=True)
        answers = []
        used_names: set[str] = set()
        blobs = self.blobs
        entries = self.entries
        if redactor is not None:
            from doctor.redaction import redact_recording

            entries, blobs = redact_recording(redactor, self.entries, self.blobs)
        for key, entry in sorted(entries.items()):
            entry = dict(entry)
            kind = entry["kind"]
            if kind == "file" and "error" not in entry:
                why_not = never_recorded(entry["path"])
                if why_not is not None:
                    entry["error"] = {
                        "type": "unavailable",
                        "message": why_not,
                        "what": entry["path"],
                    }
                    answers.append(entry)
                    continue
                data, blanked = scrub(entry["path"], blobs[key])
                if blanked:
                    entry["redacted"] = blanked
                rel = _file_rel(entry["path"], used_names)
                _write(target, rel, data)
                entry["data"] = rel
            elif kind == "command" and "error" not in entry:
                name = _unique(_slug(entry["argv"]), used_names)
                entry["stdout"] = f"commands/{name}.stdout"
                entry["stderr"] = f"commands/{name}.stderr"
                _write(target, entry["stdout"], blobs[key])
                _write(target, entry["stderr"], blobs[key + ":stderr"])
            elif kind == "processes" and "error" not in entry:
                _write(target, "processes.json", blobs[key])
            elif kind == "netlink" and "error" not in entry:
                _write(target, entry["data"], blobs[key])
            elif kind == "libvirt" and "error" not in entry:
                entry["value"] = _xml_to_files(target, entry, entry.get("value"), used_names)
            answers.append(entry)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "tool": {"name": "kvmdoctor", "version": __version__},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source": self.inner.describe(),
            "answers": answers,
        }
        if redactor is not None:
            manifest["redacted"] = True
            manifest["source"] = {**redactor.value(manifest["source"]), "redacted": True}
        _write(target, "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
        if report is not None:
            _write(target, "report.json", (json.dumps(report, indent=1) + "\n").encode())


def _netlink_arg(request: str, netns: Optional[str]) -> str:
    return f"{netns or ''}:{request}"


def _libvirt_arg(uri: Optional[str], request: str, params: dict[str, Any]) -> str:
    return json.dumps([uri, request, params], sort_keys=True)


def _xml_to_files(target: str, entry: dict[str, Any], value: Any, used: set[str]) -> Any:
    """libvirt's XML goes into files a person can read (libvirt/capabilities.xml,
    libvirt/domains/NAME.xml, NAME.live.xml); the manifest points to them with {"$file": path}.
    Graphics passwords are scrubbed from the XML like from the files under /etc/libvirt."""

    def to_file(stem: str, xml: Optional[str]) -> Any:
        if not isinstance(xml, str):
            return xml
        rel = f"libvirt/{_unique(stem, used)}.xml"
        data, _ = scrub("/etc/libvirt/qemu/x.xml", xml.encode())
        _write(target, rel, data)
        return {"$file": rel}

    request = entry["request"]
    if isinstance(value, str):
        return to_file(_slug([request]), value)
    if request in ("domains", "networks") and isinstance(value, list):
        items = []
        for item in value:
            stem = f"{request}/{_slug([str(item.get('name', 'unnamed'))])}"
            item = dict(item)
            if "xml" in item:
                item["xml"] = to_file(stem, item["xml"])
            if "live_xml" in item:
                item["live_xml"] = to_file(f"{stem}.live", item["live_xml"])
            items.append(item)
        return items
    return value


def _files_to_xml(snapshot: SnapshotSource, value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"$file"}:
        return snapshot._data(value["$file"]).decode("utf-8", "replace")
    if isinstance(value, list):
        return [_files_to_xml(snapshot, v) for v in value]
    if isinstance(value, dict):
        return {k: _files_to_xml(snapshot, v) for k, v in value.items()}
    return value


def _file_rel(path: str, used: set[str]) -> str:
    """files/<path> for a plain absolute path; a path with `.`, `..` or `//` in it is not
    placed by its text (that could land outside files/, or on another file's place)."""
    if path.startswith("/") and not path.startswith("//") and posixpath.normpath(path) == path:
        return "files" + path
    return "files-other/" + _unique(_slug([path]), used)


def _slug(argv: list[str]) -> str:
    text = "_".join(os.path.basename(argv[0]) if i == 0 else a for i, a in enumerate(argv))
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:80] or "command"


def _unique(name: str, used: set[str]) -> str:
    candidate, n = name, 1
    while candidate in used:
        n += 1
        candidate = f"{name}.{n}"
    used.add(candidate)
    return candidate


def _write(base: str, rel: str, data: bytes) -> None:
    path = os.path.join(base, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)


class SnapshotError(Exception):
    """The snapshot cannot be read at all (not a snapshot, unknown format version)."""


class SnapshotSource:
    """Answers from a snapshot directory or archive; never touches the host.

    A question the snapshot did not record is `Unavailable`. A file placed by hand under
    files/ answers even without a manifest entry, so a snapshot can be edited like a tree.
    """

    kind = "snapshot"

    def __init__(self, path: str) -> None:
        self.path = path
        self._tmp: Optional[tempfile.TemporaryDirectory[str]] = None
        if os.path.isfile(path) and _is_archive(path):
            self._tmp = tempfile.TemporaryDirectory(prefix="kvmdoctor-snapshot-")
            try:
                _safe_extract(path, self._tmp.name)
            except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
                self._tmp.cleanup()
                raise SnapshotError(f"{path}: cannot unpack the archive: {exc}") from None
            except BaseException:  # a refusal, Ctrl-C, SIGTERM: nothing stays in /tmp
                self._tmp.cleanup()
                raise
            self.dir = _snapshot_root(self._tmp.name)
        elif os.path.isdir(path):
            self.dir = path
        else:
            raise SnapshotError(f"{path}: not a snapshot directory or archive")
        manifest_path = os.path.join(self.dir, "manifest.json")
        try:
            with open(manifest_path, encoding="utf-8") as handle:
                self.manifest = json.load(handle)
        except FileNotFoundError:
            raise SnapshotError(f"{path}: no manifest.json (not a kvmdoctor snapshot)") from None
        except json.JSONDecodeError as exc:
            raise SnapshotError(f"{path}: manifest.json is not valid JSON: {exc}") from None
        except UnicodeDecodeError as exc:
            raise SnapshotError(f"{path}: manifest.json is not UTF-8 ({exc.reason})") from None
        except RecursionError:
            raise SnapshotError(f"{path}: manifest.json is nested too deep") from None
        if not isinstance(self.manifest, dict) or self.manifest.get("format") != FORMAT:
            raise SnapshotError(f"{path}: manifest.json is not a {FORMAT} manifest")
        version = self.manifest.get("format_version")
        if type(version) is not int or version != FORMAT_VERSION:  # `true` == 1 is no version
            raise SnapshotError(
                f"{path}: snapshot format version {version}; this kvmdoctor reads {FORMAT_VERSION}"
            )
        self.entries: dict[str, dict[str, Any]] = {}
        answers = self.manifest.get("answers", [])
        if not isinstance(answers, list):
            raise SnapshotError(f"{path}: manifest.json: 'answers' is not a list")
        for number, entry in enumerate(answers):
            try:
                self.entries[_entry_key(entry)] = entry
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise SnapshotError(
                    f"{path}: manifest.json: answer {number} is malformed ({exc!r}): {entry!r}"
                ) from None

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "snapshot",
            "path": os.path.abspath(self.path),
            "created": self.manifest.get("created"),
            "recorded_from": self.manifest.get("source"),
            "recorded_by": self.manifest.get("tool"),
        }

    def _entry(self, kind: str, arg: str = "") -> Optional[dict[str, Any]]:
        entry = self.entries.get(_key(kind, arg))
        if entry is not None and "error" in entry:
            err = entry["error"]
            cls = ERROR_KINDS.get(err.get("type", ""), SourceError)
            raise cls(
                err.get("what") or arg or kind,
                err.get("message", "recorded as an error"),
                err.get("details"),
            )
        return entry

    def _missing(self, what: str) -> Unavailable:
        return Unavailable(what, "not recorded in the snapshot")

    def _data(self, rel: str, max_bytes: Optional[int] = None, tail: bool = False) -> bytes:
        """A file of the snapshot: inside it (links followed only while they stay inside), a
        regular file (never a device or a FIFO), and no more than `max_bytes` read."""
        top = os.path.realpath(self.dir)
        real = os.path.realpath(os.path.join(self.dir, rel))
        if not real.startswith(top + os.sep):
            raise PathEscapes(rel, "leads outside the snapshot")
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise SourceError(rel, "named in manifest.json but missing from the snapshot") from None
        except OSError as exc:
            raise SourceError(rel, f"cannot read it from the snapshot: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise SourceError(rel, "not a regular file: a snapshot holds only regular files")
            if max_bytes is None:
                max_bytes = info.st_size
            if tail and info.st_size > max_bytes:
                handle.seek(info.st_size - max_bytes)
            return handle.read(max_bytes)

    def _value(self, kind: str, arg: str = "") -> Any:
        entry = self._entry(kind, arg)
        if entry is None:
            raise self._missing(arg or kind)
        return entry.get("value")

    def _by_hand(self, path: str) -> str:
        """Where a file placed by hand for `path` would be: files/<path>, never outside it."""
        if not path.startswith("/"):
            raise SourceError(path, "paths must be absolute")
        files = os.path.join(self.dir, "files")
        real = os.path.normpath(files + path)
        if real != files and not real.startswith(files + os.sep):
            raise PathEscapes(path, "leads outside the snapshot's files/")
        return real

    def read_file(
        self, path: str, *, max_bytes: int = DEFAULT_MAX_BYTES, tail: bool = False
    ) -> bytes:
        entry = self._entry("file", path)
        if max_bytes <= 0:
            return b""
        if entry is not None and entry.get("data"):
            return self._data(entry["data"], max_bytes, tail)
        real = self._by_hand(path)
        if not os.path.lexists(real) or os.path.isdir(real):
            raise self._missing(path)
        return self._data(os.path.relpath(real, self.dir), max_bytes, tail)

    def list_dir(self, path: str) -> list[str]:
        entry = self._entry("dir", path)
        if entry is not None:
            return list(entry["value"])
        real = self._by_hand(path)
        top = os.path.realpath(self.dir)
        if os.path.isdir(real) and os.path.realpath(real).startswith(top + os.sep):
            return sorted(os.listdir(real))
        raise self._missing(path)

    def stat(self, path: str) -> StatInfo:
        return StatInfo.from_dict(self._value("stat", path))

    def read_link(self, path: str) -> str:
        return str(self._value("link", path))

    def run(self, argv: Sequence[str], *, timeout: float = 10.0) -> CommandResult:
        arg = _cmd_arg(argv)
        entry = self._entry("command", arg)
        if entry is None:
            raise self._missing(" ".join(argv))
        stderr = self._data(entry["stderr"]) if entry.get("stderr") else b""
        return CommandResult(
            argv=tuple(argv),
            returncode=int(entry.get("returncode", 0)),
            stdout=self._data(entry["stdout"]).decode("utf-8", "replace"),
            stderr=stderr.decode("utf-8", "replace"),
        )

    def processes(self, wanted: Optional[ProcessFilter] = None) -> list[ProcessInfo]:
        entry = self._entry("processes")
        if entry is None:
            raise self._missing("processes")
        rows = json.loads(self._data(entry.get("data", "processes.json")))
        procs = [ProcessInfo(**{**row, "cmdline": tuple(row["cmdline"])}) for row in rows]
        return wanted_processes(procs, wanted)

    def identity(self) -> Identity:
        value = self._value("identity")
        return Identity(**{**value, "groups": tuple(value["groups"])})

    def uname(self) -> Uname:
        return Uname(**self._value("uname"))

    def environ(self, name: str) -> Optional[str]:
        value = self._value("environ", name)
        return None if value is None else str(value)

    def kvm_probe(self, path: str = "/dev/kvm") -> KvmProbe:
        return KvmProbe(**self._value("kvm_probe", path))

    def read_msr(self, register: int, cpu: int = 0) -> int:
        return int(str(self._value("msr", _msr_arg(register, cpu))), 16)

    def clock(self) -> float:
        return float(self._value("clock"))

    def key_info(self, path: str) -> KeyInfo:
        return KeyInfo(**self._value("key_info", path))

    def libvirt(self, uri: Optional[str], request: str, **params: Any) -> Any:
        return _files_to_xml(self, self._value("libvirt", _libvirt_arg(uri, request, params)))

    def netlink(self, request: str, netns: Optional[str] = None) -> list[dict[str, Any]]:
        entry = self._entry("netlink", _netlink_arg(request, netns))
        if entry is None:
            raise self._missing(f"netlink {request}")
        rows: list[dict[str, Any]] = json.loads(self._data(entry["data"]))
        return rows

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _entry_key(entry: dict[str, Any]) -> str:
    kind = entry.get("kind", "")
    if kind == "command":
        return _key(kind, _cmd_arg(entry["argv"]))
    if kind == "environ":
        return _key(kind, entry["name"])
    if kind == "msr":
        return _key(kind, _msr_arg(int(entry["register"], 16), int(entry["cpu"])))
    if kind == "libvirt":
        return _key(kind, _libvirt_arg(entry.get("uri"), entry["request"], entry.get("params", {})))
    if kind == "netlink":
        return _key(kind, _netlink_arg(entry["request"], entry.get("netns")))
    return _key(kind, entry.get("path", ""))


def _snapshot_root(extracted: str) -> str:
    """Where manifest.json is: at the top of the archive, or in its single top directory
    (`tar czf host.tar.gz host-snapshot/` packs it that way)."""
    if os.path.exists(os.path.join(extracted, "manifest.json")):
        return extracted
    entries = os.listdir(extracted)
    if len(entries) == 1 and os.path.isfile(os.path.join(extracted, entries[0], "manifest.json")):
        return os.path.join(extracted, entries[0])
    return extracted


# A snapshot is small (the answers of one run: configuration files, the tails of logs):
# archives beyond these limits are refused while they are read, before they cost disk or memory.
MAX_MEMBER_BYTES = 64 * 1024 * 1024
MAX_TOTAL_BYTES = 512 * 1024 * 1024
MAX_MEMBERS = 50_000
MAX_HEADER_BYTES = 1024 * 1024  # a pax header or a GNU long name


def _is_archive(path: str) -> bool:
    """Whether the file is a (compressed) tar archive, judged by its first bytes only: tarfile's
    own test reads the first member, which may be a header of gigabytes."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
    except OSError as exc:
        raise SnapshotError(f"{path}: {exc.strerror}") from None
    compressed = head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ"))
    return compressed or head[257:262] == b"ustar"


def _open_stream(archive: str) -> Any:
    import bz2
    import gzip
    import lzma

    with open(archive, "rb") as handle:
        magic = handle.read(6)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.open(archive, "rb")
    if magic.startswith(b"BZh"):
        return bz2.open(archive, "rb")
    if magic.startswith(b"\xfd7zXZ"):
        return lzma.open(archive, "rb")
    return open(archive, "rb")


def _header_size(block: bytes) -> int:
    field = block[124:136]
    if field[:1] in (b"\x80", b"\xff"):  # base-256
        return int.from_bytes(field[1:], "big", signed=field[:1] == b"\xff")
    digits = field.split(b"\0", 1)[0].strip()
    return int(digits or b"0", 8)


def _prescan(archive: str) -> None:
    """Walk the tar headers through the decompressor, holding one block at a time: refuse
    oversized pax headers and long names (which tarfile would load into memory whole) and an
    archive that unpacks to more than the limit, before anything is written."""
    total = 0
    with _open_stream(archive) as stream:
        while True:
            block = stream.read(512)
            if len(block) < 512 or block == bytes(512):
                return
            try:
                size = _header_size(block)
            except ValueError:
                return  # not a header tarfile can read: it will say so
            padded = (size + 511) // 512 * 512
            if block[156:157] in (b"x", b"g", b"L", b"K") and size > MAX_HEADER_BYTES:
                raise SnapshotError(
                    f"{archive}: an archive header of {size} bytes (at most {MAX_HEADER_BYTES})"
                )
            total += 512 + padded
            if total > MAX_TOTAL_BYTES:
                raise SnapshotError(_too_big(archive))
            while padded:
                chunk = stream.read(min(padded, 1 << 20))
                if not chunk:
                    return
                padded -= len(chunk)


def _too_big(archive: str) -> str:
    return (
        f"{archive}: unpacks to more than {MAX_TOTAL_BYTES >> 20} MiB; a snapshot is far "
        "smaller (see docs/snapshot-format.md)"
    )


def _safe_extract(archive: str, dest: str) -> None:
    _prescan(archive)
    with tarfile.open(archive) as tar:
        members = []
        total = 0
        for member in tar:
            name = os.path.normpath(member.name)
            escapes = name.startswith("/") or name == ".." or name.startswith("../")
            if escapes or not (member.isfile() or member.isdir()):
                raise SnapshotError(f"{archive}: refusing archive member {member.name!r}")
            if member.size > MAX_MEMBER_BYTES:
                raise SnapshotError(
                    f"{archive}: member {member.name!r} is {member.size} bytes "
                    f"(at most {MAX_MEMBER_BYTES >> 20} MiB; see docs/snapshot-format.md)"
                )
            total += member.size
            if total > MAX_TOTAL_BYTES:
                raise SnapshotError(_too_big(archive))
            members.append(member)
            if len(members) > MAX_MEMBERS:
                raise SnapshotError(f"{archive}: more than {MAX_MEMBERS} members")
        for member in members:
            target = os.path.join(dest, os.path.normpath(member.name))
            if member.isdir():
                os.makedirs(target, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            extracted = tar.extractfile(member)
            if extracted is None:
                continue
            with extracted, open(target, "wb") as out:
                left = member.size
                while left > 0:
                    chunk = extracted.read(min(left, 1 << 20))
                    if not chunk:
                        break
                    out.write(chunk)
                    left -= len(chunk)
