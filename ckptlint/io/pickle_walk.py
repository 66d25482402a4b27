"""The static half of reading a pickle: walk its opcodes, build nothing, and record every global it
names and how a real loader would use it.

The restricted unpickler (``unpickler.py``) builds the objects, but it only sees what it reaches,
and a hostile pickle can stop it early (an opcode that fails on an inert stub) with a dangerous
global placed after that point. This walk runs first, over the whole opcode stream (decoded as
``pickletools.genops`` does, by ``pickle_opcodes``), on *symbolic* values: a global is ``Named``,
what calling or instantiating one gives is ``Made``, strings stay strings (so ``STACK_GLOBAL`` fed
from the memo and name resolvers such as ``getattr``, ``operator.attrgetter`` or
``pkgutil.resolve_name`` give the names they reach) and anything else is ``OTHER``. What the
values mean never stops it (calling an inert stub stops the unpickler, never the walk); only what
stops every unpickler whatever its globals do: bytes that are no opcode, popping an empty stack or
past a missing MARK, an unstored memo index. Nothing after such a point is ever loaded.

It also refuses what would make the C unpickler allocate far beyond the pickle's size: a memo
index of 2**28 makes it fill a 4 GB table. (Counted lengths are read in chunks as far as the data
goes, and the unpickler then runs on the bytes this walk read, so a ``BINBYTES8`` claiming
gigabytes allocates nothing.)
"""

from __future__ import annotations

import _compat_pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

from ckptlint.errors import CheckpointError
from ckptlint.io.pickle_opcodes import MAX_NAME, STOP, PickleSource, opcode_table

# How a pickle uses a global (a verb, as the findings say it). Every use but NAMED runs the
# global's code in a real loader: calling it, constructing its class (NEWOBJ, OBJ, INST), its
# __setstate__ (BUILD on an instance), or BUILD on the global object itself, which changes it for
# everything loaded after in the same process.
NAMED = "names"
CALLED = "calls"
INSTANTIATED = "instantiates"
GIVEN_STATE = "sets the state of"
CHANGED = "modifies"
USES = (CALLED, INSTANTIATED, GIVEN_STATE, CHANGED, NAMED)  # the order findings list them in

MEMO_SLACK = 1024  # a memo index may run this far ahead of the entries stored so far


def normalise_global(module: str, name: str) -> tuple[str, str]:
    """Map Python 2 spellings (``__builtin__``, ``copy_reg``) to Python 3 ones, as pickle does."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


# --- symbolic values ---

class _Other:
    def __repr__(self) -> str:
        return "OTHER"


OTHER = _Other()  # any value the walk need not follow: numbers, bytes, containers, ...


@dataclass(frozen=True)
class Named:
    """A global object: named by GLOBAL/STACK_GLOBAL/INST, or reached through a resolver (``via``)."""

    module: str
    name: str
    via: str | None = None

    @property
    def qualname(self) -> str:
        return ".".join(normalise_global(self.module, self.name))

    def attribute(self, attr: str, via: str | None) -> Named:
        return Named(self.module, f"{self.name}.{attr}", via)


@dataclass(frozen=True)
class Made:
    """What calling or instantiating a global gave: an instance of a class, a function's result."""

    of: Named


@dataclass(frozen=True)
class Module:
    """A module a pickle imported (``builtins.__import__``, ``importlib.import_module``)."""

    name: str


@dataclass(frozen=True)
class Partial:
    """``functools.partial(function, *args)``: calling it calls ``function``."""

    function: Any
    args: tuple


@dataclass(frozen=True)
class AttrGetter:
    """``operator.attrgetter(*paths)``: calling it on an object reaches those attributes."""

    paths: tuple[str, ...]
    via: str


@dataclass(frozen=True)
class MethodCaller:
    """``operator.methodcaller(name, *args)``: calling it on an object calls that method."""

    name: str
    via: str


class Recorder(Protocol):
    def record(self, named: Named, how: str, count: int) -> None:
        """Note that the pickle uses ``named`` this way (``count``: times it names it anew)."""

    def allowed(self, named: Named) -> bool:
        """Whether ``named`` is on the allowlist."""


# --- what calling a global does to its arguments ---

