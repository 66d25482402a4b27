"""A zip archive's directory as torch's reader sees it, and as Python's ``zipfile`` sees it.

torch reads a checkpoint zip with miniz (``PyTorchFileReader``), which differs from ``zipfile`` in
ways an attacker can use to show each reader different entries: miniz takes the central directory
at the offset the end record gives (``zipfile`` takes the one just before the end record), reads
as many entries as the end record counts (``zipfile``: as many as its size holds), keeps a name's
exact bytes (``zipfile`` cuts it at a NUL), finds a name case-insensitively by a binary search
(``zipfile``: exactly, the last of equal names), and never checks a CRC (``zipfile`` refuses a bad
one). ``torch_directory`` is a port of miniz 3.0.2's ``mz_zip_reader_read_central_dir`` as torch
builds it, ``torch_names`` its lookup; ``python_directory`` is ``zipfile``'s reading;
``entry_stream`` reads an entry's bytes the way miniz extracts them.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from ckptlint.errors import CheckpointError
from ckptlint.io.source import open_binary

EOCD = struct.Struct("<4sHHHHIIH")
ZIP64_LOCATOR = struct.Struct("<4sIQI")
ZIP64_EOCD = struct.Struct("<4sQHHIIQQQQ")
CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")
LOCAL = struct.Struct("<4sHHHHHIIIHH")
UINT32_MAX = 0xFFFFFFFF
END_SEARCH = 0xFFFF + EOCD.size  # miniz gives up looking for the end record this far from the end
ENCRYPTED = 0x1 | 0x20 | 0x40  # encrypted, patch data, strong encryption: miniz will not extract
MASKED_HEADERS = 0x2000  # local headers masked (central directory encryption): miniz will not open
DEFLATED = 8


@dataclass(frozen=True)
class ZipEntry:
    """One central-directory record: the name's exact bytes and where the data lies."""

    name: bytes
    method: int
    flags: int
    compressed_size: int
    size: int
    header_offset: int

    @property
    def label(self) -> str:
        return self.name.decode("utf-8", "backslashreplace")


def _fail(problem: str) -> CheckpointError:
    return CheckpointError(f"torch cannot open this zip archive: {problem}")


def _read_at(raw: BinaryIO, offset: int, length: int) -> bytes:
    raw.seek(offset)
    return raw.read(length)


def _end_record_offset(raw: BinaryIO, size: int) -> int:
    """miniz's backward scan: the last end-record signature with a whole record after it,
    searched in 4 KiB blocks until about 64 KiB from the end."""
    if size < EOCD.size:
        raise _fail("too short")
    block = 4096
    offset = max(size - block, 0)
    while True:
        data = _read_at(raw, offset, min(block, size - offset))
        at = data.rfind(b"PK\x05\x06", 0, max(size - offset - EOCD.size + 4, 0))
        if at >= 0:
            return offset + at
        if offset == 0 or size - offset >= END_SEARCH:
            raise _fail("no end-of-central-directory record")
        offset = max(offset - (block - 3), 0)


def torch_directory(raw: BinaryIO, size: int) -> list[ZipEntry]:
    """The entries torch's reader finds, in central-directory order; a CheckpointError where
    miniz refuses the archive."""
    end = _end_record_offset(raw, size)
    _, this_disk, cdir_disk, on_disk, total, cdir_size, cdir_offset, _ = EOCD.unpack(_read_at(raw, end, EOCD.size))
    if end >= ZIP64_LOCATOR.size + ZIP64_EOCD.size:
        signature, _, record_offset, disks = ZIP64_LOCATOR.unpack(_read_at(raw, end - ZIP64_LOCATOR.size,
                                                                          ZIP64_LOCATOR.size))
        if signature == b"PK\x06\x07":
            if record_offset > size - ZIP64_EOCD.size:
                raise _fail("zip64 end record outside the file")
            record = ZIP64_EOCD.unpack(_read_at(raw, record_offset, ZIP64_EOCD.size))
            if record[0] == b"PK\x06\x06":
                if record[1] < ZIP64_EOCD.size - 12 or disks != 1:
                    raise _fail("bad zip64 end record")
                this_disk, cdir_disk, on_disk, total, cdir_size, cdir_offset = record[4:10]
                if total > UINT32_MAX or cdir_size > UINT32_MAX:
                    raise _fail("zip64 directory beyond miniz's limits")
    if total != on_disk or ((this_disk | cdir_disk) != 0 and (this_disk, cdir_disk) != (1, 1)):
        raise _fail("multi-disk archive")
    if cdir_size < total * CENTRAL.size or cdir_offset + cdir_size > size:
        raise _fail(f"central directory of {cdir_size} bytes at {cdir_offset} does not fit {total} entries")
    directory = _read_at(raw, cdir_offset, cdir_size)
    entries, at = [], 0
    for _ in range(total):
        entry, at = _central_record(directory, at, this_disk, size)
        entries.append(entry)
    return entries


