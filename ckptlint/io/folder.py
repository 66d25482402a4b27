"""A Hugging Face model folder: which file holds its weights, and which others a loader could unpickle.

The weights may come from ``model.safetensors`` while ``pytorch_model.bin``, ``training_args.bin``
or ``optimizer.pt`` lie beside it: a folder is only as safe as every pickle in it, so each of those
is scanned too (its globals are judged under its own path).
"""

from __future__ import annotations

import os

from ckptlint.errors import CheckpointError

# What a Hugging Face model folder holds, most preferred first.
WEIGHT_FILES = (
    "model.safetensors.index.json", "model.safetensors",
    "pytorch_model.bin.index.json", "pytorch_model.bin",
)
# Suffixes of files that torch.load or pickle.load would unpickle (optimizer.pt,
# rng_state.pth, scheduler.pt, training_args.bin, old "model_best.pth.tar" files, ...).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".tar")


def weights_file(folder: str) -> str:
    """The path of the folder's weights (an index or a single file), most preferred first."""
    for name in WEIGHT_FILES:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise CheckpointError(f"directory holds no checkpoint (looked for {', '.join(WEIGHT_FILES)})", folder)


def pickle_files(folder: str, read: set[str]) -> list[str]:
    """The folder's files a loader could unpickle, except those already ``read`` as its weights."""
    names = sorted(name for name in os.listdir(folder) if name.endswith(PICKLE_SUFFIXES))
    paths = (os.path.join(folder, name) for name in names)
    return [path for path in paths if os.path.isfile(path) and path not in read]
