"""Property-based fuzzing of the readers: whatever the bytes, a Checkpoint or a CheckpointError.

Bounded for CI: a fixed number of examples, derandomized so a failure reproduces.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptlint.errors import CheckpointError
from ckptlint.io import open_checkpoint


def _seeds() -> dict[str, bytes]:
    sd = {"conv.weight": torch.randn(4, 3, 3, 3), "bn.running_mean": torch.randn(4),
          "view": torch.randn(6, 6)[1:, 2:].t()}
    out = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, save in {
            "zip": lambda p: torch.save(sd, p),
            "legacy": lambda p: torch.save(sd, p, _use_new_zipfile_serialization=False),
            "st": lambda p: safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, p),
        }.items():
            path = Path(folder) / name
            save(path)
            out[name] = path.read_bytes()
    return out


SEEDS = _seeds()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(0, 6))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    if draw(st.integers(0, 9)) == 0:
        data = bytearray(draw(st.binary(max_size=512)))
    return bytes(data)


@settings(max_examples=1500, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated())
def test_readers_never_fail_otherwise(data: bytes) -> None:
    with tempfile.NamedTemporaryFile(suffix=".pt") as handle:
        handle.write(data)
        handle.flush()
        try:
            checkpoint = open_checkpoint(handle.name)
        except CheckpointError as exc:
            assert str(exc).startswith(handle.name) and "\n" not in str(exc)
            return
        with checkpoint:
            for key in checkpoint.tensors:
                try:
                    values = checkpoint.read(key)
                except CheckpointError:
                    continue
                assert values.shape == checkpoint.tensors[key].shape
