"""Decode one pickle's opcodes from a stream, as ``pickletools.genops`` does, for the static walk.

It reads the stream ahead in chunks into one buffer and decodes only the arguments the walk uses
(strings short enough to be names, global names, memo indexes; numbers and bytes are skipped). A
length the pickle claims is only ever read, in chunks, as far as the data goes: genops's
``f.read(n)`` on a file allocates ``n`` first. What was read past the STOP goes back to the stream
when it can seek (a legacy file holds five pickles in a row), and the unpickler then runs on the
buffer, so forward-only streams (a deflated zip entry) work too. ``tests/test_pickle_policy.py``
checks it against genops.
"""

from __future__ import annotations

import codecs
import io
import pickletools
from collections.abc import Callable
from typing import Any, BinaryIO

READ_CHUNK = 1 << 16
MAX_LINE = 1 << 20  # protocol 0's text arguments (GLOBAL, INT, UNICODE, ...) end within this
MAX_NAME = 1024  # longer strings are never module or attribute names: not decoded

STOP = ord(".")


class PickleSource:
    """The bytes of one pickle, read from ``stream`` as far as its opcodes need."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.data = bytearray()

    def need(self, end: int) -> None:
        while len(self.data) < end:
            chunk = self.stream.read(READ_CHUNK)
            if not chunk:
                raise ValueError(f"truncated: the pickle ends after {len(self.data)} bytes, inside an opcode")
            self.data += chunk

    def line_end(self, start: int) -> int:
        """Where the line from ``start`` ends (its newline)."""
        searched = start
        while (end := self.data.find(b"\n", searched)) < 0:
            if len(self.data) - start > MAX_LINE:
                raise ValueError(f"a text argument runs past {MAX_LINE} bytes without a newline")
            searched = len(self.data)
            self.need(len(self.data) + 1)
        return end

    def finish(self, end: int) -> bytes:
        """The pickle's bytes; the stream is left just after them if it can seek back (a stream
        that cannot holds one pickle, so what was read past it is nobody's)."""
        excess = len(self.data) - end
        if excess and self.stream.seekable():
            self.stream.seek(-excess, io.SEEK_CUR)
        return bytes(self.data[:end])


Reader = Callable[[PickleSource, int], tuple[Any, int]]  # (argument, position after it)


def _unsigned(size: int) -> Reader:
    def read(source: PickleSource, position: int) -> tuple[Any, int]:
        end = position + size
        if end > len(source.data):
            source.need(end)
        return int.from_bytes(source.data[position:end], "little"), end
    return read


def _skipped(size: int) -> Reader:
    def read(source: PickleSource, position: int) -> tuple[Any, int]:
        if position + size > len(source.data):
            source.need(position + size)
        return None, position + size
    return read


def _counted(size: int, encoding: str | None) -> Reader:
    """A length of ``size`` bytes, then that many bytes: text decoded when it could be a name."""
    def read(source: PickleSource, position: int) -> tuple[Any, int]:
        data = source.data
        start = position + size
        if start > len(data):
            source.need(start)
        end = start + int.from_bytes(data[position:start], "little")
        if end > len(data):
            source.need(end)
        if encoding is None or end - start > MAX_NAME:
            return None, end
        return data[start:end].decode(encoding, "surrogatepass" if encoding == "utf-8" else "strict"), end
    return read


def _line(decode: Callable[[bytes], Any] | None) -> Reader:
    def read(source: PickleSource, position: int) -> tuple[Any, int]:
        end = source.line_end(position)
        line = bytes(source.data[position:end])
        return (decode(line) if decode else None), end + 1
    return read


def _quoted(line: bytes) -> str:
    """STRING's argument, as pickle reads it (with ``encoding="latin1"``)."""
    if len(line) < 2 or line[:1] != line[-1:] or line[:1] not in (b"'", b'"'):
        raise ValueError("the STRING opcode argument must be quoted")
    return codecs.escape_decode(line[1:-1])[0].decode("latin-1")


def _two_lines(source: PickleSource, position: int) -> tuple[Any, int]:
    """GLOBAL's and INST's module and name, each on its own line."""
    module, position = _line(lambda line: line.decode("utf-8"))(source, position)
    name, position = _line(lambda line: line.decode("utf-8"))(source, position)
    return (module, name), position


# Each argument kind of pickletools' opcode table, read as the walk needs it.
READERS: dict[str, Reader] = {
    "uint1": _unsigned(1), "uint2": _unsigned(2), "uint4": _unsigned(4), "uint8": _unsigned(8),
    "int4": _skipped(4), "float8": _skipped(8),
    "decimalnl_short": _line(int), "decimalnl_long": _line(None), "floatnl": _line(None),
    "long1": _counted(1, None), "long4": _counted(4, None),
    "bytes1": _counted(1, None), "bytes4": _counted(4, None), "bytes8": _counted(8, None),
    "bytearray8": _counted(8, None),
    "string1": _counted(1, "latin-1"), "string4": _counted(4, "latin-1"),
    "unicodestring1": _counted(1, "utf-8"), "unicodestring4": _counted(4, "utf-8"),
    "unicodestring8": _counted(8, "utf-8"),
    "stringnl": _line(_quoted), "stringnl_noescape": _line(None), "stringnl_noescape_pair": _two_lines,
    "unicodestringnl": _line(lambda line: str(line, "raw-unicode-escape")),
}


def opcode_table(handlers: dict[str, Any]) -> list[tuple[Reader | None, Any] | None]:
    """For each byte: how to read its opcode's argument (None: it has none) and what handles it
    (by opcode name)."""
    table: list[tuple[Reader | None, Any] | None] = [None] * 256
    for opcode in pickletools.opcodes:
        table[ord(opcode.code)] = (READERS[opcode.arg.name] if opcode.arg else None, handlers[opcode.name])
    return table
