"""Stable identities for findings (for baselines and SARIF), independent of where the repo lives."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: results.py does not depend on this module
    from ckptlint.results import Diagnosis, Finding



def find_source_root(start: str | os.PathLike[str] = ".") -> str:
    """The enclosing git work tree (a folder holding ``.git``), or ``start`` itself."""
    here = Path(start).resolve()
    for folder in (here, *here.parents):
        if (folder / ".git").exists():
            return str(folder)
    return str(here)


def relative_path(path: str, root: str) -> str:
    """``path`` relative to ``root`` with forward slashes, or absolute when outside it."""
    absolute = Path(path).resolve()
    try:
        return PurePosixPath(absolute.relative_to(Path(root).resolve())).as_posix()
    except ValueError:
        return absolute.as_posix()


def finding_fingerprint(finding: Finding, root: str) -> str:
    """Rule, file (relative to the source root) and key: what a finding is about, not its numbers."""
    text = "\0".join((finding.code, relative_path(finding.file, root), finding.key or ""))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def diagnosis_fingerprint(diagnosis: Diagnosis, root: str) -> str:
    """Kind, file (relative to the source root) and modules: the cause, not its numbers."""
    text = "\0".join((diagnosis.kind, relative_path(diagnosis.file, root), *diagnosis.modules))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]
