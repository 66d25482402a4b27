"""What a new version of a checkpoint changed against an old one (``ckptlint diff OLD NEW``).

Two versions of the same model share their key names (the readers have already removed wrapper
prefixes such as ``module.``), so tensors pair by exact key; a key only one side holds is
``added`` or ``removed``. Each pair is read once, both sides through their ``TensorFacts`` (the
non-finite counts) and compared with ``compare.compare`` (bit equality, equality after a cast,
relative L2 error and cosine): ``unchanged`` (bit-identical), ``cast`` (another dtype, the same
values once cast), ``changed``, ``resized`` (another shape). Frozen tensors come from a preset's
globs, matched like a transfer check matches them (torchvision names below the preset's scope).
The facts are plain dictionaries, one per tensor, which the rules of subject ``diff`` judge.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase
from typing import Any

import numpy as np

from ckptlint.align.schemes import canonical_name
from ckptlint.errors import ConfigError
from ckptlint.facts.checkpoint import CheckpointFacts
from ckptlint.facts.compare import PRECISION, compare, narrower
from ckptlint.facts.pair import stage_of
from ckptlint.facts.tensor import TensorFacts
from ckptlint.graph.build import split_key
from ckptlint.presets import preset
from ckptlint.results import DiffCounts, DiffPair, DiffResult
from ckptlint.vocabulary import COUNTER_LEAF, DIFF_CATEGORIES, STAGES

RUNNING_STATS = ("running_mean", "running_var")


def frozen_matcher(preset_name: str | None, keys: Iterable[str]) -> dict[str, str]:
    """Key -> why it is frozen, for the keys a preset's ``frozen`` globs name below one of its
    scopes. A preset whose scopes none of the keys lies under would freeze nothing, silently: a
    usage error naming the scopes."""
    if preset_name is None:
        return {}
    chosen = preset(preset_name)
    keys = list(keys)
    scopes = [scope for scope in chosen.get("scopes", []) if any(k.startswith(scope + ".") for k in keys)]
    if not scopes:
        raise ConfigError(f"--preset {preset_name}: neither checkpoint has a tensor under its scopes "
                          f"({', '.join(chosen.get('scopes', []))}), so it would freeze nothing")
    frozen = {}
    for key in keys:
        scope = next((s for s in scopes if key.startswith(s + ".")), None)
        if scope is not None:
            name = canonical_name(key[len(scope) + 1:])
            if any(fnmatchcase(name, glob) for glob in chosen.get("frozen", [])):
                frozen[key] = f"the {preset_name} preset freezes it"
    return frozen


def _downcast(old_dtype: str, new_dtype: str) -> bool:
    """Precision lost by the dtype alone: a narrower float, or a float stored as an integer."""
    if old_dtype not in PRECISION:
        return False
    return new_dtype not in PRECISION or narrower(new_dtype, old_dtype)


def _stats_at_defaults(facts: CheckpointFacts, module: str) -> bool | None:
    """Whether a BatchNorm's running_mean is all 0 and running_var all 1 (None: no statistics)."""
    leaves = facts.modules.leaves.get(module, {})
    if not all(leaf in leaves for leaf in RUNNING_STATS):
        return None
    mean, var = (facts.checkpoint.read(leaves[leaf]) for leaf in RUNNING_STATS)
    return bool((mean == 0).all() and (var == 1).all())


def _bn_reset_modules(old: CheckpointFacts, new: CheckpointFacts) -> set[str]:
    """Modules whose statistics are at their defaults in NEW and were not in OLD."""
    reset = set()
    for module, leaves in new.modules.leaves.items():
        if all(leaf in leaves for leaf in RUNNING_STATS) and _stats_at_defaults(new, module):
            before = _stats_at_defaults(old, module)
            if before is False:
                reset.add(module)
    return reset


