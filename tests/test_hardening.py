"""Hostile and broken checkpoints never hurt the user: nothing runs, nothing hangs, nothing
explodes, nothing is written; every problem is one line and exit 2, or a correct report."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import struct
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

import malicious_corpus as corpus
from conftest import CASES, REPO

MEMORY_LIMIT = 3 << 30  # address space for a scanning process
SCAN_TIMEOUT = 120

CORPUS_NAMES = [c.name for c in corpus.payload_cases()]


def scan(*paths: Path | str, cwd: Path | None = None, timeout: float = SCAN_TIMEOUT) -> subprocess.CompletedProcess:
    """ckptlint in its own process, with bounded memory and time, JSON on stdout."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    return subprocess.run([sys.executable, "-m", "ckptlint", "check", "--no-hash", "--format", "json",
                           *map(str, paths)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=limit)


def assert_clean_failure_or_report(result: subprocess.CompletedProcess, paths: list[Path]) -> dict:
    """Exit 0/1/2, every file reported or named as unreadable in one line each, no traceback."""
    assert result.returncode in (0, 1, 2), result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout
    report = json.loads(result.stdout)
    seen = {f["path"] for f in report["files"]} | {e["file"] for e in report["errors"]}
    assert seen == {str(p) for p in paths}
    lines = result.stderr.splitlines()
    assert len(lines) == len(report["errors"]) and all(line.startswith("ckptlint: ") for line in lines)
    return report


@pytest.fixture(scope="module")
def malicious(tmp_path_factory: pytest.TempPathFactory) -> dict[str, corpus.CorpusFile]:
    folder = tmp_path_factory.mktemp("corpus")
    return {item.path.name: item for item in corpus.build(folder)}


@pytest.mark.parametrize("name", [f"{n}{suffix}" for n in CORPUS_NAMES for suffix in (".pt", ".legacy.pth")] + [
    "unusual-entry-name.pt", "two-pickles.pt", "duplicate-names.pt", "duplicate-names-reversed.pt",
    "legacy-sys-info.pth", "legacy-keys.pth", "legacy-trailer.pth"])
def test_malicious_pickle_is_flagged_and_never_runs(malicious: dict, name: str) -> None:
    item = malicious[name]
    result = scan(item.path, cwd=item.path.parent, timeout=60)
    report = json.loads(result.stdout)
    named = {f["evidence"]["global"] for f in report["findings"] if f["name"] == "unsafe-pickle"}
    assert item.expected in named
    assert all(f["severity"] == "error" for f in report["findings"] if f["name"] == "unsafe-pickle")
    assert result.returncode in (1, 2) and "Traceback" not in result.stderr
    assert not (item.path.parent / corpus.MARKER).exists()


def _fake_module(name: str, **attrs: object) -> None:
    """Make a module importable for pickling, as if the package were installed."""
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    for key, value in attrs.items():
        setattr(sys.modules[name], key, value)
        value.__module__ = name


def test_real_training_checkpoints_stay_clean(tmp_path: Path) -> None:
    model = {"backbone.0.body.conv1.weight": torch.randn(4, 3, 3, 3)}
    parameter = torch.nn.Parameter(torch.randn(3))
    optimizer = torch.optim.AdamW([parameter], lr=1e-4)
    parameter.grad = torch.ones(3)
    optimizer.step()  # Adam's state: step, exp_avg, exp_avg_sq tensors
    detr = {"model": model, "optimizer": optimizer.state_dict(), "lr_scheduler": {"last_epoch": 3},
            "epoch": 3, "args": argparse.Namespace(lr=1e-4, device="cuda", coco_path="/data", frozen=False,
                                                   scales=np.array([480, 512]), momentum=np.float64(0.9))}
    torch.save(detr, tmp_path / "detr.pth")
    attribute_dict = type("AttributeDict", (dict,), {})
    _fake_module("lightning.fabric.utilities.data", AttributeDict=attribute_dict)
    hparams = attribute_dict(lr=0.1, batch_size=np.int64(32), warmup=np.float32(0.5))
    lightning = {"state_dict": {f"model.{k}": v for k, v in model.items()}, "hyper_parameters": hparams,
                 "pytorch-lightning_version": "2.4.0", "epoch": 1, "global_step": np.int64(100),
                 "loops": {"fit_loop": {"state_dict": {}}}, "callbacks": {}, "optimizer_states": [],
                 "lr_schedulers": []}
    torch.save(lightning, tmp_path / "lightning.ckpt")
    result = scan(tmp_path / "detr.pth", tmp_path / "lightning.ckpt")
    report = assert_clean_failure_or_report(result, [tmp_path / "detr.pth", tmp_path / "lightning.ckpt"])
    assert report["errors"] == []
    assert not [f for f in report["findings"] if f["name"] in ("unsafe-pickle", "unknown-pickle-global")]


