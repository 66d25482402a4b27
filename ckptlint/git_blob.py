"""``ckptlint diff --git BASE PATH``: the old version of a file, read from git into a temporary file.

The blob is written by ``git cat-file blob BASE:./PATH`` (what ``git show BASE:PATH`` prints
for a file, without any textconv), run without a shell. A blob that is a Git LFS pointer is
replaced by its object when the object lies in the repository's LFS store
(``<git dir>/lfs/objects/aa/bb/<oid>``, its size and SHA-256 checked), so nothing is fetched;
otherwise the error says how to fetch it. Every failure is one line (exit 2).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ckptlint.errors import CheckpointError, ConfigError

LFS_POINTER_START = b"version https://git-lfs.github.com/spec/"
MAX_POINTER_BYTES = 1024  # the LFS specification's bound on a pointer file
POINTER_OID = re.compile(rb"^oid sha256:([0-9a-f]{64})$", re.MULTILINE)
POINTER_SIZE = re.compile(rb"^size (\d+)$", re.MULTILINE)
HASH_BLOCK = 1 << 22


@dataclass(frozen=True)
class GitFile:
    """A file as BASE holds it: ``path`` to read (a temporary file or a local LFS object) and the
    ``label`` reports name it by (``BASE:PATH``)."""

    path: str
    label: str


def _git(args: list[str], cwd: str | None = None) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=False)  # noqa: S603, S607
    except FileNotFoundError:
        raise ConfigError("--git needs the git command, and it is not installed (not on PATH)") from None


def _stderr(result: subprocess.CompletedProcess[bytes]) -> str:
    lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
    return lines[0].removeprefix("fatal: ") if lines else f"git exited {result.returncode}"


def _spec(base: str, path: str) -> str:
    """``BASE:./PATH``: git resolves ``./`` from the current folder, as the working-tree PATH is."""
    relative = os.path.relpath(path) if os.path.isabs(path) else os.path.normpath(path)
    return f"{base}:./{relative.replace(os.sep, '/')}"


@contextmanager
def git_file(base: str, path: str) -> Iterator[GitFile]:
    """``path`` as revision ``base`` holds it, in a temporary file deleted afterwards (or the
    local LFS object a pointer names)."""
    label = f"{base}:{path}"
    common = _git(["rev-parse", "--git-common-dir"])
    if common.returncode != 0:
        raise ConfigError(f"--git {base}: the current folder is not in a git repository ({_stderr(common)})")
    git_dir = os.path.abspath(common.stdout.decode().strip())
    if _git(["rev-parse", "--verify", "--quiet", f"{base}^{{commit}}"]).returncode != 0:
        raise ConfigError(f"--git {base}: no such revision in this repository")
    spec = _spec(base, path)
    kind = _git(["cat-file", "-t", spec])
    if kind.returncode != 0:
        raise ConfigError(f"--git {base}: {path} is not in {base}")
    if kind.stdout.strip() != b"blob":
        raise ConfigError(f"--git {base}: {path} is a {kind.stdout.decode().strip()} in {base}, not a file "
                          "(--git reads one checkpoint file)")
    with tempfile.TemporaryDirectory(prefix="ckptlint-git-") as folder:
        blob = os.path.join(folder, os.path.basename(os.path.normpath(path)) or "checkpoint")
        with open(blob, "wb") as out:
            try:
                shown = subprocess.run(["git", "cat-file", "blob", spec], stdout=out,  # noqa: S603, S607
                                       stderr=subprocess.PIPE, check=False)
            except FileNotFoundError:
                raise ConfigError("--git needs the git command, and it is not installed (not on PATH)") from None
        if shown.returncode != 0:
            raise ConfigError(f"--git {base}: cannot read {path} ({_stderr(shown)})")
        yield GitFile(_lfs_object(blob, git_dir, base, label) or blob, label)


def _lfs_object(blob: str, git_dir: str, base: str, label: str) -> str | None:
    """The local object of a Git LFS pointer (None: the blob is no pointer)."""
    if os.path.getsize(blob) > MAX_POINTER_BYTES:
        return None
    with open(blob, "rb") as handle:
        text = handle.read()
    if not text.startswith(LFS_POINTER_START):
        return None
    oid, size = POINTER_OID.search(text), POINTER_SIZE.search(text)
    if oid is None or size is None:
        raise CheckpointError("a Git LFS pointer without a sha256 oid and a size: cannot find its object", label)
    digest = oid.group(1).decode()
    obj = os.path.join(git_dir, "lfs", "objects", digest[:2], digest[2:4], digest)
    if not os.path.isfile(obj):
        raise CheckpointError(f"is a Git LFS pointer and its object is not present locally (run `git lfs fetch "
                              f"origin {base}`, or check out with LFS, then run this again)", label)
    if os.path.getsize(obj) != int(size.group(1)) or _sha256(obj) != digest:
        raise CheckpointError(f"the local Git LFS object {obj} does not match its pointer (size or SHA-256 "
                              "differ): run `git lfs fsck`", label)
    return obj


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()
