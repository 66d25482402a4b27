"""Where a checkpoint's bytes come from: a local file (read as ever: open, seek, mmap) or a remote
object (``s3://``, ``gs://``, ``https://``, ``file://``, any protocol fsspec knows) read by byte range.

The readers ask three things of a file: its size, a seekable binary file object to stream a header,
a zip directory or a pickle from, and a tensor's exact byte span. For a local path those stay the
builtin ``open`` and ``Checkpoint``'s ``mmap`` (nothing here is on that path). For a URL they are a
:class:`RemoteSource`: ``fs.info`` gives the size (and the ETag or version id,
:func:`content_identity`); every byte comes from a range request through fsspec, checked to be
exactly the length asked (a server that truncates a response or lies about the size is a
CheckpointError naming the URL), counted in ``bytes_fetched`` and ``requests``, and kept in a small
cache of chunks: a miss fetches at least 64 KiB (the whole last 64 KiB near the end, where a zip's
directory is), more while reads run in order (doubling up to 8 MiB), and a tensor read out of
order fetches exactly its span. :meth:`RemoteSource.prefetch` fetches many small ranges (a torch
zip's local headers) as one batch of coalesced requests, sent concurrently.

fsspec and its backends are the optional extra ``ckptlint[remote]``: they are imported only when a
URL is opened, and without them a URL is a one-line error saying what to install. Credentials and
endpoints come the usual way for each backend (AWS environment variables, profiles and
``AWS_ENDPOINT_URL`` for s3fs; ``FSSPEC_<PROTOCOL>_<OPTION>`` for any fsspec storage option).
"""

from __future__ import annotations

import bisect
import io
import os
import posixpath
import re
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, BinaryIO

from ckptlint.errors import CheckpointError

URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
REMOTE_EXTRA = "reading remote paths needs the remote extra: pip install 'ckptlint[remote]'"
TIMEOUT_ENV = "CKPTLINT_REMOTE_TIMEOUT"  # seconds an HTTP(S) server may stay silent (connect or read)
DEFAULT_TIMEOUT = 30.0
BLOCK = 1 << 16  # a miss fetches at least this much (a pickle is read in 64 KiB chunks)
TAIL = 1 << 16  # a miss this close to the end fetches all of it (a zip's end record and directory)
MAX_AHEAD = 8 << 20  # reads in order fetch ahead, doubling up to this
SEQUENTIAL_GAP = 1 << 16  # a read at most this far past the last one continues it (zip local headers)
MERGE_GAP = 1 << 14  # prefetched ranges this close together are fetched as one
CONCURRENT = 16  # requests of a batch in flight at once
CACHE_BYTES = 32 << 20  # chunks kept per remote file
MAX_CACHED_CHUNK = 16 << 20  # larger fetches (a big tensor) go to the caller only


def is_remote(path: str) -> bool:
    """A URL (``scheme://...``) that names no local file: read through fsspec."""
    return URL.match(path) is not None and not os.path.lexists(path)


def join(folder: str, name: str) -> str:
    """``name`` inside ``folder``, for a local folder or a remote one."""
    return posixpath.join(folder, name) if is_remote(folder) else os.path.join(folder, name)


def parent(path: str) -> str:
    return posixpath.dirname(path) if is_remote(path) else os.path.dirname(path)


