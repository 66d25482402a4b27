"""What rules may say: the facts each subject offers, and the values some of them take.

One table, read twice: the rule loader checks every condition, message and evidence expression
against it (a misspelt fact or value is an error naming the rule file, with a did-you-mean,
instead of a condition that is silently never true), and a test checks that the facts the
engine really builds are exactly the ones listed here. No imports beyond the standard library:
reporters and the command line read it too.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

# --- values ---------------------------------------------------------------------------------

MODULE_KINDS = ("container", "conv", "linear", "batchnorm", "frozen_batchnorm", "layernorm", "groupnorm",
                "embedding", "multihead_attention", "unknown")
# A pair's verdict, from the worst to the best (a module shows the worst among its tensors).
VERDICTS = ("misconverted", "unrelated", "reinitialized", "resized", "modified", "fine-tuned", "cast", "copied")
CARRIED = ("copied", "cast", "fine-tuned")  # verdicts that carry the pretrained values
COUNTER_LEAF = "num_batches_tracked"  # a step counter, not a weight: never decides a verdict's severity
SETTLED_EXPECTATIONS = ("copied", "finetuned")  # what "auto" settles to
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4", "other")
SHAPE_CAUSES = ("rank", "adapt_input_conv", "input_channels", "kernel_resized", "sliced", "smaller", "other")
# A conversion's pair (how: renamed, split, fused) whose values are the pretrained ones, misplaced:
# another part's (q and k swapped), transposed, or rows from another offset of the fused tensor.
CONVERSION_ERRORS = ("swapped", "misplaced", "transposed", "offset")
TRANSFER_ROLES = ("paired", "unmatched", "outside-scope")
FILE_ROLES = ("target", "pretrained")
DTYPE_NAMES = ("float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2",
               "float8_e5m2fnuz", "float8_e8m0fnu", "int64", "int32", "int16", "int8", "uint64", "uint32", "uint16",
               "uint8", "bool", "complex64", "complex128")  # every element type the readers read (io/dtypes.py)
DTYPE_KINDS = ("float", "int", "bool", "complex")
# What became of a tensor between two versions of a checkpoint (`ckptlint diff OLD NEW`).
DIFF_CATEGORIES = ("unchanged", "cast", "changed", "resized", "added", "removed")

# --- the rule header ------------------------------------------------------------------------

# Subject -> the name a rule's expressions call it by.
SUBJECTS = MappingProxyType({
    "file": "file",
    "pickle-global": "pickle_global",
    "tensor": "tensor",
    "module": "module",
    "pair": "pair",
    "transfer": "transfer",
    "diff": "diff",  # a tensor of two versions of a checkpoint (`ckptlint diff`), or one side's alone
})
REFERENCES = ("pretrained", "model")
ONLY_IN = ("target", "reference")  # a tensor subject with a reference: on one side only

# --- facts ----------------------------------------------------------------------------------

FILE = frozenset({
    "path", "role", "format", "layout", "bytes", "tensor_count", "parameter_count", "pickle_global_count",
    "stripped_prefix", "training_state", "weights_sampled", "weights_init_like", "init_like_share", "init_names",
    "bn_modules", "bn_at_defaults", "bn_default_share"})
PICKLE_GLOBAL = frozenset({
    "module", "name", "qualname", "where", "allowed", "invoked", "how", "via", "dangerous", "danger", "unsafe",
    "why", "count"})
TENSOR = frozenset({
    "key", "leaf", "module", "module_kind", "shape", "ndim", "numel", "nbytes", "dtype", "dtype_kind", "is_float",
    "is_parameter", "fan_in", "fan_out", "transfer_role", "paired", "count", "nan_count", "posinf_count",
    "neginf_count", "nonfinite_count", "is_constant", "min", "max", "abs_max", "mean", "std", "kurtosis",
    "zero_fraction", "init_fits", "init_best"})
MODULE = frozenset({
    "path", "kind", "leaves", "has_weight", "has_bias", "has_running_mean", "has_running_var", "has_running_stats",
    "has_num_batches_tracked", "channels", "pretrained_module", "pretrained_has_running_stats", "stats_at_defaults"})
# Every pair, whatever its reference: a target tensor and the reference's tensor it meets.
PAIR = frozenset({
    "reference", "target", "source", "leaf", "target_shape", "source_shape", "target_dtype", "source_dtype",
    "shape_equal", "shape_cause", "shape_cause_kind", "module_kind"})
TRANSFER_PAIR = PAIR | {
    "how", "canonical", "stage", "is_counter", "numel", "narrower", "expect", "frozen", "frozen_by", "max_drift",
    "bit_equal", "equal_after_cast", "cast_through", "max_abs_error", "rel_error", "cosine", "correlation",
    "std_ratio", "verdict", "init", "within_drift", "slice_equal", "conversion_error", "conversion_cause"}
# With several pretrained files (``--pretrained a --pretrained b``): the ranking, the best file other than
# the expected (first) one, the share of the target it explains and how, and the expected file's share;
# none (and an empty ranking) with one pretrained file.
TRANSFER_CANDIDATES = frozenset({
    "candidates", "best_candidate", "best_candidate_share", "best_candidate_how", "expected_share"})
TRANSFER = frozenset({
    "pretrained", "expect", "expect_reason", "frozen", "frozen_reason", "scope", "outside_scope", "score",
    "parameters", "score_by_tensors", "tensors"}) | TRANSFER_CANDIDATES
# A tensor in `ckptlint diff OLD NEW`: a pair of equal keys, or a key only one side has (the
# other side's facts are None).
DIFF = frozenset({
    "key", "old", "new", "category", "module", "leaf", "module_kind", "stage", "old_dtype", "new_dtype",
    "old_shape", "new_shape", "numel", "is_float", "is_counter", "dtype_changed", "downcast", "rel_l2", "cosine",
    "max_abs_error", "old_nonfinite", "new_nonfinite", "new_non_finite", "bn_reset", "frozen", "frozen_by"})

# Facts a target tensor without a counterpart in a pretrained file adds (the alignment's view),
# and those a pretrained tensor nothing took adds.
UNMATCHED_TARGET_EXTRA = MappingProxyType({"pretrained": frozenset({"transfer_scope", "ambiguous_with"}),
                                          "model": frozenset()})
UNUSED_REFERENCE_EXTRA = MappingProxyType({"pretrained": frozenset({"counterpart_module", "is_head", "part_of"}),
                                          "model": frozenset()})

# (name an expression uses, fact) -> the values the fact takes: a literal compared with it must be one.
_KIND_FACTS = {(name, "module_kind"): MODULE_KINDS for name in ("tensor", "pair", "target", "source")}
_DTYPE_FACTS = {(name, fact): DTYPE_NAMES for name, fact in (
    ("tensor", "dtype"), ("target", "dtype"), ("source", "dtype"), ("pair", "target_dtype"),
    ("pair", "source_dtype"), ("pair", "cast_through"))}
VALUES: Mapping[tuple[str, str], tuple[str, ...]] = MappingProxyType({
    **_KIND_FACTS,
    **_DTYPE_FACTS,
    **{(name, "dtype_kind"): DTYPE_KINDS for name in ("tensor", "target", "source")},
    ("module", "kind"): MODULE_KINDS,
    ("pair", "verdict"): VERDICTS,
    ("pair", "expect"): SETTLED_EXPECTATIONS,
    ("pair", "stage"): STAGES,
    ("pair", "shape_cause_kind"): SHAPE_CAUSES,
    ("pair", "conversion_error"): CONVERSION_ERRORS,
    ("pair", "reference"): REFERENCES,
    ("transfer", "expect"): SETTLED_EXPECTATIONS,
    ("tensor", "transfer_role"): TRANSFER_ROLES,
    ("target", "transfer_role"): TRANSFER_ROLES,
    ("file", "role"): FILE_ROLES,
    ("diff", "category"): DIFF_CATEGORIES,
    ("diff", "old_dtype"): DTYPE_NAMES,
    ("diff", "new_dtype"): DTYPE_NAMES,
    ("diff", "module_kind"): MODULE_KINDS,
    ("diff", "stage"): STAGES,
})


def values_in_scope(subject: str, reference: str | None) -> dict[tuple[str, str], tuple[str, ...]]:
    """VALUES, narrowed by the rule's header: a pretrained-pair rule never sees a model pair, a
    target's tensor lies in a target file."""
    values = dict(VALUES)
    values[("pair", "reference")] = (reference,) if reference else REFERENCES
    if subject == "file":
        values[("file", "role")] = ("pretrained",) if reference == "pretrained" else FILE_ROLES
    else:
        values[("file", "role")] = ("target",)
    return values


