"""Which paths a check lints: glob patterns expanded, each path once, one shard of them kept."""

from __future__ import annotations

import glob
import hashlib
import os
import re
from collections.abc import Iterable, Sequence

from ckptlint.errors import ConfigError
from ckptlint.io.source import expand_remote, is_remote

SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def _is_pattern(path: str) -> bool:
    return glob.has_magic(path) and not os.path.lexists(path)  # a file really named "a[1].pt" is that file


def expand_paths(paths: Iterable[str]) -> list[str]:
    """Each path as given; a glob pattern (``zoo/**/*.safetensors``: ``**`` crosses folders) that
    names no existing path is replaced by its matches, sorted; a pattern matching nothing is a
    usage error. A path given twice (or given and matched) is checked once, where it first
    appears. A remote pattern (``s3://zoo/**/*.safetensors``) is expanded by its filesystem."""
    seen: dict[str, None] = {}
    for path in paths:
        if is_remote(path) and glob.has_magic(path.split("://", 1)[1]):
            matches = expand_remote(path)
            if not matches:
                raise ConfigError(f"no object matches {path!r}")
            seen.update(dict.fromkeys(m for m in matches if m not in seen))
        elif "://" not in path and _is_pattern(path):
            matches = sorted(glob.glob(path, recursive=True))
            if not matches:
                raise ConfigError(f"no file or folder matches {path!r}")
            for match in matches:
                seen.setdefault(match, None)
        else:
            seen.setdefault(path, None)
    return list(seen)


def parse_shard(value: str) -> tuple[int, int]:
    """``"k/N"`` -> (k, N), with 1 <= k <= N."""
    match = SHARD.match(value)
    if match:
        k, n = int(match.group(1)), int(match.group(2))
        if 1 <= k <= n:
            return k, n
    raise ConfigError(f"--shard must be k/N with 1 <= k <= N (e.g. 2/8), not {value!r}")


def shard_of(path: str, count: int) -> int:
    """Which of ``count`` shards (0-based) a path belongs to: the SHA-256 of the path as given
    (normalised: ``./a//b`` is ``a/b``, ``/`` separators), modulo ``count``. Depends only on
    the path's text, so every machine of a CI matrix splits the same list the same way."""
    normal = os.path.normpath(path).replace(os.sep, "/") if "://" not in path else path
    return int.from_bytes(hashlib.sha256(normal.encode("utf-8", "surrogateescape")).digest()[:8], "big") % count


def select_shard(paths: Sequence[str], k: int, n: int) -> list[str]:
    """The paths of shard ``k`` of ``n`` (1-based), in their order."""
    return [path for path in paths if shard_of(path, n) == k - 1]
