"""Naming-scheme tables (``data/naming_schemes.toml``) turned into key rewriters."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

from ckptlint._toml import tomllib

PLACEHOLDER = re.compile(r"\{(\w+)([+-]\d+)?\}")


@dataclass(frozen=True)
class Scheme:
    name: str
    rules: tuple[tuple[re.Pattern[str], str], ...]

    def canonical(self, key: str) -> str:
        """The key in torchvision names (unchanged when no rule applies)."""
        for pattern, template in self.rules:
            match = pattern.search(key)
            if match:
                return key[:match.start(1)] + _fill(template, match) + key[match.end():]
        return key


def _fill(template: str, match: re.Match[str]) -> str:
    return PLACEHOLDER.sub(lambda m: str(int(match.group(m.group(1))) + int(m.group(2) or 0)), template)


@cache
def schemes() -> tuple[Scheme, ...]:
    text = resources.files("ckptlint.data").joinpath("naming_schemes.toml").read_text("utf-8")
    return tuple(
        Scheme(entry["name"], tuple((re.compile(r"(^|(?<=\.))(" + rule["from"] + ")"), rule["to"])
                                    for rule in entry["rules"]))
        for entry in tomllib.loads(text)["scheme"]
    )


# The top-level modules of a torchvision ResNet: where a canonical name starts.
RESNET_ROOT = re.compile(r"(?:^|\.)((?:conv1|bn1|fc|layer\d+)\.)")


def canonical_name(key: str) -> str:
    """The key with every naming scheme applied, from the ResNet's own root on (``resnet.``,
    ``model.``, a ``--map`` target prefix are wrappers): torchvision names where a scheme knows
    them, the key itself otherwise."""
    for scheme in schemes():
        key = scheme.canonical(key)
    match = RESNET_ROOT.search(key)
    return key[match.start(1):] if match else key
