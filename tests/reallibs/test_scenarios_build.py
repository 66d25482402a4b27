"""The real-library scenarios were built as the manifest says, and ckptlint can open every file.

Only the builds are checked here; what ckptlint concludes about them is tested elsewhere."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from ckptlint.io.open import open_checkpoint

TV = ["tv-r50", "tv-r50-other", "tv-r101", "detr-assembled", "detr-finetuned", "detr-finetuned-frozen-changed",
      "detr-r101-from-r50", "detr-naive", "detr-wrong-pretrained"]
BUGS = ["qk-swapped", "transposed", "wrong-offset", "bias-dropped", "bias-missing", "layernorm-init"]
HF = ["timm-r50", "hfresnet-r50", "timm-assembled", "timm-finetuned", "hfresnet-assembled",
      "hfresnet-finetuned", "labels10", "labels2-from10", "converted", "original"] + [f"conv-{bug}" for bug in BUGS]
HF5_ONLY = ["hf5-timm-assembled-native", "hf5-timm-assembled-statedict", "hf5-converted-native"]
ALL = TV + [f"hf{v}-{name}" for v in (5, 4) for name in HF] + HF5_ONLY
PINNED = {"torch": "2.14.1", "torchvision": "0.29.1"}


@pytest.mark.parametrize("name", ALL)
def test_scenario_files_open(reallibs_scenarios, name: str) -> None:
    entry = reallibs_scenarios.get(name)
    assert entry["files"], name
    for role, path in entry["files"].items():
        assert Path(path).exists(), f"{name}: {role} {path} missing"
        with open_checkpoint(path) as checkpoint:
            assert checkpoint.tensors, f"{name}: {role} has no tensors"
            if "state" in entry and role in ("target", "checkpoint"):
                assert len(checkpoint.tensors) == entry["state"]["tensors"], (name, role)
    for check in entry.get("checks", []):
        assert check["target"] in entry["files"] and check["pretrained"] in entry["files"], (name, check)


def test_manifest_versions(reallibs_scenarios) -> None:
    parts = reallibs_scenarios.manifest["parts"]
    for part, data in parts.items():
        versions = data["versions"]
        for lib, pin in PINNED.items():
            assert versions[lib].split("+")[0] == pin, (part, lib, versions[lib])
        if part.startswith("hf"):
            assert versions["transformers"].split(".")[0] == part[2:], (part, versions["transformers"])


def test_original_detr_key_names(reallibs_scenarios) -> None:
    """The reproduced DETR writes the released checkpoints' names."""
    with open_checkpoint(str(reallibs_scenarios.file("detr-assembled"))) as checkpoint:
        keys = set(checkpoint.tensors)
    for key in ("backbone.0.body.layer1.0.conv1.weight", "backbone.0.body.bn1.running_var",
                "transformer.encoder.layers.0.self_attn.in_proj_weight", "transformer.decoder.norm.weight",
                "transformer.decoder.layers.5.multihead_attn.out_proj.weight", "query_embed.weight",
                "bbox_embed.layers.2.weight", "class_embed.bias", "input_proj.weight"):
        assert key in keys, key
    assert not any(k.endswith("num_batches_tracked") for k in keys)
    assert not any(k.startswith(("backbone.1.", "transformer.encoder.norm")) for k in keys)
    assert len(keys) == 458


def test_pretrained_timm_is_deterministic(reallibs_scenarios) -> None:
    """Same seed, same torch and timm: the timm ResNet-50 of both transformers parts is identical."""
    hf5 = reallibs_scenarios.get("hf5-timm-r50")
    hf4 = reallibs_scenarios.get("hf4-timm-r50")
    assert hf5["state"]["values_sha256"] == hf4["state"]["values_sha256"]


ORIGINAL_TENSORS = 458      # DETR-R50: 18 fused attentions, FrozenBatchNorm (no num_batches_tracked)
CONVERTED_TENSORS = 530     # each in_proj pair (2 tensors) becomes q/k/v weight and bias (6): 458 + 18 * 4


@cache
def _original(path: str) -> dict:
    return torch.load(path, weights_only=True)["model"]


def _target_tensor(folder: str, key: str) -> torch.Tensor:
    with safe_open(str(Path(folder) / "model.safetensors"), "pt") as f:
        return f.get_tensor(key)


def _rows(original: dict, source: dict) -> torch.Tensor:
    value = original[source["pretrained_key"]]
    if source["rows"] is not None:
        value = value[source["rows"][0]:source["rows"][1]]
    return value.t() if source.get("transposed") else value


@pytest.mark.parametrize("version", [5, 4])
def test_conversion_reference(reallibs_scenarios, version: int) -> None:
    """The original-named file is what facebookresearch/detr writes, and the conversion was checked
    both ways when it was built."""
    original = reallibs_scenarios.get(f"hf{version}-original")
    assert original["state"]["tensors"] == ORIGINAL_TENSORS
    conversion = original["conversion"]
    assert conversion["round_trip_bit_identical"] is True
    assert conversion["original_detr_load"] == {"strict": True, "missing_keys": [], "unexpected_keys": []}
    keys = _original(original["files"]["checkpoint"])
    assert len(keys) == ORIGINAL_TENSORS
    assert keys["transformer.decoder.layers.5.multihead_attn.in_proj_weight"].shape == (768, 256)
    assert not any(k.endswith("num_batches_tracked") or ".q_proj." in k for k in keys)
    converted = reallibs_scenarios.get(f"hf{version}-converted")
    assert converted["state"]["tensors"] == CONVERTED_TENSORS
    assert converted["key_names"]["on_disk_count"] == CONVERTED_TENSORS
    assert converted["checks"] == [{"target": "target", "pretrained": "pretrained"}]
    assert converted["files"]["pretrained"] == original["files"]["checkpoint"]


@pytest.mark.parametrize("bug", BUGS)
@pytest.mark.parametrize("version", [5, 4])
def test_planted_conversion_bug(reallibs_scenarios, version: int, bug: str) -> None:
    """Each planted key holds what the manifest says was written, not what a correct conversion
    writes; the LayerNorms and biases of the correct one are off their init, so "at init" is a bug."""
    entry = reallibs_scenarios.get(f"hf{version}-conv-{bug}")
    converted = reallibs_scenarios.get(f"hf{version}-converted")
    assert entry["planted"]["bug"] == bug and entry["planted"]["as"] == f"hf{version}-converted"
    assert entry["files"]["pretrained"] == converted["files"]["pretrained"]
    assert entry["state"]["tensors"] == CONVERTED_TENSORS - (bug == "bias-missing")
    original = _original(entry["files"]["pretrained"])
    for change in entry["planted"]["changed"]:
        expected = _rows(original, change["expected"])
        assert torch.equal(_target_tensor(converted["files"]["target"], change["key"]), expected)
        written = change["written"]
        if written.get("absent"):
            with safe_open(str(Path(entry["files"]["target"]) / "model.safetensors"), "pt") as f:
                assert change["key"] not in f.keys()  # noqa: SIM118 - safe_open is not a dict
            continue
        value = _target_tensor(entry["files"]["target"], change["key"])
        assert value.shape == expected.shape and not torch.equal(value, expected)
        if "init" in written:
            assert torch.equal(value, torch.full_like(value, 1.0 if written["init"] == "ones" else 0.0))
        else:
            assert torch.equal(value, _rows(original, written))
