"""A restricted unpickler: rebuilds tensor records and plain data, calls nothing from the file.

The technique is the one in Python's docs ("Restricting Globals"): every global the pickle
names goes through ``find_class``. Globals on the allowlist resolve to small functions of our
own that build inert records; every other global resolves to a fresh *stub class* that records
its name and whatever arguments and state the pickle hands it, and does nothing else. So
``REDUCE``, ``NEWOBJ``, ``INST``, ``OBJ`` and ``BUILD`` all act on our own code. Every global
named is kept, in order, for the security rules.
"""

from __future__ import annotations

import _compat_pickle
import collections
import pickle
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable

from ckptlint.errors import CheckpointError
from ckptlint.io.dtypes import DTYPES, TORCH_DTYPE_NAMES, TORCH_STORAGE_TYPES, DType


@dataclass(frozen=True)
class PickleGlobal:
    """A global named by a pickle: ``module.name`` after Python 2 names are normalised."""

    module: str
    name: str
    where: str  # which pickle in the file named it (zip entry or legacy stream part)
    allowed: bool

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(frozen=True)
class StorageType:
    """A torch storage class named in a persistent id; carries the element type if it has one."""

    dtype: DType | None


@dataclass(frozen=True)
class StorageDescriptor:
    """What a persistent id says about a storage: its key, type, element count, device."""

    key: str
    dtype: DType | None
    numel: int
    location: str
    view_offset: int = 0  # legacy view storages start this many elements into their root


@dataclass(frozen=True)
class PickledTensor:
    """A tensor as the pickle describes it; the bytes stay wherever the storage lives."""

    storage: StorageDescriptor
    dtype: DType
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    is_parameter: bool = False


class InertObject:
    """An object the pickle builds but we never run: keeps arguments and state as data.

    The class itself is never used directly; each global gets a subclass named after it.
    """

    ckpt_global = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.ckpt_args = args
        self.ckpt_kwargs = kwargs
        self.ckpt_state: Any = None
        self.ckpt_items: list[Any] = []

    def __setstate__(self, state: Any) -> None:
        self.ckpt_state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.ckpt_items.append((key, value))

    def append(self, value: Any) -> None:
        self.ckpt_items.append(value)

    def extend(self, values: Any) -> None:
        self.ckpt_items.extend(values)

    def __repr__(self) -> str:
        return f"<inert {self.ckpt_global}>"


def _inert_class(qualname: str) -> type:
    return type("Inert", (InertObject,), {"ckpt_global": qualname, "__module__": __name__})


