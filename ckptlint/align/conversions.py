"""Conversion tables (``data/conversions.toml``) turned into key rewriters that also know which
tensors one codebase keeps fused (``in_proj_weight``) and another split (``q_proj``, ``k_proj``,
``v_proj``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

from ckptlint._toml import tomllib


@dataclass(frozen=True)
class Canonical:
    """A key in a conversion's target names: ``part`` of ``parts`` along the first dimension of
    the tensor ``name`` (part 0 of 1 is the whole tensor)."""

    name: str
    part: int = 0
    parts: int = 1


@dataclass(frozen=True)
class Conversion:
    name: str
    rules: tuple[tuple[re.Pattern[str], str], ...]
    split: dict[str, tuple[str, int, int]]  # "q_proj.weight" -> ("in_proj_weight", 0, 3)
    touches: re.Pattern[str]  # any rule's pattern, or a split leaf: one search rules a key out

    def renames(self, key: str) -> bool:
        return self.touches.search(key) is not None and self.canonical(key) != Canonical(key)

    def canonical(self, key: str) -> Canonical:
        """The key in the conversion's names, and which part of a fused tensor it is."""
        for pattern, template in self.rules:
            key = pattern.sub(template, key, count=1)
        module, _, leaf = key.rpartition(".")
        last = module.rpartition(".")[2]
        fused = self.split.get(f"{last}.{leaf}")
        if fused is None:
            return Canonical(key)
        name, part, parts = fused
        owner = module.rpartition(".")[0]
        return Canonical(f"{owner}.{name}" if owner else name, part, parts)


@cache
def conversions() -> tuple[Conversion, ...]:
    text = resources.files("ckptlint.data").joinpath("conversions.toml").read_text("utf-8")
    return tuple(_conversion(entry) for entry in tomllib.loads(text)["conversion"])


def _conversion(entry: dict) -> Conversion:
    split = {}
    for group in entry.get("parts", ()):
        for index, leaf in enumerate(group["split"]):
            split[leaf] = (group["fused"], index, len(group["split"]))
    rules = tuple((re.compile(rule["from"]), rule["to"]) for rule in entry["rules"])
    touches = "|".join([*(f"(?:{rule['from']})" for rule in entry["rules"]),
                        *(re.escape("." + leaf) + "$" for leaf in split)])
    return Conversion(entry["name"], rules, split, re.compile(touches))
