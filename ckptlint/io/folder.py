"""A Hugging Face model folder: which file holds its weights, and which others a loader could unpickle.

The weights may come from ``model.safetensors`` while ``pytorch_model.bin``, ``training_args.bin``
or ``optimizer.pt`` lie beside it: a folder is only as safe as every pickle in it, so each of those
is scanned too (its globals are judged under its own path).
"""

from __future__ import annotations

import os

from ckptlint.errors import CheckpointError
from ckptlint.io.source import is_remote, join, remote_session, remote_source

# What a Hugging Face model folder holds, most preferred first.
WEIGHT_FILES = (
    "model.safetensors.index.json", "model.safetensors",
    "pytorch_model.bin.index.json", "pytorch_model.bin",
)
# Suffixes of files that torch.load or pickle.load would unpickle (optimizer.pt,
# rng_state.pth, scheduler.pt, training_args.bin, old "model_best.pth.tar" files, ...).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".tar")


def is_folder(path: str) -> bool:
    """A local folder, or a remote one (an S3 prefix holding objects)."""
    if "://" in path and is_remote(path):
        try:
            with remote_session():
                return remote_source(path).is_dir
        except CheckpointError:
            return False
    return os.path.isdir(path)


def folder_names(folder: str) -> list[str]:
    """The names of a folder's files (a remote folder's listing)."""
    if is_remote(folder):
        with remote_session():
            return remote_source(folder).list_names()
    return sorted(name for name in os.listdir(folder) if os.path.isfile(os.path.join(folder, name)))


def weights_file(folder: str) -> str:
    """The path of the folder's weights (an index or a single file), most preferred first."""
    if is_remote(folder):
        names = set(folder_names(folder))
        for name in WEIGHT_FILES:
            if name in names:
                return join(folder, name)
        raise CheckpointError(f"directory holds no checkpoint (looked for {', '.join(WEIGHT_FILES)})", folder)
    for name in WEIGHT_FILES:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise CheckpointError(f"directory holds no checkpoint (looked for {', '.join(WEIGHT_FILES)})", folder)


def pickle_files(folder: str, read: set[str]) -> list[str]:
    """The folder's files a loader could unpickle, except those already ``read`` as its weights."""
    if is_remote(folder):
        remote = (join(folder, name) for name in folder_names(folder) if name.endswith(PICKLE_SUFFIXES))
        return [path for path in remote if path not in read]
    names = sorted(name for name in os.listdir(folder) if name.endswith(PICKLE_SUFFIXES))
    paths = (os.path.join(folder, name) for name in names)
    return [path for path in paths if os.path.isfile(path) and path not in read]
