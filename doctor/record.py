"""`@record`: a frozen dataclass whose methods are generated when its first instance is made.

Creating a dataclass costs ~0.4 ms on Python 3.11 (it compiles its __init__, __repr__,
__eq__, __hash__, __setattr__ and __delattr__ from source), and kvmdoctor declares some 140
record classes, most of them for facts and checks that a given run does not need. A record
class stays a plain class until its first instance is made (a call, or unpickling): then it
becomes exactly the frozen dataclass `@dataclass(frozen=True)` makes, its bases first, and
later instances cost what a dataclass's cost.

Before that moment the class is not yet a dataclass: `dataclasses.fields(Class)` raises
TypeError (kvmdoctor asks only instances, which always are). Type checkers see
`dataclass(frozen=True)`.
"""

from __future__ import annotations

import dataclasses
import operator
import reprlib
import threading
from typing import TYPE_CHECKING, Any, Callable, TypeVar

T = TypeVar("T", bound=type)
_PENDING = "__kvmdoctor_record__"
_STUBS = ("__init__", "__setstate__")
_lock = threading.RLock()


def materialize(cls: type) -> type:
    """Make `cls` (and the record classes it derives from) the frozen dataclass it declares."""
    with _lock:
        for klass in reversed(cls.__mro__):
            if klass.__dict__.get(_PENDING):
                for name in (_PENDING, *_STUBS):
                    delattr(klass, name)
                if not klass.__doc__:
                    # What dataclass would write, but without the types: it gets those from
                    # inspect.signature, which costs a third of making the class.
                    names = [
                        n
                        for k in reversed(klass.__mro__)
                        for n in vars(k).get("__annotations__", {})
                    ]
                    klass.__doc__ = f"{klass.__name__}({', '.join(dict.fromkeys(names))})"
                _make(klass)
    return cls


_OWN = ("__eq__", "__hash__", "__repr__")


def _make(cls: type) -> None:
    """`dataclass(frozen=True)`, with __eq__, __hash__ and __repr__ made from the fields
    without compiling them (half of what making a dataclass costs); __init__ and the frozen
    __setattr__ and __delattr__ are dataclass's own."""
    if any(name in cls.__dict__ for name in _OWN):
        dataclasses.dataclass(frozen=True)(cls)  # what the class says itself decides
        return
    dataclasses.dataclass(frozen=True, eq=False, repr=False)(cls)
    fields = dataclasses.fields(cls)
    __eq__ = _eq([f.name for f in fields if f.compare])
    __hash__ = _hash([f.name for f in fields if (f.compare if f.hash is None else f.hash)])
    shown = [f.name for f in fields if f.repr]

    @reprlib.recursive_repr()
    def __repr__(self: Any) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in shown)
        return f"{self.__class__.__qualname__}({inner})"

    for name, function in (("__eq__", __eq__), ("__hash__", __hash__), ("__repr__", __repr__)):
        function.__qualname__ = f"{cls.__qualname__}.{name}"
        setattr(cls, name, function)


def _eq(names: list[str]) -> Callable[[Any, Any], Any]:
    """A dataclass's __eq__: the same class, and equal tuples of the compared fields."""
    if len(names) == 1:  # a 1-tuple, not the bare value: (nan,) == (nan,) when it is one object
        get = operator.attrgetter(names[0])

        def __eq__(self: Any, other: Any) -> Any:
            if other.__class__ is self.__class__:
                return (get(self),) == (get(other),)
            return NotImplemented

    else:
        several = operator.attrgetter(*names) if names else (lambda item: ())

        def __eq__(self: Any, other: Any) -> Any:
            if other.__class__ is self.__class__:
                return several(self) == several(other)
            return NotImplemented

    return __eq__


def _hash(names: list[str]) -> Callable[[Any], int]:
    """A frozen dataclass's __hash__: the hash of the tuple of its hashed fields."""
    if len(names) == 1:
        get = operator.attrgetter(names[0])

        def __hash__(self: Any) -> int:
            return hash((get(self),))

    else:
        several = operator.attrgetter(*names) if names else (lambda item: ())

        def __hash__(self: Any) -> int:
            return hash(several(self))

    return __hash__


def _lazy_record(cls: T) -> T:
    if any(name in cls.__dict__ for name in (*_STUBS, "__new__")):
        dataclasses.dataclass(frozen=True)(cls)  # its own construction: no stand-ins
        return cls

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        materialize(type(self))  # `cls` is among its bases
        cls.__init__(self, *args, **kwargs)  # type: ignore[misc]

    def __setstate__(self: Any, state: Any) -> None:  # unpickled before any call made one
        materialize(type(self))
        if isinstance(state, tuple):  # (dict, slots) when a subclass has __slots__
            state, slots = state
            for name, value in (slots or {}).items():
                object.__setattr__(self, name, value)
        self.__dict__.update(state or {})

    cls.__init__ = __init__  # type: ignore[misc]
    cls.__setstate__ = __setstate__  # type: ignore[attr-defined]
    setattr(cls, _PENDING, True)
    return cls


if TYPE_CHECKING:
    from typing_extensions import dataclass_transform

    @dataclass_transform(frozen_default=True)
    def record(cls: T) -> T: ...

else:
    record = _lazy_record
