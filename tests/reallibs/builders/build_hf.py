"""Parts "hf5" and "hf4": Hugging Face DetrForObjectDetection checkpoints, random init
(use_pretrained_backbone=False, nothing from a hub), with the backbone copied in from a
trained-looking timm resnet50 or Hugging Face ResNet-50, saved with save_pretrained.

    python build_hf.py OUT_DIR --part hf5            # transformers 5 (the side venv)
    PYTHONPATH=overlay-tf4 python build_hf.py OUT_DIR --part hf4   # transformers 4 (the overlay)

Files (T = 4 or 5, the transformers major version that wrote them):
    timm-r50.pth, timm-r50.safetensors      timm.create_model('resnet50') state dict, trained-looking
    hfresnet-r50/                           ResNetForImageClassification(ResNetConfig()) save_pretrained
    hfT-{timm,hfresnet}-assembled/          DETR with the backbone loaded from the above
    hfT-{timm,hfresnet}-finetuned/          the same after 3 AdamW steps with labels (the real loss)
    hfT-labels10/, hfT-labels2-from10/      a num_labels=10 DETR, and from_pretrained(num_labels=2,
                                            ignore_mismatched_sizes=True) of it
    hf5 only: hf5-timm-assembled-native/    save_pretrained(save_original_format=False)
              hf5-timm-assembled-statedict.pth   torch.save(model.state_dict())
    hfT-converted/, hfT-original.pth        a trained-looking DETR, and the same weights in original
                                            DETR naming ({'model': sd}, detr_conversion.hf_to_original)
    hfT-conv-*/                             hfT-converted with one planted conversion bug each
    hf5 only: hf5-converted-native/         save_pretrained(save_original_format=False)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import timm
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig, ResNetForImageClassification, ResNetModel

import detr_conversion as conv
from common import (
    Manifest,
    _surrogate_long_training,
    make_trained_looking,
    random_images,
    relative_l2,
    seed_everything,
    setup,
    state_summary,
)
from detr_original import build_detr, default_args

MAJOR = int(transformers.__version__.split(".")[0])
SEEDS = {"timm-r50": 5000, "hfresnet-r50": 5001, "detr-timm": 7000, "detr-hfresnet": 7001,
         "finetune": 7100, "labels10": 7200, "labels2": 7300}
FINETUNE = {"steps": 3, "batch": 2, "image_size": 128, "lr": 1e-4, "lr_backbone": 1e-5,
            "weight_decay": 1e-4, "optimizer": "AdamW",
            "param_groups": "backbone parameters with requires_grad at lr_backbone, the rest at lr "
                            "(as the transformers DETR fine-tuning examples do)",
            "loss": "DetrForObjectDetection(pixel_values, pixel_mask, labels=[{'class_labels', 'boxes'}]).loss"}


def pattern(key: str) -> str:
    return re.sub(r"\.\d+(?=\.)", ".N", key)


def disk_keys(folder: Path) -> list[str]:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return list(f.keys())


def encoder_of(detr: DetrForObjectDetection) -> torch.nn.Module:
    """The DetrConvEncoder: model.backbone.conv_encoder in transformers 4, model.backbone in 5."""
    backbone = detr.model.backbone
    return getattr(backbone, "conv_encoder", backbone)


def backbone_prefix(detr: DetrForObjectDetection) -> str:
    return "model.backbone.conv_encoder.model." if hasattr(detr.model.backbone, "conv_encoder") \
        else "model.backbone.model."


def detr_config(kind: str, num_labels: int = 91) -> DetrConfig:
    if kind == "timm":
        return DetrConfig(num_labels=num_labels, use_timm_backbone=True, backbone="resnet50",
                          use_pretrained_backbone=False)
    return DetrConfig(num_labels=num_labels, use_timm_backbone=False, backbone=None,
                      use_pretrained_backbone=False,
                      backbone_config=ResNetConfig(out_features=["stage4"]))


def freezing(detr: DetrForObjectDetection) -> dict:
    prefix = backbone_prefix(detr)
    params = [(n, p) for n, p in detr.named_parameters() if n.startswith(prefix)]
    buffers = [n for n, _ in detr.named_buffers() if n.startswith(prefix)]
    return {"backbone_prefix_in_memory": prefix,
            "trainable_params": [n for n, p in params if p.requires_grad],
            "frozen_params": [n for n, p in params if not p.requires_grad],
            "buffers": {"count": len(buffers), "patterns": sorted({pattern(b[len(prefix):]) for b in buffers})},
            "batchnorm_class": sorted({type(m).__name__ for m in encoder_of(detr).modules()
                                       if "BatchNorm" in type(m).__name__})}


def key_facts(detr: DetrForObjectDetection, folder: Path, name: str, out: Path) -> dict:
    """In-memory state_dict names versus the names save_pretrained wrote; full lists go to
    keys/<name>.json."""
    mem = list(detr.state_dict())
    disk = disk_keys(folder)
    (out / "keys").mkdir(exist_ok=True)
    (out / "keys" / f"{name}.json").write_text(json.dumps({"in_memory": mem, "on_disk": disk}, indent=1))
    mem_only = sorted({pattern(k) for k in set(mem) - set(disk)})
    disk_only = sorted({pattern(k) for k in set(disk) - set(mem)})
    stems = (".model.conv1.weight", ".model.embedder.embedder.convolution.weight")
    backbone_disk = next((k for k in disk if ".backbone." in k and k.endswith(stems)), None)
    return {"file": f"keys/{name}.json", "in_memory_count": len(mem), "on_disk_count": len(disk),
            "same_names": set(mem) == set(disk),
            "in_memory_first": mem[:3], "on_disk_first": disk[:3],
            "backbone_stem_key_in_memory": next(k for k in mem if ".backbone." in k and k.endswith(stems)),
            "backbone_stem_key_on_disk": backbone_disk,
            "in_memory_only_patterns": _squash(mem_only), "on_disk_only_patterns": _squash(disk_only)}


def _squash(patterns: list[str]) -> list[str]:
    """Collapse the backbone's many per-tensor patterns to one line per (prefix, suffix) family."""
    out = []
    for p in patterns:
        p = re.sub(r"(\.model\.)(?:layer\d|encoder\.stages|embedder).*", r"\1...", p)
        if p not in out:
            out.append(p)
    return out


