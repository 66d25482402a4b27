"""The names a library gives checkpoint keys when it loads them into a model object.

``load_state_dict`` matches names exactly, but transformers renames on the way in: version 5
applies the conversion mapping registered for each pretrained sub-model (DETR's
``backbone.conv_encoder`` becomes ``backbone``, ``out_proj`` becomes ``o_proj``) and its
``legacy`` renames (``LayerNorm.gamma`` to ``weight``); version 4 applies the class's
``_checkpoint_conversion_mapping`` (vision-language models only) and ``gamma``/``beta`` and
weight-norm renames. A checkpoint saved by ``save_pretrained`` is written in the old names and
loads cleanly, so comparing on-disk names with ``state_dict()`` names would report every
renamed key twice (missing and unexpected).

:func:`load_mapping` asks the library itself (never a copy of its rules) and only when the model
object is already one of its models: transformers is never imported here unless the user's
factory imported it. ``import ckptlint`` stays free of torch and transformers.
"""

from __future__ import annotations

import copy
import importlib
import sys
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class AppliedMapping:
    """What the loader does with one checkpoint's keys.

    ``loaded_as`` holds every key the loader renamed (others load under their own name);
    ``converted`` the keys a converter merges or splits into other tensors: only the names are
    known (shapes and values come from running the converter, which ckptlint does not), so they
    are neither missing, unexpected nor shape-checked; ``unverified`` the converter outputs that
    the model does not have under the name ckptlint derived; ``shadowed`` the keys that load
    into a name another key already loads into (the loader keeps one of them, silently; these are
    not shape-checked).
    """

    loader: str  # e.g. "transformers 5.24.0"
    keys: int  # how many checkpoint keys were looked at
    loaded_as: dict[str, str] = field(default_factory=dict)
    converted: dict[str, list[str]] = field(default_factory=dict)
    unverified: dict[str, list[str]] = field(default_factory=dict)
    shadowed: dict[str, str] = field(default_factory=dict)
    rules: list[str] = field(default_factory=list)  # the rules that matched a key, as "source -> target"
    error: str | None = None  # the library's renaming failed: names compared as they are on disk

    def name(self, key: str) -> str:
        return self.loaded_as.get(key, key)

    def summary(self) -> dict[str, Any]:
        """JSON-ready, for a report."""
        return {"description": self.describe(), "loader": self.loader, "keys": self.keys,
                "renamed": len(self.loaded_as), "rules": self.rules, "loaded_as": dict(sorted(self.loaded_as.items())),
                "converted": self.converted, "unverified": self.unverified, "shadowed": self.shadowed,
                "error": self.error}

    def describe(self) -> str:
        """One line: what was applied, or why nothing was."""
        if self.error:
            return f"keys compared as saved: {self.loader} key renaming could not be reproduced ({self.error})"
        text = f"keys renamed as {self.loader} loads them: {len(self.loaded_as)} of {self.keys}"
        if self.rules:
            text += f", by {'; '.join(self.rules)}"
        if self.converted:
            text += f"; {len(self.converted)} converted by the library, shapes not compared"
        if self.unverified:
            text += f"; could not map {', '.join(sorted(self.unverified))}"
        if self.shadowed:
            text += f"; {len(self.shadowed)} dropped by the loader (another key loads into the same name)"
        return text


class LoadMapping:
    """A model object's load-time key renaming: ``apply`` it to a checkpoint's keys."""

    loader = ""

    def apply(self, keys: Iterable[str], model_keys: Collection[str]) -> AppliedMapping:
        checkpoint_keys = list(keys)
        try:
            return self._apply(checkpoint_keys, model_keys)
        except Exception as exc:  # noqa: BLE001 - the library's internals; say so rather than guess
            detail = str(exc).splitlines()[0] if str(exc) else ""
            return AppliedMapping(self.loader, len(checkpoint_keys), error=f"{type(exc).__name__}: {detail}")

    def _apply(self, keys: list[str], model_keys: Collection[str]) -> AppliedMapping:
        raise NotImplementedError


class _Failed(LoadMapping):
    def __init__(self, loader: str, exc: Exception) -> None:
        self.loader, self.exc = loader, exc

    def _apply(self, keys: list[str], model_keys: Collection[str]) -> AppliedMapping:
        raise self.exc


def _rule_text(transform: Any) -> str:
    sources = getattr(transform, "_original_source_patterns", None) or transform.source_patterns
    targets = getattr(transform, "_original_target_patterns", None) or transform.target_patterns
    text = f"{', '.join(sources)} -> {', '.join(targets)}"
    operations = getattr(transform, "operations", None)
    if operations:
        text += f" ({', '.join(type(op).__name__ for op in operations)})"
    scope = getattr(transform, "scope_prefix", None)
    return text + (f" under {scope}" if scope else "")


