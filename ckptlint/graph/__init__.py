"""Module graphs of checkpoints (and, with a pretrained checkpoint, their alignment)."""

