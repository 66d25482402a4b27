"""Align a target with its pretrained checkpoint for a transfer check: the scope and preset
asked for, checked against the files, the pairs, and every ``--map`` checked to pair something.

Options that match nothing are usage errors here, before any value is read: a typo'd ``--scope``
or ``--map`` once paired nothing and the check looked clean.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from ckptlint.align.alignment import Alignment, align
from ckptlint.errors import ConfigError
from ckptlint.io.checkpoint import Checkpoint
from ckptlint.options import TransferOptions
from ckptlint.presets import preset, presets

# The ImageNet classifier a detector drops (torchvision/timm ``fc``, HF ``classifier``, timm ``head``).
HEAD_PATTERNS = ("fc.*", "classifier.*", "head.*")


def is_head(canonical: str) -> bool:
    return any(fnmatchcase(canonical, pattern) for pattern in HEAD_PATTERNS)



@dataclass(frozen=True)
class TransferAlignment:
    """The pairs of one target and its pretrained file, and the preset they were made under."""

    alignment: Alignment
    preset: dict[str, Any]  # {} without --preset; its "frozen" globs say what training leaves frozen


def align_transfer(target: Checkpoint, pretrained: Checkpoint, options: TransferOptions) -> TransferAlignment:
    """Pair the target's tensors with the pretrained ones (reading values only where names
    cannot decide); a scope, preset or map that matches nothing is a ConfigError."""
    scope, chosen = resolve_scope(target, options)
    alignment = align(
        target.tensors, pretrained.tensors, options.maps, scope,
        read_target=lambda key: target.read(key).tobytes(),
        read_pretrained=lambda key: pretrained.read(key).tobytes(),
        scope_from=lambda pair: not is_head(pair.canonical),  # a copied head says nothing of a backbone
    )
    check_maps(alignment, target, pretrained, options.maps)
    return TransferAlignment(alignment, chosen)


def _module_paths(keys: Sequence[str]) -> set[str]:
    paths: set[str] = set()
    for key in keys:
        parts = key.split(".")[:-1]
        paths.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return paths


def _did_you_mean(word: str, choices: set[str]) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _has_module(keys: Sequence[str], path: str) -> bool:
    return not path or any(key.startswith(path + ".") for key in keys)


def resolve_scope(target: Checkpoint, options: TransferOptions) -> tuple[str | None, dict[str, Any]]:
    """The scope asked for (``--scope``, else the preset's) and the preset, both checked against
    the file: a scope or preset that matches nothing is a usage error, never a silent no-op."""
    keys = list(target.tensors)
    chosen = preset(options.preset)
    found = None
    if chosen:
        scopes = chosen["scopes"]
        found = next((scope for scope in scopes if _has_module(keys, scope)), None)
        if found is None:
            fitting = sorted(name for name, other in presets().items()
                             if any(_has_module(keys, scope) for scope in other["scopes"]))
            hint = f"; did you mean --preset {' or --preset '.join(fitting)}?" if fitting else ""
            raise ConfigError(f"--preset {options.preset}: {target.path} has none of its backbone modules "
                              f"({', '.join(scopes)}){hint}")
    if options.scope is not None:
        if not _has_module(keys, options.scope):
            raise ConfigError(f"--scope {options.scope}: no module of that name in {target.path}"
                              f"{_did_you_mean(options.scope, _module_paths(keys))}")
        return options.scope, chosen
    return found, chosen


def check_maps(alignment: Alignment, target: Checkpoint, pretrained: Checkpoint,
               maps: Sequence[tuple[str, str]]) -> None:
    """Every ``--map OLD=NEW`` must pair something."""
    for old, new in maps:
        if (old, new) in alignment.maps_used:
            continue
        if not any(key.startswith(old) for key in target.tensors):
            prefixes = {path + "." for path in _module_paths(list(target.tensors))}
            raise ConfigError(f"--map {old}={new}: no key of {target.path} starts with {old!r}"
                              f"{_did_you_mean(old, prefixes)}")
        prefixes = {path + "." for path in _module_paths(list(pretrained.tensors))}
        raise ConfigError(f"--map {old}={new}: no key of {pretrained.path} starts with {new!r} followed by "
                          f"the rest of a mapped key{_did_you_mean(new, prefixes) if new else ''}")
