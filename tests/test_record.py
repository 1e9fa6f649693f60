"""`@record`: a frozen dataclass made when its first instance is, and then no different."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import subprocess
import sys
import threading
from dataclasses import field
from typing import Optional

import pytest

from doctor.record import record

from kdtest import ROOT


def declare() -> tuple[type, type, type]:
    """Fresh classes for each test, so that each starts with none made."""

    @record
    class Base:
        name: str
        size: int = 0
        tags: tuple[str, ...] = field(default_factory=tuple)

        def double(self) -> int:
            return self.size * 2

    @record
    class Child(Base):
        note: Optional[str] = None

    class Plain(Base):
        def label(self) -> str:
            return f"plain {self.name}"

    return Base, Child, Plain


def test_a_record_is_no_dataclass_until_its_first_instance_and_then_a_frozen_one() -> None:
    Base, Child, _ = declare()
    assert not dataclasses.is_dataclass(Base)
    item = Base("a", 2)
    assert dataclasses.is_dataclass(Base)
    assert "__dataclass_fields__" not in vars(Child)  # a subclass is made with its first
    assert item == Base("a", 2, ()) and hash(item) == hash(Base("a", 2))
    assert item != Base("a", 3)
    assert repr(item).endswith("Base(name='a', size=2, tags=())")
    assert item.double() == 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        item.size = 3  # type: ignore[misc]
    assert [f.name for f in dataclasses.fields(item)] == ["name", "size", "tags"]
    assert dataclasses.replace(item, size=5) == Base("a", 5)
    assert dataclasses.asdict(item) == {"name": "a", "size": 2, "tags": ()}
    with pytest.raises(TypeError):
        Base()  # type: ignore[call-arg]


def test_subclasses_make_their_bases_first() -> None:
    Base, Child, Plain = declare()
    child = Child("c", note="n")
    assert "__dataclass_fields__" in vars(Base) and "__dataclass_fields__" in vars(Child)
    assert [f.name for f in dataclasses.fields(child)] == ["name", "size", "tags", "note"]
    assert child == Child("c", 0, (), "n") and child != Base("c")
    plain = Plain("p", 1)
    assert plain.label() == "plain p" and plain.double() == 2
    assert copy.deepcopy(child) == child and copy.copy(plain) == plain


def test_instances_made_in_threads_at_once_all_work() -> None:
    Base, Child, _ = declare()
    made: list[object] = []
    barrier = threading.Barrier(8)

    def make(i: int) -> None:
        barrier.wait()
        made.append(Child(str(i), i) if i % 2 else Base(str(i), i))

    threads = [threading.Thread(target=make, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(repr(m) for m in made) == sorted(
        repr(Child(str(i), i) if i % 2 else Base(str(i), i)) for i in range(8)
    )


UNPICKLE = """
import dataclasses, json, pickle, sys
from doctor.model import Finding, Ignore
assert not dataclasses.is_dataclass(Finding)
item = pickle.loads(sys.stdin.buffer.read())
print(json.dumps([repr(item), item == Finding("warn", "m", subject="host", ignored=Ignore("r", "cli")),
                  dataclasses.is_dataclass(Finding)]))
"""


def test_an_instance_unpickled_before_any_was_made_is_a_full_record() -> None:
    from doctor.model import Finding, Ignore

    data = pickle.dumps(Finding("warn", "m", subject="host", ignored=Ignore("r", "cli")))
    done = subprocess.run(
        [sys.executable, "-c", UNPICKLE], input=data, capture_output=True, cwd=ROOT, check=True
    )
    text, equal, made = json.loads(done.stdout)
    assert text.startswith("Finding(status='warn', message='m'")
    assert equal is True and made is True


def test_a_record_without_a_docstring_is_documented_by_its_fields() -> None:
    Base, Child, _ = declare()
    Child("c")
    assert Base.__doc__ == "Base(name, size, tags)"
    assert Child.__doc__ == "Child(name, size, tags, note)"
