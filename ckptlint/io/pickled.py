"""Shared last step of both torch readers: from the unpickled object to a Checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ckptlint.errors import CheckpointError
from ckptlint.io.checkpoint import Checkpoint, FileInfo, TensorRef
from ckptlint.io.layout import check_key_depth, find_state_dict, is_lightning, strip_prefixes
from ckptlint.io.module_state import module_state
from ckptlint.io.training_state import training_state_in
from ckptlint.io.unpickler import PickledTensor, PickleGlobal

# Given a storage key and the storage's element size, where its bytes start and how many
# elements it holds.
StorageLocator = Callable[[str, int], tuple[int, int]]


def build_checkpoint(path: str, fmt: str, root: Any, key_path: str | None, locate: StorageLocator,
                     pickle_globals: list[PickleGlobal], file_size: int, big_endian: bool) -> Checkpoint:
    """Find the state dict in ``root`` and turn its pickled tensors into validated TensorRefs."""
    where, pickled = find_state_dict(root, key_path)
    check_key_depth(pickled)
    lightning = is_lightning(root)
    pickled, stripped = strip_prefixes(pickled, lightning)
    tensors = {key: _tensor_ref(key, t, path, locate, big_endian) for key, t in pickled.items()}
    layout = where or ("whole-module" if module_state(root) is not None else "bare")
    if lightning:
        layout = f"lightning:{layout}"
    return Checkpoint(path, fmt, layout, tensors, [FileInfo(path, file_size)], pickle_globals,
                      stripped_prefix=stripped, training_state=training_state_in(root))


def _tensor_ref(key: str, t: PickledTensor, path: str, locate: StorageLocator, big_endian: bool) -> TensorRef:
    start, numel = locate(t.storage.key, t.dtype.itemsize)
    ref = TensorRef(key, t.dtype, t.shape, path, start, numel, t.offset, t.stride,
                    storage_id=t.storage.key, is_parameter=t.is_parameter, big_endian=big_endian)
    try:
        ref.validate()
    except CheckpointError as exc:
        raise CheckpointError(exc.message, path) from None
    return ref
