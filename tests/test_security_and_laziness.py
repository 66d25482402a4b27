"""Nothing from a checkpoint ever runs; torch is never imported; shape-only rules read no bytes."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from ckptlint.io.checkpoint import Checkpoint
from ckptlint.io.open import open_checkpoint
from ckptlint.options import Options
from ckptlint.results import Report
from ckptlint.runner import run_jobs
from ckptlint.selection import Selection
from conftest import CASES, REPO, run_subprocess


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


@dataclass
class ReadLog:
    """What a run read: how often each key was read, and the checkpoint it read from."""

    reads: Counter[str]
    checkpoint: Checkpoint

    @property
    def read_once(self) -> bool:
        """Every key read was read exactly once."""
        return set(self.reads.values()) <= {1}


def _lint_logging_reads(monkeypatch: pytest.MonkeyPatch, path: Path, options: Options) -> tuple[Report, ReadLog]:
    """Check one file with ``options``, counting each call of ``Checkpoint.read`` per key.

    The checkpoint is opened here and handed to the runner, so its ``bytes_read`` can be looked at
    afterwards even when nothing was read."""
    reads: Counter[str] = Counter()
    real_read = Checkpoint.read

    def counting_read(self: Checkpoint, key: str) -> np.ndarray:
        reads[key] += 1
        return real_read(self, key)

    monkeypatch.setattr(Checkpoint, "read", counting_read)
    checkpoint = open_checkpoint(str(path))
    report = run_jobs([([checkpoint], options)])
    return report, ReadLog(reads, checkpoint)


def _float_keys(checkpoint: Checkpoint) -> set[str]:
    """The keys of the checkpoint's floating-point tensors (the ones value rules look at)."""
    return {key for key, ref in checkpoint.tensors.items() if ref.dtype.is_float}


def _nbytes(checkpoint: Checkpoint, keys: set[str]) -> int:
    """The bytes these tensors hold (what reading each of them once costs)."""
    return sum(checkpoint.tensors[key].nbytes for key in keys)


def test_shape_only_rules_read_no_tensor_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rules that need only shapes and names judge the file without reading a single value."""
    options = Options(selection=Selection(select=("missing-bn-stats", "unsafe-pickle")), hash_files=False)
    report, log = _lint_logging_reads(monkeypatch, CASES / "bn-stats-dropped" / "detr.pth", options)
    assert {f.name for f in report.findings} == {"missing-bn-stats"}  # the rules did run
    assert log.reads == Counter()
    assert log.checkpoint.bytes_read == 0


def test_a_value_rule_reads_every_tensor_exactly_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """non-finite needs every float tensor's values: each is read once, and only its own bytes."""
    options = Options(selection=Selection(select=("non-finite",)), hash_files=False)
    report, log = _lint_logging_reads(monkeypatch, CASES / "bn-stats-dropped" / "detr.pth", options)
    assert report.files[0].tensors == 452
    assert set(log.reads) == _float_keys(log.checkpoint) == set(log.checkpoint.tensors)  # all 452 are float32
    assert log.read_once, [key for key, n in log.reads.items() if n > 1]
    assert log.checkpoint.bytes_read == _nbytes(log.checkpoint, set(log.reads)) == 551_984


