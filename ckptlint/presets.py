"""Presets for well-known transfers (``data/presets.toml``) and the accepted expectations.

Kept apart from the facts so the command line can offer the choices without importing numpy.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from ckptlint._toml import tomllib

EXPECTATIONS = ("auto", "copied", "finetuned")


@cache
def presets() -> dict[str, dict[str, Any]]:
    """Each preset with ``scopes``: the places its backbone may lie, as the file names them."""
    text = resources.files("ckptlint.data").joinpath("presets.toml").read_text("utf-8")
    return tomllib.loads(text)


def preset(name: str | None) -> dict[str, Any]:
    """A preset by name (checked with the options), or {} for none."""
    return presets()[name] if name is not None else {}
