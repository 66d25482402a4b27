"""Tensor element types: their sizes, their names in each format, and how to widen them to numpy."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

# numpy is imported only to build the float8 tables (``_lookup_table``), when values are widened:
# reading a file's structure and pickles, all a pickle-safety-only run does, never needs it, and
# importing it costs more than scanning a small checkpoint.
if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class DType:
    """One element type, named as torch names it (``float32``, ``bfloat16``, ``float8_e4m3fn``)."""

    name: str
    itemsize: int
    raw: str  # numpy dtype the stored bytes are viewed as (little-endian)
    kind: str  # "float", "int", "bool" or "complex"

    @property
    def is_float(self) -> bool:
        return self.kind == "float"


# The 8-bit float formats (exponent bits, mantissa bits, bias, style), each widened through a
# 256-entry table. style: "ieee" (inf and NaN at the top exponent), "fn" (no inf; NaN only when
# every exponent and mantissa bit is set), "fnuz" (no inf, no negative zero; NaN is 0x80),
# "e8m0" (an exponent only, 2**(code - 127); 0xFF is NaN).
_FLOAT8_FORMATS = {
    "float8_e4m3fn": (4, 3, 7, "fn"),
    "float8_e5m2": (5, 2, 15, "ieee"),
    "float8_e4m3fnuz": (4, 3, 8, "fnuz"),
    "float8_e5m2fnuz": (5, 2, 16, "fnuz"),
    "float8_e8m0fnu": (8, 0, 127, "e8m0"),
}


@cache
def _lookup_table(name: str) -> np.ndarray:
    """All 256 codes of an 8-bit float format decoded to float32 (made on first use)."""
    import numpy as np  # the module's only import of numpy: see above

    exp_bits, man_bits, bias, style = _FLOAT8_FORMATS[name]
    codes = np.arange(256, dtype=np.int64)
    if style == "e8m0":
        values = np.exp2(codes.astype(np.float64) - bias)
        values[255] = np.nan
        return values.astype(np.float32)
    sign = np.where(codes >> 7, -1.0, 1.0)
    exp = (codes >> man_bits) & ((1 << exp_bits) - 1)
    man = codes & ((1 << man_bits) - 1)
    subnormal = exp == 0
    frac = np.where(subnormal, man / 2.0**man_bits, 1.0 + man / 2.0**man_bits)
    power = np.where(subnormal, 1 - bias, exp - bias).astype(np.float64)
    values = sign * frac * np.exp2(power)
    top = (1 << exp_bits) - 1
    if style == "ieee":
        values = np.where((exp == top) & (man == 0), sign * np.inf, values)
        values = np.where((exp == top) & (man != 0), np.nan, values)
    elif style == "fn":
        values = np.where((exp == top) & (man == (1 << man_bits) - 1), np.nan, values)
    elif style == "fnuz":
        values = np.where(codes == 0x80, np.nan, values)
    return values.astype(np.float32)


DTYPES: dict[str, DType] = {
    d.name: d
    for d in [
        DType("float64", 8, "<f8", "float"),
        DType("float32", 4, "<f4", "float"),
        DType("float16", 2, "<f2", "float"),
        DType("bfloat16", 2, "<u2", "float"),
        *(DType(name, 1, "u1", "float") for name in _FLOAT8_FORMATS),
        DType("complex128", 16, "<c16", "complex"),
        DType("complex64", 8, "<c8", "complex"),
        DType("int64", 8, "<i8", "int"),
        DType("int32", 4, "<i4", "int"),
        DType("int16", 2, "<i2", "int"),
        DType("int8", 1, "i1", "int"),
        DType("uint64", 8, "<u8", "int"),
        DType("uint32", 4, "<u4", "int"),
        DType("uint16", 2, "<u2", "int"),
        DType("uint8", 1, "u1", "int"),
        DType("bool", 1, "u1", "bool"),
    ]
}

# torch's legacy typed-storage classes name the element type (``torch FloatStorage``).
TORCH_STORAGE_TYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}

# ``torch <name>`` globals that denote a dtype, with torch's aliases.
TORCH_DTYPE_NAMES = {name: name for name in DTYPES} | {
    "float": "float32",
    "double": "float64",
    "half": "float16",
    "long": "int64",
    "int": "int32",
    "short": "int16",
    "cfloat": "complex64",
    "cdouble": "complex128",
}

# torch element types ckptlint cannot read the values of yet (sub-byte, bit-packed, quantized): a
# file using one is torch's own data, reported as unreadable, never as an unsafe pickle.
UNREADABLE_TORCH_DTYPES = (
    "float4_e2m1fn_x2", "complex32", "chalf", "qint8", "quint8", "qint32", "quint4x2", "quint2x4",
    "bits1x8", "bits2x4", "bits4x2", "bits8", "bits16",
    *(f"uint{n}" for n in range(1, 8)), *(f"int{n}" for n in range(1, 8)),
)

SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F8_E8M0": "float8_e8m0fnu",
    "C128": "complex128",
    "C64": "complex64",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
}


def widen(raw: np.ndarray, dtype: DType) -> np.ndarray:
    """Turn stored elements into a numpy array numpy can compute with.

    bfloat16 and the float8 types have no numpy dtype, so they become float32 (exactly:
    every such value is representable); booleans become ``bool``; the rest keep their type.
    """
    if dtype.name == "bfloat16":
        return (raw.astype("<u4") << 16).view("<f4")
    if dtype.name in _FLOAT8_FORMATS:
        return _lookup_table(dtype.name)[raw]
    if dtype.kind == "bool":
        return raw != 0
    return raw
