"""Open any supported checkpoint path, seeing each file the way every loader would.

The parity rule: a file that starts with a zip local header is a zip to ``torch.load``
(``_is_zipfile``), and is read as torch's own reader reads it (``torch_zip.py``); ``pickle.load``
stops at its first byte. Any other file is read by every loader that could take it — torch's tar
format (``torch.load`` on a path tries it first), the legacy stream of pickles (``torch.load``'s
fallback with either ``weights_only``, and ``pickle.load``), safetensors — and every reading is
scanned. A file that holds as two of them is an error of its own (which one a loader takes depends
on how it is called), carrying what all its pickles named.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ckptlint.errors import CheckpointError, LfsPointerError
from ckptlint.io.checkpoint import Checkpoint, FileInfo
from ckptlint.io.folder import folder_names, weights_file
from ckptlint.io.layout import check_key_depth, select_prefix, strip_prefixes
from ckptlint.io.safetensors_file import read_safetensors
from ckptlint.io.source import file_size, is_remote, join, open_binary, parent, remote_session, remote_source
from ckptlint.io.torch_legacy import read_torch_legacy
from ckptlint.io.torch_tar import scan_torch_tar
from ckptlint.io.torch_zip import read_torch_zip
from ckptlint.io.training_state import training_state_beside
from ckptlint.io.unpickler import PickleGlobal

ZIP_MAGIC = b"PK\x03\x04"
LFS_POINTER_START = b"version https://git-lfs.github.com/spec/"
# Well-known magic numbers, so a wrong file gets a useful name rather than "unrecognised".
OTHER_FORMATS = (
    (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive"), (b"\x93NUMPY", "a numpy .npy file"), (b"\x89HDF", "an HDF5 file"),
    (b"ustar", "a tar archive"), (b"PK\x05\x06", "an empty zip archive"),
)
MAX_INDEX_BYTES = 64 * 1024 * 1024


def open_checkpoint(path: str, key_path: str | None = None) -> Checkpoint:
    """Read ``path`` (a file, a shard index or a Hugging Face folder, local or a URL) into a lazy
    Checkpoint."""
    path = os.fspath(path)
    if "://" in path and is_remote(path):
        return _open_remote(path, key_path)
    if not os.path.lexists(path):
        raise CheckpointError("no such file or directory", path)
    if os.path.isdir(path):
        checkpoint = open_checkpoint(weights_file(path), key_path)
        checkpoint.training_state += training_state_beside(Path(path))
        return checkpoint
    if not os.path.isfile(path):
        raise CheckpointError("not a regular file", path)
    return _open_file_checked(path, key_path)


def _open_remote(url: str, key_path: str | None) -> Checkpoint:
    """A URL: its files read by byte range (io/source.py), each through one RemoteSource the
    Checkpoint keeps for reading tensors."""
    with remote_session() as sources:
        try:
            source = remote_source(url)
            if source.is_dir:
                names = folder_names(url)
                checkpoint = _open_file_checked(weights_file(url), key_path)
                checkpoint.training_state += training_state_beside(Path(), names)
            else:
                checkpoint = _open_file_checked(url, key_path)
        except CheckpointError as exc:
            failed = _failure(sources)
            for source in sources.values():
                source.close()
            if failed is not None:  # the transport failed: say so, not what a reader made of it
                raise CheckpointError(failed.message, failed.path, exc.pickle_globals) from None
            raise
        except BaseException:
            for source in sources.values():
                source.close()
            raise
        failed = _failure(sources)
        if failed is not None:  # a failure a reader passed over (an extra pickle's scan)
            for source in sources.values():
                source.close()
            raise CheckpointError(failed.message, failed.path, checkpoint.pickle_globals)
        checkpoint.sources = {info.path: sources[info.path] for info in checkpoint.files if info.path in sources}
        for unused in sources.keys() - checkpoint.sources.keys():
            sources[unused].close()
        return checkpoint


def _failure(sources: dict) -> CheckpointError | None:
    return next((source.failure for source in sources.values() if source.failure is not None), None)


def _open_file_checked(path: str, key_path: str | None) -> Checkpoint:
    """One file (local or a URL), the system's errors said as the file's."""
    try:
        return _open_file(path, key_path)
    except OSError as exc:
        raise CheckpointError(f"cannot read ({exc.strerror or exc})", path) from None
    except MemoryError:
        raise CheckpointError("too large to parse in memory (hostile or corrupt structure)", path) from None


def scanned_globals(path: str) -> list[PickleGlobal]:
    """Every global a file's pickles name, whether or not it reads as a checkpoint (a folder's
    other pickles are scanned for safety only)."""
    try:
        open_binary(path).close()  # a file that cannot be opened is an error, not a clean scan
    except OSError as exc:
        raise CheckpointError(f"cannot read ({exc.strerror or exc})", path) from None
    try:
        with open_checkpoint(path) as checkpoint:
            return checkpoint.pickle_globals
    except CheckpointError as exc:
        return exc.pickle_globals


@dataclass
class _Reading:
    """One loader's view of a file: what it is to that loader, and what came of reading it."""

    kind: str
    result: Checkpoint | CheckpointError

    @property
    def pickle_globals(self) -> list[PickleGlobal]:
        return self.result.pickle_globals