def _base_facts(key: str, facts: CheckpointFacts, stage_key: str) -> dict[str, Any]:
    module, leaf = split_key(key)
    ref = facts.checkpoint.tensors[key]
    return {"key": key, "module": module, "leaf": leaf, "module_kind": facts.modules.kinds[module],
            "stage": stage_of(canonical_name(stage_key)), "numel": ref.numel, "is_float": ref.dtype.is_float,
            "is_counter": leaf == COUNTER_LEAF}


def _equal_values(new: np.ndarray, old: np.ndarray) -> bool:
    return bool(np.array_equal(new, old, equal_nan=new.dtype.kind in "fc" and old.dtype.kind in "fc"))


def _compared(new_tensor: TensorFacts, old_tensor: TensorFacts) -> dict[str, Any]:
    """Category and numbers of a pair of equal keys."""
    new_dtype, old_dtype = new_tensor["dtype"], old_tensor["dtype"]
    if new_tensor["shape"] != old_tensor["shape"]:
        return {"category": "resized", "rel_l2": None, "cosine": None, "max_abs_error": None}
    new_values, old_values = new_tensor.array(), old_tensor.array()
    if np.iscomplexobj(new_values) or np.iscomplexobj(old_values):  # compare() works on real values
        same = new_dtype == old_dtype and _equal_values(new_values, old_values)
        category = "unchanged" if same else "cast" if _equal_values(new_values, old_values) else "changed"
        return {"category": category, "rel_l2": None, "cosine": None, "max_abs_error": None}
    numbers = compare(new_values, old_values, new_dtype, old_dtype)
    if new_dtype == old_dtype:
        category = "unchanged" if numbers["bit_equal"] else "changed"
    elif numbers["equal_after_cast"] or _equal_values(new_values, old_values):
        category = "cast"
    else:
        category = "changed"
    return {"category": category, "rel_l2": numbers["rel_error"], "cosine": numbers["cosine"],
            "max_abs_error": numbers["max_abs_error"]}


def diff_facts(old: CheckpointFacts, new: CheckpointFacts, preset_name: str | None = None) -> list[dict[str, Any]]:
    """The facts of every tensor: NEW's keys in NEW's order (paired or added), then the keys only
    OLD holds (removed), in OLD's order. Each pair's values are read once and released."""
    old_refs, new_refs = old.checkpoint.tensors, new.checkpoint.tensors
    frozen = frozen_matcher(preset_name, dict.fromkeys([*new_refs, *old_refs]))
    reset = _bn_reset_modules(old, new)
    out = []
    for key in new_refs:
        facts = _base_facts(key, new, key)
        new_tensor = new.tensor(key)
        new_dtype, new_shape = new_tensor["dtype"], new_tensor["shape"]
        new_nonfinite = new_tensor["nonfinite_count"]
        if key in old_refs:
            old_tensor = old.tensor(key)
            old_dtype, old_shape = old_tensor["dtype"], old_tensor["shape"]
            old_nonfinite = old_tensor["nonfinite_count"]
            facts.update(_compared(new_tensor, old_tensor))
            old_tensor.release()
            old_key: str | None = key
        else:
            old_dtype = old_shape = old_nonfinite = old_key = None
            facts.update({"category": "added", "rel_l2": None, "cosine": None, "max_abs_error": None})
        new_tensor.release()
        facts.update(_sides(old_key, key, old_dtype, new_dtype, old_shape, new_shape, old_nonfinite, new_nonfinite))
        facts["bn_reset"] = facts["leaf"] == "running_mean" and facts["module"] in reset
        facts["frozen"], facts["frozen_by"] = key in frozen, frozen.get(key)
        out.append(facts)
    for key in old_refs:
        if key in new_refs:
            continue
        facts = _base_facts(key, old, key)
        old_tensor = old.tensor(key)
        facts.update({"category": "removed", "rel_l2": None, "cosine": None, "max_abs_error": None})
        facts.update(_sides(key, None, old_tensor["dtype"], None, old_tensor["shape"], None,
                            old_tensor["nonfinite_count"], None))
        old_tensor.release()
        facts["bn_reset"] = False
        facts["frozen"], facts["frozen_by"] = key in frozen, frozen.get(key)
        out.append(facts)
    return out


