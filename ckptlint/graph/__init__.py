"""Module graphs of checkpoints: module-path nodes with their kind and tensors."""

