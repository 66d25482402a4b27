"""Read torch's legacy format (before 1.6, or ``_use_new_zipfile_serialization=False``).

The file is five pickles back to back — magic number, protocol version, sys_info, the object,
the list of storage keys — followed by each storage as an 8-byte element count and its bytes.
"""

from __future__ import annotations

import struct
from typing import Any, BinaryIO

from ckptlint.errors import CheckpointError
from ckptlint.io.checkpoint import Checkpoint
from ckptlint.io.pickled import build_checkpoint
from ckptlint.io.source import open_binary
from ckptlint.io.unpickler import PickleGlobal, StorageDescriptor, storage_descriptor, unpickle

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001


def read_torch_legacy(path: str, key_path: str | None, size: int) -> Checkpoint:
    """Parse the five pickles restrictedly, then walk the storage records to find their bytes."""
    seen: list[PickleGlobal] = []
    with open_binary(path) as stream:
        try:
            return _read(stream, path, key_path, size, seen)
        except CheckpointError as exc:
            raise CheckpointError(exc.message, path, pickle_globals=seen) from None


def _read(stream: BinaryIO, path: str, key_path: str | None, size: int, seen: list[PickleGlobal]) -> Checkpoint:
    magic = unpickle(stream, "pickle 1 (magic number)", seen, persistent_load=None)
    if magic != MAGIC_NUMBER:
        _read_rest_for_globals(stream, seen)
        raise CheckpointError("a pickle, but not a torch checkpoint (no torch magic number)")
    if unpickle(stream, "pickle 2 (protocol version)", seen, persistent_load=None) != PROTOCOL_VERSION:
        raise CheckpointError("unsupported torch legacy protocol version")
    sys_info = unpickle(stream, "pickle 3 (sys_info)", seen, persistent_load=None)
    big_endian = isinstance(sys_info, dict) and sys_info.get("little_endian") is False
    storages: dict[str, StorageDescriptor] = {}

    def remember(pid: Any) -> StorageDescriptor:
        descriptor = storage_descriptor(pid)
        storages.setdefault(descriptor.key, descriptor)
        return descriptor

    root = unpickle(stream, "pickle 4 (object)", seen, persistent_load=remember)
    keys = unpickle(stream, "pickle 5 (storage keys)", seen, persistent_load=None)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise CheckpointError("pickle 5 is not a list of storage keys")
    locations = _storage_records(stream, keys, storages, size)
    _read_rest_for_globals(stream, seen, first=6)  # nothing belongs after the storages
    return build_checkpoint(path, "torch-legacy", root, key_path, lambda key, _: _located(locations, key),
                            seen, size, big_endian)


def _storage_records(stream: BinaryIO, keys: list[str], storages: dict[str, StorageDescriptor],
                     size: int) -> dict[str, tuple[int, int]]:
    locations: dict[str, tuple[int, int]] = {}
    for key in keys:
        header = stream.read(8)
        if len(header) != 8:
            raise CheckpointError(f"truncated: storage {key!r} is missing")
        (numel,) = struct.unpack("<q", header)
        descriptor = storages.get(key)
        itemsize = descriptor.dtype.itemsize if descriptor and descriptor.dtype else 1
        start = stream.tell()
        if numel < 0 or start + numel * itemsize > size:
            raise CheckpointError(f"truncated: storage {key!r} claims {numel} elements past the end of the file")
        locations[key] = (start, numel)
        stream.seek(start + numel * itemsize)
    return locations


def _located(locations: dict[str, tuple[int, int]], key: str) -> tuple[int, int]:
    if key not in locations:
        raise CheckpointError(f"storage {key!r} is not in the file")
    return locations[key]


def _read_rest_for_globals(stream: BinaryIO, seen: list[PickleGlobal], first: int = 2) -> None:
    """Scan any pickles that follow (after a plain pickle, or appended after the storages), in any
    protocol."""
    for index in range(first, first + 8):
        if not stream.read(1):
            return
        stream.seek(-1, 1)
        try:
            unpickle(stream, f"pickle {index}", seen, persistent_load=None)
        except CheckpointError:
            return
