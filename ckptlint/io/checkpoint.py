"""The reader's output: a Checkpoint maps keys to TensorRefs; tensor bytes are read on demand."""

from __future__ import annotations

import hashlib
import math
import mmap
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from typing import TYPE_CHECKING, BinaryIO, TypeVar

from ckptlint.errors import CheckpointError
from ckptlint.io.dtypes import DType, widen
from ckptlint.io.unpickler import PickleGlobal

# numpy is imported by ``Checkpoint.read`` alone: only a tensor's values need it, and a run that
# judges just the pickles (a pre-commit hook's security check) should not pay for importing it.
if TYPE_CHECKING:
    import numpy as np

    from ckptlint.io.source import RemoteSource

_C = TypeVar("_C", bound="Checkpoint")  # __enter__ returns the subclass it is called on

# A strided view (stride 0 broadcasts) may repeat its storage; a hostile one would repeat a few
# bytes into terabytes. Views larger than this many times their bytes (and 256 MiB) are refused.
MAX_VIEW_EXPANSION = 64
MAX_DIMS = 64  # numpy cannot hold more (torch can, but no model needs it)
MAP_MIN_BYTES = 1 << 16  # tensors this large are mapped rather than read (see Checkpoint._bytes)


def check_shape(key: str, shape: tuple[int, ...] | list[int], itemsize: int) -> None:
    """Refuse a shape no array can hold: more than MAX_DIMS dimensions, or dimensions whose
    product overflows (checked without the zeros: numpy refuses those shapes too)."""
    if len(shape) > MAX_DIMS:
        raise CheckpointError(f"tensor {key!r} has {len(shape)} dimensions, more than {MAX_DIMS}")
    if math.prod(n for n in shape if n) * itemsize >= 1 << 63:
        raise CheckpointError(f"tensor {key!r} has a shape no array can hold "
                              f"({', '.join(_count(n) for n in shape)})")


# A conversion pairs a part of a fused tensor (``in_proj_weight[256:512]``: rows 256 to 511, the
# key projection) with a tensor of the other side; such a row view is addressed by that key.
ROW_VIEW = re.compile(r"^(?P<base>.+)\[(?P<start>\d+):(?P<stop>\d+)\]$")


def row_view_key(key: str, start: int, stop: int) -> str:
    return f"{key}[{start}:{stop}]"


def parse_row_view(key: str) -> tuple[str, int, int] | None:
    """(base key, first row, row after the last) of a row view's key; None for another key."""
    match = ROW_VIEW.match(key)
    return (match["base"], int(match["start"]), int(match["stop"])) if match else None


def lookup_ref(tensors: Mapping[str, TensorRef], key: str) -> TensorRef:
    """``tensors[key]``, or for a row view's key (``name[a:b]``) a reference made from its base
    tensor's: the same storage, from row ``a`` on. KeyError for anything else."""
    found = tensors.get(key)
    if found is not None:
        return found
    view = parse_row_view(key)
    base = tensors.get(view[0]) if view else None
    if view is None or base is None or not base.shape or not 0 <= view[1] < view[2] <= base.shape[0]:
        raise KeyError(key)
    _, start, stop = view
    return replace(base, key=key, shape=(stop - start, *base.shape[1:]),
                   offset=base.offset + start * base.strides[0], stride=base.stride)


@cache
def _raw_type(raw: str, big_endian: bool) -> np.dtype:
    """The numpy dtype of stored elements in their byte order (made once per type: reads ask
    per tensor)."""
    import numpy as np  # see the module's imports

    return np.dtype(raw).newbyteorder(">" if big_endian else "<")


def _count(n: int) -> str:
    """A number from the file for a message; Python will not print one of 4,300 digits or more."""
    return str(n) if n.bit_length() <= 64 else f"about 2**{n.bit_length() - 1}"


@dataclass(frozen=True)
class TensorRef:
    """Where a tensor's elements lie: a storage at a byte offset of a file, viewed with strides."""

    key: str
    dtype: DType
    shape: tuple[int, ...]
    file: str  # the file holding the storage's bytes
    storage_start: int  # absolute byte offset of the storage's first element
    storage_numel: int
    offset: int = 0  # element offset of the tensor inside its storage
    stride: tuple[int, ...] | None = None  # in elements; None means contiguous
    storage_id: str = ""  # tensors with the same id share bytes
    is_parameter: bool | None = None  # None: the format does not say
    big_endian: bool = False

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    @property
    def strides(self) -> tuple[int, ...]:
        if self.stride is not None:
            return self.stride
        out, step = [], 1
        for n in reversed(self.shape):
            out.append(step)
            step *= max(n, 1)
        return tuple(reversed(out))

    def is_contiguous(self) -> bool:
        """Row-major without gaps (dimensions of size 1 may have any stride)."""
        if self.stride is None or self.numel <= 1:
            return True
        step = 1
        for n, s in zip(reversed(self.shape), reversed(self.stride), strict=True):
            if n != 1 and s != step:
                return False
            step *= n
        return True

    def element_span(self) -> tuple[int, int]:
        """First and one-past-last storage element the tensor touches (0, 0 when empty)."""
        if self.stride is None:  # contiguous: no strides to add up (a million tiny tensors ask)
            numel = math.prod(self.shape)
            return (self.offset, self.offset + numel) if numel else (0, 0)
        if self.numel == 0:
            return 0, 0
        last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.strides, strict=True))
        return self.offset, last + 1

    def validate(self) -> None:
        """Refuse a tensor no array can hold or whose view reaches outside its storage."""
        check_shape(self.key, self.shape, self.dtype.itemsize)
        _, end = self.element_span()
        if end > self.storage_numel:
            raise CheckpointError(
                f"tensor {self.key!r} reaches element {_count(end)} of a storage holding {_count(self.storage_numel)}"
            )