def stats(values: list[float]) -> dict:
    if not values:
        return {"count": 0}
    return {"min": round(min(values), 6), "median": round(float(np.median(values)), 6),
            "max": round(max(values), 6), "count": len(values)}


def random_labels(gen: torch.Generator, batch: int, num_labels: int) -> list[dict]:
    labels = []
    for _ in range(batch):
        n = int(torch.randint(1, 4, (1,), generator=gen))
        centre = 0.2 + 0.6 * torch.rand(n, 2, generator=gen)
        size = 0.1 + 0.3 * torch.rand(n, 2, generator=gen)
        labels.append({"class_labels": torch.randint(0, num_labels, (n,), generator=gen),
                       "boxes": torch.cat([centre, size], dim=1)})
    return labels


def finetune(detr: DetrForObjectDetection, seed: int, num_labels: int) -> dict:
    cfg = FINETUNE
    gen = seed_everything(seed)
    backbone = [p for n, p in detr.named_parameters() if "backbone" in n and p.requires_grad]
    rest = [p for n, p in detr.named_parameters() if "backbone" not in n and p.requires_grad]
    groups = [{"params": rest}] + ([{"params": backbone, "lr": cfg["lr_backbone"]}] if backbone else [])
    opt = torch.optim.AdamW(groups, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    detr.train()
    losses = []
    size, batch = cfg["image_size"], cfg["batch"]
    for _ in range(cfg["steps"]):
        out = detr(pixel_values=random_images(gen, batch, size),
                   pixel_mask=torch.ones(batch, size, size, dtype=torch.long),
                   labels=random_labels(gen, batch, num_labels))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(round(float(out.loss.detach()), 4))
    detr.eval()
    return dict(cfg, seed=seed, losses=losses, backbone_params_in_optimizer=len(backbone),
                other_params_in_optimizer=len(rest))


# -- conversion scenarios (issue 14): seeded apart from SEEDS, built after everything above ----------
CONVERSION_SEED = 7400
PLANTED_LAYER = {"qk-swapped": 2, "transposed": 3, "wrong-offset": 4, "bias-dropped": 1, "bias-missing": 1,
                 "layernorm-init": 1}


def converted_detr(timm_sd: dict) -> tuple[DetrForObjectDetection, dict]:
    """A DETR as a finished conversion leaves it: backbone from timm-r50, the transformer and heads
    random and trained-looking (LayerNorms off 1/0, biases off 0), so a tensor left at its init
    differs from the reference. Returns the model and its fresh in-memory state."""
    gen = seed_everything(CONVERSION_SEED)
    detr = DetrForObjectDetection(detr_config("timm"))
    fresh = {k: v.clone() for k, v in detr.state_dict().items()}
    encoder_of(detr).model.load_state_dict(timm_sd, strict=False)
    for module in (detr.model.input_projection, detr.model.encoder, detr.model.decoder,
                   detr.class_labels_classifier, detr.bbox_predictor):
        _surrogate_long_training(module, gen)
    detr.eval()
    return detr, fresh


def memory_key(detr: DetrForObjectDetection, disk_key: str) -> str:
    """The in-memory name of a file key (transformers 5 renames some in memory)."""
    names = detr.state_dict()
    key = disk_key if disk_key in names else conv.v5_in_memory_name(disk_key)
    assert key in names, disk_key
    return key


def original_detr_order(original: dict) -> tuple[dict, dict]:
    """The original-named tensors in detr_original's state_dict order, after checking that the
    reproduced original DETR loads them with strict=True."""
    model = build_detr(default_args(), num_classes=91)
    result = model.load_state_dict(original, strict=True)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], original[k]) for k in loaded)
    return {k: original[k] for k in loaded}, {"strict": True, "missing_keys": list(result.missing_keys),
                                                "unexpected_keys": list(result.unexpected_keys)}


