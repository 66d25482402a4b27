"""The pickle policy: the allowlist decides what a pickle may invoke, the denylist only explains;
real training checkpoints stay clean; what a pickle makes us build is bounded by its size; and a
file cannot change how the files after it are read.

Corpus files are only ever scanned. torch loads them (in a subprocess) once, to prove that the
payloads are live.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import pathlib
import pickle
import pickletools
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import malicious_corpus as corpus
from ckptlint import lint
from ckptlint.facts import security
from ckptlint.io.dtypes import DTYPES
from ckptlint.io.open import open_checkpoint
from ckptlint.io.pickle_opcodes import PickleSource, opcode_table
from ckptlint.io.pickle_walk import HANDLERS, NAMED, walk
from ckptlint.io.unpickler import (
    ALLOWLIST,
    CELLS_PER_BYTE,
    MAX_GLOBALS,
    RestrictedUnpickler,
    _Ledger,
    storage_descriptor,
)
from ckptlint.options import Options
from ckptlint.runner import check_paths
from ckptlint.selection import Selection
from conftest import CASES

torch = pytest.importorskip("torch")  # the corpora are written with torch.save, and torch proves them live

import benign_corpus  # noqa: E402 - imports torch
from test_hardening import scan  # noqa: E402 - imports torch

SECURITY = ("unsafe-pickle", "unknown-pickle-global")
NEW_CASES = corpus.allowlist_cases()


def security_findings(*paths: Path) -> list[tuple[str, str, str, str]]:
    """(file name, rule, global, how) of each security finding, checked in this process (scanning
    never runs a pickle)."""
    report = check_paths([str(p) for p in paths], Options(selection=Selection(select=SECURITY), hash_files=False))
    return [(Path(f.file).name, f.name, f.evidence["global"], f.evidence.get("how", NAMED)) for f in report.findings]


# --- the corpus: code-running callables on no denylist ---

@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> list[corpus.CorpusFile]:
    return corpus.build(tmp_path_factory.mktemp("corpus"))


def test_every_case_is_an_unsafe_pickle_error_and_nothing_runs(built: list[corpus.CorpusFile]) -> None:
    names = {f"{case.name}{suffix}" for case in NEW_CASES for suffix in (".pt", ".legacy.pth")}
    files = [item for item in built if item.path.name in names]
    assert len(files) == 2 * len(NEW_CASES) >= 60
    folder = files[0].path.parent
    result = scan(*(item.path for item in files), cwd=folder, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    findings = json.loads(result.stdout)["findings"]
    for item in files:
        unsafe = {(f["evidence"]["global"], f["severity"]) for f in findings
                  if f["name"] == "unsafe-pickle" and Path(f["file"]).name == item.path.name}
        assert (item.expected, "error") in unsafe, item.path.name
    assert not [p for p in folder.iterdir() if p.name.startswith(corpus.MARKER)]


def test_the_allowlist_alone_catches_the_whole_corpus(built: list[corpus.CorpusFile], monkeypatch) -> None:
    """With the denylist emptied, every corpus file is still an unsafe-pickle error naming its
    global: what decides is that the global is invoked and not allowlisted."""
    monkeypatch.setattr(security, "dangerous_patterns", lambda: {})
    flagged = {(file, name) for file, rule, name, _ in security_findings(*(item.path for item in built))
               if rule == "unsafe-pickle"}
    assert [item.path.name for item in built if (item.path.name, item.expected) not in flagged] == []


LIVE_SCRIPT = """
import json, os, sys, time, warnings
warnings.simplefilter("ignore")
import torch
created = []
for path in sys.argv[2:]:
    os.chdir(os.path.dirname(path))
    try:
        torch.load(os.path.basename(path), weights_only=False)
    except BaseException:
        pass
    for _ in range(50):  # a spawned process may create it a moment later
        if any(name.startswith(sys.argv[1]) for name in os.listdir(".")):
            created.append(path)
            break
        time.sleep(0.1)
