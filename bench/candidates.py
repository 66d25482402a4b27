"""Time ranking ten pretrained candidates of ResNet-50 size (issue 14, part 2).

    python bench/candidates.py [--workdir DIR] [--repeat N]

Builds ten torchvision-named full-width ResNet-50 files (seeds 0-9, trained-looking values, 25.6M
parameters each) and a full-size DETR whose backbone was copied from the eighth; then times
``ckptlint check detr --pretrained c0`` (the transfer check alone) and the same check with all ten
``--pretrained`` candidates, side by side. Prints both medians and their difference.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
CKPTLINT = [sys.executable, "-m", "ckptlint", "check"]
SOURCE = 7


def fixtures_module():
    spec = importlib.util.spec_from_file_location("make_fixtures", ROOT / "fixtures" / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.WIDTH_DIV, module.NUM_CLASSES, module.D_MODEL, module.FFN = 1, 1000, 256, 2048
    return module


def build(work: Path) -> list[Path]:
    fixtures = fixtures_module()
    paths = []
    for seed in range(10):
        resnet = fixtures.resnet50_state_dict(seed=seed)
        paths.append(work / f"resnet50_{seed}.pth")
        torch.save(resnet, paths[-1])
        if seed == SOURCE:
            torch.save({"model": fixtures.detr_state_dict(resnet)}, work / "detr_r50.pth")
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as folder:
        work = Path(folder)
        candidates = build(work)
        detr = str(work / "detr_r50.pth")
        one = [*CKPTLINT, detr, "--pretrained", str(candidates[0])]
        ten = [*CKPTLINT, detr, *(arg for path in candidates for arg in ("--pretrained", str(path)))]
        times: dict[str, list[float]] = {"one": [], "ten": []}
        for _ in range(args.repeat):
            for name, command in (("one", one), ("ten", ten)):
                start = time.perf_counter()
                subprocess.run(command, stdout=subprocess.DEVNULL, check=False)
                times[name].append(time.perf_counter() - start)
        ranking = subprocess.run([*ten, "--format", "json", "--no-hash"], capture_output=True, text=True, check=False)
        first = json.loads(ranking.stdout)["transfer"]["candidates"][0]
        one_s, ten_s = statistics.median(times["one"]), statistics.median(times["ten"])
        print(f"check against 1 pretrained file:  {one_s:.2f} s")
        print(f"check against 10 candidates:      {ten_s:.2f} s (+{ten_s - one_s:.2f} s for 9 more candidates)")
        print(f"ranked first: {Path(first['path']).name}, {first['share']:.1%} {first['how']}")


if __name__ == "__main__":
    main()
