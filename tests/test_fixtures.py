"""The committed fixtures are exactly what the committed generator makes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from ckptlint.io import open_checkpoint
from conftest import FIXTURES

BINARY_SUFFIXES = {".pt", ".pth", ".safetensors"}


def test_generator_reproduces_every_committed_fixture(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(FIXTURES / "make_fixtures.py"), str(tmp_path)], check=True)
    committed = sorted(p.relative_to(FIXTURES) for p in FIXTURES.rglob("*") if p.suffix in BINARY_SUFFIXES)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.suffix in BINARY_SUFFIXES)
    assert committed == generated
    for relative in committed:
        with open_checkpoint(str(FIXTURES / relative)) as old, open_checkpoint(str(tmp_path / relative)) as new:
            assert list(old.tensors) == list(new.tensors), relative
            for key in old.tensors:
                np.testing.assert_array_equal(old.read(key), new.read(key), err_msg=f"{relative}: {key}")
