"""Pausing Python's cyclic garbage collector while millions of acyclic objects are made."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic collection inside the block: each collection would walk every object made so
    far again (at a million tensors, half the time of parsing a safetensors header and a third of
    building the module table). The collector's previous state is restored, also on error."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
