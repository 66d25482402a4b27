"""(j) A pickle-safety-only check beside picklescan, on the same files: what a pre-commit hook over
many files spends its time on.

    python bench/pickle_only.py [--repeat N] [--workdir DIR]

ckptlint runs ``check --select unsafe-pickle,unknown-pickle-global FILE`` (text output: no file
hash), picklescan ``picklescan --path FILE``; each as a fresh process, the two taking turns, wall
time, best of ``repeat`` runs (and the medians). The files: the real-structure DETR-R50
(detr-assembled.pth, 166 MB, bench/real_detr.py's provisioning) and a ~1 GB state dict of 16 large
float32 tensors written here with torch. picklescan is installed into the peers' throwaway venv
(bench/security_peers.py: --venv, $CKPTLINT_PEERS_VENV, default /tmp/ckptlint-peers-venv), never
into ckptlint's own. Target: ckptlint at most picklescan's time (<= 1.0x).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
PICKLE_RULES = "unsafe-pickle,unknown-pickle-global"
Row = tuple[str, str, str, str]


def picklescan_command(log: Callable[[str], None]) -> list[str]:
    """picklescan's CLI in the peers' venv (created, with the peers, when missing)."""
    sys.path.insert(0, str(BENCH))
    try:
        import security_peers
    finally:
        sys.path.pop(0)
    venv = Path(os.environ.get("CKPTLINT_PEERS_VENV", "/tmp/ckptlint-peers-venv"))  # noqa: S108 - documented default
    script = venv / "bin" / "picklescan"
    if not script.exists():
        log(f"installing picklescan into {venv}")
        security_peers.peer_python(venv)
    return [str(script), "--path"]


def gigabyte_checkpoint(work: Path) -> Path:
    """16 tensors of 4096 x 4096 float32 (64 MiB each): 1 GiB of values, one small pickle."""
    path = work / "one_gb.pt"
    if not path.exists():
        gen = torch.Generator().manual_seed(2)
        torch.save({f"layers.{i}.weight": torch.randn(4096, 4096, generator=gen) * 0.02 for i in range(16)}, path)
    return path


def detr_checkpoint(log: Callable[[str], None]) -> Path:
    import real_detr

    targets, _ = real_detr.inputs(log=log)
    return targets["fresh"]


def best_and_median(*commands: list[str], repeat: int) -> list[tuple[float, float]]:
    """(best, median) wall time of each command, the commands taking turns; each must succeed
    or report findings (exit 0 or 1: picklescan exits 1 on a dangerous global)."""
    times: list[list[float]] = [[] for _ in commands]
    for _ in range(repeat):
        for command, series in zip(commands, times, strict=True):
            start = time.perf_counter()
            done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            series.append(time.perf_counter() - start)
            if done.returncode not in (0, 1):
                raise RuntimeError(f"{' '.join(command)} exited {done.returncode}")
    return [(min(series), statistics.median(series)) for series in times]


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def rows(repeat: int = 7, workdir: str | None = None, log: Callable[[str], None] = _log) -> list[Row]:
    """One row per file: ckptlint's pickle-only check vs picklescan, ratio of the best runs."""
    repeat = max(repeat, 5)
    work = Path(workdir or tempfile.mkdtemp(prefix="ckptlint-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        picklescan = picklescan_command(log)
    except (OSError, subprocess.CalledProcessError) as exc:
        return [("(j) pickle-only check vs picklescan", f"skipped: {exc}", "-", "-")]
    files: list[tuple[str, Path]] = []
    try:
        files.append(("real-structure DETR-R50", detr_checkpoint(log)))
    except (ImportError, OSError, RuntimeError) as exc:  # provisioning impossible: say so, don't fail
        log(f"(j) DETR-R50 skipped: {str(exc).splitlines()[0]}")
    big = gigabyte_checkpoint(work)
    files.append(("torch.save'd state dict", big))
    ckptlint = [sys.executable, "-m", "ckptlint", "check", "--select", PICKLE_RULES]
    out = []
    for label, path in files:
        (ours, ours_median), (theirs, theirs_median) = best_and_median(
            [*ckptlint, str(path)], [*picklescan, str(path)], repeat=repeat)
        out.append((f"(j) pickle-only check (--select {PICKLE_RULES}) vs picklescan, {label} "
                    f"({path.stat().st_size / 2**20:.0f} MB)",
                    f"{ours:.2f} s / {theirs:.2f} s (medians {ours_median:.2f} / {theirs_median:.2f})",
                    f"{ours / theirs:.2f}x ({ours_median / theirs_median:.2f}x)", "<= 1.0x"))
    big.unlink()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="runs per timing (at least 5); the best is kept")
    parser.add_argument("--workdir", help="where to write the 1 GB checkpoint (default: a temporary folder)")
    args = parser.parse_args()
    print("| measurement | best (medians) | ratio of best (of medians) | target |")
    print("| --- | --- | --- | --- |")
    for row in rows(args.repeat, args.workdir):
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
