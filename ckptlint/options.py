"""The options of a run: what the command line, the configuration file and ``lint()`` fill in."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ckptlint.engine.selection import Selection
from ckptlint.io.checkpoint import Checkpoint


@dataclass(frozen=True)
class TransferOptions:
    """How the target should relate to the pretrained checkpoint."""

    expect: str = "auto"  # auto: decided from the evidence; copied; finetuned
    preset: str | None = None
    scope: str | None = None
    maps: tuple[tuple[str, str], ...] = ()
    max_drift: float = 0.25  # relative L2 change a fine-tuned trainable tensor may show


@dataclass(frozen=True)
class Options:
    """Everything that shapes a run; the CLI and configuration fill it in."""

    selection: Selection = field(default_factory=Selection)
    fail_on: str = "error"
    key: str | None = None
    hash_files: bool = True
    rule_folders: tuple[Path, ...] = ()
    pretrained: str | Checkpoint | None = None  # a path, or an in-memory checkpoint
    pretrained_key: str | None = None
    transfer: TransferOptions = field(default_factory=TransferOptions)
    model: str | None = None  # package.module:factory building the model to load into
    allow_globals: tuple[str, ...] = ()  # pickle globals the project trusts (`allow-globals`)


