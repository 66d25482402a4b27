"""ckptlint's benchmark: generates its own inputs, then measures every figure as a ratio taken
side by side in one run (absolute times on shared machines drift; ratios much less).

    python bench/run.py [--workdir DIR] [--repeat N] [--skip-big] [--skip-real | --only-real]

(h) times real-structure DETR-R50 checkpoints, fresh and fine-tuned, built by the original DETR code
with torchvision in the tests' side venv (bench/real_detr.py), and profiles the fresh text check.

Needs torch (to write checkpoints and to time the plain-PyTorch script). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import real_detr
import torch

ROOT = Path(__file__).resolve().parent.parent
CKPTLINT = [sys.executable, "-m", "ckptlint"]
NAMES_ONLY = "missing-bn-stats,unsafe-pickle,unknown-pickle-global"

TORCH_SCRIPT = """
import sys, torch
target = torch.load(sys.argv[1], weights_only=True, mmap=True)["model"]
pretrained = torch.load(sys.argv[2], weights_only=True, mmap=True)
prefix = "backbone.0.body."
missing = [k for k in pretrained if prefix + k not in target]
unexpected = [k for k in target if k.startswith(prefix) and k[len(prefix):] not in pretrained]
changed = [k for k in pretrained if prefix + k in target and not torch.equal(target[prefix + k], pretrained[k])]
summary = {k: (v.double().std().item() if v.numel() > 1 else 0.0, bool(torch.isfinite(v).all()))
           for k, v in [*target.items(), *pretrained.items()]}
print(len(missing), len(unexpected), len(changed), len(summary))
"""

FLOOR_SCRIPT = """
import sys, zipfile, numpy as np
total = 0.0
for path in sys.argv[1:]:
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if "/data/" in info.filename:
                values = np.frombuffer(archive.read(info), dtype=np.float32, count=info.file_size // 4)
                total += float(values @ values)
print(total)
"""


def fixtures_module():
    spec = importlib.util.spec_from_file_location("make_fixtures", ROOT / "fixtures" / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed(*commands: list[str], repeat: int) -> list[float]:
    """Median wall time of each command (output discarded), the commands taking turns so that
    a slow spell of the machine falls on all of them alike."""
    return [statistics.median(series) for series in real_detr.timed_series(*commands, repeat=repeat)]


def byte_compile_ckptlint() -> None:
    """Compile ckptlint's modules as pip does at install time, so an editable checkout (or
    PYTHONDONTWRITEBYTECODE) does not charge every run for compiling them."""
    code = "import compileall, os, ckptlint; compileall.compile_dir(os.path.dirname(ckptlint.__file__), quiet=1)"
    subprocess.run([sys.executable, "-c", code], check=True)


def peak_rss_mb(command: list[str]) -> float:
    """Peak resident memory of a child process, in MB (RUSAGE_CHILDREN of a fresh helper)."""
    code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    done = subprocess.run([sys.executable, "-c", code, *command], capture_output=True, text=True, check=True)
    return int(done.stdout.strip()) / 1024


def full_size_detr(work: Path) -> tuple[Path, Path]:
    """DETR-R50 (~41 M parameters, real key names) and ResNet-50 (~25.6 M), trained-looking values."""
    fixtures = fixtures_module()
    fixtures.WIDTH_DIV, fixtures.NUM_CLASSES, fixtures.D_MODEL, fixtures.FFN = 1, 1000, 256, 2048
    resnet = fixtures.resnet50_state_dict(seed=0)
    detr = fixtures.detr_state_dict(resnet)
    torch.save(resnet, work / "resnet50.pth")
    torch.save({"model": detr}, work / "detr_r50.pth")
    return work / "detr_r50.pth", work / "resnet50.pth"


def same_keys(work: Path, name: str, rows: int, count: int = 400) -> Path:
    """``count`` conv weights with BatchNorm beside them; ``rows`` scales the bytes, not the keys."""
    gen = torch.Generator().manual_seed(0)
    sd = {}
    for i in range(count):
        sd[f"blocks.{i}.conv.weight"] = torch.randn(rows, 64, 3, 3, generator=gen) * 0.05
        sd[f"blocks.{i}.bn.running_mean"] = torch.randn(rows, generator=gen)
    torch.save(sd, work / name)
    return work / name


def tensor_series(work: Path, count: int) -> Path:
    gen = torch.Generator().manual_seed(count)
    sd = {f"units.{i // 100}.{i % 100}.weight": torch.randn(32, 32, generator=gen) * 0.1 for i in range(count)}
    torch.save(sd, work / f"series_{count}.pt")
    return work / f"series_{count}.pt"


def million_tiny_tensors(work: Path) -> Path:
    """tests/test_hardening.py's million tiny tensors: 1,000 blocks of 1,000 two-value tensors."""
    import safetensors.numpy

    arrays = {f"blocks.{i // 1000}.unit{i % 1000}.scale": np.full(2, i % 7, dtype=np.float32) for i in range(1_000_000)}
    arrays["blocks.3.unit5.scale"][0] = np.nan
    safetensors.numpy.save_file(arrays, work / "million.safetensors")
    return work / "million.safetensors"