class _Totals:
    """Bytes and requests fetched by every remote source of this process (tests read them)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.requests = 0
        self.lock = threading.Lock()

    def add(self, count: int, requests: int) -> None:
        with self.lock:
            self.bytes += count
            self.requests += requests


TOTALS = _Totals()


def fetch_totals() -> tuple[int, int]:
    """(bytes, requests) fetched from remote files so far by this process."""
    return TOTALS.bytes, TOTALS.requests


def _problem(exc: BaseException, timeout: float) -> str:
    """One line for what went wrong talking to the remote store."""
    status = getattr(exc, "status", None)
    cause = exc.__cause__
    if isinstance(exc, FileNotFoundError) and cause is not None and getattr(cause, "status", None) not in (404, 410):
        return _problem(cause, timeout)  # fsspec's HTTP info calls every failure "not found"
    if isinstance(exc, FileNotFoundError) or status in (404, 410):
        return "no such remote file or folder"
    if isinstance(exc, PermissionError) or status in (401, 403):
        return "access denied (check the credentials for this store)"
    import asyncio  # only on this error path: importing it costs every run ~17 ms

    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)) or "timeout" in type(exc).__name__.lower():
        return f"the server did not answer within {timeout:g} s ({TIMEOUT_ENV} sets the limit for http(s))"
    if "support range requests" in str(exc):  # fsspec's HTTP file: a whole file answered a range
        return "the server ignores range requests (remote files are read by byte range)"
    if "payload" in type(exc).__name__.lower():  # aiohttp: the connection closed inside a response
        return "the server broke off a response before sending what it promised (truncated)"
    detail = str(exc).splitlines()[0][:200] if str(exc).strip() else ""
    return f"remote read failed ({type(exc).__name__}{': ' + detail if detail else ''})"


def _timeout() -> float:
    try:
        value = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT))
    except ValueError:
        value = DEFAULT_TIMEOUT
    return value if value > 0 else DEFAULT_TIMEOUT


def _filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem for ``url`` and the path inside it; fsspec's configuration
    (``FSSPEC_*`` variables, config files) applies, plus a timeout for HTTP(S)."""
    try:
        import fsspec
        import fsspec.config
        import fsspec.core
    except ImportError:
        raise CheckpointError(REMOTE_EXTRA, url) from None
    protocol = url.split("://", 1)[0].lower()
    try:
        fsspec.get_filesystem_class(protocol)
    except ValueError:
        raise CheckpointError(f"fsspec knows no protocol {protocol!r}", url) from None
    except ImportError as exc:
        needs = str(exc).splitlines()[0][:160] if str(exc) else f"the package for {protocol}://"
        raise CheckpointError(f"{REMOTE_EXTRA} ({needs})", url) from None
    options: dict[str, Any] = {}
    if protocol in ("http", "https") and "client_kwargs" not in fsspec.config.conf.get(protocol, {}):
        import aiohttp

        seconds = _timeout()
        options["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(total=None, sock_connect=seconds,
                                                                     sock_read=seconds)}
    try:
        return fsspec.core.url_to_fs(url, **options)
    except ImportError as exc:
        raise CheckpointError(f"{REMOTE_EXTRA} ({str(exc).splitlines()[0][:160]})", url) from None
    except Exception as exc:  # noqa: BLE001 - any backend failure is this URL's one-line error
        raise CheckpointError(_problem(exc, _timeout()), url) from None