class InertDict(dict):  # type: ignore[type-arg]
    """A dict subclass named by the pickle (Lightning's AttributeDict): kept as a plain dict."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.update(state)


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
    if not isinstance(dtype, DType):
        raise CheckpointError("malformed tensor record: dtype is not a torch dtype")
    return _rebuild(storage, offset, size, stride, dtype)


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    if isinstance(data, PickledTensor):
        return PickledTensor(data.storage, data.dtype, data.offset, data.shape, data.stride, True)
    return data


def _rebuild_from_type_v2(func: Any, _type: Any, args: Any, _state: Any) -> Any:
    # torch wraps tensor subclasses (Parameter in some versions) this way; `func` is one of
    # our own rebuild functions or a stub, so calling it is calling our code.
    if callable(func) and isinstance(args, tuple):
        return func(*args)
    raise CheckpointError("malformed tensor record in _rebuild_from_type_v2")


def _codecs_encode(text: Any, encoding: Any = "utf-8", *_: Any) -> Any:
    # Protocol 2 spells `bytes` as _codecs.encode(str, "latin1"); any other codec is refused
    # because codecs can decompress (a bomb) or import modules.
    if isinstance(text, str) and encoding in ("latin1", "latin-1"):
        return text.encode("latin1")
    return _inert_class("_codecs.encode")(text, encoding)


def _inert(qualname: str) -> Callable[..., Any]:
    return _inert_class(qualname)


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


# Each allowed global: what it resolves to, and why resolving it is safe.
ALLOWLIST: dict[tuple[str, str], tuple[Any, str]] = {
    ("torch._utils", "_rebuild_tensor"): (_rebuild_tensor, "records a tensor's storage, offset, size, stride"),
    ("torch._utils", "_rebuild_tensor_v2"): (_rebuild_tensor, "records a tensor's storage, offset, size, stride"),
    ("torch._utils", "_rebuild_tensor_v3"): (_rebuild_tensor_v3, "as v2, with the dtype given explicitly"),
    ("torch._utils", "_rebuild_parameter"): (_rebuild_parameter, "marks a recorded tensor as a parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"): (_rebuild_parameter, "marks a recorded tensor as a parameter"),
    ("torch._tensor", "_rebuild_from_type_v2"): (_rebuild_from_type_v2, "applies one of our own rebuild functions"),
    ("collections", "OrderedDict"): (collections.OrderedDict, "a plain ordered mapping"),
    ("builtins", "set"): (set, "a plain container"),
    ("builtins", "frozenset"): (frozenset, "a plain container"),
    ("builtins", "complex"): (complex, "a number"),
    ("_codecs", "encode"): (_codecs_encode, "protocol 2's spelling of bytes; only latin-1 is decoded"),
    ("argparse", "Namespace"): (_inert("argparse.Namespace"), "DETR's saved `args`: kept as inert data"),
    ("torch", "Size"): (tuple, "a tuple of integers"),
    ("torch", "device"): (_inert("torch.device"), "a device name, kept as inert data"),
    ("torch.storage", "UntypedStorage"): (StorageType(None), "names a storage type; the dtype comes with the tensor"),
    ("torch.storage", "TypedStorage"): (StorageType(None), "names a storage type; the dtype comes with the tensor"),
    **{
        ("torch", storage): (StorageType(DTYPES[dtype]), "names a storage's element type")
        for storage, dtype in TORCH_STORAGE_TYPES.items()
    },
    **{("torch", alias): (DTYPES[name], "names an element type") for alias, name in TORCH_DTYPE_NAMES.items()},
    **{
        (module, name): (_inert(f"{module}.{name}"), "numpy scalars and arrays in training state: inert data")
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("scalar", "_reconstruct")
    },
    ("numpy", "dtype"): (_inert("numpy.dtype"), "a numpy element type description: inert data"),
    ("numpy", "ndarray"): (_inert("numpy.ndarray"), "a numpy array header: inert data"),
    ("pytorch_lightning.utilities.parsing", "AttributeDict"): (InertDict, "Lightning hyper-parameters: a dict"),
    ("lightning.fabric.utilities.data", "AttributeDict"): (InertDict, "Lightning hyper-parameters: a dict"),
    **{
        (f"torch.nn.modules.{module}", name): (
            _inert(f"torch.nn.modules.{module}.{name}"),
            "torch's own layer in a whole-module pickle: an inert stub whose recorded state holds the tensors")
        for module, names in TORCH_NN_LAYERS.items()
        for name in names.split()
    },
    ("torch.nn.parallel.data_parallel", "DataParallel"): (
        _inert("torch.nn.parallel.data_parallel.DataParallel"),
        "torch's own wrapper layer saved whole (`torch.save(nn.DataParallel(model))`): an inert stub"),
    **{
        (module, name): (
            _inert(f"{module}.{name}"),
            "the activation torch's own Transformer layers keep (activation='relu'/'gelu'): an inert stub")
        for module, name in (("torch.nn.functional", "relu"), ("torch._C._nn", "gelu"))
    },
}


def normalise_global(module: str, name: str) -> tuple[str, str]:
    """Map Python 2 spellings (``__builtin__``, ``copy_reg``) to Python 3 ones, as pickle does."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


PersistentLoad = Callable[[Any], StorageDescriptor]


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles with every global resolved through the allowlist or to an inert stub.

    Globals are appended to ``seen`` as they are named, so a caller still has them when the
    pickle later turns out to be corrupt.
    """

    def __init__(self, stream: BinaryIO, where: str, persistent_load: PersistentLoad | None,
                 seen: list[PickleGlobal]) -> None:
        super().__init__(stream, encoding="latin1")
        self.where = where
        self.seen = seen
        self._persistent = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        module, name = normalise_global(str(module), str(name))
        entry = ALLOWLIST.get((module, name))
        self.seen.append(PickleGlobal(module, name, self.where, entry is not None))
        return entry[0] if entry else _inert_class(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise CheckpointError(f"{self.where}: unexpected persistent id")
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
    """Unpickle one pickle from ``stream`` safely, appending the globals it names to ``seen``.

    Any failure inside the pickle becomes a CheckpointError naming ``where``.
    """
    try:
        return RestrictedUnpickler(stream, where, persistent_load, seen).load()
    except CheckpointError as exc:
        raise CheckpointError(f"{where}: {exc.message}") from None
    except RecursionError:
        raise CheckpointError(f"{where}: pickle nests too deeply") from None
    except Exception as exc:  # noqa: BLE001 - any failure inside a hostile pickle means "corrupt"
        detail = f": {str(exc).splitlines()[0][:120]}" if str(exc) else ""
        raise CheckpointError(f"{where}: corrupt pickle ({type(exc).__name__}{detail})") from None