def big_checkpoint(work: Path) -> tuple[Path, int]:
    """About 4 GB in 16 tensors of 256 MB: the largest tensor bounds the memory, not the file."""
    gen = torch.Generator().manual_seed(1)
    sd = {f"encoder.layers.{i}.ffn.weight": torch.randn(8192, 8192, generator=gen) * 0.02 for i in range(16)}
    torch.save(sd, work / "big.pt")
    del sd
    return work / "big.pt", 8192 * 8192 * 4


def alignment_seconds() -> float:
    from ckptlint.align.alignment import align
    from ckptlint.io.checkpoint import TensorRef
    from ckptlint.io.dtypes import DTYPES

    def refs(prefix: str) -> dict:
        keys = [f"{prefix}stages.{i // 1000}.blocks.{i % 1000 // 10}.layer{i % 10}.weight" for i in range(100_000)]
        return {k: TensorRef(k, DTYPES["float32"], (8, 8), "x", 0, 64) for k in keys}

    target, pretrained = refs("model.backbone."), refs("")
    start = time.perf_counter()
    result = align(target, pretrained)
    elapsed = time.perf_counter() - start
    assert len(result.pairs) == 100_000
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="where to write the generated checkpoints (default: a temporary folder)")
    parser.add_argument("--repeat", type=int, default=7, help="runs per timing; the median is kept")
    parser.add_argument("--skip-big", action="store_true", help="skip the 4 GB memory measurement")
    real = parser.add_mutually_exclusive_group()
    real.add_argument("--skip-real", action="store_true", help="skip the real-structure DETR-R50 cases (h)")
    real.add_argument("--only-real", action="store_true", help="run only the real-structure DETR-R50 cases (h)")
    args = parser.parse_args()
    rows: list[tuple[str, str, str, str]] = []

    byte_compile_ckptlint()
    if not args.only_real:
        rows.extend(synthetic_rows(args))
    profile = None
    if not args.skip_real:
        log = lambda message: print(message, file=sys.stderr)  # noqa: E731
        rows.extend(real_detr.rows(CKPTLINT, FLOOR_SCRIPT, args.repeat, log=log))
        if not rows[-1][1].startswith("skipped"):
            profile = real_detr.profile("fresh", log=log)
    rows.extend(importlib.import_module("pickle_only").rows(args.repeat, args.workdir))  # (j): bench/pickle_only.py

    print(f"\nckptlint benchmark — {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
          f"torch {torch.__version__}, numpy {np.__version__}; median of {args.repeat} runs\n")
    print("| measurement | times | ratio | target |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if profile:
        print("\nWhere the time goes: `ckptlint check` of the fresh DETR-R50 (text), in-process under cProfile, "
              "top 15 by cumulative time\n")
        print(profile.strip())


def synthetic_rows(args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    """Rows (a) to (g), on inputs generated here."""
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ckptlint-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str, str]] = []
    detr, resnet = full_size_detr(work)
    check = [*CKPTLINT, "check", str(detr), "--pretrained", str(resnet)]
    # Each ratio's two commands take turns on their own: a torch run in between would leave the
    # machine's caches in a state that neither side of (b) sees in use.
    ours, plain = timed(check, [sys.executable, "-c", TORCH_SCRIPT, str(detr), str(resnet)], repeat=args.repeat)
    rows.append(("(a) full check vs plain-PyTorch script", f"{ours:.2f} s / {plain:.2f} s",
                 f"{ours / plain:.2f}x", "<= 0.5x"))
    ours, floor = timed(check, [sys.executable, "-c", FLOOR_SCRIPT, str(detr), str(resnet)], repeat=args.repeat)
    rows.append(("(b) full check vs one numpy pass over both files", f"{ours:.2f} s / {floor:.2f} s",
                 f"{ours / floor:.2f}x", "<= 2x"))

    small, large = same_keys(work, "keys_1x.pt", 64), same_keys(work, "keys_4x.pt", 256)
    names = [*CKPTLINT, "check", "--select", NAMES_ONLY]
    t_small, t_large = timed([*names, str(small)], [*names, str(large)], repeat=args.repeat)
    rows.append((f"(c) names and shapes only, 4x the bytes ({large.stat().st_size >> 20} MB vs "
                 f"{small.stat().st_size >> 20} MB)", f"{t_large:.2f} s / {t_small:.2f} s",
                 f"{t_large / t_small:.2f}x", "<= 1.1x"))

    torch_import, version, rules = timed([sys.executable, "-c", "import torch"], [*CKPTLINT, "--version"],
                                         [*CKPTLINT, "rules"], repeat=args.repeat)
    for label, t in (("--version", version), ("rules", rules)):
        rows.append((f"(d) ckptlint {label} vs python -c 'import torch'", f"{t:.2f} s / {torch_import:.2f} s",
                     f"{t / torch_import:.2f}x", "<= 0.25x"))

    counts = (4000, 16000, 64000)  # at 2,000 the tensors' share of a run is within its run-to-run noise
    series = [[*CKPTLINT, "check", str(tensor_series(work, count))] for count in (1, *counts)]
    baseline, *totals = timed(*series, repeat=args.repeat)
    per_tensor = {count: (t - baseline) / count for count, t in zip(counts, totals, strict=True)}
    spread = max(per_tensor.values()) / min(per_tensor.values())
    rows.append(("(e) time per tensor at 1x, 4x, 16x tensors (4k, 16k, 64k)",
                 " / ".join(f"{v * 1e6:.0f} us" for v in per_tensor.values()), f"{spread:.2f}x spread", "<= 1.2x"))
    million = million_tiny_tensors(work)  # one run: ~20-60 s
    start = time.perf_counter()
    rss = peak_rss_mb([*CKPTLINT, "check", str(million)])
    seconds = time.perf_counter() - start
    per_million = (seconds - baseline) / 1_000_000  # a million tensors: seconds and us per tensor alike
    rows.append(("(e') a million tiny tensors (2 values each, safetensors): time, per tensor, peak memory",
                 f"{seconds:.1f} s, {per_million * 1e6:.0f} us, {rss:.0f} MB",
                 f"{per_million / statistics.median(per_tensor.values()):.2f}x (e)'s per tensor",
                 "<= 12 s, <= 1200 MB"))
    million.unlink()

    if not args.skip_big:
        big, largest = big_checkpoint(work)
        rss = peak_rss_mb([*CKPTLINT, "check", str(big)])
        budget = 3 * largest / 2**20 + 400
        size = f"{big.stat().st_size / 2**30:.1f} GB"
        rows.append((f"(f) peak memory, {size} file, largest tensor {largest >> 20} MB", f"{rss:.0f} MB",
                     f"{rss / budget:.2f}x of budget", f"<= {budget:.0f} MB"))
        ours_big, floor_big = timed([*CKPTLINT, "check", str(big)], [sys.executable, "-c", FLOOR_SCRIPT, str(big)],
                                    repeat=args.repeat)
        rows.append((f"(b') full check vs one numpy pass, the {size} file", f"{ours_big:.2f} s / {floor_big:.2f} s",
                     f"{ours_big / floor_big:.2f}x", "<= 2x"))
        big.unlink()

    seconds = alignment_seconds()
    rows.append(("(g) alignment alone, two 100,000-key checkpoints", f"{seconds:.2f} s", "-", "a few seconds"))
    rows.append(importlib.import_module("rule_eval").row())  # (i): bench/rule_eval.py
    return rows


if __name__ == "__main__":
    main()
