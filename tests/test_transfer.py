"""The transfer check beyond the scenario cases: naming schemes both ways, shape causes, user
maps and scope, ambiguity, one read per tensor in alignment, and the report's fields."""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from pathlib import Path

import safetensors.torch
import torch

from ckptlint.align.alignment import align
from ckptlint.io import open_checkpoint
from ckptlint.options import Options, TransferOptions
from ckptlint.runner import check_paths
from conftest import CASES, FIXTURES, fixture_generator, run_subprocess

PRETRAINED = str(FIXTURES / "models" / "resnet50_tiny.pth")
DETR = str(CASES / "detr-training-checkpoint" / "checkpoint.pth")


def _check(target: str, pretrained: str, **transfer) -> dict:
    report = check_paths([target], Options(pretrained=pretrained, hash_files=False,
                                           transfer=TransferOptions(**transfer)))
    return {"report": report, "findings": Counter((f.name, f.severity) for f in report.findings)}


def test_hf_named_pretrained_against_torchvision_named_target(tmp_path: Path) -> None:
    gen = fixture_generator()
    backbone = gen.resnet50_state_dict(seed=0)
    hf = {f"resnet.{gen.hf_resnet_name(k)}": v for k, v in backbone.items() if not k.startswith("fc.")}
    hf["classifier.1.weight"], hf["classifier.1.bias"] = backbone["fc.weight"], backbone["fc.bias"]
    safetensors.torch.save_file(hf, tmp_path / "hf_resnet.safetensors")
    result = _check(DETR, str(tmp_path / "hf_resnet.safetensors"))
    report = result["report"]
    assert Counter(p.how for p in report.pairs) == Counter({"scheme:hf-resnet": 265})
    assert report.transfer.score == 1.0
    assert result["findings"] == Counter({("unused-pretrained-key", "info"): 2})


def _conv_pair(tmp_path: Path, target_weight: torch.Tensor, pretrained_weight: torch.Tensor) -> dict:
    torch.save({"conv1.weight": target_weight}, tmp_path / "t.pt")
    torch.save({"conv1.weight": pretrained_weight}, tmp_path / "p.pt")
    report = check_paths([str(tmp_path / "t.pt")], Options(pretrained=str(tmp_path / "p.pt"), hash_files=False))
    (finding,) = [f for f in report.findings if f.name == "shape-mismatch"]
    return {"severity": finding.severity, **finding.evidence}


