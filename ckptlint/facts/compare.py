"""Compare a target tensor's values with its pretrained counterpart's: errors, rounding, causes."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ckptlint.io.dtypes import DTYPES

PROBE = 4096  # values: a drifted tensor differs in its first few already
CHUNK = 1 << 22  # elements compared at a time: float64 copies of a chunk, not of the tensor
EQUAL_CHUNK = 1 << 17  # words per step of the bit-equality test (its temporary stays in cache)

# Significand bits of each float type, to tell a narrowing cast from a widening one.
PRECISION = {"float64": 53, "float32": 24, "bfloat16": 8, "float16": 11, "float8_e4m3fn": 4,
             "float8_e4m3fnuz": 4, "float8_e5m2": 3, "float8_e5m2fnuz": 3, "float8_e8m0fnu": 1}


def narrower(target_dtype: str, pretrained_dtype: str) -> bool:
    return PRECISION.get(target_dtype, 99) < PRECISION.get(pretrained_dtype, 99)


def round_to(values: np.ndarray, dtype: str) -> np.ndarray | None:
    """``values`` rounded to ``dtype`` (round to nearest even, as torch casts) and widened back."""
    values = values.astype(np.float32) if values.dtype != np.float64 else values
    if dtype == "float32":
        return values.astype(np.float32)
    if dtype == "float16":
        return values.astype(np.float16).astype(np.float32)
    if dtype == "bfloat16":
        bits = values.astype(np.float32).view(np.uint32).astype(np.uint64)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        out = rounded.astype(np.uint32).view(np.float32)
        return np.where(np.isnan(values), values, out)
    if dtype == "float64":
        return values.astype(np.float64)
    return None  # float8 and integer casts are not modelled: such pairs count as modified


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-for-bit equality (so -0.0 is not 0.0 and NaNs must match), compared as the widest
    unsigned words the bytes divide into, a chunk at a time: no tensor-sized temporary, and the
    first difference ends it (twice as fast as comparing elements whole)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    a_bytes, b_bytes = (np.ascontiguousarray(x).reshape(-1).view(np.uint8) for x in (a, b))
    word = next(w for w in (np.uint64, np.uint32, np.uint16, np.uint8) if a_bytes.size % np.dtype(w).itemsize == 0)
    a_words, b_words = a_bytes.view(word), b_bytes.view(word)
    return all(np.array_equal(a_words[start:start + EQUAL_CHUNK], b_words[start:start + EQUAL_CHUNK])
               for start in range(0, a_words.size, EQUAL_CHUNK))


def _equal_rounded(target: np.ndarray, pretrained: np.ndarray, dtype: str) -> bool:
    """``target`` holds exactly ``pretrained`` rounded to ``dtype`` (a probe of the first values,
    then chunks; the first difference ends it, so a drifted tensor costs a probe: asked twice for
    every drifted float32 pair, whole chunks were 0.6 s of a fine-tuned DETR check)."""
    probe = slice(0, min(PROBE, target.size))
    rounded = round_to(pretrained[probe], dtype)
    if rounded is None or not np.array_equal(rounded, target[probe], equal_nan=True):
        return False
    for start in range(0, target.size, CHUNK):
        rounded = round_to(pretrained[start:start + CHUNK], dtype)
        if rounded is None or not np.array_equal(rounded, target[start:start + CHUNK], equal_nan=True):
            return False
    return True


def compare(target: np.ndarray, pretrained: np.ndarray, target_dtype: str, pretrained_dtype: str) -> dict[str, Any]:
    """Numbers for one pair of equal shape, in chunks so memory stays near the two arrays."""
    t_flat, p_flat = target.reshape(-1), pretrained.reshape(-1)
    if target_dtype == pretrained_dtype and _same_bits(t_flat, p_flat):  # usual; every number known already
        return {"bit_equal": True, "equal_after_cast": False, "cast_through": None, "max_abs_error": 0.0,
                "rel_error": 0.0,
                "cosine": 1.0, "correlation": 1.0, "std_ratio": 1.0}
    equal_after_cast = (DTYPES[target_dtype].is_float and narrower(target_dtype, pretrained_dtype)
                        and round_to(p_flat[:1], target_dtype) is not None)
    sums = np.zeros(6)  # sum t, sum p, sum t^2, sum p^2, sum t*p, sum (t-p)^2
    count, max_abs = 0, 0.0
    for start in range(0, t_flat.size, CHUNK):
        t = t_flat[start:start + CHUNK].astype(np.float64)
        p = p_flat[start:start + CHUNK].astype(np.float64)
        if equal_after_cast:
            rounded = round_to(p_flat[start:start + CHUNK], target_dtype)
            equal_after_cast = rounded is not None and np.array_equal(rounded, t_flat[start:start + CHUNK],
                                                                      equal_nan=True)
        finite = np.isfinite(t) & np.isfinite(p)
        if not finite.all():
            t, p = t[finite], p[finite]
        diff = t - p
        if diff.size:
            max_abs = max(max_abs, float(np.abs(diff).max()))
        sums += (t.sum(), p.sum(), t @ t, p @ p, t @ p, diff @ diff)
        count += t.size
    cast_through = None
    if equal_after_cast:
        cast_through = target_dtype
    elif target_dtype == pretrained_dtype and target_dtype in ("float32", "float64"):
        # Saved at full precision after a round trip through a half type (model.half().float(),
        # autocast weights): a cast, not training drift.
        cast_through = next((half for half in ("bfloat16", "float16") if _equal_rounded(t_flat, p_flat, half)), None)
    t_sum, p_sum, tt, pp, tp, dd = (float(v) for v in sums)
    t_norm, p_norm = math.sqrt(tt), math.sqrt(pp)
    t_std = math.sqrt(max(tt / count - (t_sum / count) ** 2, 0.0)) if count else 0.0
    p_std = math.sqrt(max(pp / count - (p_sum / count) ** 2, 0.0)) if count else 0.0
    covariance = tp / count - (t_sum / count) * (p_sum / count) if count else 0.0
    # Rounding leaves a constant tensor a std of ~1e-17 times its mean: that is no spread.
    t_spread = t_std if count and t_std > 1e-9 * abs(t_sum / count) else 0.0
    p_spread = p_std if count and p_std > 1e-9 * abs(p_sum / count) else 0.0
    return {
        "bit_equal": False,
        "equal_after_cast": cast_through is not None,
        "cast_through": cast_through,
        "max_abs_error": max_abs,
        "rel_error": math.sqrt(dd) / p_norm if p_norm else (0.0 if not t_norm else math.inf),
        "cosine": tp / (t_norm * p_norm) if t_norm and p_norm else (1.0 if t_norm == p_norm else 0.0),
        # Pearson: centred, so independent positive tensors near 1 (BatchNorm weights, variances)
        # do not look alike the way their cosine says; None when a side is constant.
        "correlation": max(-1.0, min(1.0, covariance / (t_spread * p_spread))) if t_spread and p_spread else None,
        "std_ratio": t_std / p_std if p_std else (1.0 if not t_std else math.inf),
    }


def shape_cause(target: np.ndarray | None, pretrained: np.ndarray | None,
                t_shape: tuple[int, ...], p_shape: tuple[int, ...]) -> tuple[str, str, bool]:
    """(kind, explanation, slice_equal) of a shape change, using the values where they decide.

    ``slice_equal``: the target equals the pretrained tensor's leading slice, even where the values
    (all equal) cannot prove that this is what happened; a module's other tensors may prove it.
    """
    slice_equal = False
    if len(t_shape) != len(p_shape):
        return "rank", f"rank changed {list(p_shape)} -> {list(t_shape)}", slice_equal
    differs = [i for i, (a, b) in enumerate(zip(t_shape, p_shape, strict=True)) if a != b]
    if differs == [1] and len(t_shape) >= 3:
        if target is not None and pretrained is not None and _is_adapt_input_conv(target, pretrained):
            return ("adapt_input_conv", f"input channels {p_shape[1]} -> {t_shape[1]} by repeating and "
                    "rescaling the pretrained filters (timm's adapt_input_conv): a known adaptation", slice_equal)
        return "input_channels", f"input channels changed {p_shape[1]} -> {t_shape[1]}", slice_equal
    if differs and min(differs) >= 2:
        return ("kernel_resized", f"kernel resized {list(p_shape[2:])} -> {list(t_shape[2:])} (interpolated?)",
                slice_equal)
    if all(a <= b for a, b in zip(t_shape, p_shape, strict=True)):
        if target is not None and pretrained is not None:
            sliced = pretrained[tuple(slice(0, n) for n in t_shape)]
            slice_equal = bool(np.array_equal(sliced, target))
            # Equal constants (a zero-initialised bias) prove nothing about which rows were kept.
            if slice_equal and sliced.size > 1 and np.ptp(sliced) > 0:
                return "sliced", sliced_cause(t_shape, p_shape), slice_equal
        return "smaller", shrank_cause(t_shape, p_shape), slice_equal
    return "other", f"shape changed {list(p_shape)} -> {list(t_shape)}", slice_equal


def sliced_cause(t_shape: tuple[int, ...], p_shape: tuple[int, ...]) -> str:
    return f"channels sliced {list(p_shape)} -> {list(t_shape)} (the first ones kept)"


def shrank_cause(t_shape: tuple[int, ...], p_shape: tuple[int, ...]) -> str:
    return f"shape shrank {list(p_shape)} -> {list(t_shape)}"


def _is_adapt_input_conv(target: np.ndarray, pretrained: np.ndarray) -> bool:
    """timm: in_chans == 1 sums the RGB filters; otherwise repeats them and scales by 3/in_chans."""
    in_chans, rgb = target.shape[1], pretrained.shape[1]
    p = pretrained.astype(np.float64)
    if in_chans == 1:
        expected = p.sum(axis=1, keepdims=True)
    else:
        repeats = math.ceil(in_chans / rgb)
        expected = np.concatenate([p] * repeats, axis=1)[:, :in_chans] * (rgb / in_chans)
    return bool(np.allclose(target.astype(np.float64), expected, rtol=1e-3, atol=1e-6))
