"""Find or create the side virtualenv that builds the real-library scenarios, and build them.

The checkpoints under test are written by torchvision, timm and transformers themselves. Those
cannot live in the test venv (torchvision from PyPI does not import beside the CPU torch 2.13.0
build the project tests with), so they live in a *side venv* under the test cache:

    $CKPTLINT_TEST_CACHE (default tests/.cache/)
      side-venv-<key>/           python -m venv + pip install -r requirements-side.txt
        overlay-tf4/             pip install --no-deps --target: transformers 4 and the
                                 huggingface_hub/tokenizers it needs, first on PYTHONPATH for the
                                 transformers-4 builds
      scenarios/<part>-<key>/    what a builder wrote, with its manifest-<part>.json
      scenarios/manifest.json    the merged manifest of the current parts (absolute paths)

<key> hashes the pinned requirements (and the Python version and machine), so a venv is reused
across runs until a pin changes; a scenario part's key hashes its builder's source, the shared
builder code and the library versions pip reports (``pip freeze``). Other keys' folders are
removed once a new one is complete and they have not been used for a day (copies of the tree
on other branches may share the cache). Everything is built in a ``.partial`` folder and
renamed when complete, under a file lock, so an interrupted run leaves nothing half-made behind.

Run it by hand to provision and build without pytest: ``python tests/reallibs/provision.py``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BUILDERS = HERE / "builders"
SIDE_REQUIREMENTS = HERE / "requirements-side.txt"
OVERLAY_REQUIREMENTS = HERE / "requirements-tf4-overlay.txt"

# The scenario parts: name -> (builder script, needs the transformers-4 overlay, the builder files
# whose source is part of the part's cache key).
PARTS: dict[str, tuple[str, bool, tuple[str, ...]]] = {
    "tv": ("build_torchvision.py", False, ("build_torchvision.py", "detr_original.py", "common.py")),
    "hf5": ("build_hf.py", False, ("build_hf.py", "detr_conversion.py", "detr_original.py", "common.py")),
    "hf4": ("build_hf.py", True, ("build_hf.py", "detr_conversion.py", "detr_original.py", "common.py")),
}

Log = Callable[[str], None]


class ProvisionError(RuntimeError):
    """pip (or a builder) could not do its job; the message is one line for a skip reason."""


def cache_dir() -> Path:
    return Path(os.environ.get("CKPTLINT_TEST_CACHE") or REPO / "tests" / ".cache").resolve()


def _digest(*chunks: bytes | str, length: int = 12) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk.encode() if isinstance(chunk, str) else chunk)
        h.update(b"\0")
    return h.hexdigest()[:length]


def venv_key() -> str:
    return _digest(SIDE_REQUIREMENTS.read_bytes(), OVERLAY_REQUIREMENTS.read_bytes(),
                   f"{sys.version_info[:2]}", platform.machine())


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None, log_file: Path | None = None,
         timeout: float = 3600) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise ProvisionError(f"{what}: timed out after {timeout:.0f} s") from exc
    if log_file is not None:
        with open(log_file, "a") as out:
            out.write(f"$ {' '.join(cmd)}\n{done.stdout}\n{done.stderr}\nexit {done.returncode}\n")
    if done.returncode != 0:
        lines = [ln.strip() for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")] or lines[-1:]
        raise ProvisionError(f"{what} failed (exit {done.returncode}): {errors[-1] if errors else '?'}")
    return done.stdout


def _pip_env() -> dict[str, str]:
    env = dict(os.environ)
    # The test venv's own variables must not leak into the side venv's pip.
    for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV", "PIP_TARGET",
                 "PIP_PREFIX", "PIP_USER"):
        env.pop(name, None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


# Another key's venv or scenarios are deleted only once unused this long: checkouts on other
# branches (or copies of the tree) may share the cache and use their own keys meanwhile.
STALE_AFTER_SECONDS = 24 * 3600
USED_MARK = ".last-used"


def _mark_used(folder: Path) -> None:
    with contextlib.suppress(OSError):
        (folder / USED_MARK).touch()


def _remove_stale(pattern: str, keep: Path, log: Log) -> None:
    now = time.time()
    for stale in keep.parent.glob(pattern):
        if stale == keep or not stale.is_dir():
            continue
        mark = stale / USED_MARK
        try:
            last = max(mark.stat().st_mtime if mark.exists() else 0.0, stale.stat().st_mtime)
        except OSError:
            continue
        if now - last > STALE_AFTER_SECONDS:
            log(f"removing {stale} (unused for {(now - last) / 3600:.0f} h)")
            shutil.rmtree(stale, ignore_errors=True)


@dataclass
class SideEnv:
    root: Path
    key: str
    overlay: Path | None                 # None when the transformers-4 overlay could not be installed
    overlay_error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def env(self, tf4: bool = False) -> dict[str, str]:
        env = _pip_env()
        if tf4:
            if self.overlay is None:
                raise ProvisionError(self.overlay_error or "no transformers-4 overlay")
            env["PYTHONPATH"] = str(self.overlay)
        # Deterministic builds, and no hub access ever: everything is built from random init.
        env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                    "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false",
                    "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2",
                    "HF_HOME": str(self.root / "hf-home"), "TORCH_HOME": str(self.root / "torch-home"),
                    "PYTHONWARNINGS": "ignore", "CUDA_VISIBLE_DEVICES": ""})
        return env

    def freeze(self, tf4: bool = False) -> str:
        name = "freeze-tf4.txt" if tf4 else "freeze.txt"
        return (self.root / name).read_text()


def _install_overlay(root: Path, log: Log, log_file: Path) -> float:
    overlay = root / "overlay-tf4"
    partial = root / "overlay-tf4.partial"
    shutil.rmtree(partial, ignore_errors=True)
    start = time.monotonic()
    _run([str(root / "bin" / "python"), "-m", "pip", "install", "-q", "--retries", "2", "--no-deps",
          "--target", str(partial), "-r", str(OVERLAY_REQUIREMENTS)],
         "pip install --target (transformers-4 overlay)", env=_pip_env(), log_file=log_file)
    freeze = _run([str(root / "bin" / "python"), "-m", "pip", "list", "--format", "freeze",
                   "--path", str(partial)], "pip list (overlay)", env=_pip_env())
    (root / "freeze-tf4.txt").write_text(freeze)
    shutil.rmtree(overlay, ignore_errors=True)
    partial.rename(overlay)
    seconds = time.monotonic() - start
    log(f"transformers-4 overlay installed in {seconds:.0f} s")
    return seconds


def side_env(log: Log = print) -> SideEnv:
    """The side venv for the current pins: reused when complete, else created (raises
    ProvisionError when pip cannot install the base venv)."""
    cache = cache_dir()
    key = venv_key()
    root = cache / f"side-venv-{key}"
    timings: dict[str, float] = {}
    with _locked(cache / f".side-venv-{key}.lock"):
        start = time.monotonic()
        if not (root / ".complete").exists():
            partial = cache / f"side-venv-{key}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            shutil.rmtree(root, ignore_errors=True)
            log(f"creating the side venv {root} (torch 2.14.1 + torchvision, timm, transformers; "
                "several GB, a few minutes, once per pin change)")
            log_file = cache / f"side-venv-{key}.log"
            log_file.write_text("")
            base = getattr(sys, "_base_executable", sys.executable)
            try:
                _run([base, "-m", "venv", str(partial)], "python -m venv", env=_pip_env(), log_file=log_file)
                _run([str(partial / "bin" / "python"), "-m", "pip", "install", "-q", "--retries", "2",
                      "-r", str(SIDE_REQUIREMENTS)], "pip install -r requirements-side.txt",
                     env=_pip_env(), log_file=log_file)
                _run([str(partial / "bin" / "python"), "-c", "import torch, torchvision, timm, transformers"],
                     "importing the side venv's libraries", env=_pip_env(), log_file=log_file)
                freeze = _run([str(partial / "bin" / "python"), "-m", "pip", "freeze", "--all"],
                              "pip freeze", env=_pip_env())
            except ProvisionError:
                shutil.rmtree(partial, ignore_errors=True)     # gigabytes, perhaps
                raise
            (partial / "freeze.txt").write_text(freeze)
            partial.rename(root)     # the venv's python finds pyvenv.cfg beside it, renamed or not
            timings["venv"] = time.monotonic() - start
            (root / ".complete").write_text(json.dumps({"seconds": timings["venv"]}))
            log(f"side venv ready in {timings['venv']:.0f} s")
            _remove_stale("side-venv-*", root, log)
        overlay_error = None
        if not (root / "overlay-tf4").is_dir():
            try:
                timings["overlay"] = _install_overlay(root, log, cache / f"side-venv-{key}.log")
            except ProvisionError as exc:
                overlay_error = str(exc)
                log(f"transformers-4 overlay unavailable: {exc}")
        timings["total"] = time.monotonic() - start
        _mark_used(root)
    overlay = root / "overlay-tf4"
    return SideEnv(root, key, overlay if overlay.is_dir() else None, overlay_error, timings)


def part_key(env: SideEnv, part: str) -> str:
    _, tf4, files = PARTS[part]
    sources = [(BUILDERS / name).read_bytes() for name in files]
    return _digest(part, *sources, env.freeze(), env.freeze(tf4=True) if tf4 else "", sys.platform)


def build_part(env: SideEnv, part: str, log: Log = print) -> tuple[Path, dict]:
    """Run one builder in the side venv (cached); returns its folder and its manifest."""
    script, tf4, _ = PARTS[part]
    if tf4 and env.overlay is None:
        raise ProvisionError(f"transformers-4 overlay unavailable: {env.overlay_error}")
    scenarios = cache_dir() / "scenarios"
    key = part_key(env, part)
    out = scenarios / f"{part}-{key}"
    manifest = out / f"manifest-{part}.json"
    with _locked(scenarios / f".{part}.lock"):
        if not manifest.exists():
            partial = scenarios / f"{part}-{key}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            log(f"building the {part} scenarios with {script} into {out}")
            start = time.monotonic()
            _run([str(env.python), str(BUILDERS / script), str(partial), "--part", part],
                 f"builder {script} ({part})", env=env.env(tf4=tf4), log_file=partial / "build.log")
            if not (partial / f"manifest-{part}.json").exists():
                raise ProvisionError(f"builder {script} ({part}) wrote no manifest")
            data = json.loads((partial / f"manifest-{part}.json").read_text())
            data["build_seconds"] = round(time.monotonic() - start, 1)
            (partial / f"manifest-{part}.json").write_text(json.dumps(data, indent=2) + "\n")
            shutil.rmtree(out, ignore_errors=True)
            partial.rename(out)
            log(f"{part} scenarios built in {data['build_seconds']:.0f} s")
            _remove_stale(f"{part}-*", out, log)
        _mark_used(out)
    return out, json.loads(manifest.read_text())


def build_all(env: SideEnv, log: Log = print) -> tuple[dict[str, tuple[Path, dict]], dict[str, str]]:
    """Every part that can be built, in two lanes at once (the builders use one thread each):
    "tv" beside "hf5" then "hf4". Returns the built parts and, for the others, why not."""
    unavailable = {}
    lanes: list[list[str]] = [["tv"], ["hf5", "hf4"]]
    if env.overlay is None:
        unavailable["hf4"] = f"the transformers-4 overlay could not be installed ({env.overlay_error})"
        lanes[1].remove("hf4")

    def lane(parts: list[str]) -> dict[str, tuple[Path, dict]]:
        return {part: build_part(env, part, log) for part in parts}

    built: dict[str, tuple[Path, dict]] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(lanes)) as pool:
        for result in [pool.submit(lane, parts) for parts in lanes]:
            built.update(result.result())      # a builder's failure is raised here
    return {part: built[part] for part in PARTS if part in built}, unavailable


def merged_manifest(parts: dict[str, tuple[Path, dict]]) -> dict:
    """One manifest for the parts that were built, paths made absolute; also written to
    scenarios/manifest.json for people to read."""
    merged: dict = {"parts": {}, "scenarios": {}}
    for part, (folder, data) in parts.items():
        merged["parts"][part] = {k: v for k, v in data.items() if k != "scenarios"}
        merged["parts"][part]["folder"] = str(folder)
        for name, entry in data["scenarios"].items():
            entry = dict(entry, part=part)
            entry["files"] = {role: str(folder / rel) for role, rel in entry["files"].items()}
            merged["scenarios"][name] = entry
    target = cache_dir() / "scenarios" / "manifest.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(merged, indent=2) + "\n")
    tmp.replace(target)
    return merged


def main() -> int:
    env = side_env()
    print(f"side venv: {env.root} ({env.timings})")
    built, unavailable = build_all(env)
    for part, why in unavailable.items():
        print(f"{part}: not built: {why}", file=sys.stderr)
    merged = merged_manifest(built)
    print(f"{len(merged['scenarios'])} scenarios; manifest: {cache_dir() / 'scenarios' / 'manifest.json'}")
    return 0 if not unavailable else 1


if __name__ == "__main__":
    sys.exit(main())