def _open_file(path: str, key_path: str | None) -> Checkpoint:
    size = file_size(path)
    if size == 0:
        raise CheckpointError("empty file", path)
    with open_binary(path) as handle:
        head = handle.read(512)
    if head.startswith(ZIP_MAGIC):
        return read_torch_zip(path, key_path, size)
    readings = _readings(path, key_path, size, head)
    seen = [g for reading in readings for g in reading.pickle_globals]
    holding = [r for r in readings if isinstance(r.result, Checkpoint) or r.pickle_globals]
    if len(holding) > 1:
        raise CheckpointError(f"ambiguous file: it reads as {' and as '.join(r.kind for r in holding)}; "
                              "which one a loader takes depends on how it is called", path, seen)
    if holding:
        result = holding[0].result
        if isinstance(result, Checkpoint):
            return result
        raise CheckpointError(result.message, path, seen)
    failures = {r.kind: r.result for r in readings if isinstance(r.result, CheckpointError)}  # all of them
    return _not_a_checkpoint(path, key_path, size, head, failures)


def _readings(path: str, key_path: str | None, size: int, head: bytes) -> list[_Reading]:
    """Every reading a loader could make of a file that is not a zip."""
    legacy = _attempt(read_torch_legacy, path, key_path, size)
    readings = [_Reading("a torch legacy checkpoint" if isinstance(legacy, Checkpoint) else "a pickle", legacy)]
    tar_globals = scan_torch_tar(path)
    if tar_globals is not None:
        readings.append(_Reading("a torch tar-format checkpoint", CheckpointError(
            "a torch tar-format checkpoint (torch's oldest format): its pickles were scanned, "
            "its tensors are not read", path, tar_globals)))
    if head[8:9] == b"{":
        readings.append(_Reading("safetensors", _attempt(lambda p, k, s: _flat(read_safetensors(p, s), k),
                                                         path, key_path, size)))
    return readings


def _attempt(reader: Callable[[str, str | None, int], Checkpoint], path: str, key_path: str | None,
             size: int) -> Checkpoint | CheckpointError:
    try:
        return reader(path, key_path, size)
    except CheckpointError as exc:
        return exc


def _not_a_checkpoint(path: str, key_path: str | None, size: int, head: bytes,
                      failures: dict[str, CheckpointError]) -> Checkpoint:
    """No loader takes the file as a checkpoint: a shard index, or say what it is instead."""
    if head.startswith(LFS_POINTER_START):
        raise LfsPointerError("a Git LFS pointer, not the weights: run `git lfs pull`", path)
    if path.endswith(".json"):
        return _open_index(path, key_path, size)
    if "safetensors" in failures:
        raise failures["safetensors"]  # what is wrong with the header
    if head.startswith(b"\x80"):
        raise failures["a pickle"]  # a pickle torch wrote, corrupt
    for magic, name in OTHER_FORMATS:
        if magic in head[:8] or head[257:262] == magic:
            raise CheckpointError(f"not a checkpoint: looks like {name}", path)
    if _looks_like_text(head):
        raise CheckpointError("not a checkpoint: a text file", path)
    raise CheckpointError("unrecognised format (not safetensors, a torch zip, legacy or tar file, nor a pickle)",
                          path)


def _flat(checkpoint: Checkpoint, key_path: str | None) -> Checkpoint:
    """Apply ``--key`` and wrapper-prefix stripping to a format without a container object; each
    tensor keeps its final key (rules find a tensor's facts by it)."""
    tensors = select_prefix(checkpoint.tensors, key_path) if key_path else checkpoint.tensors
    check_key_depth(tensors)
    tensors, checkpoint.stripped_prefix = strip_prefixes(tensors, lightning=False)
    if tensors is not checkpoint.tensors or not all(ref.key == key for key, ref in tensors.items()):
        checkpoint.tensors = {key: ref if ref.key == key else replace(ref, key=key) for key, ref in tensors.items()}
    if key_path:
        checkpoint.layout = f"prefix:{key_path}"
    return checkpoint


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
        with open_binary(path) as handle:
            index = json.load(handle)
    except (ValueError, RecursionError) as exc:  # ValueError: also an integer past Python's 4300 digits
        raise CheckpointError(f"shard index is not valid JSON ({str(exc)[:80]})", path) from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError("shard index has no weight_map of tensor names to shard files", path)
    folder = parent(path)
    merged: dict = {}
    shards: list[Checkpoint] = []
    for shard_name in dict.fromkeys(weight_map.values()):
        if os.path.basename(shard_name) != shard_name or shard_name in ("", ".", ".."):
            raise CheckpointError(f"shard index names {shard_name!r} outside its folder", path)
        try:
            shard = _open_file(join(folder, shard_name), None)
        except CheckpointError as exc:
            raise CheckpointError(f"shard {shard_name}: {exc.message}", path, exc.pickle_globals) from None
        shards.append(shard)
        # the index names tensors as stored; the shard may have removed a wrapper prefix
        stored = {shard.stripped_prefix + key: ref for key, ref in shard.tensors.items()}
        wanted = {name for name, file in weight_map.items() if file == shard_name}
        missing = wanted - stored.keys()
        if missing:
            raise CheckpointError(f"shard {shard_name} lacks {len(missing)} tensor(s) the index names, "
                                  f"e.g. {sorted(missing)[0]!r}", path)
        merged.update({name: stored[name] for name in wanted})
    fmt = "safetensors-sharded" if all(s.format == "safetensors" for s in shards) else "torch-sharded"
    files = [FileInfo(path, size)] + [info for shard in shards for info in shard.files]
    ordered = {name: merged[name] for name in weight_map if name in merged}
    checkpoint = Checkpoint(path, fmt, "bare", ordered, files,
                            [g for shard in shards for g in shard.pickle_globals])
    return _flat(checkpoint, key_path)