print(json.dumps(created))
"""


def test_the_live_cases_run_code_in_torch(built: list[corpus.CorpusFile], tmp_path: Path) -> None:
    """torch.load(weights_only=False) on each live case, in another process and its own folder,
    creates the marker: the corpus is real attacks, not strings that look like them."""
    live = {f"{case.name}{suffix}" for case in NEW_CASES if case.live for suffix in (".pt", ".legacy.pth")}
    paths = []
    for item in built:
        if item.path.name in live:
            folder = tmp_path / item.path.name
            folder.mkdir()
            paths.append(folder / item.path.name)
            paths[-1].write_bytes(item.path.read_bytes())
    assert len(paths) == len(live) >= 40
    done = subprocess.run([sys.executable, "-c", LIVE_SCRIPT, corpus.MARKER, *map(str, paths)], capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)
    created = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert sorted(str(p) for p in paths if str(p) not in created) == []


# --- invoked, named, resolved ---

class UserConfig:
    """A user's class, importable by pickle from this test module."""

    def __init__(self) -> None:
        self.lr = 0.1


def _checkpoint(tmp_path: Path, extra: object, name: str = "ckpt.pt") -> Path:
    path = tmp_path / name
    torch.save({"model": {"w": torch.ones(2)}, "extra": extra}, path)
    return path


def test_an_instance_is_unsafe_a_class_kept_as_data_is_only_unknown(tmp_path: Path) -> None:
    qualname = f"{__name__}.UserConfig"
    assert security_findings(_checkpoint(tmp_path, UserConfig())) == [
        ("ckpt.pt", "unsafe-pickle", qualname, "instantiates and sets the state of")]
    assert security_findings(_checkpoint(tmp_path, {"config_class": UserConfig})) == [
        ("ckpt.pt", "unknown-pickle-global", qualname, NAMED)]
    # functools.partial of a class: partial is invoked (and denylisted), the class only named
    found = security_findings(_checkpoint(tmp_path, __import__("functools").partial(UserConfig)))
    assert ("ckpt.pt", "unsafe-pickle", "functools.partial", "calls") in found
    assert ("ckpt.pt", "unknown-pickle-global", qualname, NAMED) in found


def test_a_denylisted_global_is_unsafe_even_only_passed_along(tmp_path: Path) -> None:
    import os

    found = security_findings(_checkpoint(tmp_path, {"hook": os.system, "loader": torch.load}))
    assert {(rule, name, how) for _, rule, name, how in found} == {
        ("unsafe-pickle", "posix.system", NAMED), ("unsafe-pickle", "torch.serialization.load", NAMED)}


@pytest.mark.parametrize("payload, expected", [
    (corpus.call(corpus.call(corpus.glob("builtins", "getattr"),
                             corpus.call(corpus.glob("importlib", "import_module"), corpus.text("os")),
                             corpus.text("system")), corpus.text("x")), ("os.system", "calls", "builtins.getattr")),
    (corpus.call(corpus.call(corpus.glob("operator", "attrgetter"), corpus.text("path.join")),
                 corpus.glob("os", "sep")),
     ("os.sep.path.join", "names", "operator.attrgetter")),
    (corpus.method_call("load", corpus.call(corpus.glob("builtins", "__import__"), corpus.text("torch"))),
     ("torch.load", "calls", "_operator.methodcaller")),
    (corpus.call(corpus.memo_stack_global("pydoc", "locate"), corpus.text("mymodule.helper")),
     ("mymodule.helper", "names", "pydoc.locate")),
], ids=["getattr-import", "attrgetter", "methodcaller", "memo-stack-global-locate"])
def test_what_a_resolver_reaches_is_named(tmp_path: Path, payload: bytes, expected: tuple[str, str, str]) -> None:
    path = tmp_path / "resolve.pt"
    corpus.zip_checkpoint(path, corpus.checkpoint_pickle(payload, protocol=4))
    report = check_paths([str(path)], Options(selection=Selection(select=SECURITY), hash_files=False))
    found = {(f.evidence["global"], f.evidence["how"], f.message) for f in report.findings if f.name == "unsafe-pickle"}
    qualname, how, via = expected
    assert any(g == qualname and h == how and f"reached through {via}" in m for g, h, m in found), found


