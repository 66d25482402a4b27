"""Bad input: one line naming the file and the problem, exit 2, no traceback, inputs untouched."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest
import torch

from conftest import run_subprocess


def _good(tmp_path: Path) -> Path:
    path = tmp_path / "good.pt"
    torch.save({"w": torch.randn(8, 8) * 0.3}, path)
    return path


def _safetensors_with_header(tmp_path: Path, header: bytes, data: bytes = b"\0" * 16) -> Path:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def _truncated(tmp_path: Path) -> Path:
    whole = _good(tmp_path).read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(whole[: len(whole) // 2])
    return path


def _truncated_legacy(tmp_path: Path) -> Path:
    torch.save({"w": torch.randn(64)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    whole = (tmp_path / "legacy.pt").read_bytes()
    path = tmp_path / "truncated_legacy.pt"
    path.write_bytes(whole[:-40])
    return path


def _corrupt_zip(tmp_path: Path) -> Path:
    whole = bytearray(_good(tmp_path).read_bytes())
    whole[-22:] = b"\xff" * 22  # the end-of-central-directory record
    path = tmp_path / "corrupt.pt"
    path.write_bytes(bytes(whole))
    return path


def _no_tensors(tmp_path: Path) -> Path:
    path = tmp_path / "notensors.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    return path


def _directory(tmp_path: Path) -> Path:
    (tmp_path / "somedir").mkdir()
    return tmp_path / "somedir"


def _write(name: str, content: bytes):
    def make(tmp_path: Path) -> Path:
        path = tmp_path / name
        path.write_bytes(content)
        return path
    return make


BAD_INPUTS = {
    "missing": (lambda tmp: tmp / "missing.pt", "no such file"),
    "directory": (_directory, "directory holds no checkpoint"),
    "empty": (_write("empty.pt", b""), "empty file"),
    "truncated zip": (_truncated, "zip"),
    "truncated legacy": (_truncated_legacy, "truncated"),
    "wrong magic": (_write("wrong.pt", b"\x00\x01garbage" * 50), "unrecognised format"),
    "text file": (_write("notes.pt", b"just some notes\n" * 10), "text file"),
    "png": (_write("image.pt", b"\x89PNG\r\n\x1a\n" + b"\0" * 100), "PNG image"),
    "header too long": (_write("long.safetensors", struct.pack("<Q", 10**9) + b"{" + b" " * 40),
                        "more than the file holds"),
    "bad json header": (lambda tmp: _safetensors_with_header(tmp, b"{not json}"), "not valid JSON"),
    "unknown dtype": (lambda tmp: _safetensors_with_header(
        tmp, b'{"a": {"dtype": "F13", "shape": [2], "data_offsets": [0, 8]}}'), "unknown dtype"),
    "offsets outside": (lambda tmp: _safetensors_with_header(
        tmp, b'{"a": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}}'), "outside the file"),
    "overlapping": (lambda tmp: _safetensors_with_header(
        tmp, b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},'
             b' "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}'), "overlap"),
    "size mismatch": (lambda tmp: _safetensors_with_header(
        tmp, b'{"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}'), "bytes for a float32"),
    "corrupt zip": (_corrupt_zip, "zip"),
    "no tensors": (_no_tensors, "holds no tensors"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_other_files_still_checked(tmp_path: Path, name: str) -> None:
    make, problem = BAD_INPUTS[name]
    bad = make(tmp_path)
    good = _good(tmp_path)
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (bad, good) if p.is_file()}
    result = run_subprocess("check", str(bad), str(good), "--format", "json")
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert str(bad) in lines[0] and problem in lines[0], lines[0]
    assert "Traceback" not in result.err + result.out
    report = result.json
    assert [f["path"] for f in report["files"]] == [str(good)]
    assert report["errors"][0]["file"] == str(bad)
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (bad, good) if p.is_file()}
    assert before == after


def test_misuse_exits_2_not_1(run) -> None:
    assert run("check").code == 2
    assert run("check", "x.pt", "--format", "yaml").code == 2
    assert run("check", "x.pt", "--select", "no-such-rule").code == 2
    result = run("explain", "non-finit")
    assert result.code == 2 and "did you mean 'non-finite'" in result.err
    assert run("frobnicate").code == 2


def test_report_is_written_even_when_a_file_is_unreadable(tmp_path: Path, run) -> None:
    out = tmp_path / "report.json"
    result = run("check", str(tmp_path / "absent.pt"), "--format", "json", "-o", str(out))
    assert result.code == 2
    assert out.read_text().startswith("{") and '"errors"' in out.read_text()
    assert list(tmp_path.glob(".ckptlint-*")) == []