def _central_record(directory: bytes, at: int, this_disk: int, size: int) -> tuple[ZipEntry, int]:
    if len(directory) - at < CENTRAL.size or directory[at:at + 4] != b"PK\x01\x02":
        raise _fail("bad central directory record")
    fields = CENTRAL.unpack_from(directory, at)
    flags, method, compressed, uncompressed = fields[3], fields[4], fields[8], fields[9]
    name_len, extra_len, comment_len, disk, offset = fields[10], fields[11], fields[12], fields[13], fields[16]
    name = directory[at + CENTRAL.size:at + CENTRAL.size + name_len]
    extra = directory[at + CENTRAL.size + name_len:at + CENTRAL.size + name_len + extra_len]
    if extra and UINT32_MAX in (compressed, uncompressed, offset):
        uncompressed, compressed, offset = _zip64_sizes(extra, uncompressed, compressed, offset)
    label = name.decode("utf-8", "backslashreplace")
    if compressed != UINT32_MAX and uncompressed != UINT32_MAX and (
            (method == 0 and uncompressed != compressed) or (uncompressed and not compressed)):
        raise _fail(f"zip entry {label!r} claims {uncompressed} bytes but stores {compressed}")
    if disk == 0xFFFF or disk not in (this_disk, 1):
        raise _fail("multi-disk archive")
    if compressed != UINT32_MAX and offset + LOCAL.size + compressed > size:
        raise _fail(f"zip entry {label!r} claims {compressed} bytes past the end of the file")
    if flags & MASKED_HEADERS:
        raise _fail("its headers are encrypted")
    record_size = CENTRAL.size + name_len + extra_len + comment_len
    if record_size > len(directory) - at:
        raise _fail("truncated central directory")
    return ZipEntry(name, method, flags, compressed, uncompressed, offset), at + record_size


def _zip64_sizes(extra: bytes, uncompressed: int, compressed: int, offset: int) -> tuple[int, int, int]:
    """The zip64 extra field replaces each 32-bit field that is all ones, in this order."""
    at = 0
    while at < len(extra):
        if len(extra) - at < 4:
            raise _fail("bad extra field")
        field_id, length = struct.unpack_from("<HH", extra, at)
        if 4 + length > len(extra) - at:
            raise _fail("bad extra field")
        if field_id == 1:
            values = iter(struct.unpack_from(f"<{length // 8}Q", extra, at + 4))
            uncompressed = next(values, uncompressed) if uncompressed == UINT32_MAX else uncompressed
            compressed = next(values, compressed) if compressed == UINT32_MAX else compressed
            offset = next(values, offset) if offset == UINT32_MAX else offset
            break
        at += 4 + length
    return uncompressed, compressed, offset


def python_directory(path: str) -> list[ZipEntry] | None:
    """The entries Python's ``zipfile`` lists (None when it cannot read the archive)."""
    try:
        with open_binary(path) as raw, zipfile.ZipFile(raw) as archive:
            return [ZipEntry(info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437"),
                             info.compress_type, info.flag_bits, info.compress_size, info.file_size,
                             info.header_offset) for info in archive.infolist()]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, NotImplementedError,
            struct.error):
        return None


