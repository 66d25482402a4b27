"""Training checkpoints as real libraries write them: torch.save of the objects DETR, Lightning,
timm and plain training scripts keep beside the weights (optimizer and scheduler state, numpy
random generators, argparse and SimpleNamespace arguments, paths, OrderedDict/defaultdict/Counter,
tensors with attributes, whole modules). No security rule may fire on any of them.

Run as a script to write them somewhere: ``python tests/benign_corpus.py OUT_DIR``.
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import sys
import types
from pathlib import Path

import numpy as np
import torch


def _attribute_dict(module: str) -> type:
    """Lightning's AttributeDict, importable under ``module`` as if Lightning were installed."""
    cls = type("AttributeDict", (dict,), {"__module__": module})
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    sys.modules[module].AttributeDict = cls  # type: ignore[attr-defined]  # a fake module, filled in here
    return cls


def _trained(model: torch.nn.Module) -> tuple[torch.optim.Optimizer, dict[str, object]]:
    """An optimizer after a step, and the state dicts of torch's usual schedulers."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sgd.step()
    schedulers = {
        "step": torch.optim.lr_scheduler.StepLR(sgd, 3),
        "multistep": torch.optim.lr_scheduler.MultiStepLR(sgd, [2, 4]),  # milestones: a Counter
        "cosine": torch.optim.lr_scheduler.CosineAnnealingLR(sgd, 10),
        "plateau": torch.optim.lr_scheduler.ReduceLROnPlateau(sgd),
        "lambda": torch.optim.lr_scheduler.LambdaLR(sgd, lambda epoch: 0.9 ** epoch),
        "onecycle": torch.optim.lr_scheduler.OneCycleLR(torch.optim.SGD(model.parameters(), lr=0.1), 0.1,
                                                        total_steps=10),
    }
    return optimizer, {name: scheduler.state_dict() for name, scheduler in schedulers.items()}


def _timm(model: torch.nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> dict[str, object]:
    """What timm's CheckpointSaver.save_checkpoint writes (timm/utils/checkpoint_saver.py), with
    arguments as its train.py parses them; timm's own output when timm is installed."""
    try:
        from timm.utils import CheckpointSaver
    except ImportError:
        args = argparse.Namespace(model="resnet50", data_dir="/data/imagenet", lr=0.1, mean=(0.485, 0.456, 0.406),
                                  drop_path=None, sched="cosine", device="cuda:0", model_kwargs={}, world_size=1)
        return {"epoch": 3, "arch": args.model, "optimizer": optimizer.state_dict(), "version": 2, "args": args,
                "amp_scaler": torch.amp.GradScaler("cpu").state_dict(), "state_dict": model.state_dict(),
                "state_dict_ema": model.state_dict(), "metric": 76.1}
    saver = CheckpointSaver(model, optimizer, args=argparse.Namespace(model="resnet50"), checkpoint_dir=str(folder),
                            recovery_dir=str(folder))
    saver.save_checkpoint(epoch=0, metric=1.0)
    return torch.load(folder / "last.pth.tar", weights_only=False)  # written just above by timm: trusted


def layouts(folder: Path) -> dict[str, object]:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    optimizer, schedulers = _trained(model)
    rng = np.random.default_rng(0)
    tensor_with_attribute = torch.ones(2)
    tensor_with_attribute.note = "kept by _rebuild_from_type_v2"
    hyper = {module: _attribute_dict(module)(lr=0.1, batch_size=np.int64(32), warmup=np.float32(0.5))
             for module in ("pytorch_lightning.utilities.parsing", "lightning.fabric.utilities.data",
                            "lightning_fabric.utilities.data")}
    return {
        "detr": {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "lr_scheduler": schedulers["step"],
                 "epoch": 3, "args": argparse.Namespace(lr=1e-4, device="cuda", coco_path="/data", frozen=False,
                                                        scales=np.array([480, 512]), momentum=np.float64(0.9))},
        **{f"lightning-{module.split('.')[0]}": {
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "hyper_parameters": hparams,
            "pytorch-lightning_version": "2.4.0", "epoch": 1, "global_step": np.int64(100),
            "loops": {"fit_loop": {"state_dict": {}}},
            "callbacks": {"EarlyStopping": {"best_score": torch.tensor(0.5)}},
            "optimizer_states": [optimizer.state_dict()], "lr_schedulers": [schedulers["cosine"]],
            "dtypes": [np.dtype("float32"), np.dtype("<i8")]} for module, hparams in hyper.items()},
        "schedulers": {"model": model.state_dict(), **schedulers},
        "numpy-random": {"model": model.state_dict(), "rng": rng, "rng_state": rng.bit_generator.state,
                         "legacy": np.random.RandomState(0), "global": np.random.get_state(),
                         "seed_sequence": np.random.SeedSequence(3),
                         **{cls.__name__: np.random.Generator(cls(1)) for cls in
                            (np.random.MT19937, np.random.Philox, np.random.SFC64, np.random.PCG64DXSM)}},
        "timm": _timm(model, optimizer, folder),
        "paths-and-namespaces": {"model": model.state_dict(), "root": pathlib.PosixPath("/data/x"),
                                 "relative": pathlib.Path("runs/1"), "pure": pathlib.PurePosixPath("a/b"),
                                 "windows": pathlib.PureWindowsPath("C:/data"),
                                 "cfg": types.SimpleNamespace(depth=50, tags=["a"])},
        "mappings": {"model": collections.OrderedDict(model.state_dict()),
                     "by_name": collections.defaultdict(list, a=[1]),
                     **{f"default_{f.__name__}": collections.defaultdict(f) for f in (int, float, str, dict, set)},
                     "counts": collections.Counter("abca"),
                     "ordered_default": collections.defaultdict(collections.OrderedDict)},
        "tensors": {"model": model.state_dict(), "parameter": torch.nn.Parameter(torch.ones(2)),
                    "with_attribute": tensor_with_attribute, "bf16": torch.ones(2, dtype=torch.bfloat16),
                    "dtype": torch.float16, "device": torch.device("cpu"), "size": torch.Size([2, 3]),
                    "complex": 1 + 2j, "set": {1, 2}, "frozenset": frozenset({3}), "rng": torch.get_rng_state(),
                    "bytes": b"\x00\x01"},
        "whole-model": {"model": model, "epoch": 1},
    }


def build(out: Path) -> list[Path]:
    """Write every layout with torch.save, in the zip format and the legacy one."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, layout in layouts(out).items():
        for legacy in (False, True):
            paths.append(out / f"{name}{'-legacy' if legacy else ''}.pt")
            torch.save(layout, paths[-1], _use_new_zipfile_serialization=not legacy)
    return paths


if __name__ == "__main__":
    for path in build(Path(sys.argv[1])):
        print(path)