def test_value_facts_share_one_read_per_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every rule on: the value facts of all of them come from one read of each float tensor;
    the integer step counter (num_batches_tracked) is never read."""
    report, log = _lint_logging_reads(monkeypatch, CASES / "init-weights" / "model.safetensors",
                                      Options(hash_files=False))
    assert report.files[0].tensors == 14
    assert set(log.reads) == _float_keys(log.checkpoint)
    assert len(log.reads) == 13 and "features.1.num_batches_tracked" not in log.reads
    assert log.read_once, [key for key, n in log.reads.items() if n > 1]
    assert log.checkpoint.bytes_read == _nbytes(log.checkpoint, set(log.reads)) == 180_520


PICKLE_RULES = "unsafe-pickle,unknown-pickle-global"
# One CLI run in a fresh interpreter: its JSON report, exit code, and whether numpy and networkx
# were imported by the time it was done.
_CLI_RUN = """
import json, sys
from ckptlint.cli import main
code = main(['check', '--format', 'json', '--output', sys.argv[1], *sys.argv[2:]])
print(json.dumps({'code': code, 'numpy': 'numpy' in sys.modules, 'networkx': 'networkx' in sys.modules}))
"""


def _cli_run(tmp_path: Path, *args: str) -> tuple[dict, dict]:
    out = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-c", _CLI_RUN, str(out), *args], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1]), json.loads(out.read_text())


def _malicious_and_unreadable(tmp_path: Path) -> Path:
    """A bare pickle that calls os.system: not a checkpoint at all, so unreadable past its pickle."""
    bare = tmp_path / "bare.pkl"
    bare.write_bytes(pickle.dumps(Payload(os.system, ("true",)), protocol=2))
    return bare


@pytest.mark.parametrize(("target", "code", "findings", "errors"), [
    ("fixtures/models/resnet50_tiny.pth", 0, [], 0),
    ("fixtures/cases/pickle-os-system/model.pt", 1, [("unsafe-pickle", "posix.system")], 0),
    ("fixtures/cases/pickle-class-as-data/model.pt", 0,
     [("unknown-pickle-global", "mytraining.config.TrainConfig")], 0),
    ("bare.pkl", 1, [("unsafe-pickle", "posix.system")], 1),
])
def test_a_pickle_only_run_judges_clean_malicious_and_unreadable_files(
        tmp_path: Path, target: str, code: int, findings: list[tuple[str, str]], errors: int) -> None:
    """What a pre-commit hook runs over many files: the pickle rules alone, reading only the
    pickles, find what a full check finds, with the same exit code."""
    path = _malicious_and_unreadable(tmp_path) if target == "bare.pkl" else REPO / target
    run, report = _cli_run(tmp_path, "--select", PICKLE_RULES, str(path))
    assert [(f["name"], f["evidence"]["global"]) for f in report["findings"]] == findings
    assert (run["code"], len(report["errors"])) == (code, errors)
    run, report = _cli_run(tmp_path, str(path))
    assert [(f["name"], f["evidence"]["global"]) for f in report["findings"] if f["name"] in PICKLE_RULES] == findings


def test_a_pickle_only_run_imports_neither_numpy_nor_networkx(tmp_path: Path) -> None:
    """The pickle rules need no tensor values (numpy) and no module graph (networkx): a run of
    them alone, over clean, malicious and unreadable files, imports neither."""
    paths = [str(REPO / "fixtures/models/resnet50_tiny.pth"), str(CASES / "pickle-os-system" / "model.pt"),
             str(_malicious_and_unreadable(tmp_path))]
    run, report = _cli_run(tmp_path, "--select", PICKLE_RULES, *paths)
    assert run["code"] == 1 and len(report["findings"]) == 2
    assert (run["numpy"], run["networkx"]) == (False, False)
    # the same files checked by every rule need both (so the assertion above can fail)
    run, report = _cli_run(tmp_path, *paths)
    assert (run["numpy"], run["networkx"]) == (True, True)


def test_a_pickle_only_run_builds_no_facts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pickle rules judge a file without its module graph, its file facts or a single tensor
    read, and find exactly the globals a full check finds."""
    from ckptlint.facts import checkpoint as facts_checkpoint

    targets = [CASES / "pickle-os-system" / "model.pt", CASES / "pickle-class-as-data" / "model.pt",
               CASES / "detr-training-checkpoint" / "checkpoint.pth"]
    full = run_jobs([([str(t) for t in targets],
                      Options(selection=Selection(select=(*PICKLE_RULES.split(","), "missing-bn-stats")),
                              hash_files=False))])
    expected = [f for f in full.findings if f.name in PICKLE_RULES.split(",")]
    assert {f.name for f in expected} == set(PICKLE_RULES.split(","))

    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("a pickle-only run built checkpoint facts")

    monkeypatch.setattr(facts_checkpoint.CheckpointFacts, "__init__", refused)
    checkpoints = [open_checkpoint(str(t)) for t in targets]
    report = run_jobs([(checkpoints, Options(selection=Selection(select=tuple(PICKLE_RULES.split(","))),
                                             hash_files=False))])
    assert not report.errors
    assert report.findings == expected
    assert [c.bytes_read for c in checkpoints] == [0, 0, 0]
