"""Read a safetensors file's header and validate it before trusting a single offset."""

from __future__ import annotations

import itertools
import json
import math
import struct
from typing import Any

from ckptlint.errors import CheckpointError
from ckptlint.io.checkpoint import Checkpoint, FileInfo, TensorRef, check_shape
from ckptlint.io.dtypes import DTYPES, SAFETENSORS_DTYPES

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit


def read_safetensors_header(path: str, size: int) -> tuple[dict[str, TensorRef], dict[str, str]]:
    """Parse and validate the header; return the tensors (in header order) and ``__metadata__``."""
    if size < 8:
        raise CheckpointError("truncated safetensors file (no header length)", path)
    with open(path, "rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        if header_len > size - 8:
            raise CheckpointError(f"safetensors header claims {header_len} bytes, more than the file holds", path)
        if header_len > MAX_HEADER_BYTES:
            raise CheckpointError(f"safetensors header of {header_len} bytes exceeds the 100 MiB limit", path)
        raw = handle.read(header_len)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # ValueError: also an integer past Python's 4300 digits
        raise CheckpointError(f"safetensors header is not valid JSON ({str(exc)[:80]})", path) from None
    if not isinstance(header, dict):
        raise CheckpointError("safetensors header is not a JSON object", path)
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError("safetensors __metadata__ must map strings to strings", path)
    data_start = 8 + header_len
    tensors = {name: _tensor(name, entry, path, data_start, size) for name, entry in header.items()}
    _check_no_overlap(tensors, path)
    return tensors, metadata


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


def _check_no_overlap(tensors: dict[str, TensorRef], path: str) -> None:
    spans = sorted((ref.storage_start, ref.storage_start + ref.nbytes, ref.key) for ref in tensors.values())
    for (_, end, first), (begin, _, second) in itertools.pairwise(spans):
        if begin < end:
            raise CheckpointError(f"safetensors header: tensors {first!r} and {second!r} overlap", path)


def read_safetensors(path: str, size: int) -> Checkpoint:
    tensors, metadata = read_safetensors_header(path, size)
    return Checkpoint(path, "safetensors", "bare", tensors, [FileInfo(path, size)], metadata=metadata)
