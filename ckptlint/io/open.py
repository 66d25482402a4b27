"""Open any supported checkpoint path: sniff its format and hand it to the right reader."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ckptlint.errors import CheckpointError, LfsPointerError
from ckptlint.io.checkpoint import Checkpoint, FileInfo
from ckptlint.io.layout import select_prefix, strip_prefixes
from ckptlint.io.safetensors_file import read_safetensors
from ckptlint.io.torch_legacy import read_torch_legacy
from ckptlint.io.torch_zip import read_torch_zip
from ckptlint.io.training_state import training_state_beside

# What a Hugging Face model folder holds, most preferred first.
HF_WEIGHT_FILES = (
    "model.safetensors.index.json", "model.safetensors",
    "pytorch_model.bin.index.json", "pytorch_model.bin",
)
LFS_POINTER_START = b"version https://git-lfs.github.com/spec/"
# Well-known magic numbers, so a wrong file gets a useful name rather than "unrecognised".
OTHER_FORMATS = (
    (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive"), (b"\x93NUMPY", "a numpy .npy file"), (b"\x89HDF", "an HDF5 file"),
    (b"ustar", "a tar archive"),
)
MAX_INDEX_BYTES = 64 * 1024 * 1024


def open_checkpoint(path: str, key_path: str | None = None) -> Checkpoint:
    """Read ``path`` (a file, a shard index or a Hugging Face folder) into a lazy Checkpoint."""
    path = os.fspath(path)
    if not os.path.lexists(path):
        raise CheckpointError("no such file or directory", path)
    if os.path.isdir(path):
        return _open_folder(path, key_path)
    if not os.path.isfile(path):
        raise CheckpointError("not a regular file", path)
    try:
        return _open_file(path, key_path)
    except OSError as exc:
        raise CheckpointError(f"cannot read ({exc.strerror or exc})", path) from None
    except MemoryError:
        raise CheckpointError("too large to parse in memory (hostile or corrupt structure)", path) from None


def _open_folder(path: str, key_path: str | None) -> Checkpoint:
    for name in HF_WEIGHT_FILES:
        candidate = os.path.join(path, name)
        if os.path.isfile(candidate):
            checkpoint = open_checkpoint(candidate, key_path)
            checkpoint.training_state += training_state_beside(Path(path))
            return checkpoint
    raise CheckpointError(f"directory holds no checkpoint (looked for {', '.join(HF_WEIGHT_FILES)})", path)


def _open_file(path: str, key_path: str | None) -> Checkpoint:
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError("empty file", path)
    with open(path, "rb") as handle:
        head = handle.read(64)
    if head.startswith(LFS_POINTER_START):
        raise LfsPointerError("a Git LFS pointer, not the weights: run `git lfs pull`", path)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return read_torch_zip(path, key_path, size)
    if _looks_like_safetensors(head, size):  # before pickles: a header length may start with 0x80
        return _flat(read_safetensors(path, size), key_path)
    if head.startswith(b"\x80"):
        return read_torch_legacy(path, key_path, size)
    if path.endswith(".json"):
        return _open_index(path, key_path, size)
    if len(head) >= 9 and head[8:9] == b"{":
        return _flat(read_safetensors(path, size), key_path)  # reports what is wrong with the header
    for magic, name in OTHER_FORMATS:
        if magic in head[:8] or head[257:262] == magic:
            raise CheckpointError(f"not a checkpoint: looks like {name}", path)
    if _looks_like_text(head):
        raise CheckpointError("not a checkpoint: a text file", path)
    raise CheckpointError("unrecognised format (not safetensors, a torch zip or a torch legacy file)", path)


def _flat(checkpoint: Checkpoint, key_path: str | None) -> Checkpoint:
    """Apply ``--key`` and wrapper-prefix stripping to a format without a container object."""
    tensors = select_prefix(checkpoint.tensors, key_path) if key_path else checkpoint.tensors
    checkpoint.tensors, checkpoint.stripped_prefix = strip_prefixes(tensors, lightning=False)
    if key_path:
        checkpoint.layout = f"prefix:{key_path}"
    return checkpoint


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    return len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= size - 8


def _looks_like_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(b >= 32 or b in b"\t\r\n" for b in head)


def _open_index(path: str, key_path: str | None, size: int) -> Checkpoint:
    """A shard index (``*.index.json``): open every shard it names and merge their tensors."""
    if size > MAX_INDEX_BYTES:
        raise CheckpointError("shard index larger than 64 MiB", path)
    try:
        with open(path, "rb") as handle:
            index = json.load(handle)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"shard index is not valid JSON ({str(exc)[:80]})", path) from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError("shard index has no weight_map of tensor names to shard files", path)
    folder = os.path.dirname(path)
    merged: dict = {}
    shards: list[Checkpoint] = []
    for shard_name in dict.fromkeys(weight_map.values()):
        if os.path.basename(shard_name) != shard_name or shard_name in ("", ".", ".."):
            raise CheckpointError(f"shard index names {shard_name!r} outside its folder", path)
        try:
            shard = _open_file(os.path.join(folder, shard_name), None)
        except CheckpointError as exc:
            raise CheckpointError(f"shard {shard_name}: {exc.message}", path, exc.pickle_globals) from None
        shards.append(shard)
        wanted = {name for name, file in weight_map.items() if file == shard_name}
        missing = wanted - shard.tensors.keys()
        if missing:
            raise CheckpointError(f"shard {shard_name} lacks {len(missing)} tensor(s) the index names, "
                                  f"e.g. {sorted(missing)[0]!r}", path)
        merged.update({name: shard.tensors[name] for name in shard.tensors if name in wanted})
    fmt = "safetensors-sharded" if all(s.format == "safetensors" for s in shards) else "torch-sharded"
    files = [FileInfo(path, size)] + [info for shard in shards for info in shard.files]
    ordered = {name: merged[name] for name in weight_map if name in merged}
    checkpoint = Checkpoint(path, fmt, "bare", ordered, files,
                            [g for shard in shards for g in shard.pickle_globals])
    return _flat(checkpoint, key_path)