def names_in_scope(subject: str, reference: str | None, only_in: str | None) -> dict[str, frozenset[str]]:
    """Each name a rule's expressions may use (besides ``params`` and, in messages, ``evidence``)
    and the facts it offers, for a rule with this header."""
    # the file a subject lies in (a transfer's is the target, already named by its facts)
    names: dict[str, frozenset[str]] = {} if subject in ("transfer", "diff") else {"file": FILE}
    if subject == "pickle-global":
        # a pickle is judged in files that could not be read, and in a folder's other pickles:
        # of its file only the path is always known
        names["file"] = frozenset({"path"})
        names["pickle_global"] = PICKLE_GLOBAL
    elif subject == "tensor":
        extra: frozenset[str] = frozenset()
        if reference and only_in == "target":
            extra = UNMATCHED_TARGET_EXTRA[reference]
        elif reference and only_in == "reference":
            extra = UNUSED_REFERENCE_EXTRA[reference]
        names["tensor"] = TENSOR | extra
    elif subject == "module":
        names["module"] = MODULE
    elif subject == "pair":
        names["pair"] = TRANSFER_PAIR if reference == "pretrained" else PAIR
        names["target"] = names["source"] = TENSOR
    elif subject == "transfer":
        names["transfer"] = TRANSFER
    elif subject == "diff":  # two files, no one file: a finding names the new one
        names["diff"] = DIFF
    return names