class RemoteSource:
    """One remote file (or folder): its size and identity from ``fs.info``, its bytes by range."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.fs, self.fs_path = _filesystem(url)
        self.timeout = _timeout()
        # The first failure to fetch (a timeout, a short response): every later read raises it
        # again, and open_checkpoint reports it rather than what a reader made of it.
        self.failure: CheckpointError | None = None
        info = self._call(self.fs.info, self.fs_path)
        self.is_dir = info.get("type") == "directory"
        size = info.get("size")
        if not self.is_dir and (type(size) is not int or size < 0):
            raise CheckpointError("the server does not say how large the file is", url)
        self.size: int = size if type(size) is int else 0
        self.info = info
        self.bytes_fetched = 0
        self.requests = 0
        self._starts: list[int] = []  # cached chunks, sorted by start
        self._chunks: list[bytes] = []
        self._order: deque[int] = deque()  # chunk starts, oldest first
        self._cached = 0
        self._last_end = -1
        self._ahead = BLOCK
        self._file: Any = None
        self._lock = threading.RLock()

    def _fail(self, problem: str) -> CheckpointError:
        if self.failure is None:
            self.failure = CheckpointError(problem, self.url)
        return self.failure

    def _call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        if self.failure is not None:
            raise self.failure
        try:
            return function(*args, **kwargs)
        except CheckpointError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the backend raises is this URL's error
            raise self._fail(_problem(exc, self.timeout)) from None

    def identity(self) -> tuple[str, str, int] | None:
        """(kind, value, size) naming this version of the object: an S3 version id, else the
        ETag, else the modification time; None when the store gives none of them."""
        for kind, keys in (("version-id", ("VersionId", "version_id")), ("etag", ("ETag", "etag", "Etag")),
                           ("modified", ("LastModified", "Last-Modified", "mtime", "updated"))):
            for key in keys:
                value = self.info.get(key)
                if value not in (None, ""):
                    return kind, str(value).strip('"'), self.size
        return None

    # fetching ----------------------------------------------------------------------------------

    def _fetch(self, start: int, end: int) -> bytes:
        """Exactly bytes ``start`` to ``end`` - 1, in one range request."""
        if self._file is None:
            self._file = self._call(self.fs.open, self.fs_path, "rb", cache_type="none", size=self.size)
        file = self._file
        data = self._call(lambda: (file.seek(start), file.read(end - start))[1])
        self._count(len(data), 1)
        if len(data) != end - start:
            raise self._short(start, end, len(data))
        return bytes(data)

    def _short(self, start: int, end: int, got: int) -> CheckpointError:
        return self._fail(f"the server sent {got} bytes for bytes {start}-{end - 1} of a file it says holds "
                          f"{self.size}: it truncated the response or lied about the size")

    def _count(self, count: int, requests: int) -> None:
        self.bytes_fetched += count
        self.requests += requests
        TOTALS.add(count, requests)

    def _lookup(self, pos: int) -> tuple[int, bytes] | None:
        """The cached chunk holding byte ``pos`` (chunks may overlap: a few before are tried)."""
        at = bisect.bisect_right(self._starts, pos) - 1
        for index in range(at, max(at - 4, -1), -1):
            if pos < self._starts[index] + len(self._chunks[index]):
                return self._starts[index], self._chunks[index]
        return None

    def _remember(self, start: int, data: bytes) -> None:
        if len(data) > MAX_CACHED_CHUNK or not data:
            return
        end = start + len(data)
        hit = self._lookup(start)
        if hit is not None and end <= hit[0] + len(hit[1]):
            return  # already held
        at = bisect.bisect_left(self._starts, start)
        while at < len(self._starts) and self._starts[at] < end:  # chunks the new one holds go
            if self._starts[at] + len(self._chunks[at]) <= end and self._starts[at] != start:
                self._cached -= len(self._chunks[at])
                del self._starts[at], self._chunks[at]
            else:
                at += 1
        at = bisect.bisect_left(self._starts, start)
        if at < len(self._starts) and self._starts[at] == start:
            if len(self._chunks[at]) >= len(data):
                return
            self._cached -= len(self._chunks[at])
            self._chunks[at] = data
        else:
            self._starts.insert(at, start)
            self._chunks.insert(at, data)
            self._order.append(start)
        self._cached += len(data)
        while self._cached > CACHE_BYTES and self._order:
            oldest = self._order.popleft()
            index = bisect.bisect_left(self._starts, oldest)
            if index < len(self._starts) and self._starts[index] == oldest:
                self._cached -= len(self._chunks[index])
                del self._starts[index], self._chunks[index]

    def _plan(self, pos: int, end: int, exact: bool) -> tuple[int, int]:
        """Which range a miss at ``pos`` (wanting up to ``end``) fetches."""
        sequential = self._last_end >= 0 and self._last_end <= pos <= self._last_end + SEQUENTIAL_GAP
        self._ahead = min(self._ahead * 2, MAX_AHEAD) if sequential else BLOCK
        if pos >= self.size - TAIL:
            return max(0, min(pos, self.size - TAIL)), self.size
        if exact and not sequential:
            return pos, end
        return pos, min(self.size, max(end, pos + self._ahead))

    def read_at(self, offset: int, length: int, *, exact: bool = False) -> bytes:
        """Up to ``length`` bytes from ``offset`` (fewer only at the end of the file, as a file
        read; the caller checks it got what it expected). ``exact``: a tensor's span, fetched
        alone unless reads run in order."""
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
        with self._lock:
            parts: list[bytes] = []
            pos = offset
            while pos < end:
                hit = self._lookup(pos)
                if hit is None:
                    low, high = self._plan(pos, end, exact)
                    data = self._fetch(low, high)
                    self._remember(low, data)
                    hit = low, data
                start, chunk = hit
                piece = chunk[pos - start:end - start]
                parts.append(piece)
                pos += len(piece)
            self._last_end = end
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def prefetch(self, ranges: list[tuple[int, int]]) -> None:
        """Fetch many small ``(offset, length)`` ranges into the cache as one batch: ranges less
        than MERGE_GAP apart become one request; the requests go out concurrently."""
        wanted = sorted((max(0, o), min(o + n, self.size)) for o, n in ranges if n > 0 and o < self.size)
        merged: list[list[int]] = []
        with self._lock:
            for start, end in wanted:
                hit = self._lookup(start)
                if hit is not None and end <= hit[0] + len(hit[1]):
                    continue
                if merged and start - merged[-1][1] <= MERGE_GAP and end - merged[-1][0] <= MAX_CACHED_CHUNK:
                    merged[-1][1] = max(merged[-1][1], end)
                else:
                    merged.append([start, end])
            if not merged:
                return
            if len(merged) == 1:
                self._remember(merged[0][0], self._fetch(*merged[0]))
                return
            paths, starts, ends = [self.fs_path] * len(merged), [m[0] for m in merged], [m[1] for m in merged]
            if getattr(self.fs, "async_impl", False):
                results = self._call(self.fs.cat_ranges, paths, starts, ends, on_error="return", batch_size=CONCURRENT)
            else:
                results = self._call(self.fs.cat_ranges, paths, starts, ends, on_error="return")
            self._count(sum(len(r) for r in results if isinstance(r, bytes)), len(merged))
            for (start, end), data in zip(merged, results, strict=True):
                if isinstance(data, BaseException):
                    raise self._fail(_problem(data, self.timeout))
                if len(data) != end - start:
                    raise self._short(start, end, len(data))
                self._remember(start, bytes(data))

    def open(self) -> RemoteFile:
        return RemoteFile(self)

    def list_names(self) -> list[str]:
        """The names of a remote folder's files."""
        entries = self._call(self.fs.ls, self.fs_path, detail=True)
        return sorted(posixpath.basename(str(e.get("name", "")).rstrip("/")) for e in entries
                      if e.get("type") == "file")

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except Exception:  # noqa: BLE001, S110 - a read-only file; nothing to lose on close
                pass
            self._file = None
        self._starts, self._chunks, self._cached = [], [], 0
        self._order.clear()


