"""A restricted unpickler: rebuilds tensor records and plain data, calls nothing from the file.

Reading a pickle takes two passes over its bytes, both recording into one ledger per pickle:

1. ``pickle_walk.walk`` goes over every opcode without building anything and records every global
   the pickle names and how a real loader would use it (call it, instantiate it, set its state,
   modify it, reach it through ``getattr`` and other resolvers), whatever happens later. It also
   refuses memo indexes and lengths that would make the unpickler allocate far beyond the data.
2. ``RestrictedUnpickler`` builds the objects, with Python's docs' "Restricting Globals" technique:
   every global goes through ``find_class``. Globals on the ALLOWLIST resolve to small functions
   of our own or to immutable markers; every other global resolves to a fresh *stub class* that
   records its name and whatever arguments and state the pickle hands it, and does nothing else.
   So ``REDUCE``, ``NEWOBJ``, ``INST``, ``OBJ`` and ``BUILD`` all act on our own code, and the
   stubs note each use too.

Everything one pickle builds is its own: stub classes and wrappers are made per pickle, and the
few objects shared between files (element and storage type markers, ``complex``) refuse
``BUILD``, so one file cannot change how the next is read. What the pickle builds through our code
is bounded by its size (``CELLS_PER_BYTE``).
"""

from __future__ import annotations

import builtins
import enum
import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from ckptlint.errors import CheckpointError
from ckptlint.io.dtypes import DTYPES, TORCH_DTYPE_NAMES, TORCH_STORAGE_TYPES, UNREADABLE_TORCH_DTYPES, DType
from ckptlint.io.pickle_walk import CALLED, GIVEN_STATE, INSTANTIATED, NAMED, USES, Named, normalise_global, walk

# Bounds on what one pickle may make us build, relative to its size: a pickle can hand the same
# big list to a constructor again and again (BINGET costs two bytes, a copy of a million items
# costs eight megabytes), or name a new global with a few bytes of STACK_GLOBAL (a new class
# each). Real checkpoints build under one cell per byte and name a few dozen globals.
CELLS_PER_BYTE = 4
CELLS_FLOOR = 1 << 16
MAX_GLOBALS = 10_000


@dataclass(frozen=True)
class PickleGlobal:
    """A global a pickle names, ``module.name`` after Python 2 names are normalised, and how the
    pickle uses it (``uses``: verbs from pickle_walk; ``via``: the resolvers that reached it)."""

    module: str
    name: str
    where: str  # which pickle in the file named it (zip entry or legacy stream part)
    allowed: bool
    uses: tuple[str, ...] = (NAMED,)
    via: tuple[str, ...] = ()
    count: int = 1

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"

    @property
    def invoked(self) -> bool:
        """Whether a loader would run it: anything but being named, or being reached by name."""
        return bool(self.via) or any(use != NAMED for use in self.uses)


@dataclass
class _Uses:
    static: set[str] = field(default_factory=set)  # seen by the opcode walk
    runtime: set[str] = field(default_factory=set)  # seen by the stubs as the unpickler ran
    via: set[str] = field(default_factory=set)
    count: int = 0


