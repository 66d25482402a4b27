"""Write a report completely or not at all: a temporary file beside the target, then a rename."""

from __future__ import annotations

import os
import tempfile

from ckptlint.errors import ReportError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomically(path: str, text: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, temporary = tempfile.mkstemp(prefix=".ckptlint-", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise ReportError(f"cannot write report ({exc.strerror})", path) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it private; a report is not
        os.replace(temporary, path)
    except BaseException as exc:
        os.unlink(temporary)
        if isinstance(exc, OSError):
            raise ReportError(f"cannot write report ({exc.strerror})", path) from None
        raise
