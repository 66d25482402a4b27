"""Read torch's zip format (``torch.save`` since 1.6) without calling torch."""

from __future__ import annotations

import io
import struct
import zipfile
from typing import BinaryIO

from ckptlint.errors import CheckpointError
from ckptlint.io.checkpoint import Checkpoint
from ckptlint.io.pickled import build_checkpoint
from ckptlint.io.unpickler import PersistentLoad, PickleGlobal, storage_descriptor, unpickle

MAX_PICKLE_BYTES = 1 << 30  # a million tensors pickle to ~200 MB; more than this is not a state dict
MAX_COMPRESSION_RATIO = 100  # torch stores entries uncompressed; a zip bomb expands a thousandfold
METADATA_ENTRIES = {"byteorder", "version", ".format_version", ".storage_alignment",
                    ".data/serialization_id", ".data/version"}
LOCAL_HEADER = struct.Struct("<4s22xHH")


def read_torch_zip(path: str, key_path: str | None, size: int) -> Checkpoint:
    """Read the main ``data.pkl`` restrictedly and locate each storage's bytes in the archive."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CheckpointError(f"corrupt zip archive ({exc})", path) from None
    with archive, open(path, "rb") as raw:
        entries = {info.filename: info for info in archive.infolist()}
        main = _main_pickle(entries, path)
        prefix = main[: -len("data.pkl")]
        seen: list[PickleGlobal] = []
        try:
            big_endian = _read_entry(archive, entries.get(prefix + "byteorder"), 16).strip() == b"big"
            root = unpickle_entry(archive, entries[main], seen)
            used = [entries[main]]

            def locate(storage_key: str, itemsize: int) -> tuple[int, int]:
                info = entries.get(f"{prefix}data/{storage_key}")
                used.append(info)
                return _storage_location(raw, info, storage_key, itemsize, size)

            checkpoint = build_checkpoint(path, "torch-zip", root, key_path, locate, seen, size, big_endian)
            _scan_other_pickles(archive, used, prefix, seen)
            return checkpoint
        except CheckpointError as exc:
            _scan_other_pickles(archive, [entries[main]], prefix, seen)
            raise CheckpointError(exc.message, path, pickle_globals=seen) from None


def _main_pickle(entries: dict[str, zipfile.ZipInfo], path: str) -> str:
    candidates = sorted((n for n in entries if n == "data.pkl" or n.endswith("/data.pkl")), key=len)
    if not candidates:
        raise CheckpointError("zip archive without data.pkl: not a torch checkpoint", path)
    return candidates[0]


def _read_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo | None, limit: int) -> bytes:
    if info is None:
        return b""
    if info.file_size > limit:
        raise CheckpointError(f"zip entry {info.filename!r} claims {info.file_size} bytes")
    expansion_limit = MAX_COMPRESSION_RATIO * max(info.compress_size, 1 << 14)
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > expansion_limit:
        raise CheckpointError(f"zip entry {info.filename!r} expands {info.compress_size} bytes to {info.file_size}: "
                              "a zip bomb")
    try:
        with archive.open(info) as entry:
            data = entry.read(limit + 1)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise CheckpointError(f"zip entry {info.filename!r} is corrupt ({exc})") from None
    if len(data) > limit:
        raise CheckpointError(f"zip entry {info.filename!r} expands past {limit} bytes")
    return data


def unpickle_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, seen: list[PickleGlobal],
                   persistent_load: PersistentLoad | None = storage_descriptor) -> object:
    data = _read_entry(archive, info, MAX_PICKLE_BYTES)
    return unpickle(io.BytesIO(data), info.filename, seen, persistent_load)


def _storage_location(raw: BinaryIO, info: zipfile.ZipInfo | None, key: str, itemsize: int,
                      size: int) -> tuple[int, int]:
    """Absolute offset of a stored entry's data, read from its local header, and its element count."""
    if info is None:
        raise CheckpointError(f"storage {key!r} is missing from the archive")
    if info.compress_type != zipfile.ZIP_STORED:
        raise CheckpointError(f"storage {key!r} is compressed; torch writes storages uncompressed")
    raw.seek(info.header_offset)
    header = raw.read(LOCAL_HEADER.size)
    if len(header) != LOCAL_HEADER.size:
        raise CheckpointError(f"storage {key!r}: truncated zip entry header")
    signature, name_len, extra_len = LOCAL_HEADER.unpack(header)
    if signature != b"PK\x03\x04":
        raise CheckpointError(f"storage {key!r}: bad zip entry header")
    start = info.header_offset + LOCAL_HEADER.size + name_len + extra_len
    if start + info.file_size > size:
        raise CheckpointError(f"storage {key!r} claims {info.file_size} bytes past the end of the file")
    return start, info.file_size // itemsize


def _scan_other_pickles(archive: zipfile.ZipFile, read: list[zipfile.ZipInfo | None], prefix: str,
                        seen: list[PickleGlobal]) -> None:
    """Record the globals of every other pickle in the archive — under any name, and every one of
    several entries with the same name (a loader may take a different one than we did)."""
    done = {id(info) for info in read}
    for info in archive.infolist():
        name = info.filename
        if id(info) in done or name[len(prefix):] in METADATA_ENTRIES or info.file_size < 2:
            continue
        try:
            with archive.open(info) as entry:
                head = entry.read(2)
            if head[:1] != b"\x80" or head[1:2] not in (b"\x02", b"\x03", b"\x04", b"\x05"):
                continue
            unpickle_entry(archive, info, seen, persistent_load=None)
        except (CheckpointError, zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError):
            pass  # a broken extra pickle still had its globals recorded up to where it broke
