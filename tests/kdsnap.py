"""Editing a copy of a recorded snapshot, for tests that need a host in another state.

Everything starts from a real recording (tests/fixtures/snapshots/host-kvm-pvm) and changes
only the answers a test is about, using real captured text (tests/fixtures/realdata) where the
answer is text.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Optional

from kdtest import REALDATA

NOT_FOUND = {"type": "not-found", "message": "No such file or directory"}
# The identity answer of alice (uid 1500), an ordinary user who did not come through sudo.
ALICE_IDENTITY = {
    "uid": 1500,
    "euid": 1500,
    "gid": 1500,
    "groups": [1500],
    "sudo_user": None,
    "sudo_uid": None,
}


class EditableSnapshot:
    def __init__(self, base: Path, dest: Path) -> None:
        shutil.copytree(base, dest)
        self.path = dest
        self.manifest = json.loads((dest / "manifest.json").read_text())

    # -- lookup ------------------------------------------------------------------------------

    def _find(self, kind: str, **match: Any) -> Optional[dict[str, Any]]:
        for entry in self.manifest["answers"]:
            if entry["kind"] == kind and all(entry.get(k) == v for k, v in match.items()):
                return entry
        return None

    def _entry(self, kind: str, **match: Any) -> dict[str, Any]:
        entry = self._find(kind, **match)
        if entry is None:
            entry = {"kind": kind, **match, "how": "edited by a test"}
            self.manifest["answers"].append(entry)
        for key in ("error", "value", "data"):
            entry.pop(key, None)
        return entry

    # -- edits -------------------------------------------------------------------------------

    def set_file(self, path: str, text: str) -> EditableSnapshot:
        entry = self._entry("file", path=path)
        rel = "files" + path
        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        entry["data"] = rel
        return self

    def set_value(self, kind: str, value: Any, **match: Any) -> EditableSnapshot:
        self._entry(kind, **match)["value"] = value
        return self

    def set_error(
        self, kind: str, error: dict[str, str] = NOT_FOUND, **match: Any
    ) -> EditableSnapshot:
        self._entry(kind, **match)["error"] = dict(error)
        return self

    def missing(self, kind: str, **match: Any) -> EditableSnapshot:
        return self.set_error(kind, NOT_FOUND, **match)

    def drop(self, kind: str, **match: Any) -> EditableSnapshot:
        """Forget the answer: the snapshot then cannot say (unavailable)."""
        self.manifest["answers"] = [
            e
            for e in self.manifest["answers"]
            if not (e["kind"] == kind and all(e.get(k) == v for k, v in match.items()))
        ]
        return self

    def value(self, kind: str, **match: Any) -> Any:
        entry = self._find(kind, **match)
        assert entry is not None, (kind, match)
        return entry.get("value")

    def set_stat(self, path: str, **fields: Any) -> EditableSnapshot:
        """Change (or create) the stat answer of a device: type, mode, uid, gid, rdev, acl."""
        current = self._find("stat", path=path)
        value = (
            dict(current["value"])
            if current and "value" in current
            else {
                "path": path,
                "type": "char",
                "mode": 0o660,
                "uid": 0,
                "gid": 0,
                "rdev": None,
                "acl": [],
            }
        )
        value.update(fields)
        return self.set_value("stat", value, path=path)

    def set_processes(self, rows: list[dict[str, Any]]) -> EditableSnapshot:
        entry = self._entry("processes")
        (self.path / "processes.json").write_text(json.dumps(rows))
        entry["data"] = "processes.json"
        return self

    def save(self) -> Path:
        (self.path / "manifest.json").write_text(json.dumps(self.manifest, indent=1))
        report = self.path / "report.json"
        if report.exists():
            report.unlink()  # it described the original host, not the edited one
        return self.path


def realdata(relpath: str) -> str:
    """The text of a file under tests/fixtures/realdata (origins in its SOURCES.md)."""
    return (REALDATA / relpath).read_text()


def run_checks(
    path: Path,
    select: tuple[str, ...] = (),
    uri: Optional[str] = None,
    at: Optional[float] = None,
) -> dict[str, list[Any]]:
    """Run the checks against a snapshot or a tree and return findings by check code. A tree
    has no clock of its own: `at` fixes the time it is judged at (never today's date)."""
    from doctor import engine
    from doctor.facts import RunOptions
    from doctor.registry import load_registry
    from doctor.sources.live import LiveSource
    from doctor.sources.snapshot import SnapshotSource

    source: Any
    source = (
        SnapshotSource(str(path)) if (path / "manifest.json").exists() else LiveSource(str(path))
    )
    result = engine.run(
        load_registry(), source, selected=list(select), options=RunOptions(uri=uri, at=at)
    )
    out: dict[str, list[Any]] = {}
    for item in result.findings():
        out.setdefault(item.code, []).append(item)
    return out


def one(findings: dict[str, list[Any]], code: str, subject: Optional[str] = None) -> Any:
    """The single finding of `code` (about `subject`)."""
    matching = [f for f in findings[code] if subject is None or f.subject == subject]
    assert len(matching) == 1, [(f.subject, f.status, f.message) for f in findings[code]]
    return matching[0]


REALDATA_DMI = REALDATA / "dmi" / "vendors.json"