def _sides(old_key: str | None, new_key: str | None, old_dtype: str | None, new_dtype: str | None,
           old_shape: list[int] | None, new_shape: list[int] | None, old_nonfinite: int | None,
           new_nonfinite: int | None) -> dict[str, Any]:
    paired = old_dtype is not None and new_dtype is not None
    return {
        "old": old_key, "new": new_key, "old_dtype": old_dtype, "new_dtype": new_dtype,
        "old_shape": old_shape, "new_shape": new_shape,
        "dtype_changed": paired and old_dtype != new_dtype,
        "downcast": paired and old_dtype != new_dtype and _downcast(str(old_dtype), str(new_dtype)),
        "old_nonfinite": old_nonfinite, "new_nonfinite": new_nonfinite,
        # NaN/Inf values NEW has beyond OLD's (all of an added tensor's)
        "new_non_finite": max(0, (new_nonfinite or 0) - (old_nonfinite or 0)) if new_nonfinite is not None else 0,
    }


def _number(value: float | None) -> float | None:
    """A comparison number for the report (a tensor of zeros that became nonzero: inf is kept,
    JSON writes it as a string)."""
    return None if value is None else float(value)


def _shape(shape: list[int] | None) -> tuple[int, ...] | None:
    return tuple(shape) if shape is not None else None


def _pair(facts: dict[str, Any]) -> DiffPair:
    shape = _shape
    return DiffPair(old=facts["old"], new=facts["new"], category=facts["category"], module=facts["module"],
                    stage=facts["stage"], old_dtype=facts["old_dtype"], new_dtype=facts["new_dtype"],
                    old_shape=shape(facts["old_shape"]), new_shape=shape(facts["new_shape"]), numel=facts["numel"],
                    rel_l2=_number(facts["rel_l2"]), cosine=_number(facts["cosine"]),
                    max_abs_error=_number(facts["max_abs_error"]), old_nonfinite=facts["old_nonfinite"],
                    new_nonfinite=facts["new_nonfinite"], bn_reset=facts["bn_reset"], frozen=facts["frozen"],
                    frozen_by=facts["frozen_by"])


def _counts(pairs: Sequence[DiffPair]) -> DiffCounts:
    by_category = Counter(p.category for p in pairs)
    return DiffCounts(tensors=len(pairs), parameters=sum(p.numel for p in pairs),
                      **{category: by_category[category] for category in DIFF_CATEGORIES})


def diff_result(facts: Sequence[dict[str, Any]], old_label: str, new_label: str,
                preset_name: str | None) -> DiffResult:
    """The typed result the report keeps: every pair, counted overall, per module and per stage."""
    pairs = tuple(_pair(f) for f in facts)
    modules: dict[str, list[DiffPair]] = defaultdict(list)
    stages: dict[str, list[DiffPair]] = defaultdict(list)
    for pair in pairs:
        modules[pair.module].append(pair)
        stages[pair.stage].append(pair)
    dtype_changes = Counter(f"{p.old_dtype} -> {p.new_dtype}" for p in pairs
                            if p.old_dtype is not None and p.new_dtype is not None and p.old_dtype != p.new_dtype)
    return DiffResult(
        old=old_label, new=new_label, preset=preset_name, summary=_counts(pairs), pairs=pairs,
        by_module={module: _counts(held) for module, held in sorted(modules.items())},
        by_stage={stage: _counts(stages[stage]) for stage in STAGES if stage in stages},
        new_non_finite=tuple(f["key"] for f in facts if f["new_non_finite"]),
        dtype_changes=dict(sorted(dtype_changes.items())),
        bn_reset=tuple(f["module"] for f in facts if f["bn_reset"]),
        frozen_changed=tuple(f["key"] for f in facts if f["frozen"] and f["category"] in ("changed", "resized")),
    )