@dataclass(frozen=True)
class FileInfo:
    """One file of a checkpoint (a sharded one has several)."""

    path: str
    size: int


@dataclass
class Checkpoint:
    """A checkpoint as read: its tensors (bytes not yet read), layout and what the pickle named.

    Tensor values come from :meth:`read`, one tensor at a time; ``bytes_read`` counts what was
    read so far, which lets tests prove that shape-only work reads no tensor bytes.
    """

    path: str
    format: str
    layout: str
    tensors: dict[str, TensorRef]
    files: list[FileInfo]
    pickle_globals: list[PickleGlobal] = field(default_factory=list)
    stripped_prefix: str = ""  # wrapper prefix removed from every key (``module.``)
    metadata: dict[str, str] = field(default_factory=dict)
    training_state: tuple[str, ...] = ()  # what a training loop saved beside the weights (optimizer, epoch, ...)
    bytes_read: int = 0
    _handles: dict[str, BinaryIO] = field(default_factory=dict, repr=False)
    _sha256: str | None = field(default=None, repr=False)
    # the remote files' sources, by URL (io/source.py); empty for local files
    sources: dict[str, RemoteSource] = field(default_factory=dict, repr=False)

    @property
    def parameter_count(self) -> int:
        return sum(ref.numel for ref in self.tensors.values())

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def ref(self, key: str) -> TensorRef:
        """A tensor's reference, or a row view's (``name[a:b]``)."""
        return lookup_ref(self.tensors, key)

    def read(self, key: str) -> np.ndarray:
        """Read one tensor's (or row view's) values as a numpy array (bfloat16/float8 widened
        to float32)."""
        import numpy as np  # see the module's imports

        ref = self.ref(key)
        raw_type = _raw_type(ref.dtype.raw, ref.big_endian)
        begin, end = ref.element_span()
        count = end - begin
        data = self._bytes(ref.file, ref.storage_start + begin * ref.dtype.itemsize, count * ref.dtype.itemsize)
        self.bytes_read += len(data)
        if len(data) != count * ref.dtype.itemsize:
            raise CheckpointError(f"tensor {key!r} lies past the end of the file", ref.file)
        flat = np.frombuffer(data, dtype=raw_type)
        if ref.is_contiguous():
            values = flat.reshape(ref.shape)  # the bytes are already ours: no copy needed
        else:
            if ref.nbytes > max(MAX_VIEW_EXPANSION * len(data), 1 << 28):
                raise CheckpointError(f"tensor {key!r} views {len(data)} bytes as {ref.nbytes}: refused", ref.file)
            strides = tuple(s * flat.itemsize for s in ref.strides)
            values = np.lib.stride_tricks.as_strided(flat, shape=ref.shape, strides=strides).copy(order="C")
        if ref.big_endian:
            values = values.astype(raw_type.newbyteorder("<"))
        return widen(values, ref.dtype)

    def _bytes(self, path: str, start: int, length: int) -> memoryview | bytes:
        """``length`` bytes of ``path`` from ``start`` (fewer at the end of the file).

        Large spans are mapped, not read: the values are then views of the page cache, with no
        copy and no fresh pages to fault in (a third faster at DETR size); the mapping goes when
        the last view does. Small spans are read: below MAP_MIN_BYTES the two system calls to
        map and unmap (~7 us) cost more than the copy. So is a file that cannot be mapped.
        """
        if self.sources and path in self.sources:  # a remote file: exactly this span, by range
            return self.sources[path].read_at(start, length, exact=True)
        handle = self._handle(path)
        if length < MAP_MIN_BYTES:  # read, not mapped: a read stops at the end of the file itself
            handle.seek(start)
            return handle.read(length)
        length = max(0, min(length, os.fstat(handle.fileno()).st_size - start))
        if length >= MAP_MIN_BYTES:
            aligned = start - start % mmap.ALLOCATIONGRANULARITY
            try:
                mapped = mmap.mmap(handle.fileno(), start - aligned + length, access=mmap.ACCESS_READ,
                                   offset=aligned)
                return memoryview(mapped)[start - aligned:]
            except (OSError, ValueError):
                pass
        handle.seek(start)
        return handle.read(length)

    def _handle(self, path: str) -> BinaryIO:
        if path not in self._handles:
            self._handles[path] = open(path, "rb")  # noqa: SIM115 - closed in close()
        return self._handles[path]

    def sha256(self, on_chunk: Callable[[int], None] | None = None) -> str | None:
        """SHA-256 of the checkpoint's bytes (its files in order, for a sharded one; None for
        an in-memory one, or a remote one: hashing would fetch every byte — ``io.source.content_identity``
        names a remote file's version instead); ``on_chunk`` hears how many bytes each step hashed
        (for a progress bar)."""
        if self.sources:
            return None
        if self._sha256 is None:
            digest = hashlib.sha256()
            for info in self.files:
                with open(info.path, "rb") as handle:
                    while chunk := handle.read(1 << 22):
                        digest.update(chunk)
                        if on_chunk:
                            on_chunk(len(chunk))
            self._sha256 = digest.hexdigest()
        return self._sha256

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()
        for source in self.sources.values():
            source.close()

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
