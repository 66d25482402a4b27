"""Part "tv": torchvision ResNets made trained-looking, and original-DETR checkpoints built from
them with DETR's own module structure (detr_original.py).

    python build_torchvision.py OUT_DIR [--part tv]

Writes tv-r50.pth, tv-r50-other.pth, tv-r101.pth (torch.save(model.state_dict())) and
detr-assembled.pth, detr-finetuned.pth, detr-finetuned-frozen-changed.pth, detr-r101-from-r50.pth,
detr-naive.pth, and manifest-tv.json. Runs in the side venv (torch 2.14.1 + torchvision 0.29.1).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
import torchvision

from common import Manifest, make_trained_looking, random_images, relative_l2, seed_everything, setup, state_summary
from detr_original import NestedTensor, build_detr, criterion, default_args, param_dicts, random_targets

SEEDS = {"tv-r50": 50, "tv-r50-other": 5050, "tv-r101": 101, "detr": 42, "finetune": 4242}
FINETUNE = {"steps": 10, "batch": 2, "image_size": 128, "lr": 1e-4, "lr_backbone": 2e-4,
            "weight_decay": 1e-4, "clip_max_norm": 0.1}
BODY = "backbone.0.body."
STAGES = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")


def stage_of(key: str) -> str:
    return key.removeprefix(BODY).split(".")[0]


def save(obj, path: Path) -> None:
    torch.save(obj, path)


def resnet(arch: str, seed: int) -> tuple[torch.nn.Module, dict]:
    seed_everything(seed)
    model = getattr(torchvision.models, arch)(weights=None)
    info = make_trained_looking(model, seed, num_classes=1000)
    return model, info


def drift_table(now: dict, before: dict, keys: list[str]) -> dict:
    return {k: round(relative_l2(now[k], before[k]), 6) for k in keys}


def stats(values: list[float]) -> dict:
    if not values:
        return {}
    return {"min": round(min(values), 5), "median": round(float(np.median(values)), 5),
            "max": round(max(values), 5), "count": len(values)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--part", default="tv")
    opts = parser.parse_args()
    out: Path = opts.out
    out.mkdir(parents=True, exist_ok=True)
    setup()
    manifest = Manifest(out, opts.part)
    manifest.data["trained_looking"] = ("torchvision resnet(weights=None), then common.make_trained_looking: "
                                        "SGD steps in train mode on random images with random labels; see "
                                        "each pretrained scenario's 'trained_looking'")
    timings = {}

    # -- pretrained torchvision ResNets ---------------------------------------------------------
    pretrained = {}
    for name, arch in (("tv-r50", "resnet50"), ("tv-r50-other", "resnet50"), ("tv-r101", "resnet101")):
        start = time.monotonic()
        model, info = resnet(arch, SEEDS[name])
        sd = model.state_dict()
        save(sd, out / f"{name}.pth")
        pretrained[name] = {k: v.clone() for k, v in sd.items()}
        manifest.add(name, kind="pretrained", files={"checkpoint": f"{name}.pth"},
                     layout="bare state dict: torch.save(model.state_dict())",
                     what=f"torchvision.models.{arch}(weights=None), seed {SEEDS[name]}, made trained-looking"
                          + (" (an independent second ResNet-50: the 'wrong pretrained file')"
                             if name == "tv-r50-other" else ""),
                     trained_looking=info, state=state_summary(sd))
        timings[name] = round(time.monotonic() - start, 1)

    r50 = pretrained["tv-r50"]

    # -- detr-assembled: DETR-R50, backbone from tv-r50 the way DETR loads it ---------------------
    start = time.monotonic()
    args = default_args()
    seed_everything(SEEDS["detr"])
    detr = build_detr(args, pretrained_state_dict=r50)
    assembled = {k: v.clone() for k, v in detr.state_dict().items()}
    save({"model": detr.state_dict()}, out / "detr-assembled.pth")
    body_keys = [k for k in assembled if k.startswith(BODY)]
    other_keys = [k for k in assembled if not k.startswith(BODY)]
    mapping = {k: k[len(BODY):] for k in body_keys}
    assert all(torch.equal(assembled[k], r50[v]) for k, v in mapping.items())
    dropped = sorted(k for k in r50 if k not in mapping.values())
    manifest.add(
        "detr-assembled", kind="target",
        files={"target": "detr-assembled.pth", "pretrained": "tv-r50.pth"},
        checks=[{"target": "target", "pretrained": "pretrained"}],
        layout="{'model': state_dict}",
        what=("DETR-R50 (args = main.py defaults, hidden_dim 256, 6+6 layers, 100 queries, 91 classes) "
              "built as DETR's build(): torchvision resnet50(norm_layer=FrozenBatchNorm2d) loaded with "
              "tv-r50's state dict by load_state_dict (strict; FrozenBatchNorm2d drops num_batches_tracked), "
              "then IntermediateLayerGetter -> backbone.0.body; transformer xavier_uniform_ (p.dim()>1), "
              "heads at PyTorch's default init; nothing trained"),
        planted={"copied": {"count": len(body_keys), "target_prefix": BODY, "pretrained_prefix": "",
                            "note": "every backbone.0.body.* tensor is bit-equal to tv-r50[key minus prefix]"},
                 "pretrained_not_taken": dropped,
                 "fresh_outside_scope": {"count": len(other_keys),
                                         "modules": sorted({k.split(".")[0] for k in other_keys})}},
        state=state_summary(assembled))
    timings["detr-assembled"] = round(time.monotonic() - start, 1)

    # -- detr-finetuned: DETR's training loop in miniature ----------------------------------------
    start = time.monotonic()
    ft_args = default_args(lr=FINETUNE["lr"], lr_backbone=FINETUNE["lr_backbone"],
                           weight_decay=FINETUNE["weight_decay"], clip_max_norm=FINETUNE["clip_max_norm"],
                           epochs=1, output_dir="outputs/detr-r50-finetune")
    trainable = {n for n, p in detr.named_parameters() if p.requires_grad}
    frozen_params = sorted(n for n, p in detr.named_parameters() if not p.requires_grad)
    buffers = sorted(n for n, _ in detr.named_buffers())
    optimizer = torch.optim.AdamW(param_dicts(detr, ft_args), lr=ft_args.lr, weight_decay=ft_args.weight_decay)
    lr_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, ft_args.lr_drop)
    gen = seed_everything(SEEDS["finetune"])
    detr.train()
    losses = []
    size, batch = FINETUNE["image_size"], FINETUNE["batch"]
    for _ in range(FINETUNE["steps"]):
        samples = NestedTensor(random_images(gen, batch, size), torch.zeros(batch, size, size, dtype=torch.bool))
        loss = criterion(detr(samples), random_targets(gen, batch, 91), ft_args, 91)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(detr.parameters(), ft_args.clip_max_norm)
        optimizer.step()
        losses.append(round(float(loss.detach()), 4))
    lr_scheduler.step()
    detr.eval()
    finetuned = {k: v.clone() for k, v in detr.state_dict().items()}
    checkpoint = {"model": detr.state_dict(), "optimizer": optimizer.state_dict(),
                  "lr_scheduler": lr_scheduler.state_dict(), "epoch": 0, "args": ft_args}
    save(checkpoint, out / "detr-finetuned.pth")
    unchanged = sorted(k for k in finetuned if torch.equal(finetuned[k], assembled[k]))
    changed = sorted(k for k in finetuned if k not in unchanged)
    body_drift = drift_table(finetuned, assembled, body_keys)
    conv_drift = {s: stats([d for k, d in body_drift.items() if stage_of(k) == s and k.endswith("weight")
                            and finetuned[k].dim() == 4]) for s in STAGES}
    # Sanity: DETR's freezing held.
    assert all(k in unchanged for k in body_keys if k not in trainable), "a frozen backbone tensor moved"
    manifest.add(
        "detr-finetuned", kind="target",
        files={"target": "detr-finetuned.pth", "pretrained": "tv-r50.pth"},
        checks=[{"target": "target", "pretrained": "pretrained"}],
        layout=("DETR main.py training checkpoint: {'model', 'optimizer', 'lr_scheduler', 'epoch', 'args'}; "
                "args is an argparse.Namespace (torch.load(weights_only=True) refuses it)"),
        what=(f"detr-assembled trained {FINETUNE['steps']} AdamW steps (main.py's param groups: lr "
              f"{FINETUNE['lr']} for non-backbone, lr_backbone {FINETUNE['lr_backbone']} for backbone "
              "parameters with requires_grad; weight_decay 1e-4; clip_max_norm 0.1; StepLR) on random "
              f"{batch}x3x{size}x{size} images with 1-3 random boxes each, Hungarian-matched set loss with "
              "aux losses. lr_backbone is 20x DETR's default so the backbone drifts a few percent in 10 steps "
              "(as it does over a real fine-tuning run)."),
        finetune=dict(FINETUNE, seed=SEEDS["finetune"], losses=losses),
        planted={
            "trainable_backbone": sorted(k for k in body_keys if k in trainable),
            "frozen_backbone_params": [k for k in frozen_params if k.startswith(BODY)],
            "frozenbn_buffers": [k for k in buffers if k.startswith(BODY)],
            "frozen_rule": ("BackboneBase: requires_grad_(False) unless 'layer2'/'layer3'/'layer4' in the name "
                            "(so conv1 and layer1 convs are frozen); every BatchNorm is FrozenBatchNorm2d, whose "
                            "weight/bias/running_mean/running_var are buffers: never trained"),
            "unchanged_from_assembled": {"count": len(unchanged),
                                         "backbone": sum(k.startswith(BODY) for k in unchanged)},
            "changed_from_assembled": {"count": len(changed), "keys": changed},
            "backbone_conv_weight_relative_l2_by_stage": conv_drift,
            "backbone_relative_l2": body_drift,
        },
        state=state_summary(finetuned))
    timings["detr-finetuned"] = round(time.monotonic() - start, 1)

    # -- detr-finetuned-frozen-changed: one FrozenBatchNorm statistic updated as if the BN ran in
    #    train mode for one batch (momentum 0.1 toward that batch's mean) ------------------------
    start = time.monotonic()
    bad_key = BODY + "layer3.2.bn2.running_mean"
    seen = {}
    module = detr.backbone[0].body.layer3[2].bn2
    handle = module.register_forward_hook(lambda m, inp, out: seen.setdefault("x", inp[0].detach()))
    with torch.no_grad():
        detr(NestedTensor(random_images(gen, batch, size), torch.zeros(batch, size, size, dtype=torch.bool)))
    handle.remove()
    batch_mean = seen["x"].mean(dim=(0, 2, 3))
    old = checkpoint["model"][bad_key].clone()
    checkpoint["model"][bad_key] = 0.9 * old + 0.1 * batch_mean
    save(checkpoint, out / "detr-finetuned-frozen-changed.pth")
    manifest.add(
        "detr-finetuned-frozen-changed", kind="target",
        files={"target": "detr-finetuned-frozen-changed.pth", "pretrained": "tv-r50.pth"},
        checks=[{"target": "target", "pretrained": "pretrained"}],
        layout="as detr-finetuned",
        what=("detr-finetuned with one FrozenBatchNorm statistic changed: running_mean <- 0.9*old + 0.1*the "
              "mean of that layer's input on one random batch (what one step of an unfrozen BatchNorm2d in "
              "train mode does); every other tensor as in detr-finetuned"),
        planted={"frozen_changed": {"key": bad_key, "pretrained_key": bad_key[len(BODY):],
                                    "relative_l2_vs_pretrained": round(relative_l2(checkpoint["model"][bad_key],
                                                                                   r50[bad_key[len(BODY):]]), 6),
                                    "max_abs_change": float((checkpoint["model"][bad_key] - old).abs().max())}},
        state=state_summary(checkpoint["model"]))
    timings["detr-finetuned-frozen-changed"] = round(time.monotonic() - start, 1)
    del checkpoint, optimizer, detr

    # -- detr-r101-from-r50: a DETR-R101 whose body was loaded from the R50 file, strict=False --------
    start = time.monotonic()
    seed_everything(SEEDS["detr"])
    detr101 = build_detr(default_args(backbone="resnet101"))
    fresh101 = {k: v.clone() for k, v in detr101.state_dict().items()}
    result = detr101.backbone[0].body.load_state_dict(r50, strict=False)
    sd101 = detr101.state_dict()
    save({"model": sd101}, out / "detr-r101-from-r50.pth")
    loaded = sorted(k for k in sd101 if k.startswith(BODY) and k[len(BODY):] not in result.missing_keys)
    assert all(torch.equal(sd101[k], r50[k[len(BODY):]]) for k in loaded)
    manifest.add(
        "detr-r101-from-r50", kind="target",
        files={"target": "detr-r101-from-r50.pth", "pretrained": "tv-r101.pth", "actual_source": "tv-r50.pth"},
        checks=[{"target": "target", "pretrained": "pretrained",
                 "why": "what the user meant: a DETR-R101 from ResNet-101 weights"},
                {"target": "target", "pretrained": "actual_source",
                 "why": "where its backbone values really came from"}],
        layout="{'model': state_dict}",
        what=("DETR-R101 built fresh (no pretrained), then "
              "model.backbone[0].body.load_state_dict(torch.load('tv-r50.pth'), strict=False): every R50 "
              "tensor fits an R101 tensor of the same name and shape, so it loads silently; layer3 blocks "
              "6..22 keep torchvision's random init (kaiming_normal_ fan_out convs, FrozenBatchNorm at "
              "1/0/0/1)"),
        planted={"loaded_from_tv_r50": {"count": len(loaded), "keys": loaded},
                 "missing_keys_random_init": [BODY + k for k in result.missing_keys],
                 "unexpected_keys": list(result.unexpected_keys),
                 "still_fresh_layer3_blocks": sorted({int(k.split(".")[1]) for k in result.missing_keys
                                                      if k.startswith("layer3.")})},
        state=state_summary(sd101),
        fresh_values_sha256=state_summary(fresh101)["values_sha256"])
    timings["detr-r101-from-r50"] = round(time.monotonic() - start, 1)
    del detr101

    # -- detr-naive: the wrong prefix, nothing loaded --------------------------------------------
    start = time.monotonic()
    seed_everything(SEEDS["detr"])
    naive = build_detr(default_args())
    result = naive.backbone.load_state_dict(r50, strict=False)
    sd = naive.state_dict()
    save({"model": sd}, out / "detr-naive.pth")
    manifest.add(
        "detr-naive", kind="target",
        files={"target": "detr-naive.pth", "pretrained": "tv-r50.pth"},
        checks=[{"target": "target", "pretrained": "pretrained"}],
        layout="{'model': state_dict}",
        what=("DETR-R50 built fresh, then model.backbone.load_state_dict(torch.load('tv-r50.pth'), "
              "strict=False): the Joiner expects '0.body.conv1.weight', the file has 'conv1.weight', so "
              "nothing loads and the backbone stays at torchvision's random init (convs kaiming_normal_ "
              "fan_out, FrozenBatchNorm weight 1, bias 0, running_mean 0, running_var 1)"),
        planted={"loaded": [], "missing_keys": {"count": len(result.missing_keys)},
                 "unexpected_keys": {"count": len(result.unexpected_keys),
                                     "sample": list(result.unexpected_keys)[:5]},
                 "random_init_backbone": {"count": sum(k.startswith(BODY) for k in sd)}},
        state=state_summary(sd))
    timings["detr-naive"] = round(time.monotonic() - start, 1)

    manifest.add(
        "detr-wrong-pretrained", kind="target",
        files={"target": "detr-assembled.pth", "pretrained": "tv-r50-other.pth"},
        checks=[{"target": "target", "pretrained": "pretrained"}],
        layout="{'model': state_dict}",
        what="detr-assembled (backbone = tv-r50) checked against tv-r50-other, an independent ResNet-50",
        planted={"note": "every name and shape matches; no value does"})
    manifest.data["timings_seconds"] = timings
    manifest.write()
    print(timings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