def torch_names(entries: list[ZipEntry]) -> dict[bytes, list[ZipEntry]]:
    """The entries miniz's lookup could return for each name: it binary-searches names of equal
    length, equal but for ASCII case — a dict on ASCII-lowercased names."""
    names: dict[bytes, list[ZipEntry]] = {}
    for entry in entries:
        names.setdefault(entry.name.lower(), []).append(entry)
    return names


def data_offset(raw: BinaryIO, entry: ZipEntry, size: int) -> int:
    """Where an entry's stored bytes start: after its local header's name and extra field."""
    if not 0 <= entry.header_offset <= size - LOCAL.size:
        raise CheckpointError(f"zip entry {entry.label!r}: its local header is outside the file")
    header = _read_at(raw, entry.header_offset, LOCAL.size)
    if header[:4] != b"PK\x03\x04":
        raise CheckpointError(f"zip entry {entry.label!r}: bad local header")
    name_len, extra_len = LOCAL.unpack(header)[9:11]
    start = entry.header_offset + LOCAL.size + name_len + extra_len
    if start + entry.compressed_size > size:
        raise CheckpointError(f"zip entry {entry.label!r} claims {entry.compressed_size} bytes "
                              "past the end of the file")
    return start


def entry_stream(raw: BinaryIO, entry: ZipEntry, size: int, limit: int) -> io.BufferedReader:
    """An entry's bytes as miniz extracts them: stored or deflated, at most ``entry.size`` (the
    buffer torch allocates) and ``limit``; a deflate stream that breaks yields what it decoded."""
    if entry.flags & ENCRYPTED:
        raise CheckpointError(f"zip entry {entry.label!r} is encrypted: torch cannot read it")
    if entry.method not in (0, DEFLATED):
        raise CheckpointError(f"zip entry {entry.label!r} uses compression method {entry.method}: "
                              "torch cannot read it")
    start = data_offset(raw, entry, size)
    window = _Window(raw, start, entry.compressed_size)
    source = window if entry.method == 0 else _Inflate(window)
    return io.BufferedReader(_Capped(source, min(entry.size, limit)))


class _Window(io.RawIOBase):
    """``length`` bytes of a file from ``start`` (the file may be read elsewhere in between)."""

    def __init__(self, raw: BinaryIO, start: int, length: int) -> None:
        self.raw, self.position, self.end = raw, start, start + length

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]  # BufferedReader passes a memoryview
        data = _read_at(self.raw, self.position, min(len(buffer), self.end - self.position))
        buffer[:len(data)] = data
        self.position += len(data)
        return len(data)


class _Inflate(io.RawIOBase):
    """Raw deflate, decoded as it is read. A corrupt stream ends after the bytes it decoded (miniz
    hands torch that prefix), found by retrying the failing block byte by byte."""

    BLOCK = 1 << 16

    def __init__(self, source: _Window) -> None:
        self.source, self.inflater = source, zlib.decompressobj(-15)
        self.pending, self.done = b"", False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]  # BufferedReader passes a memoryview
        while not self.pending and not self.done:
            block = self.inflater.unconsumed_tail or self.source.read(self.BLOCK)
            self.pending = self._inflate(block)
            self.done = self.done or self.inflater.eof or not (block or self.pending)
        data, self.pending = self.pending[:len(buffer)], self.pending[len(buffer):]
        buffer[:len(data)] = data
        return len(data)

    def _inflate(self, block: bytes) -> bytes:
        saved = self.inflater.copy()
        try:
            return self.inflater.decompress(block, self.BLOCK)
        except zlib.error:
            self.inflater, out, self.done = saved, bytearray(), True
            for i in range(len(block)):
                try:
                    out += self.inflater.decompress(block[i:i + 1])
                except zlib.error:
                    break
            return bytes(out)


class _Capped(io.RawIOBase):
    """At most ``limit`` bytes of ``source``."""

    def __init__(self, source: io.RawIOBase, limit: int) -> None:
        self.source, self.left = source, limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]  # BufferedReader passes a memoryview
        count = self.source.readinto(memoryview(buffer)[:min(len(buffer), self.left)]) if self.left else 0
        self.left -= count or 0
        return count or 0
