"""Write a file completely or not at all: a temporary file beside the target, then a rename."""

from __future__ import annotations

import os
import tempfile

from ckptlint.errors import ReportError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def replace_atomically(path: str | os.PathLike[str], data: bytes, private: bool = False) -> None:
    """Put ``data`` at ``path`` in one rename, so a reader sees the old file or the whole new one
    and an interruption or a full disk leaves no partial file; OSError says why it failed.
    ``private`` keeps mkstemp's owner-only mode; otherwise the umask decides, as for any file."""
    fd, temporary = tempfile.mkstemp(prefix=".ckptlint-", suffix=".tmp", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        if not private:
            os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def write_atomically(path: str, text: str) -> None:
    """A report or baseline file (UTF-8, ``\\n`` line ends); a failure is a ReportError."""
    try:
        replace_atomically(path, text.encode("utf-8"))
    except OSError as exc:
        raise ReportError(f"cannot write report ({exc.strerror})", path) from None
