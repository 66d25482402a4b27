"""Infer what kind of layer a module is from its tensors' names and shapes."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Protocol


class Shaped(Protocol):
    @property
    def shape(self) -> tuple[int, ...]: ...  # read-only: a frozen TensorRef fits



# An affine-only norm module is a BatchNorm whose statistics are missing when its name says so
# (torchvision/timm `bn1`, `downsample.1`; Hugging Face ResNet `normalization`); otherwise it is
# a LayerNorm/GroupNorm, which has no running statistics by design.
BATCHNORM_NAME = re.compile(r"(^|\.)(bn\d*|batch_?norm\d*|normalization)$|(^|\.)downsample\.1$", re.I)
GROUPNORM_NAME = re.compile(r"(^|\.)(gn\d*|group_?norm\d*)$", re.I)
EMBEDDING_NAME = re.compile(r"embed|wte$|wpe$", re.I)
RUNNING_STATS = frozenset({"running_mean", "running_var"})


def kind_by_names(names: Iterable[str]) -> str | None:
    """The kind when the leaf names alone decide it, else None: a module with a ``weight`` (and
    none of the names below) needs its weight's rank and, for a norm, its path."""
    names = set(names)
    if not names:
        return "container"
    if names & RUNNING_STATS:
        return "batchnorm" if "num_batches_tracked" in names else "frozen_batchnorm"
    if "num_batches_tracked" in names:
        return "batchnorm"
    if "in_proj_weight" in names or {"q_proj_weight", "k_proj_weight", "v_proj_weight"} <= names:
        return "multihead_attention"
    return None if "weight" in names else "unknown"


def infer_kind(path: str, tensors: Mapping[str, Shaped]) -> str:
    """Name the layer kind of module ``path`` holding ``tensors`` (leaf name -> tensor)."""
    by_names = kind_by_names(tensors)
    if by_names is not None:
        return by_names
    weight = tensors["weight"]
    rank = len(weight.shape)
    if rank >= 3:
        return "conv"
    if rank == 2:
        return "embedding" if "bias" not in tensors and EMBEDDING_NAME.search(path) else "linear"
    if rank == 1:
        if BATCHNORM_NAME.search(path):
            return "batchnorm"
        return "groupnorm" if GROUPNORM_NAME.search(path) else "layernorm"
    return "unknown"
