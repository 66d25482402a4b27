"""Shared by the builders, which run in the side venv (torch 2.14.1, torchvision, timm,
transformers). Determinism: every model is built and trained from an explicit seed, on the CPU,
with a fixed thread count, so the same seeds give the same values on the same machine."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import re
import sys
from pathlib import Path

import numpy as np
import torch

THREADS = 1  # one thread: deterministic, and 2 OpenMP threads on a busy 2-core machine spin (8x the CPU)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def setup() -> None:
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for name in ("torchvision", "timm", "transformers", "huggingface_hub", "tokenizers", "safetensors",
                 "scipy"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            pass
    return out


def random_images(gen: torch.Generator, batch: int, size: int) -> torch.Tensor:
    """ImageNet-normalised-looking noise: smooth blobs plus per-image, per-channel offsets and
    contrast, so BatchNorm statistics get structure (not just mean 0, variance 1)."""
    low = torch.randn(batch, 3, size // 8, size // 8, generator=gen)
    smooth = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    noise = 0.5 * torch.randn(batch, 3, size, size, generator=gen)
    offset = 0.4 * torch.randn(batch, 3, 1, 1, generator=gen)
    contrast = torch.exp(0.3 * torch.randn(batch, 1, 1, 1, generator=gen))
    return (smooth + noise) * contrast + offset


# What make_trained_looking does, for the manifest.
TRAINED_LOOKING = {
    "surrogate": {
        "why": ("a few SGD steps alone leave every weight within ~1% of its init: ckptlint's "
                "init fingerprint (KS test against each default init at its exact scale) then calls "
                "the file untrained (CKP210), which real ImageNet weights are not. Long training "
                "leaves heavy-tailed weights with per-channel scales and offsets, and BatchNorm "
                "affine parameters far from 1/0; this surrogate gives the weights that shape before "
                "the real SGD steps"),
        "conv_and_linear_weight": "W * exp(0.5*z - 0.125) * exp(0.3*z_out) + 0.1*std(W)*z'_out "
                                  "(z per element, z_out and z'_out per output channel, N(0,1))",
        "linear_and_conv_bias": "0.02 * z",
        "norm_weight": "exp(0.35*z) * (1 - 0.9*[bn3 / last norm of a residual block] * u), u ~ U(0,1)",
        "norm_bias": "0.1 * z",
    },
    "steps": 20, "batch": 8, "image_size": 64, "optimizer": "SGD", "lr": 0.05, "momentum": 0.9,
    "weight_decay": 1e-4, "nesterov": False, "grad_clip_norm": 5.0, "mode": "train",
    "bn_settle_passes": 30,
    "bn_settle": ("then bn_settle_passes forward passes in train mode without gradients, so the "
                  "BatchNorm running statistics (momentum 0.1) converge to the final weights' "
                  "activation statistics, as at the end of real training"),
    "data": "random_images(): bilinear-upsampled noise + pixel noise, per-image channel offsets and "
            "contrast; random labels over the classifier's classes; cross-entropy loss",
}

NORMS = (torch.nn.BatchNorm2d, torch.nn.LayerNorm, torch.nn.GroupNorm)


@torch.no_grad()
def _surrogate_long_training(model: torch.nn.Module, gen: torch.Generator) -> None:
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            w = module.weight
            out = w.shape[0]
            per_channel = (out,) + (1,) * (w.dim() - 1)
            mix = torch.exp(0.5 * torch.randn(w.shape, generator=gen) - 0.125)
            scale = torch.exp(0.3 * torch.randn(per_channel, generator=gen))
            offset = 0.1 * float(w.std()) * torch.randn(per_channel, generator=gen)
            w.copy_(w * mix * scale + offset)
            if module.bias is not None:
                module.bias.copy_(0.02 * torch.randn(module.bias.shape, generator=gen))
        elif isinstance(module, NORMS) and getattr(module, "weight", None) is not None:
            n = module.weight.shape
            gamma = torch.exp(0.35 * torch.randn(n, generator=gen))
            if re.search(r"(bn3|layer\.2\.normalization)$", name):   # last norm of a bottleneck
                gamma = gamma * (1 - 0.9 * torch.rand(n, generator=gen))
            module.weight.copy_(gamma)
            module.bias.copy_(0.1 * torch.randn(n, generator=gen))


def make_trained_looking(model: torch.nn.Module, seed: int, num_classes: int,
                         forward=None) -> dict:
    """A stand-in for ImageNet training: the long-training surrogate above on the weights, then a
    few real SGD steps on random data in train mode, so BatchNorm running statistics and
    num_batches_tracked come from real forward passes. Returns what was done, with measured
    change from the initialisation."""
    cfg = TRAINED_LOOKING
    gen = seed_everything(seed)
    forward = forward or (lambda m, x: m(x))
    before = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    _surrogate_long_training(model, gen)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                          weight_decay=cfg["weight_decay"])
    losses = []
    for _ in range(cfg["steps"]):
        x = random_images(gen, cfg["batch"], cfg["image_size"])
        y = torch.randint(0, num_classes, (cfg["batch"],), generator=gen)
        loss = torch.nn.functional.cross_entropy(forward(model, x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip_norm"])
        opt.step()
        losses.append(round(float(loss.detach()), 4))
    with torch.no_grad():
        for _ in range(cfg["bn_settle_passes"]):
            forward(model, random_images(gen, cfg["batch"], cfg["image_size"]))
    model.eval()
    after = model.state_dict()
    drift = {}
    for key, old in before.items():
        new = after[key].detach()
        denom = float(old.norm()) or 1.0
        drift[key] = float((new - old).norm()) / denom
    weights = [v for k, v in drift.items() if k.endswith("weight") and after[k].dim() == 4]
    kurtosis = [float(((v - v.mean()) ** 4).mean() / v.var() ** 2) for k, v in after.items()
                if k.endswith("weight") and v.dim() == 4 and v.numel() >= 4096]
    return dict(cfg, seed=seed, losses=losses,
                conv_weight_relative_change_from_init={"min": round(min(weights), 4),
                                                       "median": round(float(np.median(weights)), 4),
                                                       "max": round(max(weights), 4)},
                conv_weight_kurtosis={"min": round(min(kurtosis), 2),
                                      "median": round(float(np.median(kurtosis)), 2)})


def values_digest(state: dict) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in key order: equal digests mean
    equal values (torch's zip writer adds a random id, so the file bytes differ run to run)."""
    h = hashlib.sha256()
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / (b.norm() or 1.0))


class Manifest:
    def __init__(self, out: Path, part: str):
        self.out = out
        self.part = part
        self.data = {"part": part, "versions": versions(), "argv": sys.argv[1:], "scenarios": {}}

    def add(self, name: str, **entry) -> dict:
        entry.setdefault("files", {})
        self.data["scenarios"][name] = entry
        return entry

    def write(self) -> None:
        path = self.out / f"manifest-{self.part}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        tmp.replace(path)


def state_summary(state: dict) -> dict:
    """Counts a test can assert: tensors, and tensors under each first-two-level prefix."""
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    prefixes: dict[str, int] = {}
    for key in tensors:
        head = ".".join(key.split(".")[:2])
        prefixes[head] = prefixes.get(head, 0) + 1
    return {"tensors": len(tensors), "parameters": int(sum(v.numel() for v in tensors.values())),
            "first_key": next(iter(tensors), None), "by_prefix": prefixes,
            "values_sha256": values_digest(tensors)}
