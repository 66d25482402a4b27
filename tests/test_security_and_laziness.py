"""Nothing from a checkpoint ever runs; torch is never imported; shape-only rules read no bytes."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import torch

from ckptlint.options import Options
from ckptlint.runner import check_paths
from ckptlint.engine.selection import Selection
from conftest import CASES, run_subprocess


class Payload:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def test_malicious_pickles_are_flagged_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    cases = {
        "posix.system": Payload(os.system, (f"touch {marker}",)),
        "builtins.exec": Payload(exec, (f"open({str(marker)!r}, 'w').close()",)),
        "builtins.eval": Payload(eval, (f"open({str(marker)!r}, 'w')",)),
    }
    for qualname, payload in cases.items():
        for legacy in (False, True):
            path = tmp_path / f"{qualname}-{legacy}.pt"
            torch.save({"model": {"w": torch.ones(2)}, "x": payload}, path,
                       _use_new_zipfile_serialization=not legacy)
            result = run_subprocess("check", str(path), "--format", "json", timeout=60)
            names = {(f["name"], f["evidence"].get("global")) for f in result.json["findings"]}
            assert ("unsafe-pickle", qualname) in names, (qualname, legacy, names)
            assert result.code == 1
    # A bare malicious pickle (not a torch file at all) is still judged, then refused.
    bare = tmp_path / "bare.pkl"
    bare.write_bytes(pickle.dumps(Payload(os.system, (f"touch {marker}",)), protocol=2))
    result = run_subprocess("check", str(bare), "--format", "json")
    assert result.code == 1  # the unsafe-pickle finding decides the exit code, not the unreadable file
    assert result.json["errors"][0]["file"] == str(bare)
    assert [f["evidence"]["global"] for f in result.json["findings"]] == ["posix.system"]
    assert not marker.exists()


def test_cli_and_library_never_import_torch() -> None:
    code = ("import sys, ckptlint.cli, ckptlint.runner; "
            "from ckptlint.cli import main; main(['check', '--no-hash', sys.argv[1]]); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    target = str(CASES / "detr-training-checkpoint" / "checkpoint.pth")
    done = subprocess.run([sys.executable, "-c", code, target], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_shape_only_rules_read_no_tensor_bytes(monkeypatch) -> None:
    from ckptlint.io.checkpoint import Checkpoint

    read_calls: list[str] = []
    real_read = Checkpoint.read
    monkeypatch.setattr(Checkpoint, "read", lambda self, key: read_calls.append(key) or real_read(self, key))
    path = str(CASES / "bn-stats-dropped" / "detr.pth")
    report = check_paths([path], Options(selection=Selection(select=("missing-bn-stats", "unsafe-pickle")),
                                         hash_files=False))
    assert {f.name for f in report.findings} == {"missing-bn-stats"}
    assert read_calls == []
    report = check_paths([path], Options(selection=Selection(select=("non-finite",)), hash_files=False))
    assert len(read_calls) == report.files[0].tensors  # each tensor read exactly once


def test_value_facts_share_one_read_per_tensor(monkeypatch) -> None:
    from ckptlint.io.checkpoint import Checkpoint

    calls: list[str] = []
    real_read = Checkpoint.read
    monkeypatch.setattr(Checkpoint, "read", lambda self, key: calls.append(key) or real_read(self, key))
    path = str(CASES / "init-weights" / "model.safetensors")
    check_paths([path], Options(hash_files=False))
    assert sorted(calls) == sorted(set(calls))
