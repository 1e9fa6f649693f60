"""The data that flows through kvmdoctor: statuses and findings.

Findings are immutable; the engine fills in the check code and, where the user asked for it,
the ignore that applies. Every other representation (JSON, text) is a view of these.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field
from typing import Any, Literal, Optional

from doctor.record import record

Status = Literal["pass", "info", "warn", "fail", "skip", "error"]
STATUSES: tuple[Status, ...] = ("pass", "info", "warn", "fail", "skip", "error")

# How bad a status is, for ordering and gating. `skip` ranks below `pass` so that a check with
# one passing and one skipped subject reads as passing.
SEVERITY: Mapping[str, int] = {"skip": 0, "pass": 1, "info": 2, "warn": 3, "fail": 4, "error": 5}
FailOn = Literal["info", "warn", "fail"]


def worst(statuses: list[Status]) -> Status:
    """The most severe of `statuses`; `skip` when there are none."""
    return max(statuses, key=SEVERITY.__getitem__, default="skip")


@record
class Ignore:
    """Why a finding does not count against the gate, and who said so."""

    reason: str
    by: str  # "config:<path>" or "command line"


@record
class Location:
    """Where in a definition a finding points: the element's path (/domain/devices/disk[2]);
    `kvmdoctor lint` adds the file and the line the element starts on."""

    element: str
    file: Optional[str] = None
    line: Optional[int] = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"element": self.element}
        if self.file is not None:
            out["file"] = self.file
        if self.line is not None:
            out["line"] = self.line
        return out


@record
class Finding:
    """One statement a check makes about one subject (`host`, `user:alice`, `domain:web1`)."""

    status: Status
    message: str
    subject: str = "host"
    evidence: Mapping[str, Any] = field(default_factory=dict)
    code: str = ""
    ignored: Optional[Ignore] = None
    # The playbooks whose diagnoses account for this finding (set by doctor/rules.py).
    explained_by: tuple[str, ...] = ()
    # The element of the subject's definition the finding is about (DOM checks), if any.
    location: Optional[Location] = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "code": self.code,
            "status": self.status,
            "subject": self.subject,
            "message": self.message,
            "evidence": dict(self.evidence),
        }
        if self.ignored is not None:
            out["ignored"] = {"reason": self.ignored.reason, "by": self.ignored.by}
        if self.explained_by:
            out["explained_by"] = list(self.explained_by)
        if self.location is not None:
            out["location"] = self.location.as_dict()
        return out
