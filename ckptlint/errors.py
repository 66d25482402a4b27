"""The one exception hierarchy of ckptlint.

    CkptlintError                 anything ckptlint reports as a one-line error (exit 2)
    ├── CheckpointError           an input file could not be read as a checkpoint
    │   └── LfsPointerError       the file is a Git LFS pointer, not the weights
    ├── RuleError                 a rule file failed to parse, validate or compile
    ├── ConfigError               configuration or command-line options are wrong
    └── ReportError               a report could not be written

Every error carries the file it is about, so the CLI can print ``file: problem``.
"""

from __future__ import annotations


class CkptlintError(Exception):
    """Base of every error ckptlint turns into a one-line message and exit code 2."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message

    def __reduce__(self) -> tuple[type, tuple[str, str | None]]:
        """Raised in a worker process (``ckptlint check --jobs``), it arrives with its file."""
        return type(self), (self.message, self.path)


class CheckpointError(CkptlintError):
    """An input could not be read as a checkpoint (missing, truncated, corrupt, ...).

    ``pickle_globals`` keeps the globals a pickle named before reading failed, so the security
    rules still judge a file that is malicious *and* broken.
    """

    def __init__(self, message: str, path: str | None = None, pickle_globals: list | None = None) -> None:
        super().__init__(message, path)
        self.pickle_globals = list(pickle_globals or [])


class LfsPointerError(CheckpointError):
    """The input is a Git LFS pointer file: the weights were never downloaded."""


class RuleError(CkptlintError):
    """A rule file is invalid; names the rule file."""


class ConfigError(CkptlintError):
    """Configuration or options are invalid."""


class ReportError(CkptlintError):
    """A report could not be written."""