def _sources(tmp_path: Path) -> dict[str, Path]:
    sd = {f"layer{i}.weight": torch.randn(16, 8) for i in range(4)} | {"bias": torch.randn(16)}
    paths = {"zip": tmp_path / "model.pt", "legacy": tmp_path / "legacy.pth", "st": tmp_path / "model.safetensors"}
    torch.save(sd, paths["zip"])
    torch.save(sd, paths["legacy"], _use_new_zipfile_serialization=False)
    safetensors.torch.save_file(sd, paths["st"])
    return paths


def test_truncation_at_every_64th(tmp_path: Path) -> None:
    broken: list[Path] = []
    for kind, source in _sources(tmp_path).items():
        data = source.read_bytes()
        for i in range(64):
            cut = tmp_path / f"{kind}-cut{i:02d}{source.suffix}"
            cut.write_bytes(data[: len(data) * i // 64])
            broken.append(cut)
    report = assert_clean_failure_or_report(scan(*broken), broken)
    assert len(report["errors"]) == len(broken)  # a cut file is never mistaken for a good one


def test_random_byte_flips_in_headers_and_pickles(tmp_path: Path) -> None:
    rng = random.Random(1234)  # noqa: S311 - a reproducible fuzz, not cryptography
    flipped: list[Path] = []
    for kind, source in _sources(tmp_path).items():
        data = source.read_bytes()
        header_end = {"zip": 1100, "legacy": 600, "st": 8 + struct.unpack("<Q", data[:8])[0]}[kind]
        for i in range(40):
            mutated = bytearray(data)
            for _ in range(rng.randint(1, 4)):
                mutated[rng.randrange(min(header_end, len(data)))] = rng.randrange(256)
            path = tmp_path / f"{kind}-flip{i:02d}{source.suffix}"
            path.write_bytes(bytes(mutated))
            flipped.append(path)
    assert_clean_failure_or_report(scan(*flipped), flipped)


def _safetensors_header(path: Path, header: bytes, data_size: int) -> None:
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(header)) + header)
        handle.truncate(8 + len(header) + data_size)  # sparse: cheap however large


def test_hostile_safetensors_headers(tmp_path: Path) -> None:
    cases = {}
    huge = tmp_path / "huge-claim.safetensors"
    with open(huge, "wb") as handle:  # claims a 200 MB header inside a (sparse) 300 MB file
        handle.write(struct.pack("<Q", 200 << 20) + b"{")
        handle.truncate(300 << 20)
    cases[huge] = "exceeds the 100 MiB limit"
    big_but_legal = tmp_path / "big-metadata.safetensors"
    header = json.dumps({"__metadata__": {"notes": "x" * (95 << 20)}}).encode()
    _safetensors_header(big_but_legal, header, 0)
    cases[big_but_legal] = None
    overlap = tmp_path / "overlap.safetensors"
    _safetensors_header(overlap, json.dumps({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                                              "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}
                                             ).encode(), 24)
    cases[overlap] = "overlap"
    beyond = tmp_path / "beyond.safetensors"
    _safetensors_header(beyond, json.dumps({"a": {"dtype": "F32", "shape": [1 << 40],
                                                  "data_offsets": [0, 4 << 40]}}).encode(), 16)
    cases[beyond] = "outside the file"
    unknown = tmp_path / "unknown.safetensors"
    _safetensors_header(unknown, json.dumps({"a": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 1]}}).encode(), 1)
    cases[unknown] = "unknown dtype"
    report = assert_clean_failure_or_report(scan(*cases), list(cases))
    errors = {e["file"]: e["message"] for e in report["errors"]}
    for path, problem in cases.items():
        if problem is None:
            assert str(path) not in errors
        else:
            assert problem in errors[str(path)]


def _zip(path: Path, entries: list[tuple[str, bytes, int]]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data, method in entries:
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=method)