def test_shape_causes(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(3)
    rgb = torch.randn(8, 3, 7, 7, generator=gen) * 0.1
    repeated = torch.cat([rgb, rgb], dim=1)[:, :4] * (3 / 4)  # timm's adapt_input_conv, in_chans=4
    assert _conv_pair(tmp_path, repeated, rgb)["cause"] == "adapt_input_conv"
    assert _conv_pair(tmp_path, repeated, rgb)["severity"] == "info"
    assert _conv_pair(tmp_path, rgb.sum(dim=1, keepdim=True), rgb)["cause"] == "adapt_input_conv"
    appended = torch.cat([rgb, rgb.mean(dim=1, keepdim=True)], dim=1)
    assert _conv_pair(tmp_path, appended, rgb) == {**_conv_pair(tmp_path, appended, rgb), "cause": "input_channels",
                                                   "severity": "error"}
    assert _conv_pair(tmp_path, rgb[:5].clone(), rgb)["cause"] == "sliced"
    resized = torch.nn.functional.interpolate(rgb, size=(9, 9), mode="bilinear", align_corners=False)
    assert _conv_pair(tmp_path, resized, rgb)["cause"] == "kernel_resized"


def test_user_map_and_scope(tmp_path: Path, run) -> None:
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(8, 3, 3, 3, generator=gen)
    torch.save({"net.stem.weight": w, "net.extra.weight": torch.randn(4, 4, generator=gen)}, tmp_path / "t.pt")
    torch.save({"conv1.weight": w}, tmp_path / "p.pt")
    base = ["check", str(tmp_path / "t.pt"), "--pretrained", str(tmp_path / "p.pt"), "--format", "json"]
    mapped = run(*base, "--map", "net.stem.=conv1.").json
    assert [(p["target"], p["pretrained"], p["how"], p["verdict"]) for p in mapped["pairs"]] == [
        ("net.stem.weight", "conv1.weight", "user-map", "copied")]
    assert mapped["findings"] == []  # net.extra lies outside the inferred scope net.stem
    scoped = run(*base, "--map", "net.stem.=conv1.", "--scope", "net").json
    assert [(f["name"], f["key"]) for f in scoped["findings"]] == [("unmatched-target-key", "net.extra.weight")]
    assert run(*base, "--map", "no-equals-sign").code == 2
    assert run(*base, "--preset", "nope").code == 2
    bad = run_subprocess("check", str(tmp_path / "t.pt"), "--pretrained", str(tmp_path / "missing.pt"))
    assert bad.code == 2 and bad.err.count("\n") == 1 and "missing.pt" in bad.err


def test_ambiguous_suffix_is_reported_not_guessed(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(5)
    torch.save({"a.block.conv.weight": torch.randn(5, generator=gen),
                "b.block.conv.weight": torch.randn(5, generator=gen)}, tmp_path / "t.pt")
    torch.save({"zzz.block.conv.weight": torch.randn(5, generator=gen)}, tmp_path / "p.pt")
    report = check_paths([str(tmp_path / "t.pt")], Options(pretrained=str(tmp_path / "p.pt"), hash_files=False))
    unmatched = {f.key: f.evidence["ambiguous_with"] for f in report.findings if f.name == "unmatched-target-key"}
    assert unmatched == {"a.block.conv.weight": ["zzz.block.conv.weight"],
                         "b.block.conv.weight": ["zzz.block.conv.weight"]}
    assert report.pairs == []


def test_alignment_reads_each_tensor_at_most_once(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(6)
    shared = [torch.randn(4, 4, generator=gen) for _ in range(6)]
    torch.save(OrderedDict((f"new_name_{i}", t) for i, t in enumerate(shared)), tmp_path / "t.pt")
    torch.save(OrderedDict((f"old.{i}.param", t.clone()) for i, t in enumerate(shared)), tmp_path / "p.pt")
    reads: list[tuple[str, str]] = []
    with open_checkpoint(str(tmp_path / "t.pt")) as target, open_checkpoint(str(tmp_path / "p.pt")) as pretrained:
        result = align(target.tensors, pretrained.tensors,
                       read_target=lambda k: reads.append(("t", k)) or target.read(k).tobytes(),
                       read_pretrained=lambda k: reads.append(("p", k)) or pretrained.read(k).tobytes())
    assert {(p.target, p.pretrained, p.how) for p in result.pairs} == {
        (f"new_name_{i}", f"old.{i}.param", "content") for i in range(6)}
    assert len(reads) == len(set(reads)) == 12


def test_report_fields_and_text_table(run) -> None:
    report = run("check", DETR, "--pretrained", PRETRAINED, "--format", "json", "--no-hash").json
    assert set(report["pairs"][0]) == {"file", "target", "pretrained", "how", "verdict", "evidence", "numel",
                                       "module_kind"}
    assert {p["verdict"] for p in report["pairs"]} == {"copied"}
    assert [f["role"] for f in report["files"]] == ["pretrained", "target"]
    assert set(report["transfer"]) == {"score", "parameters", "score_by_tensors", "tensors", "expect",
                                       "expect_reason", "by_stage", "by_module", "by_file"}
    assert report["transfer"]["by_module"]["backbone.0.body.layer1.0.conv1"] == 1.0
    assert math.isclose(report["transfer"]["score"], 1.0)
    assert set(report["transfer"]["by_file"][DETR]) == {
        "pretrained", "expect", "expect_reason", "frozen", "frozen_reason", "scope", "outside_scope", "score",
        "parameters", "score_by_tensors", "tensors", "unmatched"}
    text = run("check", DETR, "--pretrained", PRETRAINED, "--no-hash").out
    assert "Transfer: 100.0% of" in text and "layer4    100.0%" in text


def test_hf_detr_preset_freezes_batchnorm_under_hf_names(tmp_path: Path) -> None:
    source = CASES / "transfer-hf-naming" / "model.safetensors"
    assert _check(str(source), PRETRAINED, expect="finetuned", preset="hf-detr")["findings"] == Counter(
        {("unused-pretrained-key", "info"): 2})
    state = safetensors.torch.load_file(source)
    key = "model.backbone.conv_encoder.model.encoder.stages.1.layers.0.layer.2.normalization.running_var"
    state[key] = state[key] * 1.01
    safetensors.torch.save_file(state, tmp_path / "changed.safetensors")
    report = _check(str(tmp_path / "changed.safetensors"), PRETRAINED, expect="finetuned", preset="hf-detr")["report"]
    assert [(f.name, f.key) for f in report.findings if f.severity == "error"] == [("frozen-param-changed", key)]
