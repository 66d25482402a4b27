"""Hostile structure costs time and memory in proportion to the file and ends as one line for that
file: the run goes on, the other files' findings and the report (SARIF included) are kept, and the
exit code says what the findings say. Every file is built byte by byte; no torch needed."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest

import crafted
from ckptlint.io.layout import strip_prefixes
from ckptlint.results import Finding, ReadError, Report
from crafted import evil_pickle, tensor_pickle, text, torch_entries, zip_bytes


def _safetensors(path: Path, header: dict | bytes, data: bytes = b"\0" * 4) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(crafted.safetensors_bytes(raw, data))
    return path


def _zip(path: Path, data_pkl: bytes) -> Path:
    path.write_bytes(zip_bytes(torch_entries(data_pkl)))
    return path


def _one(key: str, shape: list[int] | None = None, dtype: str = "F32") -> dict:
    return {key: {"dtype": dtype, "shape": shape or [1], "data_offsets": [0, 4]}}


def _tensor_with(shape: bytes = b"(K\x02t", stride: bytes = b"(K\x01t", offset: bytes = b"K\x00",
                 dtype: bytes = b"") -> bytes:
    """``{"weight": tensor}`` whose storage offset, size and stride tuples or (with
    _rebuild_tensor_v3) dtype are given as pickle opcodes."""
    record = tensor_pickle().replace(b"QK\x00(K\x02t(K\x01t", b"Q" + offset + shape + stride)
    if dtype:
        record = record.replace(b"_rebuild_tensor_v2", b"_rebuild_tensor_v3")
        record = record.replace(b"\x89ccollections\nOrderedDict\n)R", b"\x89N" + dtype)  # hooks: None
    return record


def _long(digits: int) -> bytes:
    """LONG4: an integer of about ``digits`` decimal digits (Python refuses to print it)."""
    size = digits * 10 // 24 + 1
    return b"\x8b" + struct.pack("<I", size) + b"\x01" * size


def hostile_files(folder: Path) -> dict[Path, str]:
    """Each hostile file and the words of its one-line error."""
    cases: dict[Path, str] = {}
    cyclic = b"\x80\x02}q\x00(" + b"".join(text(f"k{i}") + b"h\x00" for i in range(40)) + b"u."  # each value: itself
    cases[_zip(folder / "cyclic.pt", cyclic)] = "holds no tensors"
    cases[_safetensors(folder / "prefixes.safetensors", _one("module." * 400_000 + "w"))] = "nests 400001 parts deep"
    cases[_safetensors(folder / "dots.safetensors", _one("a." * 3_000 + "w"))] = "nests 3001 parts deep"
    deep = b"\x80\x02}(" + text("a." * 3_000 + "w") + tensor_pickle()[15:]
    cases[_zip(folder / "dots.pt", deep)] = "nests 3001 parts deep"
    encrypted = torch_entries(tensor_pickle())
    encrypted[0].flags = 1
    (folder / "encrypted.pt").write_bytes(zip_bytes(encrypted))
    cases[folder / "encrypted.pt"] = "is encrypted"
    big_int = b'{"w": {"dtype": "F32", "shape": [' + b"7" * 5_000 + b'], "data_offsets": [0, 4]}}'
    cases[_safetensors(folder / "bigint.safetensors", big_int)] = "not valid JSON"
    index = folder / "model.safetensors.index.json"
    index.write_text('{"metadata": {"total_size": ' + "9" * 5_000 + '}, "weight_map": {"w": "bigint.safetensors"}}')
    cases[index] = "not valid JSON"
    cases[_zip(folder / "bigoffset.pt", _tensor_with(offset=_long(5_000)))] = "reaches element about 2**"
    cases[_safetensors(folder / "float4.safetensors", _one("w", dtype="F4"))] = "unknown dtype"
    float4 = _tensor_with(dtype=b"ctorch\nfloat4_e2m1fn_x2\n")
    cases[_zip(folder / "float4.pt", float4)] = "dtype"
    empty = {"w": {"dtype": "F32", "shape": [0, 2**62, 2**62], "data_offsets": [0, 0]}}
    cases[_safetensors(folder / "zero-and-huge.safetensors", empty, b"")] = "no array can hold"
    huge = b"\x8a\x08" + b"\0" * 7 + b"\x40"  # LONG1: 2**62
    zero_and_huge = _tensor_with(shape=b"(K\x00" + huge + huge + b"t", stride=b"(K\x01K\x01K\x01t")
    cases[_zip(folder / "zero-and-huge.pt", zero_and_huge)] = "no array can hold"
    cases[_safetensors(folder / "dims.safetensors", _one("w", [1] * 65))] = "65 dimensions"
    return cases


def test_each_hostile_file_is_one_line_and_the_run_goes_on(tmp_path: Path) -> None:
    cases = hostile_files(tmp_path)
    evil = _zip(tmp_path / "evil.pt", tensor_pickle(text("x") + evil_pickle()[:-1]))
    good = _safetensors(tmp_path / "good.safetensors", _one("w"), struct.pack("<f", 0.5))
    paths = [*cases, evil, good]
    started = time.monotonic()
    result = crafted.scan(*paths, timeout=120)
    assert time.monotonic() - started < 60
    assert result.returncode == 1, result.stderr  # unsafe-pickle decides; unreadable files do not hide it
    assert "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    errors = {e["file"]: e["message"] for e in report["errors"]}
    for path, words in cases.items():
        assert words in errors.pop(str(path)), (path.name, errors.get(str(path)))
    assert errors == {}
    assert [(f["file"], f["evidence"]["global"]) for f in report["findings"]
            if f["name"] == "unsafe-pickle" and f["file"] == str(evil)] == [(str(evil), "os.system")]
    assert str(good) in {f["path"] for f in report["files"]}
    assert len(result.stderr.splitlines()) == len(report["errors"])


def test_the_sarif_report_is_written_for_the_rest(tmp_path: Path) -> None:
    cases = hostile_files(tmp_path)
    evil = _zip(tmp_path / "evil.pt", tensor_pickle(text("x") + evil_pickle()[:-1]))
    out = tmp_path / "out.sarif"
    result = crafted.scan(*cases, evil, args=("--no-hash", "-o", str(out)), fmt="sarif", timeout=120)
    assert result.returncode == 1, result.stderr
    run = json.loads(out.read_text())["runs"][0]
    assert "CKP001" in {r["ruleId"] for r in run["results"]}
    assert len(run["invocations"][0]["toolExecutionNotifications"]) == len(cases)


def test_prefix_stripping_is_linear() -> None:
    key = "module." * 400_000 + "w"
    started = time.monotonic()
    tensors, stripped = strip_prefixes({key: 1, "module." * 400_000 + "b": 2}, lightning=False)
    assert time.monotonic() - started < 5
    assert tensors == {"w": 1, "b": 2} and stripped == "module." * 400_000


def test_wrapper_prefixes_in_safetensors_give_consistent_keys(tmp_path: Path) -> None:
    """Stripped keys and the tensors' own keys agree (rules find a tensor's facts by it), for one
    file and for shards."""
    nan = struct.pack("<2f", float("nan"), 1.0)
    two = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    single = _safetensors(tmp_path / "dp.safetensors", {"module.conv.bias": two}, nan)
    folder = tmp_path / "sharded"
    folder.mkdir()
    for shard, key in ((1, "_orig_mod.a.bias"), (2, "_orig_mod.b.bias")):
        _safetensors(folder / f"model-0000{shard}-of-00002.safetensors", {key: two}, nan)
    weight_map = {"_orig_mod.a.bias": "model-00001-of-00002.safetensors",
                  "_orig_mod.b.bias": "model-00002-of-00002.safetensors"}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    result = crafted.scan(single, folder)
    report = json.loads(result.stdout)
    assert result.returncode == 1 and report["errors"] == [], result.stderr
    assert {(Path(f["file"]).name, f["key"]) for f in report["findings"] if f["name"] == "non-finite"} == {
        ("dp.safetensors", "conv.bias"), ("model.safetensors.index.json", "a.bias"),
        ("model.safetensors.index.json", "b.bias")}


def test_the_real_safetensors_writer_with_a_wrapper_prefix(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    path = tmp_path / "compiled.safetensors"
    weights = {"_orig_mod.module.conv.weight": torch.randn(4, 3, 3, 3), "_orig_mod.module.conv.bias": torch.zeros(4)}
    weights["_orig_mod.module.conv.bias"][0] = float("inf")
    safetensors_torch.save_file(weights, path)
    result = crafted.scan(path)
    report = json.loads(result.stdout)
    assert result.returncode == 1 and report["errors"] == [], result.stderr
    assert report["files"][0]["stripped_prefix"] == "_orig_mod.module."
    assert ("non-finite", "conv.bias") in {(f["name"], f["key"]) for f in report["findings"]}


# --- exit codes: findings decide first, then unreadable files ---

def _report(findings: list[str], errors: int, fail_on: str = "error") -> Report:
    return Report(findings=[Finding("CKP001", "unsafe-pickle", s, "f", None, "m") for s in findings],
                  errors=[ReadError(f"e{i}", "broken") for i in range(errors)], fail_on=fail_on)


@pytest.mark.parametrize("findings, errors, fail_on, code", [
    ([], 0, "error", 0), (["warning"], 0, "error", 0), (["error"], 0, "error", 1),
    (["error"], 3, "error", 1), ([], 1, "error", 2), (["warning"], 1, "error", 2),
    (["warning"], 1, "warning", 1), (["error"], 1, "never", 2),
])
def test_exit_code_precedence(findings: list[str], errors: int, fail_on: str, code: int) -> None:
    assert _report(findings, errors, fail_on).exit_code() == code


def test_exit_code_from_the_command_line(tmp_path: Path) -> None:
    evil = _zip(tmp_path / "evil.pt", tensor_pickle(text("x") + evil_pickle()[:-1]))
    missing = tmp_path / "missing.pt"
    assert crafted.scan(evil, missing).returncode == 1
    assert crafted.scan(missing).returncode == 2
    assert crafted.scan(evil, missing, args=("--no-hash", "--fail-on", "never")).returncode == 2


# --- the safety net for what no reader expected ---

def test_an_unexpected_exception_is_that_file_s_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ckptlint import runner

    good = _safetensors(tmp_path / "good.safetensors", _one("w"), struct.pack("<f", 0.5))
    broken = _safetensors(tmp_path / "broken.safetensors", _one("w"), struct.pack("<f", 0.5))
    real = runner.open_checkpoint

    def open_checkpoint(path: str, key: str | None = None):
        if path == str(broken):
            raise RuntimeError("boom\nsecond line")
        return real(path, key)

    monkeypatch.setattr(runner, "open_checkpoint", open_checkpoint)
    with pytest.raises(RuntimeError):  # CKPTLINT_DEBUG (set for every test): a bug fails loudly
        runner.check_paths([str(broken), str(good)], source_root=str(tmp_path))
    monkeypatch.delenv("CKPTLINT_DEBUG")
    report = runner.check_paths([str(broken), str(good)], source_root=str(tmp_path))
    assert [(e.file, e.message) for e in report.errors] == [
        (str(broken), "internal error while reading: RuntimeError: boom")]
    assert [f.path for f in report.files] == [str(good)]
    assert report.exit_code() == 2
