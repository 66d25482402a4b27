"""Generate a corpus of malicious checkpoints: pickles that would run code if torch.load'ed with
weights_only=False. Written opcode by opcode (no payload is ever run to make them), each placed
in a torch zip checkpoint and in a legacy-format file beside a real tensor.

Run as a script to write the corpus somewhere: ``python tests/malicious_corpus.py OUT_DIR``.
"""

from __future__ import annotations

import struct
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

MARKER = "CKPTLINT_PWNED_MARKER"
COMMAND = f"touch {MARKER}"


# --- a tiny pickle assembler: each helper returns opcodes that push one object ---

def text(value: str) -> bytes:
    data = value.encode("utf-8")
    return b"X" + struct.pack("<I", len(data)) + data


def glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def stack_global(module: str, name: str) -> bytes:  # protocol 4
    return text(module) + text(name) + b"\x93"


def call(function: bytes, *args: bytes) -> bytes:
    return function + b"(" + b"".join(args) + b"tR"


def tuple_of(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def memo_stack_global(module: str, name: str) -> bytes:
    """Module and name stored in the memo first, then fetched: the names never stand together."""
    return text(module) + b"q\x10" + b"0" + text(name) + b"q\x11" + b"0" + b"h\x10h\x11\x93"


def tensor_record() -> bytes:
    """A real float32 tensor of two elements in storage '0', as torch.save writes it."""
    storage = tuple_of(text("storage"), glob("torch", "FloatStorage"), text("0"), text("cpu"), b"K\x02")
    args = (storage + b"Q" + b"K\x00" + tuple_of(b"K\x02") + tuple_of(b"K\x01") + b"\x89"
            + call(glob("collections", "OrderedDict")))
    return glob("torch._utils", "_rebuild_tensor_v2") + b"(" + args + b"tR"


def checkpoint_pickle(payload: bytes, protocol: int = 2) -> bytes:
    """``{"weight": tensor, "hook": payload}``: a state dict with a passenger."""
    return (b"\x80" + bytes([protocol]) + b"}(" + text("weight") + tensor_record()
            + text("hook") + payload + b"u.")


def plain_pickle(payload: bytes, protocol: int = 2) -> bytes:
    return b"\x80" + bytes([protocol]) + payload + b"."


# --- containers ---

STORAGE = struct.pack("<2f", 1.0, 2.0)


def torch_zip(path: Path, entries: list[tuple[str, bytes]]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are the point of one case
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
            for name, data in entries:
                archive.writestr(name, data)


def zip_checkpoint(path: Path, data_pkl: bytes, extra: list[tuple[str, bytes]] = ()) -> None:
    torch_zip(path, [("archive/data.pkl", data_pkl), ("archive/byteorder", b"little"),
                     ("archive/data/0", STORAGE), ("archive/version", b"3\n"), *extra])


def legacy_checkpoint(path: Path, object_pickle: bytes, sys_info: bytes | None = None,
                      keys: bytes | None = None, trailer: bytes = b"") -> None:
    magic = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little") + b"."
    protocol = b"\x80\x02M\xe9\x03."
    info = sys_info or b"\x80\x02}(" + text("protocol_version") + b"M\xe9\x03" + text("little_endian") + b"\x88u."
    key_list = keys or b"\x80\x02](" + text("0") + b"e."
    path.write_bytes(magic + protocol + info + object_pickle + key_list + struct.pack("<q", 2) + STORAGE + trailer)


# --- the cases ---

@dataclass(frozen=True)
class Case:
    name: str
    payload: bytes
    expected: str  # the global the finding must name
    protocol: int = 2


def payload_cases() -> list[Case]:
    cmd = text(COMMAND)
    return [
        Case("os-system", call(glob("os", "system"), cmd), "os.system"),
        Case("posix-system", call(glob("posix", "system"), cmd), "posix.system"),
        Case("nt-system", call(glob("nt", "system"), cmd), "nt.system"),
        *(Case(f"subprocess-{f}", call(glob("subprocess", f), cmd), f"subprocess.{f}")
          for f in ("Popen", "run", "call", "check_output")),
        Case("builtins-eval", call(glob("__builtin__", "eval"), text(f"__import__('os').system('{COMMAND}')")),
             "builtins.eval"),
        Case("builtins-exec", call(glob("builtins", "exec"), text(f"import os; os.system('{COMMAND}')")),
             "builtins.exec"),
        Case("builtins-compile", call(glob("builtins", "compile"), text("1"), text("x"), text("eval")),
             "builtins.compile"),
        Case("builtins-import", call(glob("builtins", "__import__"), text("os")), "builtins.__import__"),
        Case("builtins-open", call(glob("builtins", "open"), text(MARKER), text("w")), "builtins.open"),
        Case("runpy-run-code", call(glob("runpy", "_run_code"), text(f"import os; os.system('{COMMAND}')"), b"}"),
             "runpy._run_code"),
        Case("importlib", call(glob("importlib", "import_module"), text("os")), "importlib.import_module"),
        Case("pickle-loads", call(glob("pickle", "loads"), text("nested")), "pickle.loads"),
        Case("_pickle-loads", call(glob("_pickle", "loads"), text("nested")), "_pickle.loads"),
        Case("marshal-loads", call(glob("marshal", "loads"), text("code")), "marshal.loads"),
        Case("code-runsource", call(stack_global("code", "InteractiveInterpreter.runsource"), b"N", cmd),
             "code.InteractiveInterpreter.runsource", protocol=4),
        Case("webbrowser-open", call(glob("webbrowser", "open"), text("http://127.0.0.1:9/")), "webbrowser.open"),
        Case("shutil-rmtree", call(glob("shutil", "rmtree"), text("/nonexistent-ckptlint")), "shutil.rmtree"),
        Case("socket-connect", call(glob("socket", "create_connection"), tuple_of(text("127.0.0.1"), b"K\x09")),
             "socket.create_connection"),
        Case("torch-load", call(glob("torch", "load"), text("other.pt")), "torch.load"),
        Case("pip-main", call(glob("pip._internal.cli.main", "main"), b"]" + b"(" + text("--version") + b"e"),
             "pip._internal.cli.main.main"),
        # indirection
        Case("getattr-chain", call(call(glob("builtins", "getattr"), call(glob("builtins", "__import__"), text("os")),
                                        text("system")), cmd), "builtins.getattr"),
        Case("attrgetter", call(call(glob("operator", "attrgetter"), text("system")), glob("os", "path")),
             "operator.attrgetter"),
        Case("methodcaller", call(call(glob("operator", "methodcaller"), text("system"), cmd), glob("os", "path")),
             "operator.methodcaller"),
        Case("functools-partial", call(call(glob("functools", "partial"), glob("os", "system"), cmd)),
             "functools.partial"),
        Case("functools-reduce", call(glob("functools", "reduce"), glob("os", "system"), b"]", cmd),
             "functools.reduce"),
        Case("copyreg-reconstructor", call(glob("copy_reg", "_reconstructor"), glob("subprocess", "Popen"),
                                           glob("builtins", "object"), cmd), "copyreg._reconstructor"),
        Case("memo-stack-global", call(memo_stack_global("os", "system"), cmd), "os.system", protocol=4),
        Case("inst-opcode", b"(" + cmd + b"i" + b"os\nsystem\n", "os.system"),
        Case("obj-opcode", b"(" + glob("subprocess", "Popen") + cmd + b"o", "subprocess.Popen"),
        Case("newobj-ex", glob("subprocess", "Popen") + tuple_of(cmd) + b"}" + b"\x92", "subprocess.Popen",
             protocol=4),
        Case("build-setstate", glob("subprocess", "Popen") + b")\x81" + b"}(" + text("args") + cmd + b"ub",
             "subprocess.Popen"),
        Case("numpy-builtins", call(glob("builtins", "dict"), glob("numpy", "__builtins__")), "numpy.__builtins__"),
        Case("collect-env-run", call(glob("torch.utils.collect_env", "run"), cmd), "torch.utils.collect_env.run"),
        Case("spawnv-passfds", call(glob("multiprocessing.util", "spawnv_passfds"), text("/bin/sh"),
                                    b"]", b"]"), "multiprocessing.util.spawnv_passfds"),
    ]


@dataclass(frozen=True)
class CorpusFile:
    path: Path
    expected: str


def build(out: Path) -> list[CorpusFile]:
    """Write every case as a torch zip and a legacy file, plus the container tricks."""
    out.mkdir(parents=True, exist_ok=True)
    files: list[CorpusFile] = []
    for case in payload_cases():
        pickle_bytes = checkpoint_pickle(case.payload, case.protocol)
        zip_checkpoint(out / f"{case.name}.pt", pickle_bytes)
        legacy_checkpoint(out / f"{case.name}.legacy.pth", pickle_bytes)
        files += [CorpusFile(out / f"{case.name}.pt", case.expected),
                  CorpusFile(out / f"{case.name}.legacy.pth", case.expected)]
    clean = checkpoint_pickle(text("nothing to see"))
    evil = plain_pickle(call(glob("os", "system"), text(COMMAND)))
    zip_checkpoint(out / "unusual-entry-name.pt", clean, [("archive/.data/readme", evil)])
    zip_checkpoint(out / "two-pickles.pt", clean, [("archive/extra.pkl", evil)])
    torch_zip(out / "duplicate-names.pt", [("archive/data.pkl", evil), ("archive/data.pkl", clean),
                                           ("archive/data/0", STORAGE), ("archive/version", b"3\n")])
    torch_zip(out / "duplicate-names-reversed.pt", [("archive/data.pkl", clean), ("archive/data.pkl", evil),
                                                    ("archive/data/0", STORAGE), ("archive/version", b"3\n")])
    legacy_checkpoint(out / "legacy-sys-info.pth", clean, sys_info=evil)
    legacy_checkpoint(out / "legacy-keys.pth", clean, keys=plain_pickle(b"](" + text("0") + b"e" + b"0"
                                                                        + call(glob("os", "system"), text(COMMAND))
                                                                        + b"0" + b"](" + text("0") + b"e"))
    legacy_checkpoint(out / "legacy-trailer.pth", clean, trailer=evil)
    for name in ("unusual-entry-name.pt", "two-pickles.pt", "duplicate-names.pt", "duplicate-names-reversed.pt",
                 "legacy-sys-info.pth", "legacy-keys.pth", "legacy-trailer.pth"):
        files.append(CorpusFile(out / name, "os.system"))
    return files


if __name__ == "__main__":
    for item in build(Path(sys.argv[1])):
        print(item.path, item.expected)
