"""ckptlint: static analysis for deep-learning checkpoints."""

__version__ = "0.1.0"
