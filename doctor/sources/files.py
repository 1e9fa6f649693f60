"""The source of `kvmdoctor lint`: definition files (domain and network XML) named on the command
line, or read from stdin, and nothing of any host.

It answers questions about files and directories (the ones lint is given, by their paths as
written, relative ones from the working directory, and libvirt's RelaxNG schemas installed
on the machine lint runs on, which describe definitions, not a host) and refuses every other
question as Unavailable: the checks that need a host are not run by lint, and an optional
host fact a definition check asks for reads as absent.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, NoReturn, Optional

from doctor.sources.base import (
    DEFAULT_MAX_BYTES,
    CommandResult,
    Identity,
    KeyInfo,
    KvmProbe,
    ProcessFilter,
    ProcessInfo,
    StatInfo,
    Uname,
    Unavailable,
)

STDIN = "-"
# libvirt's schemas of the machine lint runs on (libvirt-daemon / libvirt-clients): read by
# the definition-refused-by-schema check, like a tool's own data
SCHEMAS = "/usr/share/libvirt/schemas"
NO_HOST = "kvmdoctor lint reads definition files only, not a host (see lint --host)"


class DefinitionFiles:
    """Files named by the user, read as LiveSource reads files; `-` is the text given on
    stdin. Every question about a host is Unavailable."""

    kind = "files"

    def __init__(self, paths: Sequence[str], *, stdin: Optional[bytes] = None) -> None:
        from doctor.sources.live import LiveSource

        self.paths = list(paths)
        self._stdin = stdin
        self._files = LiveSource(root="/")
        self._given = [os.path.abspath(p) for p in self.paths if p != STDIN]

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "paths": list(self.paths)}

    def _absolute(self, path: str) -> str:
        """The path, absolute, if it is one of the paths given or lies under one, or under
        libvirt's schemas; no other file of the machine is the definitions' (nor
        /etc/os-release, nor libvirt's configuration)."""
        real = os.path.abspath(path)
        tops = [*self._given, SCHEMAS]
        if not any(real == top or real.startswith(top.rstrip("/") + "/") for top in tops):
            raise Unavailable(path, NO_HOST)
        return real

    def read_file(
        self, path: str, *, max_bytes: int = DEFAULT_MAX_BYTES, tail: bool = False
    ) -> bytes:
        if path == STDIN:
            if self._stdin is None:
                raise Unavailable(path, "nothing was given on stdin")
            return self._stdin[-max_bytes:] if tail else self._stdin[:max_bytes]
        return self._files.read_file(self._absolute(path), max_bytes=max_bytes, tail=tail)

    def list_dir(self, path: str) -> list[str]:
        return self._files.list_dir(self._absolute(path))

    def stat(self, path: str) -> StatInfo:
        return self._files.stat(self._absolute(path))

    def read_link(self, path: str) -> str:
        return self._files.read_link(self._absolute(path))

    def _refuse(self, what: str) -> NoReturn:
        raise Unavailable(what, NO_HOST)

    def run(self, argv: Sequence[str], *, timeout: float = 10.0) -> CommandResult:
        self._refuse(" ".join(argv))

    def processes(self, wanted: Optional[ProcessFilter] = None) -> list[ProcessInfo]:
        self._refuse("processes")

    def identity(self) -> Identity:
        self._refuse("identity")

    def uname(self) -> Uname:
        self._refuse("uname")

    def environ(self, name: str) -> Optional[str]:
        self._refuse(f"environment variable {name}")

    def kvm_probe(self, path: str = "/dev/kvm") -> KvmProbe:
        self._refuse(path)

    def read_msr(self, register: int, cpu: int = 0) -> int:
        self._refuse(f"MSR {register:#x}")

    def clock(self) -> float:
        self._refuse("the host's clock")

    def key_info(self, path: str) -> KeyInfo:
        self._refuse(path)

    def libvirt(self, uri: Optional[str], request: str, **params: Any) -> Any:
        self._refuse(f"libvirt {request}")

    def netlink(self, request: str, netns: Optional[str] = None) -> list[dict[str, Any]]:
        self._refuse(f"netlink {request}")

    def close(self) -> None:
        self._files.close()