def _argument(args: tuple, position: int) -> Any:
    return args[position] if position < len(args) else OTHER


def _getattr(walk: _Walk, function: Named, args: tuple) -> Any:
    return walk.resolve(_argument(args, 0), _argument(args, 1), function.qualname)


def _import(walk: _Walk, function: Named, args: tuple) -> Any:
    name = _argument(args, 0)
    return Module(name) if isinstance(name, str) else OTHER


def _resolve_name(walk: _Walk, function: Named, args: tuple) -> Any:
    """``pkgutil.resolve_name("os:system")``, ``pydoc.locate("os.system")``."""
    path = _argument(args, 0)
    if not isinstance(path, str) or not path:
        return OTHER
    module, _, name = path.replace(":", ".").rpartition(".")
    named = Named(module, name, function.qualname)
    walk.record(named, NAMED, count=1)
    return named


def _attrgetter(walk: _Walk, function: Named, args: tuple) -> Any:
    return AttrGetter(tuple(a for a in args if isinstance(a, str)), function.qualname)


def _methodcaller(walk: _Walk, function: Named, args: tuple) -> Any:
    name = _argument(args, 0)
    return MethodCaller(name, function.qualname) if isinstance(name, str) else OTHER


def _call_first(walk: _Walk, function: Named, args: tuple) -> Any:
    """``operator.call(f, *args)``."""
    return walk.call(_argument(args, 0), args[1:])


def _partial(walk: _Walk, function: Named, args: tuple) -> Any:
    return Partial(_argument(args, 0), args[1:])


def _invokes(calls: tuple[int, ...] = (), instantiates: int | None = None) -> Callable[[_Walk, Named, tuple], Any]:
    """A global that calls some of its arguments and may return an instance of another."""
    def apply(walk: _Walk, function: Named, args: tuple) -> Any:
        for position in calls:
            walk.call(_argument(args, position), ())
        if instantiates is not None and isinstance(cls := _argument(args, instantiates), Named):
            return walk.instantiate(cls, ())
        return Made(function)
    return apply


def _keeps_arguments(walk: _Walk, function: Named, args: tuple) -> Any:
    """A global that keeps what it is given as data (a defaultdict's factory)."""
    return Made(function)


def _returns_first(walk: _Walk, function: Named, args: tuple) -> Any:
    """torch's ``_rebuild_parameter(data, ...)`` as ours runs it: anything but a tensor comes back
    as it went in (so a BUILD after it acts on that)."""
    first = _argument(args, 0)
    return first if isinstance(first, Named) else Made(function)


def _rebuild_from_type_v2(walk: _Walk, function: Named, args: tuple) -> Any:
    """torch's ``_rebuild_from_type_v2(func, new_type, args, state)``: ``func(*args)``, then made an
    instance of ``new_type`` (its ``__setstate__`` too)."""
    walk.call(_argument(args, 0), _argument(args, 2))
    return _invokes(instantiates=1)(walk, function, args)


# Globals whose effect on their arguments matters: resolvers give the names they reach, callers
# call their arguments (allowlisted ones included: numpy's constructors instantiate the class
# they are given, so passing them another class runs it). Any other allowlisted callable is taken
# to call into the globals it is given (``dict(numpy.__builtins__)`` iterates it, ``PosixPath(x)``
# calls ``x.__fspath__``); a non-allowlisted one is unsafe itself.
SEMANTICS: dict[str, Callable[[_Walk, Named, tuple], Any]] = {
    "builtins.getattr": _getattr,
    "builtins.__import__": _import,
    "importlib.import_module": _import,
    "importlib.__import__": _import,
    "importlib._bootstrap._gcd_import": _import,
    "pkgutil.resolve_name": _resolve_name,
    "pydoc.locate": _resolve_name,
    "operator.attrgetter": _attrgetter,
    "_operator.attrgetter": _attrgetter,
    "operator.methodcaller": _methodcaller,
    "_operator.methodcaller": _methodcaller,
    "operator.call": _call_first,
    "_operator.call": _call_first,
    "functools.partial": _partial,
    "_functools.partial": _partial,
    "functools.reduce": _invokes(calls=(0,)),
    "_functools.reduce": _invokes(calls=(0,)),
    "builtins.map": _invokes(calls=(0,)),
    "builtins.filter": _invokes(calls=(0,)),
    "collections.defaultdict": _keeps_arguments,
    "copyreg._reconstructor": _invokes(instantiates=0),
    "copyreg.__newobj__": _invokes(instantiates=0),
    "copyreg.__newobj_ex__": _invokes(instantiates=0),
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    "torch._utils._rebuild_parameter": _returns_first,
    "torch._utils._rebuild_parameter_with_state": _returns_first,
    "numpy.random._pickle.__bit_generator_ctor": _invokes(instantiates=0),
    "numpy.random._pickle.__generator_ctor": _invokes(calls=(1,), instantiates=0),
    "numpy.random._pickle.__randomstate_ctor": _invokes(calls=(1,), instantiates=0),
    "numpy.random.bit_generator.__pyx_unpickle_SeedSequence": _invokes(instantiates=0),
    "numpy.core.multiarray._reconstruct": _invokes(instantiates=0),
    "numpy._core.multiarray._reconstruct": _invokes(instantiates=0),
}