def _rows(source: list | tuple) -> dict:
    key, start, end = source
    return {"pretrained_key": key, "rows": None if start is None else [start, end]}


def plant(bug: str, hf: dict, original: dict, fresh_at: dict) -> tuple[dict, list[dict]]:
    """The converted tensors with one bug: {file key: new value}, and what each change is."""
    i = PLANTED_LAYER[bug]
    mapping = conv.conversion_map(list(hf))
    if bug == "qk-swapped":
        att = f"model.encoder.layers.{i}.self_attn"
        pairs = [(f"{att}.q_proj.{leaf}", f"{att}.k_proj.{leaf}") for leaf in ("weight", "bias")]
        pairs += [(b, a) for a, b in pairs]
        return ({a: hf[b] for a, b in pairs},
                [{"key": a, "expected": _rows(mapping[a]), "written": _rows(mapping[b])} for a, b in pairs])
    if bug == "transposed":
        key = f"model.decoder.layers.{i}.self_attn.out_proj.weight"
        return ({key: hf[key].t().contiguous()},
                [{"key": key, "expected": _rows(mapping[key]), "written": dict(_rows(mapping[key]), transposed=True)}])
    if bug == "wrong-offset":
        key = f"model.decoder.layers.{i}.encoder_attn.v_proj.weight"
        source, start, end = mapping[key]
        half = (end - start) // 2
        wrong = (source, start - half, end - half)
        return ({key: original[source][wrong[1]:wrong[2]].clone()},
                [{"key": key, "expected": _rows(mapping[key]), "written": _rows(wrong)}])
    if bug in ("bias-dropped", "bias-missing"):
        key = f"model.encoder.layers.{i}.self_attn.v_proj.bias"
        assert not fresh_at(key).any(), "the fresh v_proj bias is zeros"
        written = {"absent": True} if bug == "bias-missing" else {"init": "zeros (the fresh model's value)"}
        return {key: fresh_at(key)}, [{"key": key, "expected": _rows(mapping[key]), "written": written}]
    if bug == "layernorm-init":
        norm = f"model.decoder.layers.{i}.final_layer_norm"
        values = {f"{norm}.weight": torch.ones(conv.D_MODEL), f"{norm}.bias": torch.zeros(conv.D_MODEL)}
        assert all(torch.equal(v, fresh_at(k)) for k, v in values.items()), "the fresh LayerNorm is 1/0"
        return values, [{"key": k, "expected": _rows(mapping[k]),
                         "written": {"init": "ones" if k.endswith("weight") else "zeros"}} for k in values]
    raise ValueError(bug)