# --- allow-globals: the project's own additions ---

def test_allow_globals_from_lint_the_cli_and_a_named_configuration(tmp_path: Path, run) -> None:
    path = _checkpoint(tmp_path, UserConfig())
    qualname = f"{__name__}.UserConfig"
    assert [f.name for f in lint(path, select=list(SECURITY)).findings] == ["unsafe-pickle"]
    assert lint(path, select=list(SECURITY), allow_globals=[qualname]).findings == []
    assert run("check", str(path), "--allow-global", qualname).code == 0
    config = tmp_path / "ckptlint.toml"
    config.write_text(f'allow-globals = ["{qualname}"]\n')
    assert run("check", str(path), "--config", str(config)).code == 0


def test_a_discovered_configuration_may_not_allow_globals(tmp_path: Path, run) -> None:
    (tmp_path / "ckptlint.toml").write_text('allow-globals = ["evil.Payload"]\n')
    result = run("check", str(CASES / "pickle-os-system" / "model.pt"), cwd=tmp_path)
    assert result.code == 2 and "`allow-globals` lets pickles run the code it names" in result.err


def test_allow_globals_never_overrules_the_denylist(run) -> None:
    result = run("check", str(CASES / "pickle-os-system" / "model.pt"), "--allow-global", "posix.system",
                 "--format", "json")
    assert result.code == 1
    assert ("unsafe-pickle", "posix.system") in {(f["name"], f["evidence"]["global"]) for f in result.json["findings"]}


@pytest.mark.parametrize("value", ["os", "mymodule.*", "a b.c", 3])
def test_allow_globals_are_exact_names(value: object) -> None:
    with pytest.raises(Exception, match=r"allow-globals must be a list of exact module\.name globals"):
        lint(str(CASES / "pickle-os-system" / "model.pt"), allow_globals=[value])


# --- real training checkpoints stay clean ---

