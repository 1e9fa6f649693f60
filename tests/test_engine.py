"""Selection, ignores and gating, on the recorded lab host."""

from __future__ import annotations

from typing import Any

import pytest

from doctor import engine
from doctor.registry import load_registry
from doctor.report import exit_code
from doctor.sources.snapshot import SnapshotSource


@pytest.fixture(scope="module")
def registry() -> Any:
    return load_registry()


def codes(result: engine.RunResult) -> list[str]:
    return [run.spec.code for run in result.checks]


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        (["KVM002"], ["KVM002"]),
        (["kvm002"], ["KVM002"]),
        (["KVM00"], [f"KVM00{i}" for i in range(1, 9)]),
        (["kvm-usable"], ["KVM006"]),
        (["KVM001", "vhost-net-unavailable"], ["KVM001", "KVM008"]),
    ],
)
def test_select_takes_codes_prefixes_and_names(
    registry: Any, tokens: list[str], expected: list[str]
) -> None:
    assert [s.code for s in engine.select(registry, tokens)] == expected


def test_select_of_something_unknown_is_an_error_naming_it(registry: Any) -> None:
    with pytest.raises(engine.SelectionError, match="'KVM999'"):
        engine.select(registry, ["KVM001", "KVM999"])


def test_an_ignored_finding_is_kept_marked_and_does_not_gate(
    registry: Any, host_snapshot: Any
) -> None:
    source = SnapshotSource(str(host_snapshot))
    plain = engine.run(registry, source)
    assert exit_code(plain, "warn") == 1  # /dev/vhost-net is missing on the lab host
    rule = engine.IgnoreRule(
        "KVM008", "user-mode networking only", "test", subject="device:/dev/vhost-net"
    )
    ignored = engine.run(registry, source, ignores=[rule])
    assert exit_code(ignored, "warn") == 0
    kvm008 = {f.subject: f for f in ignored.findings() if f.code == "KVM008"}
    assert kvm008["device:/dev/vhost-net"].ignored is not None
    assert kvm008["device:/dev/vhost-net"].ignored.reason == "user-mode networking only"
    assert kvm008["device:/dev/net/tun"].ignored is None  # another subject: not ignored


def test_an_ignore_for_a_check_that_does_not_exist_is_an_error(
    registry: Any, host_snapshot: Any
) -> None:
    with pytest.raises(engine.SelectionError, match="no check matches 'KVM9'"):
        engine.run(
            registry,
            SnapshotSource(str(host_snapshot)),
            ignores=[engine.IgnoreRule("KVM9", "r", "test")],
        )


def test_facts_are_computed_once_per_run(registry: Any, host_snapshot: Any) -> None:
    calls: list[str] = []

    class Counting(SnapshotSource):
        def read_file(self, path: str, **kw: Any) -> bytes:
            calls.append(path)
            return super().read_file(path, **kw)

    engine.run(registry, Counting(str(host_snapshot)))
    assert calls.count("/proc/cpuinfo") == 1
    assert calls.count("/etc/group") == 1