BUG_WHAT = {
    "qk-swapped": "encoder layer {i} self_attn: q_proj and k_proj weights and biases swapped (q took in_proj rows "
                  "256:512, k rows 0:256)",
    "transposed": "decoder layer {i} self_attn.out_proj.weight stored transposed (256x256: the shape still fits)",
    "wrong-offset": "decoder layer {i} encoder_attn.v_proj.weight sliced from multihead_attn.in_proj_weight rows "
                    "384:640 instead of 512:768 (half a block early)",
    "bias-dropped": "encoder layer {i} self_attn.v_proj.bias never copied: left at its init (zeros)",
    "bias-missing": "encoder layer {i} self_attn.v_proj.bias never written: the key is absent from the file",
    "layernorm-init": "decoder layer {i} final_layer_norm (original norm3) never loaded: weight ones, bias zeros",
}


def write_planted(detr: DetrForObjectDetection, folder: Path, values: dict, converted: Path,
                  hf: dict, bug: str) -> dict:
    """Save the converted model with the planted values (save_pretrained), or, for a key that must be
    absent, the file without it (save_file + the converted config.json). Returns the file's tensors."""
    if bug == "bias-missing":
        folder.mkdir()
        (folder / "config.json").write_bytes((converted / "config.json").read_bytes())
        save_file({k: v for k, v in hf.items() if k not in values}, str(folder / "model.safetensors"),
                  metadata={"format": "pt"})
        return load_file(str(folder / "model.safetensors"))
    state = detr.state_dict()
    saved = {k: state[memory_key(detr, k)].clone() for k in values}
    with torch.no_grad():
        for key, value in values.items():
            state[memory_key(detr, key)].copy_(value)
        detr.save_pretrained(folder)
        for key, value in saved.items():
            state[memory_key(detr, key)].copy_(value)
    return load_file(str(folder / "model.safetensors"))


