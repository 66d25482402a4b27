"""torch's oldest format: a tar archive of ``storages``, ``tensors`` and ``pickle``.

``torch.load`` on a path tries it before anything else (``_legacy_load`` opens any file whose
first 512 bytes are a valid tar header), and with ``weights_only=False`` unpickles, in order:
``storages`` (a count, then per storage a pickle of its key, location and type followed by an
8-byte element count and the elements, then a pickle of views), ``tensors`` (a count, then per
tensor a pickle followed by its ndim, sizes, strides and offset) and ``pickle`` (the object).
ckptlint does not read this format's tensors; it scans every pickle torch could load from it.
"""

from __future__ import annotations

import io
import struct
import tarfile
from typing import Any, BinaryIO

from ckptlint.errors import CheckpointError
from ckptlint.io.source import is_remote, open_binary
from ckptlint.io.unpickler import PickleGlobal, StorageType, unpickle


def scan_torch_tar(path: str) -> list[PickleGlobal] | None:
    """The globals named by every pickle torch could load from the tar archive ``path``; None when
    ``path`` is not one (tarfile, as torch calls it, cannot open it)."""
    remote = open_binary(path) if is_remote(path) else None
    try:
        if remote is None:
            archive = tarfile.open(path, mode="r:", format=tarfile.PAX_FORMAT)  # noqa: SIM115 - `with archive` below
        else:
            archive = tarfile.open(fileobj=remote, mode="r:", format=tarfile.PAX_FORMAT)  # noqa: SIM115 - as above
    except (tarfile.TarError, ValueError, OSError, EOFError):
        return None
    seen: list[PickleGlobal] = []
    with archive:
        try:
            members = archive.getmembers()
        except (tarfile.TarError, ValueError, OSError, EOFError):
            members = archive.members  # type: ignore[attr-defined]  # undocumented: those read before a broken header
        for member in members:
            if member.isreg():  # a link named "pickle" is read through: its target is scanned here
                stream = archive.extractfile(member)
                if isinstance(stream, io.BufferedReader):  # always for a regular member (typed IO[bytes] | None)
                    _scan_member(stream, member.name, seen)
    return seen


def _scan_member(stream: BinaryIO, name: str, seen: list[PickleGlobal]) -> None:
    """A member is read as ``pickle`` (one pickle), or — when its first pickle is a count — as
    ``storages`` and as ``tensors`` (torch picks by name, and a link can rename a member)."""
    try:
        count = unpickle(stream, f"tar member {name!r}, pickle 1", seen, persistent_load=_any_id)
    except CheckpointError:
        return
    if type(count) is not int:
        return
    start = stream.tell()
    walks: list[list[PickleGlobal]] = []
    for walk in (_storages, _tensors):
        stream.seek(start)
        walks.append([])
        try:
            walk(stream, count, name, walks[-1])
        except (CheckpointError, struct.error, tarfile.TarError, ValueError, OverflowError):
            pass  # where torch would fail too: a short or broken member
    first, second = walks
    differ = (i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b)
    shared = next(differ, min(len(first), len(second)))
    seen += first + second[shared:]  # both walks read the pickle after the count: count it once


def _storages(stream: BinaryIO, count: int, name: str, seen: list[PickleGlobal]) -> None:
    for index in range(2, count + 2):
        args = unpickle(stream, f"tar member {name!r}, pickle {index}", seen, persistent_load=None)
        storage_type = args[2] if isinstance(args, tuple) and len(args) == 3 else None
        if not isinstance(storage_type, StorageType):
            return  # torch fails here too
        (numel,) = struct.unpack("<q", stream.read(8))
        if numel < 0:
            return  # torch fails here too; a step back would loop
        stream.seek(numel * (storage_type.dtype.itemsize if storage_type.dtype else 1), 1)
    unpickle(stream, f"tar member {name!r}, pickle {count + 2} (views)", seen, persistent_load=None)


def _tensors(stream: BinaryIO, count: int, name: str, seen: list[PickleGlobal]) -> None:
    for index in range(2, count + 2):
        unpickle(stream, f"tar member {name!r}, pickle {index}", seen, persistent_load=None)
        (ndim,) = struct.unpack("<i", stream.read(4))
        if ndim < 0:
            return
        stream.seek(4 + 16 * ndim + 8, 1)


def _any_id(pid: Any) -> Any:
    """``pickle`` names tensors by key: any persistent id is data here."""
    return pid
