"""The benchmark's real-structure cases: DETR-R50 checkpoints as the original DETR code writes
them, each checked against a torchvision ResNet-50, timed against the one-pass floor.

    fresh       detr-assembled.pth: DETR's build() with the backbone loaded from the ResNet-50 by
                load_state_dict (FrozenBatchNorm2d), transformer xavier_uniform_, input_proj,
                query_embed and heads at PyTorch's default init; saved as {"model": state_dict}
                (458 tensors, 41.6 M parameters)
    fine-tuned  detr-finetuned.pth: the same after 10 AdamW steps of DETR's training loop (main.py's
                param groups, so only layer2-4 convs of the backbone move; FrozenBatchNorms never do),
                saved as main.py saves it: {"model", "optimizer", "lr_scheduler", "epoch", "args"}
    pretrained  tv-r50.pth: torchvision resnet50(weights=None) made trained-looking (320 tensors)

The files are not made here: they are the "tv" part of the real-library test scenarios, written by
tests/reallibs/builders/build_torchvision.py with torchvision itself and detr_original.py (DETR's
models/*.py module for module, so key names, order and init are DETR's). That part runs in the
tests' side venv (torchvision does not import beside this venv's CPU torch); provision.py creates
the venv and builds the part once, from fixed seeds, and caches both under $CKPTLINT_TEST_CACHE
(default tests/.cache/) keyed by the builders' source and the library versions, so a bench run
reuses them and the tests and the bench check the very same files.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = (("fresh", "detr-assembled"), ("fine-tuned", "detr-finetuned"))

PROFILE_SCRIPT = """
import contextlib, cProfile, io, pstats, runpy, sys
sys.argv = ["ckptlint", *sys.argv[1:]]
profile = cProfile.Profile()
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    profile.enable()
    try:
        runpy.run_module("ckptlint", run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    profile.disable()
stats = pstats.Stats(profile).stats  # (file, line, name) -> (primitive calls, calls, tottime, cumtime, callers)
total = max(entry[3] for entry in stats.values())
imports = max((entry[3] for (file, _, name), entry in stats.items()
               if file.startswith("<frozen importlib") and name == "_find_and_load"), default=0.0)
WRAPPERS = ("<frozen runpy>", "<frozen importlib", "click/", "ckptlint/__main__.py", "ckptlint/cli.py:main")
rows = []
for (file, line, name), (primitive, calls, tottime, cumtime, _) in stats.items():
    where = f"{file}:{name}" if file != "~" else name
    if any(w in where for w in WRAPPERS) or name in ("<built-in method builtins.exec>", "<module>"):
        continue
    rows.append((cumtime, tottime, calls, f"{file}:{line}({name})" if file != "~" else name))
rows.sort(reverse=True)
print(f"total {total:.3f} s under cProfile, of which imports {imports:.3f} s (importlib _find_and_load)")
print()
print("| cumulative | own | calls | function |")
print("| ---: | ---: | ---: | --- |")
for cumtime, tottime, calls, where in rows[:15]:
    print(f"| {cumtime:.3f} s | {tottime:.3f} s | {calls} | `{where}` |")
"""


def inputs(log=print) -> tuple[dict[str, Path], Path]:
    """{case: DETR file} and the ResNet-50, provisioning the side venv and building once if needed
    (raises provision.ProvisionError when that is impossible, e.g. no package index)."""
    sys.path.insert(0, str(ROOT / "tests" / "reallibs"))
    try:
        import provision
    finally:
        sys.path.pop(0)
    env = provision.side_env(log=log)
    folder, manifest = provision.build_part(env, "tv", log=log)
    scenarios = manifest["scenarios"]
    targets = {case: Path(scenarios[name]["files"]["target"]) for case, name in CASES}
    pretrained = {Path(scenarios[name]["files"]["pretrained"]) for _, name in CASES}
    assert len(pretrained) == 1, pretrained
    targets = {case: path if path.is_absolute() else folder / path for case, path in targets.items()}
    (resnet,) = pretrained
    return targets, resnet if resnet.is_absolute() else folder / resnet


def timed_series(*commands: list[str], repeat: int) -> list[list[float]]:
    """Wall times of each command, the commands taking turns (as run.py's timed)."""
    times: list[list[float]] = [[] for _ in commands]
    for _ in range(repeat):
        for command, series in zip(commands, times, strict=True):
            start = time.perf_counter()
            subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            series.append(time.perf_counter() - start)
    return times


def rows(ckptlint: list[str], floor_script: str, repeat: int, log=print) -> list[tuple[str, str, str, str]]:
    """Per case: the floor, the text check and the JSON check, interleaved; ratios of medians, and
    of the best runs in parentheses."""
    try:
        targets, resnet = inputs(log=log)
    except (ImportError, OSError, RuntimeError) as exc:  # ProvisionError is a RuntimeError: say so, don't fail
        return [("(h) real-structure DETR-R50 cases", f"skipped: {str(exc).splitlines()[0]}", "-", "-")]
    out = []
    for case, target in targets.items():
        check = [*ckptlint, "check", str(target), "--pretrained", str(resnet)]
        floor, text, json = timed_series([sys.executable, "-c", floor_script, str(target), str(resnet)],
                                         check, [*check, "--format", "json"], repeat=repeat)
        med = {k: statistics.median(v) for k, v in (("floor", floor), ("text", text), ("json", json))}
        best = {k: min(v) for k, v in (("floor", floor), ("text", text), ("json", json))}
        size = (target.stat().st_size + resnet.stat().st_size) / 2**20
        label = f"(h) DETR-R50 {case} vs ResNet-50 ({size:.0f} MB)"
        for fmt, target_ratio in (("text", "<= 2x"), ("json", "<= 2x")):
            out.append((f"{label}: {fmt} check vs one numpy pass",
                        f"{med[fmt]:.2f} s / {med['floor']:.2f} s (best {best[fmt]:.2f} / {best['floor']:.2f})",
                        f"{med[fmt] / med['floor']:.2f}x ({best[fmt] / best['floor']:.2f}x)", target_ratio))
        out.append((f"{label}: JSON vs text", f"{med['json']:.2f} s / {med['text']:.2f} s",
                    f"{med['json'] / med['text']:.2f}x ({best['json'] / best['text']:.2f}x)", "<= 1.1x"))
    return out


def profile(case: str = "fresh", log=print) -> str:
    """cProfile of one in-process text check (imports included), top 15 by cumulative time."""
    targets, resnet = inputs(log=log)
    done = subprocess.run([sys.executable, "-c", PROFILE_SCRIPT, "check", str(targets[case]), "--pretrained",
                           str(resnet)], capture_output=True, text=True, check=True)
    text = done.stdout
    for prefix in sorted({str(Path(p)) + "/" for p in sys.path if p}, key=len, reverse=True):
        text = text.replace(prefix, "")
    return text.replace(str(ROOT) + "/", "")


if __name__ == "__main__":
    print(profile(sys.argv[1] if len(sys.argv) > 1 else "fresh"))
