"""Build the user's model from ``package.module:factory`` — their code, run because they asked."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from ckptlint.errors import ConfigError
from ckptlint.io.memory import MemoryCheckpoint, memory_checkpoint
from ckptlint.load_mapping import load_mapping


def load_model(spec: str) -> MemoryCheckpoint:
    """Import ``package.module``, call ``factory()`` with no arguments, take its state dict.

    The current directory is importable, as with ``python -m``. Nothing from any checkpoint
    file is involved: this is the code of the branch being checked. When the model's library
    renames keys as it loads them (transformers), the result carries that renaming as
    ``load_mapping`` (see ckptlint.load_mapping); otherwise ``load_mapping`` is None.
    """
    module_name, _, attribute = spec.partition(":")  # its form was checked with the options
    sys.path.insert(0, os.getcwd())
    try:
        factory: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            factory = getattr(factory, part)
        built = factory()
    except Exception as exc:  # noqa: BLE001 - the user's code may fail any way; report it in one line
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise ConfigError(f"--model {spec}: {type(exc).__name__}: {detail}") from None
    finally:
        sys.path.remove(os.getcwd())
    checkpoint = memory_checkpoint(built, f"<model {spec}>")
    checkpoint.load_mapping = load_mapping(built)  # read by facts/model_reference.py
    return checkpoint