def build_conversion(out: Path, manifest: Manifest, tag: str, timm_sd: dict) -> dict:
    """hfT-converted, hfT-original and the planted conversion bugs; returns the timings."""
    timings = {}
    start = time.monotonic()
    detr, fresh = converted_detr(timm_sd)
    name = f"{tag}-converted"
    detr.save_pretrained(out / name)
    hf = load_file(str(out / name / "model.safetensors"))
    original, strict = original_detr_order(conv.hf_to_original(hf))
    round_trip = conv.bit_identical(conv.original_to_hf(original), hf)
    assert round_trip, "transformers' forward conversion does not give the HF tensors back"
    original_file = f"{tag}-original.pth"
    torch.save({"model": original}, out / original_file)
    (out / "keys").mkdir(exist_ok=True)
    (out / "keys" / f"{tag}-conversion-map.json").write_text(json.dumps(conv.conversion_map(list(hf)), indent=1))
    conversion = {"inverse": "detr_conversion.hf_to_original (table-driven)",
                  "forward": "detr_conversion.original_to_hf, transcribing transformers' "
                             "convert_detr_original_pytorch_checkpoint_to_pytorch.py (not in the wheel)",
                  "round_trip_bit_identical": round_trip, "original_detr_load": strict,
                  "map": f"keys/{tag}-conversion-map.json (HF key -> [original key, first row, end row])"}
    manifest.add(f"{tag}-original", kind="pretrained", files={"checkpoint": original_file},
                 layout="{'model': state_dict} (torch.save), as facebookresearch/detr's main.py saves",
                 what=f"{name}'s tensors in original DETR naming (in_proj fused q, k, v), in the reproduced "
                      "original DETR's key order", conversion=conversion, state=state_summary(original))
    pair = {"target": "target", "pretrained": "pretrained"}
    manifest.add(name, kind="target", files={"target": name, "pretrained": original_file}, checks=[pair],
                 layout="Hugging Face model folder (save_pretrained)",
                 what="DetrForObjectDetection (timm resnet-50, use_pretrained_backbone=False), backbone loaded from "
                      "timm-r50, transformer and heads random then made trained-looking (common's long-training "
                      "surrogate): a correct conversion of the original",
                 planted={"seed": CONVERSION_SEED, "conversion": conversion},
                 key_names=key_facts(detr, out / name, name, out), state=state_summary(hf))
    if MAJOR >= 5:
        native = f"{tag}-converted-native"
        detr.save_pretrained(out / native, save_original_format=False)
        native_sd = load_file(str(out / native / "model.safetensors"))
        # memory_key relies on V5_IN_MEMORY: it must name every tensor as transformers 5 does.
        assert conv.bit_identical(native_sd, {conv.v5_in_memory_name(k): v for k, v in hf.items()})
        manifest.add(native, kind="target", files={"target": native, "pretrained": original_file}, checks=[pair],
                     layout="Hugging Face model folder, save_original_format=False",
                     what=f"{name} saved with the in-memory transformers-5 names (o_proj, mlp.fc1, "
                          "model.backbone.model.*)", planted={"as": name},
                     key_names=key_facts(detr, out / native, native, out), state=state_summary(native_sd))
    timings[name] = round(time.monotonic() - start, 1)
    for bug in BUG_WHAT:
        start = time.monotonic()
        values, changes = plant(bug, hf, original, lambda k: fresh[memory_key(detr, k)])
        for change in changes:
            change["in_memory_key"] = memory_key(detr, change["key"])
        bug_name = f"{tag}-conv-{bug}"
        written = write_planted(detr, out / bug_name, values, out / name, hf, bug)
        differing = sorted(k for k in hf if k not in written or not torch.equal(written[k], hf[k]))
        assert differing == sorted(values), (bug, differing)
        manifest.add(bug_name, kind="target", files={"target": bug_name, "pretrained": original_file},
                     checks=[pair], what=f"{name} with one conversion bug: "
                                         f"{BUG_WHAT[bug].format(i=PLANTED_LAYER[bug])}",
                     layout="model.safetensors (safetensors.torch.save_file, without the key) + config.json"
                            if bug == "bias-missing" else "Hugging Face model folder (save_pretrained)",
                     planted={"as": name, "bug": bug, "changed": changes,
                              "unchanged": f"every other tensor equals {name}'s"},
                     state=state_summary(written))
        timings[bug_name] = round(time.monotonic() - start, 1)
    return timings


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--part", required=True)
    opts = parser.parse_args()
    out: Path = opts.out
    out.mkdir(parents=True, exist_ok=True)
    setup()
    part = opts.part
    if part != f"hf{MAJOR}":
        raise SystemExit(f"--part {part} but transformers {transformers.__version__} is importable")
    tag = part
    manifest = Manifest(out, part)
    timings: dict[str, float] = {}

    # -- pretrained backbones -------------------------------------------------------------------
    start = time.monotonic()
    seed_everything(SEEDS["timm-r50"])
    timm_model = timm.create_model("resnet50", pretrained=False)
    info = make_trained_looking(timm_model, SEEDS["timm-r50"], num_classes=1000)
    timm_sd = {k: v.detach().clone().contiguous() for k, v in timm_model.state_dict().items()}
    torch.save(timm_model.state_dict(), out / "timm-r50.pth")
    save_file(timm_sd, str(out / "timm-r50.safetensors"), metadata={"format": "pt"})
    manifest.add(f"{tag}-timm-r50", kind="pretrained",
                 files={"checkpoint": "timm-r50.pth", "safetensors": "timm-r50.safetensors"},
                 layout="bare state dict, torch.save and safetensors.torch.save_file (same tensors)",
                 what=f"timm.create_model('resnet50', pretrained=False) (timm {timm.__version__}), made "
                      "trained-looking", trained_looking=info, state=state_summary(timm_sd))
    timings["timm-r50"] = round(time.monotonic() - start, 1)
    del timm_model

    start = time.monotonic()
    seed_everything(SEEDS["hfresnet-r50"])
    resnet_cls = ResNetForImageClassification(ResNetConfig(num_labels=1000))
    info = make_trained_looking(resnet_cls, SEEDS["hfresnet-r50"], num_classes=1000,
                                forward=lambda m, x: m(pixel_values=x).logits)
    resnet_cls.save_pretrained(out / "hfresnet-r50")
    manifest.add(f"{tag}-hfresnet-r50", kind="pretrained", files={"checkpoint": "hfresnet-r50"},
                 layout="Hugging Face model folder (save_pretrained: config.json + model.safetensors)",
                 what="ResNetForImageClassification(ResNetConfig(num_labels=1000)) (ResNet-50: bottleneck, "
                      "depths 3-4-6-3), random init, made trained-looking",
                 trained_looking=info, state=state_summary(resnet_cls.state_dict()),
                 keys_on_disk_first=disk_keys(out / "hfresnet-r50")[:3])
    timings["hfresnet-r50"] = round(time.monotonic() - start, 1)
    del resnet_cls

    # -- DETRs ----------------------------------------------------------------------------------
    versions_facts: dict[str, dict] = {}
    for kind in ("timm", "hfresnet"):
        start = time.monotonic()
        seed_everything(SEEDS[f"detr-{kind}"])
        detr = DetrForObjectDetection(detr_config(kind))
        prefix = backbone_prefix(detr)
        fresh = {k: v.clone() for k, v in detr.state_dict().items()}
        stem = next(k for k in fresh if k.startswith(prefix) and fresh[k].dim() == 4)
        fresh_init = {"key": stem, "mean": float(fresh[stem].mean()), "std": float(fresh[stem].std()),
                      "bn_weight_all_ones": bool(all(float(v.min()) == 1.0 == float(v.max())
                                                     for k, v in fresh.items() if k.startswith(prefix)
                                                     and re.search(r"(bn\d|normalization|downsample\.1)\.weight$", k)))}
        if kind == "timm":
            source_sd = timm_sd
            how = (f"encoder.model.load_state_dict(torch.load('timm-r50.pth'), strict=False) where encoder = "
                   f"{'model.model.backbone.conv_encoder' if MAJOR == 4 else 'model.model.backbone'}")
            pretrained_files = {"pretrained": "timm-r50.pth", "pretrained_safetensors": "timm-r50.safetensors"}
            checks = [{"target": "target", "pretrained": "pretrained"},
                      {"target": "target", "pretrained": "pretrained_safetensors"}]
        else:
            source_sd = ResNetModel.from_pretrained(out / "hfresnet-r50").state_dict()
            how = ("ResNetModel.from_pretrained('hfresnet-r50') (a local folder) then "
                   "encoder.model.load_state_dict(resnet.state_dict(), strict=False)")
            pretrained_files = {"pretrained": "hfresnet-r50"}
            checks = [{"target": "target", "pretrained": "pretrained"}]
        result = encoder_of(detr).model.load_state_dict(source_sd, strict=False)
        assembled = {k: v.clone() for k, v in detr.state_dict().items()}
        loaded = [k for k in assembled if k.startswith(prefix) and k[len(prefix):] in source_sd]
        assert loaded and all(torch.equal(assembled[k], source_sd[k[len(prefix):]]) for k in loaded)
        name = f"{tag}-{kind}-assembled"
        detr.save_pretrained(out / name)
        facts = key_facts(detr, out / name, name, out)
        frozen = freezing(detr)
        versions_facts[kind] = {"keys": facts, "freezing": {k: (v if not isinstance(v, list) else
                                                                {"count": len(v), "keys": v})
                                                            for k, v in frozen.items()}}
        manifest.add(
            name, kind="target", files=dict({"target": name}, **pretrained_files), checks=checks,
            layout="Hugging Face model folder (save_pretrained)",
            what=(f"DetrForObjectDetection({'timm' if kind == 'timm' else 'HF ResNetBackbone'} resnet-50 "
                  f"backbone, num_labels 91, d_model 256, 6+6 layers), random init, backbone loaded: {how}"),
            planted={"copied": {"count": len(loaded), "in_memory_prefix": prefix,
                                "on_disk_prefix": facts["backbone_stem_key_on_disk"][:-len(
                                    "conv1.weight" if kind == "timm" else "embedder.embedder.convolution.weight")]},
                     "load_missing_keys": list(result.missing_keys),
                     "load_unexpected_keys": list(result.unexpected_keys),
                     "fresh_backbone_init_before_loading": fresh_init},
            key_names=facts, freezing=versions_facts[kind]["freezing"], state=state_summary(assembled))
        timings[name] = round(time.monotonic() - start, 1)

        if kind == "timm" and MAJOR >= 5:
            native = f"{tag}-timm-assembled-native"
            detr.save_pretrained(out / native, save_original_format=False)
            manifest.add(native, kind="target", files=dict({"target": native}, **pretrained_files),
                         checks=checks[:1], layout="Hugging Face model folder, save_original_format=False",
                         what=f"{name} saved with save_pretrained(save_original_format=False): the in-memory "
                              "transformers-5 names on disk",
                         key_names=key_facts(detr, out / native, native, out), planted={"as": name})
            torch.save(detr.state_dict(), out / f"{tag}-timm-assembled-statedict.pth")
            manifest.add(f"{tag}-timm-assembled-statedict", kind="target",
                         files=dict({"target": f"{tag}-timm-assembled-statedict.pth"}, **pretrained_files),
                         checks=checks[:1], layout="bare state dict: torch.save(model.state_dict())",
                         what=f"{name}'s state_dict() saved with torch.save, as a training script would: "
                              "transformers-5 in-memory names", planted={"as": name},
                         state=state_summary(detr.state_dict()))

        # fine-tune
        start = time.monotonic()
        ft = finetune(detr, SEEDS["finetune"], 91)
        name_ft = f"{tag}-{kind}-finetuned"
        detr.save_pretrained(out / name_ft)
        now = detr.state_dict()
        backbone_keys = [k for k in now if k.startswith(prefix)]
        changed = [k for k in backbone_keys if not torch.equal(now[k], assembled[k])]
        drift = {k: round(relative_l2(now[k], assembled[k]), 7) for k in changed}
        by_stage: dict[str, list[float]] = {}
        for k, d in drift.items():
            rest = k[len(prefix):]
            stage = rest.split(".")[0] if kind == "timm" else (
                "stem" if rest.startswith("embedder") else f"stage{rest.split('.')[2]}")
            by_stage.setdefault(stage, []).append(d)
        manifest.add(
            name_ft, kind="target", files=dict({"target": name_ft}, **pretrained_files), checks=checks,
            layout="Hugging Face model folder (save_pretrained)",
            what=f"{name} after {FINETUNE['steps']} AdamW steps on random images with random labels",
            finetune=ft,
            planted={"backbone_changed": {"count": len(changed), "keys": changed},
                     "backbone_unchanged_count": len(backbone_keys) - len(changed),
                     "backbone_relative_l2_by_stage": {s: stats(v) for s, v in sorted(by_stage.items())},
                     "non_backbone_changed": sum(1 for k in now if not k.startswith(prefix)
                                                 and not torch.equal(now[k], assembled[k]))},
            freezing=versions_facts[kind]["freezing"], state=state_summary(now))
        timings[name_ft] = round(time.monotonic() - start, 1)
        del detr

    # -- classifier head: a num_labels=10 DETR, and a num_labels=2 one made from it ----------------
    start = time.monotonic()
    seed_everything(SEEDS["labels10"])
    detr10 = DetrForObjectDetection(detr_config("timm", num_labels=10))
    encoder_of(detr10).model.load_state_dict(timm_sd, strict=False)
    finetune(detr10, SEEDS["labels10"], 10)
    name10 = f"{tag}-labels10"
    detr10.save_pretrained(out / name10)
    manifest.add(name10, kind="pretrained", files={"checkpoint": name10},
                 layout="Hugging Face model folder (save_pretrained)",
                 what="DETR (timm resnet50 backbone from timm-r50.pth), num_labels=10, 3 AdamW steps",
                 state=state_summary(detr10.state_dict()))
    del detr10
    seed_everything(SEEDS["labels2"])
    detr2 = DetrForObjectDetection.from_pretrained(out / name10, num_labels=2, ignore_mismatched_sizes=True)
    name2 = f"{tag}-labels2-from10"
    detr2.save_pretrained(out / name2)
    sd2 = detr2.state_dict()
    with safe_open(str(out / name10 / "model.safetensors"), "pt") as f:
        mismatched = [k for k in f.keys()  # noqa: SIM118 - safe_open is not a dict: it cannot be iterated
                      if k in sd2 and tuple(f.get_slice(k).get_shape()) != tuple(sd2[k].shape)]
    manifest.add(name2, kind="target", files={"target": name2, "pretrained": name10},
                 checks=[{"target": "target", "pretrained": "pretrained"}],
                 layout="Hugging Face model folder (save_pretrained)",
                 what=(f"DetrForObjectDetection.from_pretrained('{name10}', num_labels=2, "
                       "ignore_mismatched_sizes=True), saved again: the classifier head is re-initialised at "
                       "3 outputs (2 + no-object), everything else copied"),
                 planted={"reinitialized_shape_changed": mismatched,
                          "shapes": {k: list(sd2[k].shape) for k in mismatched}},
                 state=state_summary(sd2))
    timings["labels"] = round(time.monotonic() - start, 1)
    del detr2

    timings.update(build_conversion(out, manifest, tag, timm_sd))

    manifest.data["key_names_and_freezing"] = {"transformers": transformers.__version__, **versions_facts}
    manifest.data["timings_seconds"] = timings
    manifest.write()
    print(timings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