class Transformers5Mapping(LoadMapping):
    """transformers 5: ``get_model_conversion_mapping`` (the model's and every pretrained sub-model's
    registered WeightRenaming/WeightConverter rules, then the legacy ones) applied key by key with
    the library's own ``rename_source_key``, in its order (some renamings depend on it)."""

    def __init__(self, model: Any, version: str) -> None:
        conversion = importlib.import_module("transformers.conversion_mapping")
        self.loading = importlib.import_module("transformers.core_model_loading")
        self.loader = f"transformers {version}"
        self.transforms = conversion.get_model_conversion_mapping(model)  # user key_mapping=, quantizer: none
        self.prefix = model.base_model_prefix

    def _apply(self, keys: list[str], model_keys: Collection[str]) -> AppliedMapping:
        loading = self.loading
        transforms = copy.deepcopy(self.transforms)  # some keep state while renaming
        renamings = [t for t in transforms if isinstance(t, loading.WeightRenaming)]
        converters = [t for t in transforms if isinstance(t, loading.WeightConverter)]
        by_pattern = {pattern: c for c in converters for pattern in c.source_patterns}
        meta = dict.fromkeys(model_keys, True)  # only .get(key) is not None is asked of it
        order = getattr(loading, "dot_natural_key", None)
        applied = AppliedMapping(self.loader, len(keys))
        taken: set[str] = set()
        for key in sorted(keys, key=order):
            renamed, pattern = loading.rename_source_key(key, renamings, converters, self.prefix, meta)
            if renamed not in meta and key in meta:  # as the loader: a key that fits is not renamed away
                renamed, pattern = loading.rename_source_key(key, [], [], self.prefix, meta)
            if renamed != key:
                applied.loaded_as[key] = renamed
            if pattern is not None and renamed in meta:  # a converter's input (else unexpected, as the loader says)
                targets = by_pattern[pattern].target_patterns
                applied.converted[key] = [renamed.replace(targets[0], target) for target in targets]
                unknown = [name for name in applied.converted[key] if name not in meta]
                if unknown:
                    applied.unverified[key] = unknown
            elif renamed in taken:
                applied.shadowed[key] = renamed
            taken.add(renamed)
        used = [t for t in transforms if getattr(t, "was_used", lambda: True)()]
        applied.rules = [_rule_text(t) for t in used] if applied.loaded_as else []
        return applied


LEGACY_4 = ("LayerNorm.gamma", "LayerNorm.beta", "weight_g", "weight_v", "weight.original0", "weight.original1")


class Transformers4Mapping(LoadMapping):
    """transformers 4 (versions that have it; tested with 4.57.6): the model's own
    ``_get_key_renaming_mapping``, with the class's ``_checkpoint_conversion_mapping`` where
    ``from_pretrained`` uses it (vision-language classes) and the base-model prefix added or removed
    as ``_load_pretrained_model`` decides."""

    def __init__(self, model: Any, version: str, utils: Any) -> None:
        self.model, self.loader = model, f"transformers {version}"
        vlms = getattr(utils, "VLMS", ())
        mro = type(model).__mro__[:-1]
        uses_class_mapping = any(name in cls.__name__.lower() for cls in mro for name in vlms)
        self.key_mapping = getattr(model, "_checkpoint_conversion_mapping", None) if uses_class_mapping else None
        self.key_mapping = self.key_mapping or None

    def _apply(self, keys: list[str], model_keys: Collection[str]) -> AppliedMapping:
        prefix = self.model.base_model_prefix
        has_prefix = bool(prefix) and any(k.startswith(prefix) for k in keys)
        expects_prefix = bool(prefix) and hasattr(self.model, prefix)
        renaming = self.model._get_key_renaming_mapping(keys, self.key_mapping, has_prefix and not expects_prefix,
                                                        expects_prefix and not has_prefix)
        applied = AppliedMapping(self.loader, len(keys))
        # a key left out of the mapping (task head of a base-model load) is unexpected under its own name
        applied.loaded_as = {k: v for k, v in renaming.items() if v != k}
        taken: dict[str, str] = {}
        for key in keys:
            name = applied.name(key)
            if name in taken:
                applied.shadowed[key] = name
            taken.setdefault(name, key)
        rules = [f"{source} -> {target}" for source, target in (self.key_mapping or {}).items()]
        if any(key.endswith(LEGACY_4) for key in applied.loaded_as):
            rules.append("legacy gamma/beta and weight-norm names (_fix_state_dict_key_on_load)")
        if has_prefix != expects_prefix:
            rules.append(f"base-model prefix {prefix!r} {'added' if expects_prefix else 'removed'}")
        applied.rules = rules if applied.loaded_as else []
        return applied


def load_mapping(model: Any) -> LoadMapping | None:
    """The load-time renaming ``model``'s library applies, or None (a plain torch module, a state
    dict, or a library version whose renaming ckptlint does not know)."""
    utils = sys.modules.get("transformers.modeling_utils")  # no transformers model without it
    base = getattr(utils, "PreTrainedModel", None)
    if not (isinstance(base, type) and isinstance(model, base)):
        return None
    version = str(getattr(sys.modules.get("transformers"), "__version__", "?"))
    try:
        if hasattr(utils, "get_model_conversion_mapping") or "transformers.conversion_mapping" in sys.modules:
            return Transformers5Mapping(model, version)
        if hasattr(model, "_get_key_renaming_mapping"):
            return Transformers4Mapping(model, version, utils)
    except Exception as exc:  # noqa: BLE001 - the library's internals; say so rather than guess
        return _Failed(f"transformers {version}", exc)
    return None