# --- the walk ---

class _Walk:
    """A pickle machine over symbolic values: the stack, the mark stack and the memo."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: list[Any] = []
        self.memo_filled = 0
        self.memo_writes = 0

    def record(self, named: Named, how: str, count: int = 0) -> None:
        self.recorder.record(named, how, count)

    # Structural failures stop every unpickler, whatever its globals do (none can reach its
    # stack or memo), so nothing after one is ever loaded: the walk stops there too.

    def pop(self) -> Any:
        if not self.stack:
            raise ValueError("stack underflow")
        return self.stack.pop()

    def pop_mark(self) -> list[Any]:
        if not self.metastack:
            raise ValueError("no MARK to pop to")
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    def top(self) -> Any:
        if not self.stack:
            raise ValueError("stack underflow")
        return self.stack[-1]

    def put(self, index: int) -> None:
        """Memoize the top of the stack at ``index`` (as C's unpickler would size its table)."""
        self.memo_writes += 1
        if index == len(self.memo):  # how pickle numbers them
            self.memo.append(self.top())
            self.memo_filled += 1
            return
        if index > self.memo_writes + MEMO_SLACK:
            raise CheckpointError(f"memo index {index} jumps past the {self.memo_writes} entries stored so far "
                                  "(a memory bomb: the unpickler would allocate a table that large)")
        if index >= len(self.memo):
            self.memo.extend([None] * (index + 1 - len(self.memo)))
        if self.memo[index] is None:
            self.memo_filled += 1
        self.memo[index] = self.top()

    # --- what the opcodes mean ---

    def call(self, function: Any, args: Any, how: str = CALLED) -> Any:
        """Calling ``function`` with ``args``: record the use, return what it gives."""
        args = args if isinstance(args, tuple) else ()
        if isinstance(function, Named):
            self.record(function, how)
            if semantics := SEMANTICS.get(function.qualname):
                return semantics(self, function, args)
            if self.recorder.allowed(function):  # it converts or iterates what it is given: their code runs
                for argument in args:
                    if isinstance(argument, Named):
                        self.record(Named(argument.module, argument.name, function.qualname), CALLED)
            return Made(function)
        if isinstance(function, Partial):
            return self.call(function.function, function.args + args)
        if isinstance(function, AttrGetter):
            reached = [self.resolve_path(_argument(args, 0), path, function.via) for path in function.paths]
            return reached[0] if len(reached) == 1 else tuple(reached)
        if isinstance(function, MethodCaller):
            return self.call(self.resolve(_argument(args, 0), function.name, function.via), ())
        if isinstance(function, Made):  # calling an instance runs its class's __call__
            return self.call(function.of.attribute("__call__", None), args)
        return OTHER

    def instantiate(self, cls: Any, args: Any) -> Any:
        """NEWOBJ, OBJ, INST: ``cls.__new__`` (and ``__init__``), or a call if it is no class."""
        return self.call(cls, args, INSTANTIATED) if isinstance(cls, Named) else self.call(cls, args)

    def resolve(self, obj: Any, attr: Any, via: str) -> Any:
        """``getattr(obj, attr)`` done by the resolver ``via``: the global it reaches."""
        if not isinstance(attr, str) or len(attr) > MAX_NAME:
            return OTHER
        if isinstance(obj, Module):
            named = Named(obj.name, attr, via)
        elif isinstance(obj, Named):
            named = obj.attribute(attr, via)
        elif isinstance(obj, Made):  # a method or attribute of its class
            named = obj.of.attribute(attr, via)
        else:
            named = Named("builtins.str" if isinstance(obj, str) else "<object>", attr, via)
        self.record(named, NAMED, count=1)
        return named

    def resolve_path(self, obj: Any, path: str, via: str) -> Any:
        for attr in path.split("."):
            obj = self.resolve(obj, attr, via)
        return obj

    def named(self, module: Any, name: Any) -> Any:
        if not (isinstance(module, str) and isinstance(name, str)):
            return OTHER  # the unpickler refuses STACK_GLOBAL on anything but strings
        named = Named(module, name)
        self.record(named, NAMED, count=1)
        return named


class _Opcodes(_Walk):
    """One method per group of opcodes, each given the opcode's argument."""

    def push_text(self, arg: str | None) -> None:
        self.stack.append(OTHER if arg is None else arg)

    def push_other(self, arg: Any) -> None:
        self.stack.append(OTHER)

    def nothing(self, arg: Any) -> None:
        pass

    def stop(self, arg: Any) -> None:
        self.pop()  # the pickle's value

    def mark(self, arg: Any) -> None:
        self.metastack.append(self.stack)
        self.stack = []

    def pop_one(self, arg: Any) -> None:
        if self.stack:
            self.stack.pop()
        else:
            self.pop_mark()

    def pop_to_mark(self, arg: Any) -> None:
        self.pop_mark()

    def dup(self, arg: Any) -> None:
        self.stack.append(self.top())

    def empty_tuple(self, arg: Any) -> None:
        self.stack.append(())

    def tuple_to_mark(self, arg: Any) -> None:
        items = tuple(self.pop_mark())  # before naming self.stack: popping the mark replaces it
        self.stack.append(items)

    def container_to_mark(self, arg: Any) -> None:
        self.pop_mark()
        self.stack.append(OTHER)

    def append(self, arg: Any) -> None:
        self.pop()

    def setitem(self, arg: Any) -> None:
        self.pop()
        self.pop()

    put_at = _Walk.put

    def memoize(self, arg: Any) -> None:
        self.put(self.memo_filled)

    def get_from(self, arg: int) -> None:
        value = self.memo[arg] if arg < len(self.memo) else None
        if value is None:
            raise ValueError(f"memo index {arg} was never stored")
        self.stack.append(value)

    def global_(self, arg: tuple[str, str]) -> None:
        self.stack.append(self.named(*arg))

    def stack_global(self, arg: Any) -> None:
        name = self.pop()
        self.stack.append(self.named(self.pop(), name))

    def inst(self, arg: tuple[str, str]) -> None:
        args = tuple(self.pop_mark())
        made = self.instantiate(self.named(*arg), args)
        self.stack.append(made)

    def obj(self, arg: Any) -> None:
        items = self.pop_mark()
        if not items:
            raise ValueError("stack underflow")
        made = self.instantiate(items[0], tuple(items[1:]))
        self.stack.append(made)

    def reduce(self, arg: Any) -> None:
        args = self.pop()
        self.stack.append(self.call(self.pop(), args))

    def newobj(self, arg: Any) -> None:
        args = self.pop()
        self.stack.append(self.instantiate(self.pop(), args))

    def newobj_ex(self, arg: Any) -> None:
        self.pop()  # keyword arguments
        self.newobj(arg)

    def build(self, arg: Any) -> None:
        """BUILD: ``__setstate__`` of an instance, or a change to a global object itself."""
        self.pop()  # the state
        target = self.top()
        if isinstance(target, Made):
            self.record(target.of, GIVEN_STATE)
        elif isinstance(target, Named):
            self.record(target, CHANGED)

    def binpersid(self, arg: Any) -> None:
        """Legacy ``torch.save(model)`` names each module class inside a persistent id."""
        pid = self.pop()
        module_class = isinstance(pid, tuple) and len(pid) == 4 and pid[0] == "module" and isinstance(pid[1], Named)
        self.stack.append(pid[1] if module_class else OTHER)

    def extension(self, arg: int) -> None:
        """No extension code is registered in torch's process (copyreg.add_extension, which a
        pickle could call first, is unsafe itself): a loader fails here."""
        raise ValueError(f"extension code {arg} is not registered")

    def proto(self, arg: int) -> None:
        if arg > 5:
            raise ValueError(f"unsupported pickle protocol {arg}")


Handler = Callable[[_Opcodes, Any], None]


def _tuple_of(count: int) -> Handler:
    def make(machine: _Opcodes, arg: Any) -> None:
        items = [machine.pop() for _ in range(count)]
        machine.stack.append(tuple(reversed(items)))
    return make


HANDLERS: dict[str, Handler] = {
    **dict.fromkeys(("STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
                     "BINUNICODE8"), _Opcodes.push_text),
    **dict.fromkeys(("NONE", "NEWTRUE", "NEWFALSE", "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1",
                     "LONG4", "FLOAT", "BINFLOAT", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8",
                     "EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET", "PERSID", "NEXT_BUFFER"), _Opcodes.push_other),
    **dict.fromkeys(("FRAME", "READONLY_BUFFER"), _Opcodes.nothing),
    "PROTO": _Opcodes.proto,
    "STOP": _Opcodes.stop,
    "MARK": _Opcodes.mark,
    "POP": _Opcodes.pop_one,
    "POP_MARK": _Opcodes.pop_to_mark,
    "DUP": _Opcodes.dup,
    "EMPTY_TUPLE": _Opcodes.empty_tuple,
    "TUPLE": _Opcodes.tuple_to_mark,
    "TUPLE1": _tuple_of(1),
    "TUPLE2": _tuple_of(2),
    "TUPLE3": _tuple_of(3),
    **dict.fromkeys(("LIST", "DICT", "FROZENSET"), _Opcodes.container_to_mark),
    **dict.fromkeys(("APPENDS", "SETITEMS", "ADDITEMS"), _Opcodes.pop_to_mark),
    "APPEND": _Opcodes.append,
    "SETITEM": _Opcodes.setitem,
    **dict.fromkeys(("PUT", "BINPUT", "LONG_BINPUT"), _Opcodes.put_at),
    "MEMOIZE": _Opcodes.memoize,
    **dict.fromkeys(("GET", "BINGET", "LONG_BINGET"), _Opcodes.get_from),
    "GLOBAL": _Opcodes.global_,
    "STACK_GLOBAL": _Opcodes.stack_global,
    "INST": _Opcodes.inst,
    "OBJ": _Opcodes.obj,
    "REDUCE": _Opcodes.reduce,
    "NEWOBJ": _Opcodes.newobj,
    "NEWOBJ_EX": _Opcodes.newobj_ex,
    "BUILD": _Opcodes.build,
    "BINPERSID": _Opcodes.binpersid,
    **dict.fromkeys(("EXT1", "EXT2", "EXT4"), _Opcodes.extension),
}


OPCODES = opcode_table(HANDLERS)


def walk(stream: BinaryIO, recorder: Recorder) -> bytes:
    """Walk one pickle from where ``stream`` stands to its STOP, recording every global and its
    uses in ``recorder``; return the pickle's bytes. The stream is left just after the STOP
    (when it can seek; one that cannot holds nothing after the pickle that anyone reads).

    Raises CheckpointError for bytes that are not a pickle and for memo indexes that would make an
    unpickler allocate far more than the data holds.
    """
    source = PickleSource(stream)
    data = source.data
    machine = _Opcodes(recorder)
    position = 0
    try:
        while True:
            if position >= len(data):
                source.need(position + 1)
            code = data[position]
            if (entry := OPCODES[code]) is None:
                raise ValueError(f"unknown opcode {bytes([code])!r} at byte {position}")
            read, handle = entry
            if read is None:
                arg, position = None, position + 1
            else:
                arg, position = read(source, position + 1)
            handle(machine, arg)
            if code == STOP:
                return source.finish(position)
    except (ValueError, OverflowError) as exc:
        raise CheckpointError(f"corrupt pickle ({str(exc).splitlines()[0][:120]})") from None
