"""Read a safetensors file's header and validate it before trusting a single offset."""

from __future__ import annotations

import itertools
import json
import math
import struct
from typing import Any

from ckptlint.errors import CheckpointError
from ckptlint.gc_pause import paused_gc
from ckptlint.io.checkpoint import MAX_DIMS, Checkpoint, FileInfo, TensorRef, check_shape
from ckptlint.io.dtypes import DTYPES, SAFETENSORS_DTYPES
from ckptlint.io.source import open_binary

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit
# Each header dtype's DType, looked up once per tensor.
_DTYPE_OF = {code: DTYPES[name] for code, name in SAFETENSORS_DTYPES.items()}


def read_safetensors_header(path: str, size: int) -> tuple[dict[str, TensorRef], dict[str, str]]:
    """Parse and validate the header; return the tensors (in header order) and ``__metadata__``."""
    if size < 8:
        raise CheckpointError("truncated safetensors file (no header length)", path)
    with open_binary(path) as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        if header_len > size - 8:
            raise CheckpointError(f"safetensors header claims {header_len} bytes, more than the file holds", path)
        if header_len > MAX_HEADER_BYTES:
            raise CheckpointError(f"safetensors header of {header_len} bytes exceeds the 100 MiB limit", path)
        raw = handle.read(header_len)
    with paused_gc():
        try:
            header = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # ValueError: also an integer past Python's 4300 digits
            raise CheckpointError(f"safetensors header is not valid JSON ({str(exc)[:80]})", path) from None
        del raw
        if not isinstance(header, dict):
            raise CheckpointError("safetensors header is not a JSON object", path)
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise CheckpointError("safetensors __metadata__ must map strings to strings", path)
        tensors, spans = _tensors(header, path, 8 + header_len, size)
        del header
        _check_no_overlap(spans, path)
    return tensors, metadata


def _tensors(header: dict[str, Any], path: str, data_start: int,
             size: int) -> tuple[dict[str, TensorRef], list[tuple[int, int, str]]]:
    """Every entry's TensorRef (in header order), and its byte span (begin, end, name) of the data.

    A well-formed entry is checked inline and its TensorRef made without the dataclass's
    per-field ``__setattr__`` (a million tiny tensors made that most of the reading); any other
    entry goes to ``_tensor``, which checks it step by step and names what is wrong, as before.
    Each entry is dropped from ``header`` once read, so the parsed JSON and the refs are not held
    in full at once.
    """
    tensors: dict[str, TensorRef] = {}
    spans: list[tuple[int, int, str]] = []
    add_span, new, dtype_of, prod = spans.append, object.__new__, _DTYPE_OF.get, math.prod
    end_limit = size - data_start  # data_offsets end at or before this
    for name in list(header):
        entry = header.pop(name)
        ref = None
        if type(entry) is dict:
            dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
            if (type(dtype) is str and type(shape) is list and type(offsets) is list and len(offsets) == 2
                    and len(shape) <= MAX_DIMS and all(type(n) is int and n >= 0 for n in shape)):
                begin, end = offsets
                found = dtype_of(dtype)
                if (found is not None and type(begin) is int and type(end) is int and 0 <= begin <= end <= end_limit
                        and (numel := prod(shape)) > 0 and end - begin == numel * found.itemsize):
                    # What _tensor checks, all true: a non-empty shape whose bytes fit the file also
                    # passes check_shape (its product times the item size is below the file size).
                    ref = new(TensorRef)
                    fields = ref.__dict__  # the fields in TensorRef's order, as its __init__ sets them
                    fields["key"] = name
                    fields["dtype"] = found
                    fields["shape"] = tuple(shape)
                    fields["file"] = path
                    fields["storage_start"] = data_start + begin
                    fields["storage_numel"] = numel
                    fields["offset"] = 0
                    fields["stride"] = None
                    fields["storage_id"] = f"{path}:{begin}"
                    fields["is_parameter"] = None
                    fields["big_endian"] = False
                    add_span((data_start + begin, data_start + end, name))
        if ref is None:
            ref = _tensor(name, entry, path, data_start, size)
            add_span((ref.storage_start, ref.storage_start + ref.nbytes, name))
        tensors[name] = ref
    return tensors, spans


def _tensor(name: str, entry: Any, path: str, data_start: int, size: int) -> TensorRef:
    def bad(problem: str) -> CheckpointError:
        return CheckpointError(f"safetensors header: tensor {name!r} {problem}", path)

    if not isinstance(entry, dict):
        raise bad("is not an object")
    dtype = entry.get("dtype")
    dtype_name = SAFETENSORS_DTYPES.get(dtype) if isinstance(dtype, str) else None  # [] is unhashable
    if dtype_name is None:
        raise bad(f"has unknown dtype {str(entry.get('dtype'))[:20]!r}")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise bad("has an invalid shape")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(n) is int for n in offsets)):
        raise bad("has invalid data_offsets")
    begin, end = offsets
    dtype = DTYPES[dtype_name]
    if not 0 <= begin <= end or data_start + end > size:
        raise bad(f"has data_offsets {offsets} outside the file")
    try:
        check_shape(name, shape, dtype.itemsize)  # before the product is taken: dimensions are bounded
    except CheckpointError as exc:
        raise CheckpointError(f"safetensors header: {exc.message}", path) from None
    numel = math.prod(shape)
    if end - begin != numel * dtype.itemsize:
        raise bad(f"has {end - begin} bytes for a {dtype_name} tensor of shape {shape}")
    return TensorRef(name, dtype, tuple(shape), path, data_start + begin, numel, storage_id=f"{path}:{begin}")


def _check_no_overlap(spans: list[tuple[int, int, str]], path: str) -> None:
    """``spans``: (first byte, byte after the last, name) of each tensor, in any order."""
    spans.sort()
    for (_, end, first), (begin, _, second) in itertools.pairwise(spans):
        if begin < end:
            raise CheckpointError(f"safetensors header: tensors {first!r} and {second!r} overlap", path)


def read_safetensors(path: str, size: int) -> Checkpoint:
    tensors, metadata = read_safetensors_header(path, size)
    return Checkpoint(path, "safetensors", "bare", tensors, [FileInfo(path, size)], metadata=metadata)
