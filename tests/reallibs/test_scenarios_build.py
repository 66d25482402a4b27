"""The real-library scenarios were built as the manifest says, and ckptlint can open every file.

Only the builds are checked here; what ckptlint concludes about them is tested elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckptlint.io.open import open_checkpoint

TV = ["tv-r50", "tv-r50-other", "tv-r101", "detr-assembled", "detr-finetuned", "detr-finetuned-frozen-changed",
      "detr-r101-from-r50", "detr-naive", "detr-wrong-pretrained"]
HF = ["timm-r50", "hfresnet-r50", "timm-assembled", "timm-finetuned", "hfresnet-assembled",
      "hfresnet-finetuned", "labels10", "labels2-from10"]
HF5_ONLY = ["hf5-timm-assembled-native", "hf5-timm-assembled-statedict"]
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