def test_hostile_zips_and_pickles(tmp_path: Path) -> None:
    cases: dict[Path, str] = {}
    bomb = tmp_path / "bomb.pt"
    _zip(bomb, [("archive/data.pkl", b"\x80\x02" + b"\x00" * (200 << 20), zipfile.ZIP_DEFLATED)])
    cases[bomb] = "zip bomb"
    claims = tmp_path / "claims.pt"
    pickle_bytes = corpus.checkpoint_pickle(corpus.text("x"))
    _zip(claims, [("archive/data.pkl", pickle_bytes, zipfile.ZIP_STORED),
                  ("archive/data/0", corpus.STORAGE, zipfile.ZIP_STORED)])
    data = bytearray(claims.read_bytes())
    central = data.rfind(b"PK\x01\x02archive/data/0"[:4])  # the last central-directory record: data/0
    data[central + 24:central + 28] = struct.pack("<I", 0xFFFFFFF0)  # uncompressed size
    claims.write_bytes(bytes(data))
    cases[claims] = "claims"
    deep = tmp_path / "deep.pt"
    _zip(deep, [("archive/data.pkl", b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b".", zipfile.ZIP_STORED)])
    cases[deep] = "holds no tensors"
    expanded = tmp_path / "expanded.pt"
    record = corpus.tensor_record().replace(b"(K\x02t(K\x01t", b"(J\x00\x00\x00@t(K\x00t")  # 2**30, stride 0
    assert record != corpus.tensor_record()
    _zip(expanded, [("archive/data.pkl", b"\x80\x02}(" + corpus.text("w") + record + b"u.", zipfile.ZIP_STORED),
                    ("archive/data/0", corpus.STORAGE, zipfile.ZIP_STORED)])
    cases[expanded] = "refused"
    report = assert_clean_failure_or_report(scan(*cases), list(cases))
    errors = {e["file"]: e["message"] for e in report["errors"]}
    for path, problem in cases.items():
        assert problem in errors[str(path)], (path.name, errors.get(str(path)))


def test_a_million_tiny_tensors(tmp_path: Path) -> None:
    arrays = {f"blocks.{i // 1000}.unit{i % 1000}.scale": np.full(2, i % 7, dtype=np.float32) for i in range(1_000_000)}
    arrays["blocks.3.unit5.scale"][0] = np.nan
    safetensors.numpy.save_file(arrays, tmp_path / "million.safetensors")
    result = scan(tmp_path / "million.safetensors", timeout=600)
    report = assert_clean_failure_or_report(result, [tmp_path / "million.safetensors"])
    assert report["files"][0]["tensors"] == 1_000_000
    assert [(f["name"], f["key"]) for f in report["findings"]] == [("non-finite", "blocks.3.unit5.scale")]


def test_inputs_are_never_written(tmp_path: Path) -> None:
    inputs = sorted(p for p in CASES.rglob("*") if p.suffix in (".pt", ".pth", ".safetensors"))
    before = {p: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in inputs}
    result = subprocess.run([sys.executable, "-m", "ckptlint", "check", *map(str, inputs), "--pretrained",
                             str(REPO / "fixtures" / "models" / "resnet50_tiny.pth"), "--format", "sarif",
                             "-o", str(tmp_path / "out.sarif")], capture_output=True, text=True)
    assert result.returncode in (1, 2)
    after = {p: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in inputs}
    assert before == after


def test_an_interrupted_run_leaves_no_report(tmp_path: Path, monkeypatch, run) -> None:
    from ckptlint import cli

    out = tmp_path / "report.json"
    out.write_text("the previous report\n")

    def interrupted(report):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "renderer", lambda fmt, verbose=False: interrupted)
    result = run("check", str(CASES / "non-finite" / "model.pt"), "--format", "json", "-o", str(out))
    assert result.code == 2
    assert out.read_text() == "the previous report\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_sarif_is_byte_identical_across_hash_seeds() -> None:
    paths = [str(CASES / "transfer-selective" / "detr.pth"), str(CASES / "non-finite" / "model.pt")]
    outputs = set()
    for seed in ("0", "7", "4242"):
        done = subprocess.run([sys.executable, "-m", "ckptlint", "check", *paths, "--pretrained",
                               str(REPO / "fixtures" / "models" / "resnet50_tiny.pth"), "--format", "sarif"],
                              capture_output=True, env={**os.environ, "PYTHONHASHSEED": seed})
        outputs.add(done.stdout)
    assert len(outputs) == 1
