"""Rule code kept between runs, the way Python keeps ``__pycache__``.

Jinja2 turns each rule expression and message into Python code by parsing it, generating
source and compiling that: about 40 ms of a 0.4 s check at DETR size, for rule files that
rarely change. After a rule file is first compiled its code objects are stored, keyed by the
file's text and the Jinja2, Python and ckptlint versions, and loaded instead while all of those
are unchanged.

The folder is ``$CKPTLINT_CACHE_DIR``, else ``$XDG_CACHE_HOME/ckptlint``, else
``~/.cache/ckptlint``; ``CKPTLINT_NO_CACHE=1`` turns the cache off. The code in it is run, so
a folder another user owns or may write is never read, and each entry carries a SHA-256 of
its bytes: anything amiss (a bad checksum, a read or write error) means compiling as before.
"""

from __future__ import annotations

import hashlib
import importlib.util
import marshal
import os
import stat
from pathlib import Path
from types import CodeType
from typing import Any

import jinja2

import ckptlint
from ckptlint.output import replace_atomically


def _checks_digest() -> str:
    """Stored code skipped the load-time checks (``rules.py``, ``vocabulary_check.py``, the
    vocabulary itself) and DERIVED holds what they and ``fast_condition.py`` made: when any of
    them changes, the stored code must miss."""
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in (here / "rules.py", here / "vocabulary_check.py", here / "fast_condition.py",
                 here.parent / "vocabulary.py"):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


VERSIONS = (f"{ckptlint.__version__}|{jinja2.__version__}|{importlib.util.MAGIC_NUMBER.hex()}"
            f"|{_checks_digest()}")
DIGEST_SIZE = 32


def cache_dir() -> Path | None:
    """The cache folder, or None when caching is off."""
    if os.environ.get("CKPTLINT_NO_CACHE"):
        return None
    if os.environ.get("CKPTLINT_CACHE_DIR"):
        return Path(os.environ["CKPTLINT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ckptlint"


def _private(folder: Path) -> bool:
    """Whether only the current user can have put files in ``folder``."""
    try:
        info = os.lstat(folder)
    except OSError:
        return False
    if not stat.S_ISDIR(info.st_mode):
        return False
    return not (hasattr(os, "getuid") and (info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)))


def _entry(folder: Path, text: str) -> Path:
    return folder / (hashlib.sha256(f"{VERSIONS}\0{text}".encode()).hexdigest()[:40] + ".code")


# Beside the code, what the load-time checks derived from the parsed rule (plain data).
DERIVED = "derived"


def load(text: str) -> dict[str, Any] | None:
    """The code stored for the rule file whose text is ``text`` (and, under DERIVED, what the
    checks derived from it), or None."""
    folder = cache_dir()
    if folder is None or not _private(folder):
        return None
    try:
        blob = _entry(folder, text).read_bytes()
    except OSError:
        return None
    digest, payload = blob[:DIGEST_SIZE], blob[DIGEST_SIZE:]
    if hashlib.sha256(payload).digest() != digest:
        return None
    try:
        codes = marshal.loads(payload)  # noqa: S302 - our own bytes: a private folder and a matching SHA-256
    except (EOFError, ValueError, TypeError):
        return None
    valid = isinstance(codes, dict) and all(isinstance(c, CodeType) or (k == DERIVED and isinstance(c, dict))
                                            for k, c in codes.items())
    return codes if valid else None


def store(text: str, codes: dict[str, Any]) -> None:
    """Keep ``codes`` for the rule file whose text is ``text`` (atomically; failures ignored)."""
    folder = cache_dir()
    if folder is None:
        return
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if _private(folder):
            payload = marshal.dumps(codes)
            replace_atomically(_entry(folder, text), hashlib.sha256(payload).digest() + payload, private=True)
    except (OSError, ValueError):
        pass  # the cache only saves time
