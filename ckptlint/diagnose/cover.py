"""The smallest set of subtrees covering a group's tensors: ``layer4``, not its 50 tensors.

A module covers the group when every known key under it belongs to the group (the known keys are
the file's paired keys, both sides). A module with no known key under it, such as a block the
pretrained model does not have, is covered by whatever the group holds there. Without known keys
(no transfer) nothing is assumed: a tensor is covered by its own module.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable


def parent(key: str) -> str:
    return key.rpartition(".")[0]


def ancestors(key: str) -> list[str]:
    """``a.b.c`` -> [``a.b``, ``a``]."""
    found = []
    while "." in key:
        key = key.rpartition(".")[0]
        found.append(key)
    return found


class KeyTree:
    """How many known keys lie under each module."""

    def __init__(self, keys: Iterable[str]) -> None:
        self.keys = set(keys)
        self.under = Counter(module for key in self.keys for module in ancestors(key))


def cover(nodes: Iterable[tuple[str, bool]], tensors: Iterable[str], tree: KeyTree, bound: str | None) -> list[str]:
    """The modules covering ``nodes`` — (key, is_module) — whose tensors are ``tensors``; never
    a module above ``bound`` (the transfer scope), nor the root. A key whose own module is not
    covered stays a key."""
    held = Counter(module for key in set(tensors) & tree.keys for module in ancestors(key))
    tops: dict[str, str] = {}  # a wholly held module -> the highest wholly held module above it

    def whole(module: str) -> bool:
        above_bound = bound is not None and bound.startswith(module + ".")
        return bool(module) and not above_bound and bool(tree.keys) and tree.under[module] == held[module]

    def top(module: str) -> str:
        if module not in tops:
            tops[module] = top(parent(module)) if whole(parent(module)) else module
        return tops[module]

    chosen = set()
    for key, is_module in nodes:
        module = key if is_module else parent(key)
        if whole(module):
            chosen.add(top(module))
        else:
            chosen.add(module if module and (is_module or not tree.keys) else key)
    return sorted(m for m in chosen if not any(a in chosen for a in ancestors(m)))