class _Ledger:
    """One pickle's globals and how each is used (from the opcode walk and from the stubs as the
    unpickler runs), and how many more cells the unpickler may still build through our code."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.found: dict[tuple[str, str], _Uses] = {}
        self.budget = CELLS_FLOOR

    def _uses(self, key: tuple[str, str]) -> _Uses:
        uses = self.found.get(key)
        if uses is None:
            if len(self.found) >= MAX_GLOBALS:
                raise CheckpointError(f"the pickle names more than {MAX_GLOBALS} distinct globals")
            uses = self.found[key] = _Uses()
        return uses

    def record(self, named: Named, how: str, count: int) -> None:
        """The opcode walk's record (pickle_walk.Recorder)."""
        uses = self._uses(normalise_global(named.module, named.name))
        uses.static.add(how)
        uses.count += count
        if named.via:
            uses.via.add(named.via)

    def allowed(self, named: Named) -> bool:
        """The opcode walk's question (pickle_walk.Recorder)."""
        return normalise_global(named.module, named.name) in ALLOWLIST

    def named(self, key: tuple[str, str]) -> None:
        self._uses(key).static.add(NAMED)

    def invoked(self, key: tuple[str, str], how: str, cells: int = 0) -> None:
        """A stub's record as the unpickler runs: a check on the walk, and a cost."""
        self.charge(cells)
        self._uses(key).runtime.add(how)

    def charge(self, cells: int) -> None:
        self.budget -= cells
        if self.budget < 0:
            raise CheckpointError(f"the pickle builds more than {CELLS_PER_BYTE} objects per byte of itself: "
                                  "an amplification bomb")

    def records(self) -> list[PickleGlobal]:
        found = []
        for (module, name), uses in self.found.items():
            seen = uses.static if uses.via or uses.static - {NAMED} else uses.static | uses.runtime
            found.append(PickleGlobal(module, name, self.where, (module, name) in ALLOWLIST,
                                      tuple(use for use in USES if use in seen) or (NAMED,),
                                      tuple(sorted(uses.via)), max(uses.count, 1)))
        return found


_SIZED = (tuple, list, dict, set, frozenset, str, bytes)


def _cells(args: tuple) -> int:
    """What calling something with ``args`` may copy: the arguments and the items of each."""
    cells = len(args)
    for arg in args:
        if isinstance(arg, _SIZED):
            cells += len(arg)
    return cells


def _refuse_build(*_: Any) -> None:
    """``__setstate__`` of what no pickle may give state to: objects shared with every file, and
    tensor records (a BUILD on them would copy its state each time: a cheap loop of copies)."""
    raise CheckpointError("BUILD on an object shared with every file (an allowlisted function, element or storage "
                          "type, complex) or on a tensor record: torch never writes that; refused as unsafe")


