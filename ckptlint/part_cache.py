"""``--cache DIR``: a file whose content, options and ckptlint are unchanged is not linted again.

An entry is a partial report (plain JSON, never a pickle) stored under a key made of
- the run's fingerprint: ckptlint's version and every file of its code, data and rules (shipped
  and packs), the Python and numpy versions;
- the options that shape the result (canonical: sets sorted), the source root (baselines and
  fingerprints are relative to it), and the content identity of the pretrained file(s);
- the target's path as given (findings name it; the same bytes under another path are another
  entry: simpler than rewriting paths, and a folder's other files are scanned under their own);
- the target's content identity.

Content identity (``identity``): for a local file, the SHA-256 of its bytes, remembered in the
cache by (path, size, mtime_ns, inode) so an unchanged file is not read again — a file rewritten
in place with the same size and modification time keeps its old identity (an accepted
limitation); for a folder, its files' identities; for a shard index, the index and its shards.
An object store gives (ETag or version id, size) instead (``io.source.content_identity``): no
bytes read.

Entries are written atomically (temporary file, rename) and checked when read (they parse, the
key inside matches, the part merges); anything else is ignored and rewritten. Parts with read
errors are not stored (an error may be passing: a permission, a file being written). Runs with
``--model`` are never cached (the model's code is not part of the key). The folder must be one
only the user can write: an entry decides what a file is reported as.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
from collections.abc import Iterator
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import ckptlint
from ckptlint.engine.registry import builtin_rules_dir, pack_folders
from ckptlint.errors import CkptlintError, ConfigError
from ckptlint.io.source import content_identity, is_remote
from ckptlint.merge import PartError, read_part
from ckptlint.options import Options
from ckptlint.output import replace_atomically

CHUNK = 4 << 20
MAX_FOLDER_FILES = 10_000  # a folder target with more files is not cached (its identity would cost a walk)

def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def canonical(value: Any) -> Any:
    """Plain data that is the same in every process for equal options (sets sorted)."""
    if is_dataclass(value) and not isinstance(value, type):
        return {"type": type(value).__name__, **{f.name: canonical(getattr(value, f.name)) for f in fields(value)}}
    if isinstance(value, (set, frozenset)):
        return sorted(canonical(item) for item in value)
    if isinstance(value, (list, tuple)):
        return [canonical(item) for item in value]
    if isinstance(value, dict):
        return [[str(key), canonical(item)] for key, item in sorted(value.items(), key=lambda kv: str(kv[0]))]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"no canonical form for {type(value).__name__}")


def _package_files() -> Iterator[Path]:
    package = Path(ckptlint.__file__).resolve().parent
    yield from sorted(p for p in package.rglob("*") if p.suffix in (".py", ".toml", ".json", ".j2", ".css", ".js")
                      and "__pycache__" not in p.parts)
    for folder in (builtin_rules_dir(), *(folder for _, folder in pack_folders())):
        yield from sorted(p for p in Path(folder).rglob("*.toml") if "__pycache__" not in p.parts)


def run_fingerprint() -> str:
    """ckptlint's version, code, data and rules, and the numeric libraries that decide values."""
    digest = hashlib.sha256(f"{ckptlint.__version__}\0{sys.version}\0".encode())
    try:
        from importlib.metadata import version

        digest.update(version("numpy").encode())
    except Exception:  # noqa: BLE001 - numpy's metadata is missing: the key simply does not include it
        digest.update(b"numpy?")
    for path in _package_files():
        digest.update(str(path).encode("utf-8", "surrogateescape") + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _private_folder(folder: Path) -> bool:
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode):
        return False
    return not (hasattr(os, "getuid") and (info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)))


