"""(k) Many files at once: --jobs, --cache and the client's memory over a zoo of small files.

    python bench/many_files.py [--files 200] [--detr 40] [--big 10000] [--workdir DIR] [--skip-big]

Writes a zoo of small checkpoints (half safetensors, half torch.save .pth, a NaN in every seventh),
then, each as a fresh process (wall time, JSON report with hashes to a file):
- ``check 'zoo/**/*' --jobs 1`` against ``--jobs 2`` (and checks the two reports are byte-identical);
- ``--cache DIR`` on a cold cache, then again on the unchanged zoo (target: second <= 10% of first);
- the same two on ``--detr`` copies (default 40) of the fixtures' DETR checkpoints against their
  pretrained ResNet: files whose check costs what a real one does, where start-up no longer dominates;
- ``--big`` files (default 10,000) with ``--jobs 2``, and a tenth of them, reporting the client's
  peak RSS (the workers are other processes): flat means the 10x run's peak is not 10x (what grows is
  the merged report itself; the same run without ``--jobs`` is shown beside it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CLIENT = ("import resource, sys\nfrom ckptlint.cli import main\ncode = main(sys.argv[1:])\n"
          "print('peak-rss-kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
          "sys.exit(code)\n")


def _safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    header, data, offset = {}, b"", 0
    for name, value in tensors.items():
        raw = np.ascontiguousarray(value, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(value.shape), "data_offsets": [offset, offset + len(raw)]}
        data, offset = data + raw, offset + len(raw)
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)


def write_zoo(folder: Path, count: int, with_pth: bool = True) -> None:
    """``count`` files under ``folder`` in ten subfolders; a .pth for every other one when asked."""
    import torch

    rng = np.random.default_rng(0)
    for i in range(count):
        sub = folder / f"family{i % 10}"
        sub.mkdir(parents=True, exist_ok=True)
        tensors = {"conv1.weight": rng.normal(0, 0.05, (16, 3, 3, 3)).astype(np.float32),
                   "bn1.weight": np.ones(16, np.float32), "bn1.bias": np.zeros(16, np.float32),
                   "bn1.running_mean": rng.normal(0, 0.1, 16).astype(np.float32),
                   "bn1.running_var": rng.uniform(0.5, 1.5, 16).astype(np.float32),
                   "fc.weight": rng.normal(0, 0.05, (10, 16)).astype(np.float32)}
        if i % 7 == 0:
            tensors["fc.weight"][0, 0] = np.nan
        if with_pth and i % 2:
            torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, sub / f"model_{i:05d}.pth")
        else:
            _safetensors(sub / f"model_{i:05d}.safetensors", tensors)


def run(args: list[str], cwd: Path) -> tuple[float, str, int | None]:
    """Wall seconds, stderr, the client's peak RSS (KiB)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CLIENT, *args], cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise SystemExit(f"ckptlint {' '.join(args)} failed ({done.returncode}): {done.stderr}")
    peak = next((int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("peak-rss-kib")), None)
    return elapsed, done.stderr, peak


REPO = Path(__file__).resolve().parent.parent
DETRS = ["transfer-naive-copy", "transfer-selective", "transfer-float16", "bn-stats-default"]


def write_detr_zoo(folder: Path, count: int) -> None:
    """``count`` copies of the fixtures' DETR checkpoints (each its own path)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        source = REPO / "fixtures" / "cases" / DETRS[i % len(DETRS)] / "detr.pth"
        (folder / f"detr_{i:03d}.pth").write_bytes(source.read_bytes())


def compare(label: str, pattern: str, work: Path, extra: list[str]) -> None:
    """--jobs 1 against --jobs 2 (and the plain check), then --cache cold against warm."""
    run(["check", pattern, *extra, "--format", "json", "-o", "warm.json"], work)  # warm the rule code cache
    plain, _, _ = run(["check", pattern, *extra, "--format", "json", "-o", "plain.json"], work)
    one, _, _ = run(["check", pattern, *extra, "--format", "json", "-o", "jobs1.json", "--jobs", "1"], work)
    two, _, _ = run(["check", pattern, *extra, "--format", "json", "-o", "jobs2.json", "--jobs", "2"], work)
    same = digest(work / "jobs1.json") == digest(work / "jobs2.json") == digest(work / "plain.json")
    print(f"[{label}] check (no --jobs) {plain:6.2f} s")
    print(f"[{label}] --jobs 1          {one:6.2f} s")
    print(f"[{label}] --jobs 2          {two:6.2f} s   jobs2/jobs1 = {two / one:.2f}   identical reports: {same}")
    cache = work / "cache"
    if cache.exists():
        subprocess.run(["rm", "-rf", str(cache)], check=True)
    cold, _, _ = run(["check", pattern, *extra, "--format", "json", "-o", "cold.json", "--cache", "cache"], work)
    warm, _, _ = run(["check", pattern, *extra, "--format", "json", "-o", "warm2.json", "--cache", "cache"], work)
    print(f"[{label}] --cache cold      {cold:6.2f} s")
    print(f"[{label}] --cache warm      {warm:6.2f} s   warm/cold = {warm / cold:.2f}   "
          f"identical reports: {digest(work / 'cold.json') == digest(work / 'warm2.json')}")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--detr", type=int, default=40)
    parser.add_argument("--big", type=int, default=10_000)
    parser.add_argument("--workdir")
    parser.add_argument("--skip-big", action="store_true")
    options = parser.parse_args()
    work = Path(options.workdir or tempfile.mkdtemp(prefix="ckptlint-many-"))
    os.environ.setdefault("CKPTLINT_CACHE_DIR", str(work / "code-cache"))
    zoo = work / "zoo"
    if not zoo.exists():
        write_zoo(zoo, options.files)
    print(f"zoo: {options.files} small files, {options.detr} DETR copies, in {work}")
    compare(f"{options.files} small files", "zoo/**/model_*", work, [])
    detrs = work / "detrs"
    if not detrs.exists():
        write_detr_zoo(detrs, options.detr)
    compare(f"{options.detr} DETR checkpoints", "detrs/*.pth", work,
            ["--pretrained", str(REPO / "fixtures" / "models" / "resnet50_tiny.pth")])

    if options.skip_big:
        return
    for count in (options.big // 10, options.big):
        big = work / f"big{count}"
        if not big.exists():
            write_zoo(big, count, with_pth=False)
        for flags in (["--jobs", "2"], []):
            elapsed, _, peak = run(["check", f"big{count}/**/model_*", "--format", "json", "--no-hash", "-o",
                                    f"big{count}.json", *flags], work)
            report = json.loads((work / f"big{count}.json").read_text())
            print(f"{count:>6} files {' '.join(flags) or '(no --jobs)':<11}: {elapsed:6.1f} s, client peak RSS "
                  f"{(peak or 0) / 1024:.0f} MiB, {len(report['files'])} files and {len(report['findings'])} "
                  "findings reported")


if __name__ == "__main__":
    main()