class InertObject:
    """An object the pickle builds but we never run: keeps arguments and state as data.

    The class itself is never used directly; each global gets a subclass named after it, made
    for one pickle (``ckpt_ledger`` notes each use of it there).
    """

    ckpt_global = "?"
    ckpt_key: tuple[str, str]
    ckpt_ledger: _Ledger
    ckpt_args: tuple[Any, ...]
    ckpt_kwargs: dict[str, Any]
    ckpt_state: Any
    ckpt_items: list[Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> InertObject:  # REDUCE, NEWOBJ, OBJ, INST
        cls.ckpt_ledger.invoked(cls.ckpt_key, CALLED, 1 + len(args) + len(kwargs))
        self = super().__new__(cls)
        self.ckpt_args = args
        self.ckpt_kwargs = kwargs
        self.ckpt_state = None
        self.ckpt_items = []
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Everything was kept by ``__new__``, which NEWOBJ calls alone."""

    def __setstate__(self, state: Any) -> None:
        self.ckpt_ledger.invoked(self.ckpt_key, GIVEN_STATE)
        self.ckpt_state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.ckpt_items.append((key, value))

    def append(self, value: Any) -> None:
        self.ckpt_items.append(value)

    def extend(self, values: Any) -> None:
        self.ckpt_items.extend(values)

    def __repr__(self) -> str:
        return f"<inert {self.ckpt_global}>"


class InertDict(dict):
    """A mapping built through an allowlisted class (OrderedDict, Counter, Lightning's
    AttributeDict): a dict, its class made for one pickle. BUILD's state (the ``_metadata`` torch
    gives a state dict) is kept apart, as data."""

    ckpt_ledger: _Ledger
    ckpt_state: Any = None

    def __new__(cls, *args: Any, **kwargs: Any) -> InertDict:
        cls.ckpt_ledger.charge(_cells(args) + len(kwargs))
        return super().__new__(cls)

    def __setstate__(self, state: Any) -> None:
        self.ckpt_state = state


def _is_stub(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, InertObject)


class StorageType:
    """A torch storage class named in a persistent id; carries the element type if it has one."""

    __slots__ = ("dtype",)
    __setstate__ = _refuse_build

    def __init__(self, dtype: DType | None) -> None:
        self.dtype = dtype


class ElementType:
    """A torch dtype global (``torch.float32``): the element type it names."""

    __slots__ = ("dtype", "name")
    __setstate__ = _refuse_build

    def __init__(self, dtype: DType | None, name: str = "") -> None:
        self.dtype = dtype  # None: a torch type whose values ckptlint cannot read (UNREADABLE_TORCH_DTYPES)
        self.name = name


class _Complex(complex):
    """``builtins.complex`` as protocol 2 uses it (NEWOBJ with two numbers): a real type, so it is
    shared between files, and so it takes nothing but numbers and refuses BUILD."""

    __slots__ = ()
    __setstate__ = _refuse_build

    def __new__(cls, real: Any = 0.0, imag: Any = 0.0) -> complex:  # type: ignore[misc]  # a plain complex, by design
        if type(real) not in (int, float) or type(imag) not in (int, float):
            raise CheckpointError("malformed complex number")
        return complex(real, imag)


@dataclass(frozen=True)
class StorageDescriptor:
    """What a persistent id says about a storage: its key, type, element count, device."""

    key: str
    dtype: DType | None
    numel: int
    location: str
    view_offset: int = 0  # legacy view storages start this many elements into their root

    __setstate__ = _refuse_build


@dataclass(frozen=True)
class PickledTensor:
    """A tensor as the pickle describes it; the bytes stay wherever the storage lives."""

    storage: StorageDescriptor
    dtype: DType
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    is_parameter: bool = False

    __setstate__ = _refuse_build


def _tuple_of_ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(type(v) is int for v in value):
        raise CheckpointError(f"malformed tensor record: {what} is not a tuple of integers")
    return tuple(value)


def _rebuild(storage: Any, offset: Any, size: Any, stride: Any, dtype: DType | None) -> PickledTensor:
    if not isinstance(storage, StorageDescriptor):
        raise CheckpointError("malformed tensor record: its storage is not a storage reference")
    if type(offset) is not int or offset < 0:
        raise CheckpointError("malformed tensor record: bad storage offset")
    dtype = dtype or storage.dtype
    if dtype is None:
        raise CheckpointError("malformed tensor record: no element type")
    shape, strides = _tuple_of_ints(size, "size"), _tuple_of_ints(stride, "stride")
    if len(shape) != len(strides) or any(n < 0 for n in shape) or any(s < 0 for s in strides):
        raise CheckpointError("malformed tensor record: size and stride disagree")
    return PickledTensor(storage, dtype, offset + storage.view_offset, shape, strides)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> PickledTensor:
    return _rebuild(storage, offset, size, stride, None)


def _rebuild_tensor_v3(storage: Any, offset: Any, size: Any, stride: Any, _grad: Any, _hooks: Any,
                       dtype: Any, *_: Any) -> PickledTensor:
    if not isinstance(dtype, ElementType):
        raise CheckpointError("malformed tensor record: dtype is not a torch dtype")
    if dtype.dtype is None:
        raise CheckpointError(f"a tensor of torch.{dtype.name}: ckptlint cannot read that dtype's values")
    return _rebuild(storage, offset, size, stride, dtype.dtype)


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    if isinstance(data, PickledTensor):
        return PickledTensor(data.storage, data.dtype, data.offset, data.shape, data.stride, True)
    return data


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, _state: Any) -> Any:
    # torch wraps tensor subclasses this way: func(*args), then made an instance of new_type
    # (whose __new__ and __setstate__ a loader runs). `func` is one of our own rebuild functions
    # or a stub, so calling it is calling our code.
    if not (callable(func) and isinstance(args, tuple)):
        raise CheckpointError("malformed tensor record in _rebuild_from_type_v2")
    if _is_stub(new_type):
        new_type.ckpt_ledger.invoked(new_type.ckpt_key, INSTANTIATED)
    return func(*args)


def _codecs_encode(text: Any, encoding: Any = "utf-8", *_: Any) -> Any:
    # Protocol 2 spells `bytes` as _codecs.encode(str, "latin1"); any other codec is refused
    # because codecs can decompress (a bomb) or import modules.
    if isinstance(text, str) and encoding in ("latin1", "latin-1"):
        return text.encode("latin1")
    raise CheckpointError(f"_codecs.encode with the codec {str(encoding)[:40]!r}: only latin-1 spells bytes")


def _defaultdict(*_: Any) -> dict[Any, Any]:
    """``collections.defaultdict(factory)``: its items come with SETITEMS; the factory is only
    named (a loader would call it for a missing key, long after loading)."""
    return {}


class Resolution(enum.Enum):
    """What an allowlisted global resolves to when it is neither a ``Call`` nor a value of its own."""

    INERT = "a fresh inert stub class per pickle, recording what it is given"
    MAPPING = "a fresh dict subclass per pickle"


@dataclass(frozen=True)
class Call:
    """An allowlisted callable of ours; each pickle gets a wrapper counting what it is handed."""

    function: Callable[..., Any]


class _BoundCall:
    """An allowlisted callable as one pickle sees it."""

    __slots__ = ("function", "ledger")
    __setstate__ = _refuse_build

    def __init__(self, function: Callable[..., Any], ledger: _Ledger) -> None:
        self.function = function
        self.ledger = ledger

    def __call__(self, *args: Any) -> Any:
        self.ledger.charge(_cells(args))
        return self.function(*args)


INERT, MAPPING = Resolution.INERT, Resolution.MAPPING


# torch's own layers, by the module torch.save names them in (`torch.nn.modules.conv.Conv2d`):
# every public nn.Module class defined in a torch.nn.modules submodule (torch 2.13; a test keeps
# the table in step with the installed torch). They are torch itself, which every reader of a
# torch file has, and unpickling one (NEWOBJ, then Module.__setstate__) only fills its __dict__.
# A table rather than a pattern over `torch.nn.modules.*`: those modules also hold names that are
# not layers, such as `F` (the torch.nn.functional module, whose namespace a BUILD would overwrite
# in a real loader), autograd Functions and typing names.
TORCH_NN_LAYERS = {
    "activation": "CELU ELU GELU GLU Hardshrink Hardsigmoid Hardswish Hardtanh LeakyReLU LogSigmoid "
                  "LogSoftmax Mish MultiheadAttention PReLU RReLU ReLU ReLU6 SELU SiLU Sigmoid Softmax "
                  "Softmax2d Softmin Softplus Softshrink Softsign Tanh Tanhshrink Threshold",
    "adaptive": "AdaptiveLogSoftmaxWithLoss",
    "batchnorm": "BatchNorm1d BatchNorm2d BatchNorm3d LazyBatchNorm1d LazyBatchNorm2d LazyBatchNorm3d SyncBatchNorm",
    "channelshuffle": "ChannelShuffle",
    "container": "Container ModuleDict ModuleList ParameterDict ParameterList Sequential",
    "conv": "Conv1d Conv2d Conv3d ConvTranspose1d ConvTranspose2d ConvTranspose3d LazyConv1d LazyConv2d "
            "LazyConv3d LazyConvTranspose1d LazyConvTranspose2d LazyConvTranspose3d",
    "distance": "CosineSimilarity PairwiseDistance",
    "dropout": "AlphaDropout Dropout Dropout1d Dropout2d Dropout3d FeatureAlphaDropout",
    "flatten": "Flatten Unflatten",
    "fold": "Fold Unfold",
    "instancenorm": "InstanceNorm1d InstanceNorm2d InstanceNorm3d LazyInstanceNorm1d LazyInstanceNorm2d "
                    "LazyInstanceNorm3d",
    "linear": "Bilinear Identity LazyLinear Linear NonDynamicallyQuantizableLinear",
    "loss": "BCELoss BCEWithLogitsLoss CTCLoss CosineEmbeddingLoss CrossEntropyLoss GaussianNLLLoss "
            "HingeEmbeddingLoss HuberLoss KLDivLoss L1Loss LinearCrossEntropyLoss MSELoss MarginRankingLoss "
            "MultiLabelMarginLoss MultiLabelSoftMarginLoss MultiMarginLoss NLLLoss NLLLoss2d PoissonNLLLoss "
            "SmoothL1Loss SoftMarginLoss TripletMarginLoss TripletMarginWithDistanceLoss",
    "module": "Module",
    "normalization": "CrossMapLRN2d GroupNorm LayerNorm LocalResponseNorm RMSNorm",
    "padding": "CircularPad1d CircularPad2d CircularPad3d ConstantPad1d ConstantPad2d ConstantPad3d "
               "ReflectionPad1d ReflectionPad2d ReflectionPad3d ReplicationPad1d ReplicationPad2d "
               "ReplicationPad3d ZeroPad1d ZeroPad2d ZeroPad3d",
    "pixelshuffle": "PixelShuffle PixelUnshuffle",
    "pooling": "AdaptiveAvgPool1d AdaptiveAvgPool2d AdaptiveAvgPool3d AdaptiveMaxPool1d AdaptiveMaxPool2d "
               "AdaptiveMaxPool3d AvgPool1d AvgPool2d AvgPool3d FractionalMaxPool2d FractionalMaxPool3d "
               "LPPool1d LPPool2d LPPool3d MaxPool1d MaxPool2d MaxPool3d MaxUnpool1d MaxUnpool2d MaxUnpool3d",
    "rnn": "GRU GRUCell LSTM LSTMCell RNN RNNBase RNNCell RNNCellBase",
    "sparse": "Embedding EmbeddingBag",
    "transformer": "Transformer TransformerDecoder TransformerDecoderLayer TransformerEncoder TransformerEncoderLayer",
    "upsampling": "Upsample UpsamplingBilinear2d UpsamplingNearest2d",
}


# Each allowed global: what it resolves to, and why resolving it is safe. Values other than
# INERT, MAPPING and Call are immutable markers shared by every file.
ALLOWLIST: dict[tuple[str, str], tuple[Any, str]] = {
    # tensor records
    ("torch._utils", "_rebuild_tensor"): (Call(_rebuild_tensor), "records a tensor's storage, offset, size, stride"),
    ("torch._utils", "_rebuild_tensor_v2"): (Call(_rebuild_tensor), "records a tensor's storage, offset, size, stride"),
    ("torch._utils", "_rebuild_tensor_v3"): (Call(_rebuild_tensor_v3), "as v2, with the dtype given explicitly"),
    ("torch._utils", "_rebuild_parameter"): (Call(_rebuild_parameter), "marks a recorded tensor as a parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"): (Call(_rebuild_parameter),
                                                        "marks a recorded tensor as a parameter"),
    ("torch._tensor", "_rebuild_from_type_v2"): (Call(_rebuild_from_type_v2),
                                                 "applies one of our own rebuild functions"),
    **{
        key: (INERT, "the tensor class _rebuild_from_type_v2 names (a tensor with attributes, a Parameter): torch "
                     "itself, kept as an inert stub")
        for key in (("torch", "Tensor"), ("torch._tensor", "Tensor"), ("torch.nn.parameter", "Parameter"))
    },
    ("torch.storage", "UntypedStorage"): (StorageType(None), "names a storage type; the dtype comes with the tensor"),
    ("torch.storage", "TypedStorage"): (StorageType(None), "names a storage type; the dtype comes with the tensor"),
    **{
        ("torch", storage): (StorageType(DTYPES[dtype]), "names a storage's element type")
        for storage, dtype in TORCH_STORAGE_TYPES.items()
    },
    **{
        ("torch", alias): (ElementType(DTYPES[name]), "names an element type")
        for alias, name in TORCH_DTYPE_NAMES.items()
    },
    **{("torch", name): (ElementType(None, name), "names an element type ckptlint cannot read (not code)")
       for name in UNREADABLE_TORCH_DTYPES},
    ("torch", "Size"): (Call(tuple), "a tuple of integers"),
    ("torch", "device"): (INERT, "a device name, kept as inert data"),
    # plain data
    ("collections", "OrderedDict"): (MAPPING, "a plain ordered mapping (a state dict)"),
    ("collections", "Counter"): (MAPPING, "a mapping of counts (MultiStepLR's milestones)"),
    ("collections", "defaultdict"): (Call(_defaultdict), "a mapping; its default factory is only named, never called"),
    ("builtins", "set"): (Call(set), "a plain container"),
    ("builtins", "frozenset"): (Call(frozenset), "a plain container"),
    ("builtins", "complex"): (_Complex, "a number, from two numbers only"),
    **{
        ("builtins", name): (Call(getattr(builtins, name)),
                             "a plain type (a defaultdict's factory; int is also Python 2's long): builds plain data")
        for name in ("list", "dict", "tuple", "int", "float", "str", "bool")
    },
    ("_codecs", "encode"): (Call(_codecs_encode), "protocol 2's spelling of bytes; only latin-1 is decoded"),
    ("types", "SimpleNamespace"): (INERT, "a namespace of plain values, kept as inert data"),
    **{
        (module, name): (INERT, "a file path kept as inert data: making one reads no file")
        for module in ("pathlib", "pathlib._local")  # pathlib._local: Python 3.13's home of the classes
        for name in ("PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath")
    },
    # training state
    ("argparse", "Namespace"): (INERT, "DETR's and timm's saved `args`: kept as inert data"),
    **{
        (module, name): (INERT, "numpy scalars and arrays in training state: inert data")
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("scalar", "_reconstruct")
    },
    ("numpy", "dtype"): (INERT, "a numpy element type description: inert data"),
    ("numpy", "ndarray"): (INERT, "a numpy array header: inert data"),
    **{
        key: (INERT, "a numpy random generator's state (numpy's own constructors and bit generators): inert data")
        for key in (("numpy.random._pickle", "__generator_ctor"), ("numpy.random._pickle", "__randomstate_ctor"),
                    ("numpy.random._pickle", "__bit_generator_ctor"), ("numpy.random", "__RandomState_ctor"),
                    ("numpy.random._pcg64", "PCG64"), ("numpy.random._pcg64", "PCG64DXSM"),
                    ("numpy.random._mt19937", "MT19937"), ("numpy.random._philox", "Philox"),
                    ("numpy.random._sfc64", "SFC64"), ("numpy.random.bit_generator", "SeedSequence"),
                    ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"))
    },
    **{
        (module, "AttributeDict"): (MAPPING, "Lightning hyper-parameters: a dict")
        for module in ("pytorch_lightning.utilities.parsing", "lightning.fabric.utilities.data",
                       "lightning_fabric.utilities.data")
    },
    # whole-module pickles
    **{
        (f"torch.nn.modules.{module}", name): (
            INERT, "torch's own layer in a whole-module pickle: an inert stub whose recorded state holds the tensors")
        for module, names in TORCH_NN_LAYERS.items()
        for name in names.split()
    },
    ("torch.nn.parallel.data_parallel", "DataParallel"): (
        INERT, "torch's own wrapper layer saved whole (`torch.save(nn.DataParallel(model))`): an inert stub"),
    **{
        (module, name): (INERT, "the activation torch's own Transformer layers keep (activation='relu'/'gelu'): "
                                "an inert stub")
        for module, name in (("torch.nn.functional", "relu"), ("torch._C._nn", "gelu"))
    },
}


PersistentLoad = Callable[[Any], StorageDescriptor]


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles with every global resolved through the allowlist or to an inert stub made for
    this pickle; uses go to ``ledger``."""

    def __init__(self, stream: BinaryIO, ledger: _Ledger, persistent_load: PersistentLoad | None) -> None:
        super().__init__(stream, encoding="latin1")
        self.ledger = ledger
        self._persistent = persistent_load
        self._resolved: dict[tuple[str, str], Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        key = normalise_global(str(module), str(name))
        if key not in self._resolved:
            self.ledger.named(key)
            self._resolved[key] = self._resolve(key)
        return self._resolved[key]

    def _resolve(self, key: tuple[str, str]) -> Any:
        value = ALLOWLIST[key][0] if key in ALLOWLIST else INERT
        if value is INERT:
            return self._class(key, InertObject, "Inert")
        if value is MAPPING:
            return self._class(key, InertDict, "InertDict")
        if isinstance(value, Call):
            return _BoundCall(value.function, self.ledger)
        return value

    def _class(self, key: tuple[str, str], base: type, name: str) -> type:
        return type(name, (base,), {"ckpt_global": ".".join(key), "ckpt_key": key, "ckpt_ledger": self.ledger,
                                    "__module__": __name__})

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise CheckpointError(f"{self.ledger.where}: unexpected persistent id")
        if (module_class := _legacy_module_class(pid)) is not None:
            return module_class
        return self._persistent(pid)


def _legacy_module_class(pid: Any) -> type | None:
    """The class in a legacy file's ``('module', class, source_file, source)`` persistent id.

    Legacy ``torch.save(model)`` names each module class this way (the source is kept only so
    torch can warn when it changed). The class was named inside the id, so it already went
    through ``find_class``: it is one of our stubs or allowlisted types, never the real class.
    """
    if isinstance(pid, tuple) and len(pid) == 4 and pid[0] == "module" and isinstance(pid[1], type):
        return pid[1]
    return None


def storage_descriptor(pid: Any) -> StorageDescriptor:
    """Parse torch's persistent id ``('storage', type, key, location, numel[, view])``."""
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
        raise CheckpointError("malformed storage reference in pickle")
    storage_type, key, location, numel = pid[1:5]
    if not isinstance(storage_type, StorageType) or type(numel) is not int or numel < 0:
        raise CheckpointError("malformed storage reference in pickle")
    view_offset = 0
    if len(pid) > 5 and pid[5] is not None:  # legacy view: (view_key, offset, size)
        view = pid[5]
        if not (isinstance(view, tuple) and len(view) == 3 and type(view[1]) is int):
            raise CheckpointError("malformed storage view in pickle")
        view_offset = view[1]
    return StorageDescriptor(str(key), storage_type.dtype, numel, str(location), view_offset)


def unpickle(stream: BinaryIO, where: str, seen: list[PickleGlobal],
             persistent_load: PersistentLoad | None = storage_descriptor) -> Any:
    """Unpickle one pickle from ``stream`` safely, appending the globals it names to ``seen``
    (also when it fails: a file that is malicious *and* broken is still judged).

    Any failure inside the pickle becomes a CheckpointError naming ``where``.
    """
    ledger = _Ledger(where)
    try:
        data = walk(stream, ledger)
        ledger.budget = CELLS_PER_BYTE * len(data) + CELLS_FLOOR
        return RestrictedUnpickler(io.BytesIO(data), ledger, persistent_load).load()
    except CheckpointError as exc:
        raise CheckpointError(f"{where}: {exc.message}") from None
    except RecursionError:
        raise CheckpointError(f"{where}: pickle nests too deeply") from None
    except Exception as exc:  # noqa: BLE001 - any failure inside a hostile pickle means "corrupt"
        detail = f": {str(exc).splitlines()[0][:120]}" if str(exc) else ""
        raise CheckpointError(f"{where}: corrupt pickle ({type(exc).__name__}{detail})") from None
    finally:
        seen.extend(ledger.records())
