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
    plain.extra = 1  # type: ignore[attr-defined]  # a plain subclass's own attribute, as dataclass lets it
    del plain.extra  # type: ignore[attr-defined]
    with pytest.raises(dataclasses.FrozenInstanceError):
        plain.size = 2  # type: ignore[misc]


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


def twins() -> list[tuple[type, type, list[tuple[object, ...]]]]:
    """(record, the same class as a frozen dataclass, argument tuples to make instances)."""
    nan = float("nan")
    out = []
    for body, args in [
        ("    pass\n", [()]),
        ("    a: float\n", [(1.0,), (nan,), (2.0,)]),
        ("    a: int\n    b: str = 'x'\n", [(1,), (1, "y"), (2, "x")]),
        (
            "    a: int\n    extra: dict = field(default_factory=dict, compare=False, repr=False)\n",
            [(1,), (1, {"k": 1}), (3, {})],
        ),
        ("    a: int\n    b: tuple = field(default=(), hash=False)\n", [(1,), (1, (2,))]),
        ("    items: list = field(default_factory=list)\n", [([],), ([1],)]),
    ]:
        made = []
        for decorate in ("record", "dataclasses.dataclass(frozen=True)"):
            namespace: dict[str, object] = {
                "record": record,
                "dataclasses": dataclasses,
                "field": field,
            }
            exec(f"@{decorate}\nclass Twin:\n{body}", namespace)
            made.append(namespace["Twin"])
        out.append((made[0], made[1], args))
    return out


def test_records_compare_hash_and_show_as_frozen_dataclasses_do() -> None:
    for ours, theirs, arguments in twins():
        mine = [ours(*a) for a in arguments] + [ours(*a) for a in arguments]
        ref = [theirs(*a) for a in arguments] + [theirs(*a) for a in arguments]
        for x, rx in zip(mine, ref):
            assert repr(x) == repr(rx)
            assert (x == 1) == (rx == 1) and x.__eq__(1) is NotImplemented
            for y, ry in zip(mine, ref):
                assert (x == y) == (rx == ry), (x, y)
                assert (x != y) == (rx != ry)
            try:
                expected: object = hash(rx)
            except TypeError as exc:
                expected = type(exc)
            try:
                got: object = hash(x)
            except TypeError as exc:
                got = type(exc)
            assert got == expected, x
        with pytest.raises(dataclasses.FrozenInstanceError):
            mine[0].a = 5  # type: ignore[attr-defined]
        assert [f.name for f in dataclasses.fields(mine[0])] == [
            f.name for f in dataclasses.fields(ref[0])
        ]


def test_a_record_that_holds_itself_shows_as_a_dataclass_does() -> None:
    ours, theirs, _ = twins()[5]
    x, rx = ours([]), theirs([])
    x.items.append(x)
    rx.items.append(rx)
    assert repr(x) == repr(rx) == "Twin(items=[...])"


def test_a_record_is_made_and_refuses_changes_as_a_frozen_dataclass_is() -> None:
    calls: list[tuple[object, ...]] = [
        (),
        (1,),
        (1, "y"),
        (1, "y", [2]),
        (1, "y", [2], 4),
        ("a",),
    ]
    keywords: list[dict[str, object]] = [
        {"a": 1},
        {"a": 1, "items": [3]},
        {"b": "z", "a": 2},
        {"c": 1},
        {"a": 1, "zz": 2},
    ]
    made = []
    for decorate in ("record", "dataclasses.dataclass(frozen=True)"):
        namespace: dict[str, object] = {"record": record, "dataclasses": dataclasses}
        exec(
            f"@{decorate}\nclass Twin:\n"
            "    a: int\n    b: str = 'x'\n"
            "    items: list = dataclasses.field(default_factory=list)\n"
            "    def __post_init__(self):\n"
            "        self.items.append(len(self.items))\n",
            namespace,
        )
        made.append(namespace["Twin"])
    ours, theirs = made

    def outcome(cls: type, args: tuple[object, ...], kwargs: dict[str, object]) -> object:
        args = copy.deepcopy(args)  # __post_init__ appends to the list it is given
        kwargs = copy.deepcopy(kwargs)
        try:
            return repr(cls(*args, **kwargs)).split(".")[-1]
        except TypeError as exc:
            return str(exc).split(".")[-1]

    for args in calls:
        assert outcome(ours, args, {}) == outcome(theirs, args, {}), args
    for kwargs in keywords:
        assert outcome(ours, (), kwargs) == outcome(theirs, (), kwargs), kwargs
    assert outcome(ours, (1,), {"a": 2}) == outcome(theirs, (1,), {"a": 2})
    first, second = ours(1), ours(1)
    assert first.items == [0] and first.items is not second.items  # one list each
    for target in (first, theirs(1)):
        with pytest.raises(dataclasses.FrozenInstanceError):
            target.other = 1
        with pytest.raises(dataclasses.FrozenInstanceError):
            del target.a


def test_a_record_over_a_frozen_dataclass_and_under_one_is_frozen_too() -> None:
    @dataclasses.dataclass(frozen=True)
    class Top:
        a: int

    @record
    class Middle(Top):
        b: int = 0

    Middle(0)  # a dataclass that derives from a record takes its fields once it is made

    @dataclasses.dataclass(frozen=True)
    class Bottom(Middle):
        c: int = 0

    item = Bottom(1, 2, 3)
    assert item == Bottom(1, 2, 3) and Middle(1, 2) != Middle(1, 3)
    assert dataclasses.fields(Middle)[1].name == "b"
    with pytest.raises(dataclasses.FrozenInstanceError):
        Middle(1).b = 5  # type: ignore[misc]
    assert Top.__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert Middle.__dataclass_params__.frozen  # type: ignore[attr-defined]
    with pytest.raises(TypeError):  # as dataclass refuses a non-frozen class on a frozen one

        @dataclasses.dataclass
        class Loose(Middle):
            d: int = 0


SCAN = """
import dataclasses, importlib, pkgutil, sys
import checks, doctor
from doctor.record import _PENDING
bad = []
for package in (doctor, checks):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if not isinstance(value, type) or value.__module__ != module.__name__:
                continue
            eager = "__dataclass_params__" in value.__dict__  # a plain dataclass
            if eager and any(base.__dict__.get(_PENDING) for base in value.__mro__[1:]):
                bad.append(f"{module.__name__}.{value.__qualname__}")
print("KDBAD", sorted(bad))
"""


def test_no_class_in_the_tree_is_a_plain_dataclass_over_a_record() -> None:
    """A plain @dataclass subclass of a record not yet made would lack the record's fields
    (a dataclass takes its bases' fields from bases that are dataclasses already): every
    subclass of a record must be a record. Read in a fresh interpreter, where none is made."""
    from kdtest import ROOT

    done = subprocess.run(
        [sys.executable, "-c", SCAN], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.rsplit("KDBAD ", 1)[1].strip() == "[]"
