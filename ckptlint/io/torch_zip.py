"""Read torch's zip format (``torch.save`` since 1.6) as torch's own reader does, without calling torch.

Members are resolved like ``PyTorchFileReader``: the directory the end record points to, the
archive folder named by its first entry, names found by miniz's case-insensitive lookup. An
archive other readers could see differently — a name with a NUL byte, two entries torch's lookup
cannot tell apart, Python's ``zipfile`` finding another directory — is an error of its own, never
read one way: every pickle of every reading is scanned and the error carries what they named.
"""

from __future__ import annotations

from typing import BinaryIO

from ckptlint.errors import CheckpointError
from ckptlint.io.checkpoint import Checkpoint
from ckptlint.io.pickled import build_checkpoint
from ckptlint.io.source import RemoteFile, open_binary
from ckptlint.io.unpickler import PickleGlobal, storage_descriptor, unpickle
from ckptlint.io.zip_directory import (
    DEFLATED,
    LOCAL,
    ZipEntry,
    data_offset,
    entry_stream,
    python_directory,
    torch_directory,
    torch_names,
)

MAX_PICKLE_BYTES = 1 << 30  # a million tensors pickle to ~200 MB; more than this is not a state dict
MAX_COMPRESSION_RATIO = 100  # torch stores entries uncompressed; a zip bomb expands a thousandfold


def read_torch_zip(path: str, key_path: str | None, size: int) -> Checkpoint:
    """Read the archive's ``data.pkl`` restrictedly and locate each storage's bytes in it."""
    seen: list[PickleGlobal] = []
    with open_binary(path) as raw:
        try:
            return _read(raw, path, key_path, size, seen)
        except CheckpointError as exc:
            raise CheckpointError(exc.message, path, pickle_globals=seen) from None


def _read(raw: BinaryIO, path: str, key_path: str | None, size: int, seen: list[PickleGlobal]) -> Checkpoint:
    python = python_directory(path)
    try:
        entries = torch_directory(raw, size)
    except CheckpointError:
        _scan(raw, python or [], size, seen)  # what zipfile-based tools would unpickle
        raise
    if isinstance(raw, RemoteFile):  # every local header in one batch of ranges, not a round trip each
        raw.source.prefetch([(entry.header_offset, LOCAL.size) for entry in entries])
    names = torch_names(entries)
    problem = _ambiguity(entries, names, python)
    if problem:
        _scan(raw, entries + (python or []), size, seen)
        raise CheckpointError(f"ambiguous zip archive: {problem}; loaders may read different pickles")
    used: set[ZipEntry] = set()
    try:
        prefix = _archive_folder(entries)
        main = _member(names, prefix + b"data.pkl")
        if main is None:
            raise CheckpointError("zip archive without data.pkl: not a torch checkpoint")
        used.add(main)
        byteorder = _member(names, prefix + b"byteorder")
        big_endian = byteorder is not None and entry_stream(raw, byteorder, size, 16).read().strip() == b"big"
        root = _unpickle(raw, main, size, seen)

        def locate(storage_key: str, itemsize: int) -> tuple[int, int]:
            entry = _member(names, prefix + b"data/" + storage_key.encode())
            if entry is None:
                raise CheckpointError(f"storage {storage_key!r} is missing from the archive")
            used.add(entry)
            if entry.method != 0:
                raise CheckpointError(f"storage {storage_key!r} is compressed; torch writes storages uncompressed")
            return data_offset(raw, entry, size), entry.size // itemsize

        return build_checkpoint(path, "torch-zip", root, key_path, locate, seen, size, big_endian)
    finally:
        _scan(raw, [entry for entry in entries if entry not in used], size, seen)


def _ambiguity(entries: list[ZipEntry], names: dict[bytes, list[ZipEntry]],
               python: list[ZipEntry] | None) -> str | None:
    """Why readers could disagree on what this archive holds (None when they cannot)."""
    for entry in entries + (python or []):
        if b"\0" in entry.name:
            return f"the entry name {entry.label!r} holds a NUL byte"
    for first, second, *_ in (same for same in names.values() if len(same) > 1):
        case = "" if first.name == second.name else f" and {second.label!r} (torch's lookup ignores case)"
        return f"two entries are named {first.label!r}{case}"
    if python is not None and sorted((e.name, e.header_offset) for e in entries) != sorted(
            (e.name, e.header_offset) for e in python):
        return "torch's reader and Python's zipfile see different central directories"
    return None


def _archive_folder(entries: list[ZipEntry]) -> bytes:
    """torch looks every member up under the folder its first entry is in."""
    if not entries:
        raise CheckpointError("torch cannot open this zip archive: it holds no entries")
    folder, slash, _ = entries[0].name.partition(b"/")
    if not slash:
        raise CheckpointError(f"torch cannot open this zip archive: its first entry {entries[0].label!r} "
                              "is not in a folder")
    return folder + b"/"


def _member(names: dict[bytes, list[ZipEntry]], name: bytes) -> ZipEntry | None:
    found = names.get(name.lower())
    return found[0] if found else None  # never more than one: _ambiguity refused the archive


def _unpickle(raw: BinaryIO, entry: ZipEntry, size: int, seen: list[PickleGlobal]) -> object:
    """Unpickle an entry as torch would, at most MAX_PICKLE_BYTES of it; a deflated entry at most
    MAX_COMPRESSION_RATIO times its stored size (beyond that it is refused as a zip bomb, after
    scanning what it expands to within the bound)."""
    limit = min(entry.size, MAX_PICKLE_BYTES)
    if entry.method == DEFLATED:
        limit = min(limit, MAX_COMPRESSION_RATIO * max(entry.compressed_size, 1 << 14))
    stream = entry_stream(raw, entry, size, limit)
    if limit == entry.size:
        return unpickle(stream, entry.label, seen, storage_descriptor)
    try:
        unpickle(stream, entry.label, seen, storage_descriptor)
    except CheckpointError:
        pass
    if entry.method == DEFLATED and limit < MAX_PICKLE_BYTES:
        raise CheckpointError(f"zip entry {entry.label!r} expands {entry.compressed_size} bytes to {entry.size}: "
                              "a zip bomb")
    raise CheckpointError(f"zip entry {entry.label!r} claims {entry.size} bytes, more than a state dict's pickle")


def _scan(raw: BinaryIO, entries: list[ZipEntry], size: int, seen: list[PickleGlobal]) -> None:
    """Record the globals of every entry read as a pickle — under any name, each of several
    entries with the same name, in any protocol: a loader may take one we did not."""
    done: set[tuple[int, int, int]] = set()
    for entry in entries:
        where = (entry.header_offset, entry.method, entry.compressed_size)
        if where in done:
            continue
        done.add(where)
        try:
            _unpickle(raw, entry, size, seen)
        except CheckpointError:
            pass  # a broken extra pickle still had its globals recorded up to where it broke