@pytest.fixture(scope="module")
def benign(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return benign_corpus.build(tmp_path_factory.mktemp("benign"))


def test_real_training_checkpoints_have_no_security_finding(benign: list[Path]) -> None:
    report = check_paths([str(p) for p in benign], Options(selection=Selection(select=SECURITY), hash_files=False))
    assert report.errors == []
    assert [(Path(f.file).name, f.evidence["global"]) for f in report.findings] == []


# --- bounds: what a pickle makes us build follows its size ---

def _pickle_file(tmp_path: Path, name: str, body: bytes, protocol: int = 4) -> Path:
    path = tmp_path / name
    corpus.zip_checkpoint(path, corpus.plain_pickle(body, protocol))
    return path


def _copies(count: int, size: int) -> bytes:
    """A list of ``size`` items, then ``count`` calls of torch.Size on it: each copies it."""
    items = b"(" + b"N" + b"2" * (size - 1) + b"l" + b"\x94"  # memo 0: the list
    size_global = corpus.glob("torch", "Size") + b"\x94"  # memo 1
    call = b"h\x01h\x00\x85R0"  # BINGET 1, BINGET 0, TUPLE1, REDUCE, POP
    return items + b"0" + size_global + b"0" + call * count + b"N"


def _many_globals(modules: int, names: int) -> bytes:
    """``modules * names`` distinct globals from ``modules + names`` strings, by STACK_GLOBAL."""
    strings = b"".join(corpus.text(f"m{i}") + b"\x94" + b"0" for i in range(modules))
    strings += b"".join(corpus.text(f"n{j}") + b"\x94" + b"0" for j in range(names))
    pairs = b"".join(b"j" + struct.pack("<I", i) + b"j" + struct.pack("<I", modules + j) + b"\x930"
                     for i in range(modules) for j in range(names))
    return strings + pairs + b"N"


def test_amplification_bombs_are_refused_with_a_clear_error(tmp_path: Path) -> None:
    cases = {
        # 7 bytes: the unpickler would fill a 2**29-entry memo table, 4 GiB, before anything else
        _pickle_file(tmp_path, "memo.pt", b"N" + b"r" + struct.pack("<I", 1 << 28)): "memo index 268435456 jumps past",
        # a BINBYTES8 of 4 GiB that is not there: read in chunks, never allocated
        _pickle_file(tmp_path, "bytes8.pt", b"\x8e" + struct.pack("<Q", 4 << 30) + b"xx"): "truncated",
        # ~600 KB whose calls would copy 10**8 list items (800 MB)
        _pickle_file(tmp_path, "copies.pt", _copies(100_000, 1_000)): f"more than {CELLS_PER_BYTE} objects per byte",
        # 20,000 stub classes from 240 KB
        _pickle_file(tmp_path, "globals.pt", _many_globals(100, 200)): f"more than {MAX_GLOBALS} distinct globals",
    }
    assert all(path.stat().st_size < 1 << 20 for path in cases)
    result = scan(*cases, timeout=60)
    errors = {Path(e["file"]).name: e["message"] for e in json.loads(result.stdout)["errors"]}
    for path, problem in cases.items():
        assert problem in errors[path.name], (path.name, errors[path.name])


# --- a file cannot change how the next one is read ---

def _build_on(target: bytes) -> bytes:
    """BUILD with a dict state on ``target``: on a shared object, a real loader changes it for
    everything loaded after; ours must not."""
    state = corpus.dict_of((corpus.text("kind"), corpus.text("int")), (corpus.text("itemsize"), b"K\x01"))
    return target + state + b"b"


@pytest.mark.parametrize("target, named", [
    (corpus.glob("torch", "float32"), "torch.float32"),
    (corpus.glob("torch", "FloatStorage"), "torch.FloatStorage"),
    (corpus.glob("torch._utils", "_rebuild_tensor_v2"), "torch._utils._rebuild_tensor_v2"),
    (corpus.glob("collections", "OrderedDict"), "collections.OrderedDict"),
    (corpus.glob("argparse", "Namespace"), "argparse.Namespace"),
    (corpus.glob("builtins", "complex"), "builtins.complex"),
    (corpus.call(corpus.glob("torch._utils", "_rebuild_parameter"), corpus.glob("torch", "float32")), "torch.float32"),
], ids=["dtype", "storage-type", "function", "container", "stub-class", "complex", "through-a-function"])
def test_build_on_a_global_is_unsafe_and_does_not_reach_the_next_file(tmp_path: Path, run, target: bytes,
                                                                      named: str) -> None:
    poison = tmp_path / "poison.pt"
    corpus.zip_checkpoint(poison, corpus.checkpoint_pickle(_build_on(target)))
    nan = tmp_path / "nan.pt"
    torch.save({"w": torch.tensor([1.0, float("nan")])}, nan)
    result = run("check", str(poison), str(nan), "--format", "json", "--no-hash")
    assert result.code == 1
    findings = {(Path(f["file"]).name, f["name"], f["evidence"].get("global"), f["evidence"].get("how"))
                for f in result.json["findings"]}
    assert any(file == "poison.pt" and rule == "unsafe-pickle" and name == named and how.endswith("modifies")
               for file, rule, name, how in findings), findings
    assert ("nan.pt", "non-finite", None, None) in findings
    assert (DTYPES["float32"].kind, DTYPES["float32"].itemsize) == ("float", 4)
    assert ALLOWLIST[("torch", "float32")][0].dtype is DTYPES["float32"]


def test_every_file_gets_its_own_objects(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path, argparse.Namespace(lr=0.1))
    with open_checkpoint(str(path)) as first, open_checkpoint(str(path)) as second:
        pass
    roots = []
    for _ in range(2):
        with zipfile.ZipFile(path) as archive:
            data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
        roots.append(RestrictedUnpickler(io.BytesIO(data), _Ledger("x"), storage_descriptor).load())
    assert type(roots[0]["extra"]) is not type(roots[1]["extra"])  # a stub class per pickle
    assert first.pickle_globals == second.pickle_globals


# --- the static walk ---

def test_the_walk_handles_every_opcode() -> None:
    table = opcode_table(HANDLERS)
    assert all(table[ord(opcode.code)] is not None for opcode in pickletools.opcodes)
    assert sum(entry is not None for entry in table) == len(pickletools.opcodes)


def _sample_pickles(built: list[corpus.CorpusFile], benign: list[Path]) -> list[bytes]:
    found = []
    paths = [item.path for item in built if item.path.suffix == ".pt"] + [p for p in benign if "legacy" not in p.name]
    for path in paths:
        with zipfile.ZipFile(path) as archive:
            found += [archive.read(n) for n in archive.namelist() if n.endswith(".pkl")]
    objects = [{"a": [1, 2.5, "x", b"y", None, True, (1,), {3}, frozenset(), bytearray(b"z")]}, 10 ** 40, "ü" * 300,
               argparse.Namespace(x=1), collections.OrderedDict(a=1), pathlib.PurePosixPath("/a")]
    found += [pickle.dumps(obj, protocol) for obj in objects for protocol in range(6)]
    return found + [b"(S'os'\nS\"sys\\ttem\"\nt.", b"(S'a\\x00b'\np0\ng0\nl."]  # Python 2's STRING


def test_the_decoder_reads_what_pickletools_reads(built: list[corpus.CorpusFile], benign: list[Path]) -> None:
    """Same opcodes, same names, memo indexes and (short) strings as pickletools.genops, for
    the corpus, real checkpoints and every protocol."""
    seen = {}
    table = opcode_table({opcode.name: opcode.name for opcode in pickletools.opcodes})
    for data in _sample_pickles(built, benign):
        source, position, decoded = PickleSource(io.BytesIO(data)), 0, []
        while position < len(data):
            read, name = table[data[position]]
            arg, position = read(source, position + 1) if read else (None, position + 1)
            decoded.append((name, arg))
        for (opcode, expected, _), (name, arg) in zip(pickletools.genops(data), decoded, strict=True):
            assert opcode.name == name
            if opcode.name in ("GLOBAL", "INST"):
                assert " ".join(arg) == expected
            elif arg is not None:
                assert arg == expected, opcode.name
            seen[opcode.name] = True
    assert {"GLOBAL", "STACK_GLOBAL", "BINPUT", "LONG_BINPUT", "MEMOIZE", "BINGET", "BINUNICODE", "STRING",
            "UNICODE", "SHORT_BINUNICODE", "FRAME", "BUILD", "NEWOBJ"} <= set(seen)


def test_what_the_unpickler_sees_invoked_the_walk_saw_first(built: list[corpus.CorpusFile], benign: list[Path]) -> None:
    """The stubs' own records as the unpickler runs are a check on the walk: nothing they see
    invoked was only named by the walk."""
    for data in _sample_pickles(built, benign):
        ledger = _Ledger("x")
        try:
            RestrictedUnpickler(io.BytesIO(walk(io.BytesIO(data), ledger)), ledger, lambda pid: pid).load()
        except Exception:  # noqa: BLE001, S110 - corpus pickles fail on purpose
            pass
        for key, uses in ledger.found.items():
            if uses.runtime:
                assert uses.static - {NAMED} or uses.via, key



def test_a_torch_dtype_ckptlint_cannot_read_is_unreadable_not_unsafe(tmp_path, run) -> None:
    """torch.save of a float4 tensor names torch.float4_e2m1fn_x2: torch's own data, not code."""
    torch = pytest.importorskip("torch")
    path = tmp_path / "f4.pt"
    torch.save({"w": torch.zeros(4, 2, dtype=torch.float4_e2m1fn_x2), "b": torch.ones(3)}, path)
    result = run("check", str(path), "--format", "json", "--no-hash")
    assert result.code == 2 and result.json["findings"] == []
    assert "torch.float4_e2m1fn_x2: ckptlint cannot read that dtype's values" in result.json["errors"][0]["message"]
