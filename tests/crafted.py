"""Files built byte by byte (no torch, no zipfile writer): zip archives with full control of their
directories, tar headers, safetensors headers, pickles; and the two processes the tests run on
them — ckptlint under memory and time limits, and torch.load, which proves a file really runs."""

from __future__ import annotations

import importlib.util
import resource
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

MARKER = "ckptlint-ran-it"
COMMAND = f"touch {MARKER}"
MEMORY_LIMIT = 3 << 30


# --- pickles ---

def text(value: str) -> bytes:
    data = value.encode("utf-8")
    return b"X" + struct.pack("<I", len(data)) + data


def evil_pickle(protocol: int | None = None) -> bytes:
    """``os.system(COMMAND)`` in protocol 0 text (``cos\\nsystem\\n``), optionally behind PROTO."""
    body = f"cos\nsystem\n(S'{COMMAND}'\ntR.".encode()
    return (b"\x80" + bytes([protocol]) if protocol else b"") + body


def tensor_pickle(extra: bytes = b"") -> bytes:
    """``{"weight": <float32 tensor of 2 in storage '0'>}`` as torch.save writes it (protocol 2)."""
    storage = (b"(" + text("storage") + b"ctorch\nFloatStorage\n" + text("0") + text("cpu") + b"K\x02t")
    record = (b"ctorch._utils\n_rebuild_tensor_v2\n(" + storage + b"QK\x00(K\x02t(K\x01t\x89"
              + b"ccollections\nOrderedDict\n)RtR")
    return b"\x80\x02}(" + text("weight") + record + extra + b"u."


STORAGE = struct.pack("<2f", 1.0, 2.0)


# --- zip archives ---

@dataclass
class Entry:
    name: bytes
    data: bytes
    flags: int = 0
    method: int = 0
    crc: int | None = None
    stored: bytes | None = None  # the bytes in the archive, when not ``data`` (deflated)


def deflated(name: bytes, data: bytes, then: bytes | None = None) -> Entry:
    """``data`` deflated; with ``then``, the stream is flushed and ``then`` follows the flush
    (invalid bytes make a stream that decodes ``data`` and then breaks)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    if then is None:
        return Entry(name, data, method=8, stored=packer.compress(data) + packer.flush())
    return Entry(name, data, method=8, stored=packer.compress(data) + packer.flush(zlib.Z_SYNC_FLUSH) + then)


def _local(entry: Entry) -> bytes:
    stored = entry.data if entry.stored is None else entry.stored
    crc = zlib.crc32(entry.data) if entry.crc is None else entry.crc
    return struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, entry.flags, entry.method, 0, 0, crc,
                       len(stored), len(entry.data), len(entry.name), 0) + entry.name + stored


def _central(entry: Entry, offset: int) -> bytes:
    stored = entry.data if entry.stored is None else entry.stored
    crc = zlib.crc32(entry.data) if entry.crc is None else entry.crc
    return struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, entry.flags, entry.method, 0, 0, crc,
                       len(stored), len(entry.data), len(entry.name), 0, 0, 0, 0, 0, offset) + entry.name


def end_record(count: int, size: int, offset: int) -> bytes:
    return struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, count, count, size, offset, 0)


def zip_bytes(entries: list[Entry]) -> bytes:
    body, directory = b"", b""
    for entry in entries:
        directory += _central(entry, len(body))
        body += _local(entry)
    return body + directory + end_record(len(entries), len(directory), len(body))


def torch_entries(data_pkl: bytes) -> list[Entry]:
    """What torch.save writes, with this data.pkl."""
    return [Entry(b"archive/data.pkl", data_pkl), Entry(b"archive/byteorder", b"little"),
            Entry(b"archive/data/0", STORAGE), Entry(b"archive/version", b"3\n")]


def two_directories(torch_sees: list[Entry], zipfile_sees: list[Entry]) -> bytes:
    """One archive, two central directories: the end record's offset points at the first (miniz,
    so torch, reads there); Python's zipfile reads the one just before the end record, moving every
    offset by the gap. The directories must have the same size."""
    body, first = b"", b""
    for entry in torch_sees:
        first += _central(entry, len(body))
        body += _local(entry)
    first_at = len(body)
    body += first
    locals_at = []
    for entry in zipfile_sees:
        locals_at.append(len(body))
        body += _local(entry)
    shift = len(body) - first_at  # zipfile adds (end record's position - size - offset) to offsets
    assert all(at >= shift for at in locals_at), "torch's entries must take more room than zipfile's"
    second = b"".join(_central(entry, at - shift) for entry, at in zip(zipfile_sees, locals_at, strict=True))
    assert len(second) == len(first), "both directories must have the same size"
    return body + second + end_record(len(torch_sees), len(second), first_at)


# --- tar ---

def tar_header(name: bytes, size: int, block: bytearray | None = None) -> bytes:
    """A v7 tar header block (``block`` may hold other bytes where tar fields are not read)."""
    header = block if block is not None else bytearray(512)
    header[0:len(name)] = name
    header[100:108] = b"0000644\0"
    header[108:116] = b"0000000\0"
    header[116:124] = b"0000000\0"
    header[124:136] = b"%011o\0" % size
    header[136:148] = b"00000000000\0"
    header[148:156] = b" " * 8
    header[156:157] = b"0"
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def tar_member(name: bytes, data: bytes) -> bytes:
    return tar_header(name, len(data)) + data + b"\0" * (-len(data) % 512)


# --- safetensors ---

def safetensors_bytes(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


# --- processes ---

def scan(*paths: Path | str, cwd: Path | None = None, timeout: float = 120, args: tuple[str, ...] = ("--no-hash",),
         fmt: str = "json") -> subprocess.CompletedProcess:
    """ckptlint in its own process, with bounded memory and time."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    return subprocess.run([sys.executable, "-m", "ckptlint", "check", *args, "--format", fmt, *map(str, paths)],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout, preexec_fn=limit)


HAVE_TORCH = importlib.util.find_spec("torch") is not None


def torch_runs(path: Path, how: str = "path") -> bool:
    """Whether ``torch.load(..., weights_only=False)`` runs the file's code (the payload touches a
    marker file in a folder of its own), loading from the path or from a buffer."""
    folder = path.parent / f"torch-load-{path.name}-{how}"
    folder.mkdir()
    source = "sys.argv[1]" if how == "path" else "io.BytesIO(open(sys.argv[1], 'rb').read())"
    code = f"import io, sys, torch\ntry:\n    torch.load({source}, weights_only=False)\nexcept Exception:\n    pass\n"
    subprocess.run([sys.executable, "-c", code, str(path.resolve())], cwd=folder, capture_output=True, timeout=120)
    return (folder / MARKER).exists()
