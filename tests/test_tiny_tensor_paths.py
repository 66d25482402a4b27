"""The fast paths a million tiny tensors take give what the general paths give: the safetensors
reader's inline-checked refs, finiteness on Python floats, the module kinds found once per set of
leaf names, garbage collection paused only while reading."""

from __future__ import annotations

import gc
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from ckptlint.facts.stats import finiteness
from ckptlint.gc_pause import paused_gc
from ckptlint.graph.build import ModuleTable
from ckptlint.graph.kinds import infer_kind
from ckptlint.io.safetensors_file import _tensor, read_safetensors_header


def _write(path: Path, header: dict, data: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def test_inline_checked_refs_equal_the_step_by_step_ones(tmp_path: Path) -> None:
    header = {
        "a.weight": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
        "a.bias": {"dtype": "BF16", "shape": [3], "data_offsets": [24, 30]},
        "empty": {"dtype": "F16", "shape": [0, 4], "data_offsets": [30, 30]},  # the step-by-step path
        "b.scale": {"dtype": "I64", "shape": [], "data_offsets": [30, 38]},
    }
    path = tmp_path / "x.safetensors"
    _write(path, {"__metadata__": {"format": "pt"}, **header}, bytes(38))
    size = path.stat().st_size
    tensors, metadata = read_safetensors_header(str(path), size)
    assert metadata == {"format": "pt"} and list(tensors) == list(header)
    data_start = 8 + len(json.dumps({"__metadata__": {"format": "pt"}, **header}).encode())
    for name, entry in header.items():
        expected = _tensor(name, entry, str(path), data_start, size)
        assert tensors[name] == expected and hash(tensors[name]) == hash(expected)
        assert repr(tensors[name]) == repr(expected) and vars(tensors[name]) == vars(expected)


def _counted_by_numpy(array: np.ndarray) -> dict[str, int]:
    """What the counts must be, from numpy's own predicates (complex values by their modulus)."""
    flat = np.abs(array.reshape(-1)) if np.iscomplexobj(array) else array.reshape(-1)
    if flat.dtype.kind != "f":
        return {"nan_count": 0, "posinf_count": 0, "neginf_count": 0, "nonfinite_count": 0}
    nan, posinf, neginf = int(np.isnan(flat).sum()), int(np.isposinf(flat).sum()), int(np.isneginf(flat).sum())
    return {"nan_count": nan, "posinf_count": posinf, "neginf_count": neginf, "nonfinite_count": nan + posinf + neginf}


@pytest.mark.parametrize("values", [
    [1.0, 2.0], [np.nan, 1.0], [np.inf, -np.inf, np.nan, np.nan], [], [3e38] * 64, [1e308, 1e308],
    [-np.inf], [0.0] * 65, [np.nan] * 65,
])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_tiny_finiteness_counts_as_numpy_does(values: list[float], dtype: type) -> None:
    with np.errstate(over="ignore"):
        array: np.ndarray = np.array(values, dtype=dtype)
    assert finiteness(array) == _counted_by_numpy(array)
    assert finiteness(array.reshape(-1, 1)) == _counted_by_numpy(array.reshape(-1, 1))


def test_tiny_finiteness_of_other_kinds_and_scalars() -> None:
    for array in (np.array(np.nan, np.float32), np.array([1, 2], np.int8), np.array([True]),
                  np.array([complex(np.nan, 0)], np.complex64)):
        assert finiteness(array) == _counted_by_numpy(array)


def test_module_kinds_found_once_per_leaf_names_equal_infer_kind() -> None:
    shapes = {"weight": (4, 4), "bias": (4,), "running_mean": (4,), "running_var": (4,), "scale": (2,),
              "num_batches_tracked": (), "in_proj_weight": (12, 4)}

    class Ref:
        def __init__(self, shape: tuple[int, ...]) -> None:
            self.shape = shape

    keys = ["bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "x.bn.running_mean",
            "x.bn.running_var", "u1.scale", "u2.scale", "attn.in_proj_weight", "embed.weight", "top"]
    tensors = {k: Ref(shapes.get(k.rpartition(".")[2], (2, 2))) for k in keys}
    table = ModuleTable(tensors)
    for module, held in table.leaves.items():
        assert table.kinds[module] == infer_kind(module, {leaf: tensors[key] for leaf, key in held.items()})


def test_paused_gc_restores_the_collector_as_it_was() -> None:
    was = gc.isenabled()
    try:
        gc.enable()
        with paused_gc():
            assert not gc.isenabled()
        assert gc.isenabled()
        gc.disable()
        with paused_gc():
            pass
        assert not gc.isenabled()
        gc.enable()
        with pytest.raises(ValueError), paused_gc():
            raise ValueError
        assert gc.isenabled()
    finally:
        (gc.enable if was else gc.disable)()
