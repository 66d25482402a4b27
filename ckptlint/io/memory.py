"""Checkpoints that live in memory: a state dict of torch tensors or numpy arrays, or a module.

torch is imported only when a torch object is handed over, never to find out whether it is one.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ckptlint.errors import CheckpointError
from ckptlint.io.checkpoint import Checkpoint, FileInfo, TensorRef, parse_row_view
from ckptlint.io.dtypes import DTYPES
from ckptlint.io.layout import find_state_dict, strip_prefixes

if TYPE_CHECKING:
    from ckptlint.load_mapping import LoadMapping


def _torch_type(value: Any, name: str) -> bool:
    """isinstance(value, torch.<name>), without importing torch: a torch object cannot exist
    unless torch was imported already."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    cls: object = torch
    for part in name.split("."):
        cls = getattr(cls, part, None)
    return isinstance(cls, type) and isinstance(value, cls)


def is_tensor(value: Any) -> bool:
    return isinstance(value, np.ndarray) or _torch_type(value, "Tensor")


def _dtype_name(value: Any) -> str:
    if isinstance(value, np.ndarray):
        # numpy's own kinds only: an extension dtype named like ours (ml_dtypes' float8) is not
        # stored the way the readers widen it
        name = value.dtype.name if value.dtype.kind in "biufc" else repr(value.dtype)
    else:
        name = str(value.dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise CheckpointError(f"unsupported element type {name}")
    return name


def _as_numpy(value: Any, dtype: str) -> np.ndarray:
    """Values as the file readers give them: bfloat16 and float8 widened to float32."""
    if isinstance(value, np.ndarray):
        return value
    tensor = value.detach().cpu()
    if dtype == "bfloat16" or dtype.startswith("float8"):
        tensor = tensor.float()
    return tensor.numpy()


class MemoryCheckpoint(Checkpoint):
    """A Checkpoint whose tensors are objects in this process; nothing is read from disk."""

    load_mapping: LoadMapping | None = None  # the user's model's load-time renaming (user_model.py)

    def __init__(self, label: str, tensors: Mapping[str, Any], layout: str, stripped: str) -> None:
        refs = {}
        for key, value in tensors.items():
            dtype = _dtype_name(value)
            shape = tuple(int(n) for n in value.shape)
            if isinstance(value, np.ndarray):
                storage, parameter = value.__array_interface__["data"][0], None
            else:
                storage, parameter = value.untyped_storage().data_ptr(), _torch_type(value, "nn.Parameter")
            refs[key] = TensorRef(key, DTYPES[dtype], shape, label, 0, int(np.prod(shape)),
                                  storage_id=str(storage), is_parameter=parameter)
        super().__init__(label, "memory", layout, refs, [FileInfo(label, 0)], stripped_prefix=stripped)
        self._values = dict(tensors)

    def read(self, key: str) -> np.ndarray:
        ref = self.ref(key)
        view = parse_row_view(key) if key not in self.tensors else None
        values = _as_numpy(self._values[view[0] if view else key], ref.dtype.name)
        if view:
            values = values[view[1]:view[2]]
        self.bytes_read += values.nbytes
        return values

    def sha256(self, on_chunk: Callable[[int], None] | None = None) -> str | None:
        return None  # nothing on disk to fingerprint

    def close(self) -> None:
        self._values = {}


def memory_checkpoint(obj: Any, label: str, key_path: str | None = None) -> MemoryCheckpoint:
    """From an ``nn.Module``, a state dict, or a checkpoint dict holding one (``{"model": ...}``)."""
    if _torch_type(obj, "nn.Module"):
        obj = obj.state_dict()
    try:
        where, tensors = find_state_dict(obj, key_path, is_tensor)
    except CheckpointError as exc:
        raise CheckpointError(exc.message.replace("the pickle", "the object"), label) from None
    tensors, stripped = strip_prefixes(tensors, lightning=False)
    return MemoryCheckpoint(label, tensors, where or "bare", stripped)
