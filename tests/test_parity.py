"""ckptlint sees every file the way each loader would: every reading torch.load (zip, tar, legacy,
either ``weights_only``) or pickle.load could make is scanned, and a file two loaders read
differently is an error of its own. Each attack is built byte by byte and proven live: when torch
is installed, ``torch.load(path, weights_only=False)`` really runs it (touching a marker file)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

import crafted
from crafted import COMMAND, MARKER, Entry, evil_pickle, tensor_pickle, torch_entries, zip_bytes

LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little") + b"."
live = pytest.mark.skipif(not crafted.HAVE_TORCH, reason="the live proof needs torch")


def report_of(path: Path) -> dict:
    result = crafted.scan(path, cwd=path.parent)
    assert result.returncode in (1, 2) and "Traceback" not in result.stderr, result.stderr
    assert not (path.parent / MARKER).exists()
    return json.loads(result.stdout)


def unsafe(report: dict) -> set[str]:
    return {f["evidence"]["global"] for f in report["findings"] if f["name"] == "unsafe-pickle"}


def error_of(report: dict) -> str:
    (error,) = report["errors"]
    return error["message"]


# --- a file that parses as safetensors and as a pickle ---

def polyglot() -> bytes:
    """Its first 8 bytes are a safetensors header length (4.6 MB) and a pickle's start: PROTO 4,
    then BINFLOAT, whose 8 bytes run over the length's zeros into the header's ``{"x``. The pickle
    goes on inside the first tensor's name, in bytes JSON allows in a string: strings of 32 to 126
    characters (``U`` and a printable length), a memo store (``q``) whose argument is the lead byte
    of a two-byte UTF-8 character ending in STACK_GLOBAL; then a call, and STOP."""
    module, name = "multiprocessing.resource_tracker", "os.path.os.path.os.path.os.system"
    command = f"{COMMAND} # padded past 32 characters"
    payload = b"".join(b"U" + bytes([len(s)]) + s.encode() for s in (module, name))
    payload += b"q\xc2\x93" + b"(U" + bytes([len(command)]) + command.encode() + b"tR."
    start = b"\x80\x04G" + b"\0" * 5
    header = json.dumps({"x" + payload.decode(): {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
                        ensure_ascii=False).encode()
    assert header.startswith(b'{"x') and b"\\" not in header
    (length,) = struct.unpack("<Q", start)
    return crafted.safetensors_bytes(header.ljust(length), struct.pack("<f", 1.0))


def test_a_safetensors_pickle_polyglot_is_scanned_as_both(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(polyglot())
    report = report_of(path)
    assert "reads as a pickle and as safetensors" in error_of(report)
    assert any(name.startswith("multiprocessing.") for name in unsafe(report))


@live
def test_the_polyglot_runs_in_torch(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(polyglot())
    assert crafted.torch_runs(path)


# --- torch's tar format ---

def tar_checkpoint(first_block: bytes | None = None) -> bytes:
    """A tar-format legacy checkpoint whose ``storages`` member runs the command; optionally after a
    first header block of other bytes (still a valid tar header)."""
    members = [crafted.tar_member(b"storages", evil_pickle()), crafted.tar_member(b"tensors", b"K\x00."),
               crafted.tar_member(b"pickle", b"}.")]
    return (first_block or b"") + b"".join(members) + b"\0" * 1024


def legacy_in_a_tar_header() -> bytes:
    """512 bytes that are both a tar header (an empty member) and a whole legacy checkpoint —
    magic, protocol, sys_info, a state dict whose padding entry holds the tar fields, storage
    keys, one storage — so a reader of the legacy stream sees a clean file."""
    block = bytearray(LEGACY_MAGIC + b"\x80\x02M\xe9\x03." + b"\x80\x02}.")
    block += b"\x80\x02}(" + crafted.text("p") + b"B" + struct.pack("<I", 345 - len(block) - 15)
    block += bytes(345 - len(block))  # bytes 100-344: the tar fields, inside the padding bytes object
    block += tensor_pickle()[4:]  # the weight entry; its "u." closes the dict
    block += b"\x80\x02](" + crafted.text("0") + b"e." + struct.pack("<q", 2) + crafted.STORAGE
    assert len(block) <= 512
    return crafted.tar_header(b"", 0, bytearray(block.ljust(512, b"\0")))


@pytest.mark.parametrize("first_block", [None, "legacy"])
def test_a_tar_format_checkpoint_is_scanned(tmp_path: Path, first_block: str | None) -> None:
    path = tmp_path / "model.pth"
    path.write_bytes(tar_checkpoint(legacy_in_a_tar_header() if first_block else None))
    report = report_of(path)
    assert "os.system" in unsafe(report)
    if first_block:
        assert "reads as a torch legacy checkpoint and as a torch tar-format checkpoint" in error_of(report)
    else:
        assert "tar-format" in error_of(report)


@live
def test_torch_runs_the_tar_from_a_path_and_reads_the_legacy_stream_from_a_buffer(tmp_path: Path) -> None:
    path = tmp_path / "model.pth"
    path.write_bytes(tar_checkpoint(legacy_in_a_tar_header()))
    assert crafted.torch_runs(path)
    assert not crafted.torch_runs(path, how="buffer")  # the same bytes, another reading


@pytest.mark.parametrize("start", [b"", b"N0", b"(1", b"}0", b"]0", b"I7\n0", b"K\x070", b"F1.5\n0", b"\x80\x01"])
def test_a_pickle_in_any_protocol_is_scanned(tmp_path: Path, start: bytes) -> None:
    """Protocol 0 and 1 pickles start with any opcode, not PROTO; they used to be "a text file"."""
    path = tmp_path / "model.pt"
    path.write_bytes(start + evil_pickle())
    report = report_of(path)
    assert "os.system" in unsafe(report)
    assert "not a torch checkpoint" in error_of(report)


@live
def test_torch_runs_a_protocol_0_pickle(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(b"N0" + evil_pickle())
    assert crafted.torch_runs(path)


# --- zip archives torch's reader and Python's zipfile read differently ---

def nul_twin() -> bytes:
    """The malicious data.pkl torch reads (its exact name), then a benign twin whose name is that
    name, a NUL, and more: zipfile cuts names at the NUL and keeps the last of equal names."""
    entries = torch_entries(evil_pickle())
    return zip_bytes(entries + [Entry(b"archive/data.pkl\0.bak", tensor_pickle())])


def two_directories() -> bytes:
    benign = torch_entries(tensor_pickle())
    evil = [Entry(b"archive/data.pkl", evil_pickle() + bytes(256)), *benign[1:]]  # torch stops at STOP
    return crafted.two_directories(torch_sees=evil, zipfile_sees=benign)


def upper_case() -> bytes:
    """torch's lookup ignores ASCII case; zipfile's does not (it finds no data.pkl)."""
    return zip_bytes([Entry(b"archive/DATA.PKL", evil_pickle()), *torch_entries(tensor_pickle())[1:]])


def bad_crc() -> bytes:
    """torch's reader never checks a CRC; zipfile refuses to read the entry."""
    entries = torch_entries(evil_pickle())
    entries[0].crc = 0x1234
    return zip_bytes(entries)


def broken_deflate() -> bytes:
    """A deflate stream that decodes the pickle, then breaks: torch gets what it decoded."""
    entry = crafted.deflated(b"archive/data.pkl", evil_pickle(), then=b"\xff" * 8)  # block type 3: invalid
    entry.data += bytes(8)  # the size it claims: torch allocates it and unpickles what was decoded
    return zip_bytes([entry, *torch_entries(b"")[1:]])


def case_duplicate() -> bytes:
    return zip_bytes(torch_entries(tensor_pickle()) + [Entry(b"archive/Data.pkl", evil_pickle())])


ZIPS = {"nul-twin": nul_twin, "two-directories": two_directories, "upper-case": upper_case, "bad-crc": bad_crc,
        "broken-deflate": broken_deflate, "case-duplicate": case_duplicate}
AMBIGUOUS = {"nul-twin": "holds a NUL byte", "two-directories": "different central directories",
             "case-duplicate": "two entries are named"}


@pytest.mark.parametrize("name", ZIPS)
def test_a_zip_is_read_as_torch_reads_it_and_every_reading_is_scanned(tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.pt"
    path.write_bytes(ZIPS[name]())
    report = report_of(path)
    assert "os.system" in unsafe(report)
    if name in AMBIGUOUS:
        assert "ambiguous zip archive" in error_of(report) and AMBIGUOUS[name] in error_of(report)


@live
@pytest.mark.parametrize("name", ["nul-twin", "two-directories", "upper-case", "bad-crc", "broken-deflate"])
def test_torch_runs_what_zipfile_does_not_see(tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.pt"
    path.write_bytes(ZIPS[name]())
    assert crafted.torch_runs(path)


def test_a_clean_hand_built_zip_reads_as_torch_saves_it(tmp_path: Path) -> None:
    path = tmp_path / "clean.pt"
    path.write_bytes(zip_bytes(torch_entries(tensor_pickle())))
    result = crafted.scan(path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["files"][0]["tensors"] == 1


# --- a folder is checked as a whole ---

def test_every_pickle_in_a_model_folder_is_scanned(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    header = b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}'
    (folder / "model.safetensors").write_bytes(crafted.safetensors_bytes(header, crafted.STORAGE))
    (folder / "training_args.bin").write_bytes(zip_bytes(torch_entries(tensor_pickle(crafted.text("x")
                                                                                       + evil_pickle()[:-1]))))
    (folder / "rng_state.pth").write_bytes(b"N0" + evil_pickle())
    (folder / "config.json").write_text("{}")
    result = crafted.scan(folder)
    report = json.loads(result.stdout)
    assert result.returncode == 1, result.stderr
    assert [f["path"] for f in report["files"]] == [str(folder / "model.safetensors")] and report["errors"] == []
    flagged = {(Path(f["file"]).name, f["evidence"]["global"])
               for f in report["findings"] if f["name"] == "unsafe-pickle"}
    assert flagged == {("training_args.bin", "os.system"), ("rng_state.pth", "os.system")}


@live
def test_torch_runs_the_folder_s_training_args(tmp_path: Path) -> None:
    path = tmp_path / "training_args.bin"
    path.write_bytes(zip_bytes(torch_entries(tensor_pickle(crafted.text("x") + evil_pickle()[:-1]))))
    assert crafted.torch_runs(path)
