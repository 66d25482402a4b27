"""Signs that a checkpoint was written by a training loop: optimizer and scheduler state, step
counters, the run's arguments. Evidence that the weights are a fine-tuned descendant of the
pretrained ones rather than a copy (see facts/expectation.py)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Top-level entries training loops save beside the weights (DETR: optimizer, lr_scheduler, epoch,
# args; Lightning: optimizer_states, lr_schedulers, epoch, global_step; timm: optimizer, epoch,
# arch, args; many scripts: optimizer_state_dict, scheduler, step, scaler).
TRAINING_KEYS = frozenset({
    "optimizer", "optimizer_state_dict", "optimizer_states", "lr_scheduler", "lr_schedulers", "scheduler",
    "scheduler_state_dict", "epoch", "global_step", "step", "iteration", "args", "training_args", "scaler",
    "amp", "loops",
})
# Files the Hugging Face Trainer writes beside the model in a checkpoint folder.
TRAINING_FILES = ("optimizer.pt", "scheduler.pt", "trainer_state.json", "training_args.bin")


def training_state_in(root: Any) -> tuple[str, ...]:
    """The training entries of a checkpoint's top-level mapping, in the file's order."""
    if not isinstance(root, Mapping):
        return ()
    return tuple(str(key) for key in root if isinstance(key, str) and key in TRAINING_KEYS)


def training_state_beside(folder: Path, names: list[str] | None = None) -> tuple[str, ...]:
    """The training files in a model folder (``names``: a remote folder's listing)."""
    if names is not None:
        return tuple(name for name in TRAINING_FILES if name in names)
    return tuple(name for name in TRAINING_FILES if (folder / name).is_file())
