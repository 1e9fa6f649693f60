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


_OWN = ("__eq__", "__hash__", "__repr__", "__setattr__", "__delattr__")


def _make(cls: type) -> None:
    """`dataclass(frozen=True)`, without compiling anything: dataclass makes the fields (with
    init, repr, eq and frozen off, it compiles no method), and __init__, __eq__, __hash__,
    __repr__ and the frozen __setattr__ and __delattr__ are made here from the fields. Compiling
    those six methods from source is what made a dataclass cost ~0.3 ms."""
    if any(name in cls.__dict__ for name in _OWN) or _special_fields(cls):
        dataclasses.dataclass(frozen=True)(cls)  # what the class says itself decides
        return
    # dataclass refuses a non-frozen class over a frozen base: the bases are shown as not
    # frozen while the fields are made (under _lock), and the class is marked frozen after.
    frozen = [
        params
        for base in cls.__mro__[1:]
        for params in [base.__dict__.get("__dataclass_params__")]
        if params is not None and params.frozen
    ]
    for params in frozen:
        params.frozen = False
    try:
        dataclasses.dataclass(init=False, repr=False, eq=False, frozen=False)(cls)
    finally:
        for params in frozen:
            params.frozen = True
    own = cls.__dict__["__dataclass_params__"]
    own.init = own.repr = own.eq = own.frozen = True
    fields = dataclasses.fields(cls)
    __eq__ = _eq([f.name for f in fields if f.compare])
    __hash__ = _hash([f.name for f in fields if (f.compare if f.hash is None else f.hash)])
    shown = [f.name for f in fields if f.repr]

    @reprlib.recursive_repr()
    def __repr__(self: Any) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in shown)
        return f"{self.__class__.__qualname__}({inner})"

    methods = {
        "__init__": _init(cls, fields),
        "__eq__": __eq__,
        "__hash__": __hash__,
        "__repr__": __repr__,
        **_frozen(cls, fields),
    }
    for name, function in methods.items():
        function.__qualname__ = f"{cls.__qualname__}.{name}"
        setattr(cls, name, function)


def _special_fields(cls: type) -> bool:
    """Fields that the generic __init__ does not take as dataclass's would: InitVar, KW_ONLY,
    `field(init=False)` or `field(kw_only=True)`; such a class is made by dataclass itself."""
    for annotation in cls.__dict__.get("__annotations__", {}).values():
        if "InitVar" in str(annotation) or "KW_ONLY" in str(annotation):
            return True
    return any(
        isinstance(value, dataclasses.Field)
        and (not value.init or getattr(value, "kw_only", False) is True)
        for value in cls.__dict__.values()
    )


def _init(cls: type, fields: tuple[dataclasses.Field[Any], ...]) -> Callable[..., None]:
    """The __init__ dataclass writes, from the fields' names and defaults: positional or
    keyword arguments in the fields' order, defaults, a default_factory called for each
    instance that is not given the field, then __post_init__ when the class has one."""
    names = tuple(f.name for f in fields)
    count = len(names)
    missing = dataclasses.MISSING
    defaults = tuple(f.default for f in fields)
    factories = tuple(f.default_factory for f in fields)
    required = sum(1 for d, f in zip(defaults, factories) if d is missing and f is missing)
    post_init = getattr(cls, "__post_init__", None) is not None
    qualname = f"{cls.__qualname__}.__init__()"
    slotted = any("__slots__" in vars(k) for k in cls.__mro__[:-1])

    def bind(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        if len(args) > count:
            takes = f"{count + 1}" if required == count else f"from {required + 1} to {count + 1}"
            raise TypeError(
                f"{qualname} takes {takes} positional arguments but {len(args) + 1} were given"
            )
        for name in kwargs:
            if name not in names:
                raise TypeError(f"{qualname} got an unexpected keyword argument {name!r}")
            if names.index(name) < len(args):
                raise TypeError(f"{qualname} got multiple values for argument {name!r}")
        values = list(args)
        lacking = []
        for index in range(len(args), count):
            name = names[index]
            if name in kwargs:
                values.append(kwargs[name])
            elif defaults[index] is not missing:
                values.append(defaults[index])
            elif factories[index] is not missing:
                values.append(factories[index]())  # type: ignore[operator]
            else:
                lacking.append(name)
        if lacking:
            raise TypeError(
                f"{qualname} missing {len(lacking)} required positional argument"
                f"{'s' if len(lacking) > 1 else ''}: {', '.join(map(repr, lacking))}"
            )
        return tuple(values)

    setter = object.__setattr__

    every = frozenset(names)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if kwargs and not args and len(kwargs) == count and every.issuperset(kwargs):
            args = tuple(map(kwargs.__getitem__, names))  # every field by keyword
        elif kwargs or len(args) != count:
            args = bind(args, kwargs)
        if slotted:
            for name, value in zip(names, args):
                setter(self, name, value)
        else:
            self.__dict__.update(zip(names, args))
        if post_init:
            self.__post_init__()

    return __init__


def _frozen(cls: type, fields: tuple[dataclasses.Field[Any], ...]) -> dict[str, Any]:
    """A frozen dataclass's __setattr__ and __delattr__: no field can be set or deleted, nor
    any attribute of an instance of the class itself (a subclass may add its own)."""
    names = frozenset(f.name for f in fields)
    error = dataclasses.FrozenInstanceError

    def __setattr__(self: Any, name: str, value: Any) -> None:
        if type(self) is cls or name in names:
            raise error(f"cannot assign to field {name!r}")
        super(cls, self).__setattr__(name, value)  # type: ignore[arg-type]

    def __delattr__(self: Any, name: str) -> None:
        if type(self) is cls or name in names:
            raise error(f"cannot delete field {name!r}")
        super(cls, self).__delattr__(name)  # type: ignore[arg-type]

    return {"__setattr__": __setattr__, "__delattr__": __delattr__}


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
