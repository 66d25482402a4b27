"""Compare a target tensor's values with its pretrained counterpart's: errors, rounding, causes."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ckptlint.io.dtypes import DTYPES

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


def compare(target: np.ndarray, pretrained: np.ndarray, target_dtype: str, pretrained_dtype: str) -> dict[str, Any]:
    """Numbers for one pair of equal shape."""
    t = target.astype(np.float64).reshape(-1)
    p = pretrained.astype(np.float64).reshape(-1)
    bit_equal = target_dtype == pretrained_dtype and np.array_equal(target, pretrained, equal_nan=True)
    equal_after_cast = False
    if not bit_equal and DTYPES[target_dtype].is_float and narrower(target_dtype, pretrained_dtype):
        rounded = round_to(pretrained, target_dtype)
        equal_after_cast = rounded is not None and np.array_equal(rounded.reshape(-1), target.reshape(-1),
                                                                  equal_nan=True)
    finite = np.isfinite(t) & np.isfinite(p)
    t, p = t[finite], p[finite]
    diff = np.abs(t - p)
    p_norm, t_norm = float(np.linalg.norm(p)), float(np.linalg.norm(t))
    t_std, p_std = (float(t.std()), float(p.std())) if t.size else (0.0, 0.0)
    return {
        "bit_equal": bool(bit_equal),
        "equal_after_cast": bool(equal_after_cast),
        "max_abs_error": float(diff.max()) if diff.size else 0.0,
        "rel_error": float(np.linalg.norm(t - p)) / p_norm if p_norm else (0.0 if not t_norm else math.inf),
        "cosine": float(np.dot(t, p) / (t_norm * p_norm)) if t_norm and p_norm else (1.0 if t_norm == p_norm else 0.0),
        "std_ratio": t_std / p_std if p_std else (1.0 if not t_std else math.inf),
    }


def shape_cause(target: np.ndarray | None, pretrained: np.ndarray | None,
                t_shape: tuple[int, ...], p_shape: tuple[int, ...]) -> tuple[str, str]:
    """(kind, explanation) of a shape change, using the values where they decide."""
    if len(t_shape) != len(p_shape):
        return "rank", f"rank changed {list(p_shape)} -> {list(t_shape)}"
    differs = [i for i, (a, b) in enumerate(zip(t_shape, p_shape, strict=True)) if a != b]
    if differs == [1] and len(t_shape) >= 3:
        if target is not None and pretrained is not None and _is_adapt_input_conv(target, pretrained):
            return ("adapt_input_conv", f"input channels {p_shape[1]} -> {t_shape[1]} by repeating and "
                    "rescaling the pretrained filters (timm's adapt_input_conv): a known adaptation")
        return "input_channels", f"input channels changed {p_shape[1]} -> {t_shape[1]}"
    if differs and min(differs) >= 2:
        return "kernel_resized", f"kernel resized {list(p_shape[2:])} -> {list(t_shape[2:])} (interpolated?)"
    if all(a <= b for a, b in zip(t_shape, p_shape, strict=True)):
        if target is not None and pretrained is not None:
            sliced = pretrained[tuple(slice(0, n) for n in t_shape)]
            if np.array_equal(sliced, target):
                return "sliced", f"channels sliced {list(p_shape)} -> {list(t_shape)} (the first ones kept)"
        return "smaller", f"shape shrank {list(p_shape)} -> {list(t_shape)}"
    return "other", f"shape changed {list(p_shape)} -> {list(t_shape)}"


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