class RemoteFile(io.RawIOBase):
    """A seekable binary file over a RemoteSource (for the readers that stream)."""

    def __init__(self, source: RemoteSource) -> None:
        self.source, self.position, self.name = source, 0, source.url

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.source.size}[whence]
        if base + offset < 0:
            raise OSError(22, "negative seek position")
        self.position = base + offset
        return self.position

    def tell(self) -> int:
        return self.position

    def read(self, size: int | None = -1) -> bytes:
        length = self.source.size - self.position if size is None or size < 0 else size
        data = self.source.read_at(self.position, length)
        self.position += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        memoryview(buffer).cast("B")[:len(data)] = data
        return len(data)


# a session: the sources one open_checkpoint made (a file's readers open it several times) -------

_SESSION: ContextVar[dict[str, RemoteSource] | None] = ContextVar("ckptlint_remote_session", default=None)


@contextmanager
def remote_session() -> Iterator[dict[str, RemoteSource]]:
    """Remote files opened inside share one RemoteSource per URL (one ``info``, one cache); a
    session inside another is the outer one."""
    current = _SESSION.get()
    if current is not None:
        yield current
        return
    sources: dict[str, RemoteSource] = {}
    token = _SESSION.set(sources)
    try:
        yield sources
    finally:
        _SESSION.reset(token)


def remote_source(url: str) -> RemoteSource:
    sources = _SESSION.get()
    if sources is not None and url in sources:
        return sources[url]
    source = RemoteSource(url)
    if sources is not None:
        sources[url] = source
    return source


def open_binary(path: str) -> BinaryIO:
    """``open(path, "rb")`` for a local path; a RemoteFile for a URL."""
    if "://" in path and is_remote(path):
        return remote_source(path).open()  # type: ignore[return-value]  # a RawIOBase with seek/read: what readers use
    return open(path, "rb")


def file_size(path: str) -> int:
    if "://" in path and is_remote(path):
        return remote_source(path).size
    return os.path.getsize(path)


def content_identity(path: str) -> tuple[str, str, int] | None:
    """What names this version of a remote file without reading it — ``("etag", value, size)``,
    ``("version-id", ...)`` or ``("modified", ...)`` — for a cache to key on; None for a local
    path (hash it) or a store that gives none. A CheckpointError when the URL cannot be read."""
    if not is_remote(path):
        return None
    with remote_session():
        source = remote_source(path)
        try:
            return source.identity()
        finally:
            source.close()


def expand_remote(pattern: str) -> list[str]:
    """The URLs a remote glob (``s3://zoo/**/*.safetensors``) matches, sorted, with their protocol."""
    fs, path = _filesystem(pattern)
    try:
        matches = fs.glob(path)
    except Exception as exc:  # noqa: BLE001 - whatever the backend raises is this pattern's error
        raise CheckpointError(_problem(exc, _timeout()), pattern) from None
    return sorted(fs.unstrip_protocol(str(match)) for match in matches)