class PartCache:
    """Partial reports by content identity, in a folder (``parts/``, ``hashes/``)."""

    def __init__(self, folder: str | os.PathLike[str], source_root: str) -> None:
        self.folder = Path(folder)
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            private = _private_folder(self.folder)
        except OSError as exc:
            raise ConfigError(f"--cache: cannot use this folder ({exc.strerror})", str(folder)) from None
        if not private:
            raise ConfigError("--cache must be a folder only you can write (its entries decide what a file is "
                              "reported as)", str(folder))
        self.source_root = source_root
        self.run = run_fingerprint()
        self._options: dict[int, tuple[Options, str | None]] = {}
        self.hits = self.misses = self.stored = 0

    # -- content identity --------------------------------------------------------------------

    def _memo_path(self, absolute: str) -> Path:
        name = hashlib.sha256(absolute.encode("utf-8", "surrogateescape")).hexdigest()
        return self.folder / "hashes" / name[:2] / f"{name}.json"

    def _file_sha256(self, path: str, info: os.stat_result) -> str:
        absolute = os.path.abspath(path)
        memo = self._memo_path(absolute)
        seen = {"path": absolute, "size": info.st_size, "mtime_ns": info.st_mtime_ns, "inode": info.st_ino}
        try:
            stored = json.loads(memo.read_text("utf-8"))
            if isinstance(stored, dict) and {k: stored.get(k) for k in seen} == seen \
                    and isinstance(stored.get("sha256"), str) and len(stored["sha256"]) == 64:
                return str(stored["sha256"])
        except (OSError, ValueError):
            pass
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
        sha = digest.hexdigest()
        self._write(memo, {**seen, "sha256": sha})
        return sha

    def identity(self, path: str) -> str | None:
        """What the content of ``path`` is (see the module's docstring); None: unknown, not cached."""
        if is_remote(path):  # an object's metadata (ETag or version id, and size), no bytes read
            try:
                found = content_identity(path)
            except CkptlintError:
                return None
            return None if found is None else _digest([path.split("://", 1)[0], *found])
        try:
            info = os.stat(path)
            if stat.S_ISDIR(info.st_mode):
                return self._folder_identity(path)
            if not stat.S_ISREG(info.st_mode):
                return None
            own = self._file_sha256(path, info)
            if path.endswith(".json"):  # a shard index: its shards are part of what is checked
                return _digest([own, self._shard_identities(path)])
            return own
        except OSError:
            return None

    def _folder_identity(self, folder: str) -> str | None:
        entries = []
        for root, dirs, names in os.walk(folder):
            dirs.sort()
            for name in sorted(names):
                path = os.path.join(root, name)
                info = os.stat(path)
                if stat.S_ISREG(info.st_mode):
                    entries.append([os.path.relpath(path, folder), self._file_sha256(path, info)])
                if len(entries) > MAX_FOLDER_FILES:
                    return None
        return _digest(entries)

    def _shard_identities(self, index: str) -> list[Any]:
        try:
            data = json.loads(Path(index).read_text("utf-8"))
            shards = sorted(set(data["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return []
        folder = os.path.dirname(index)
        found = []
        for shard in shards:
            path = os.path.join(folder, str(shard))
            try:
                info = os.stat(path)
                found.append([shard, self._file_sha256(path, info) if stat.S_ISREG(info.st_mode) else "not a file"])
            except OSError:
                found.append([shard, "missing"])
        return found

    # -- keys and entries --------------------------------------------------------------------

    def _options_key(self, options: Options) -> str | None:
        """The options' part of the key (None: a run that is never cached); once per options."""
        known = self._options.get(id(options))
        if known is not None and known[0] is options:
            return known[1]
        key: str | None = None
        references = [options.pretrained, *options.candidates] if options.pretrained is not None else []
        if not options.model and all(isinstance(r, str) for r in references):
            identities = [self.identity(str(r)) for r in references]
            if None not in identities:
                key = _digest([canonical(options), self.source_root, identities])
        self._options[id(options)] = (options, key)
        return key

    def key(self, path: str, options: Options) -> str | None:
        """The entry's key for ``path`` checked with ``options``; None when it is not cacheable."""
        options_key = self._options_key(options)
        if options_key is None:
            return None
        identity = self.identity(path)
        return None if identity is None else _digest([self.run, options_key, path, identity])

    def _entry(self, key: str) -> Path:
        return self.folder / "parts" / key[:2] / f"{key}.json"

    def get(self, key: str | None) -> dict[str, Any] | None:
        """The stored part, or None (missing, unreadable, corrupt: ignored, rewritten later)."""
        if key is None:
            return None
        try:
            stored = json.loads(self._entry(key).read_text("utf-8"))
            if isinstance(stored, dict) and stored.get("key") == key:
                part = stored.get("part")
                read_part(part)
                self.hits += 1
                return part if isinstance(part, dict) else None
        except (OSError, ValueError, PartError):
            pass
        self.misses += 1
        return None

    def put(self, key: str | None, part: dict[str, Any]) -> None:
        if key is None or part.get("errors"):
            return
        self._write(self._entry(key), {"key": key, "part": part})
        self.stored += 1

    def _write(self, path: Path, value: Any) -> None:
        """Atomically; a cache that cannot be written only costs the next run time."""
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            replace_atomically(path, json.dumps(value, ensure_ascii=False).encode("utf-8"), private=True)
        except OSError:
            pass
