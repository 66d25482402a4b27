"""Conversions between codebases (issue 14, part 1): the original DETR against the same weights in
Hugging Face names, q/k/v split from ``in_proj`` (and fused back), paired by the conversion table
and by content alone, and the classic conversion bugs reported under their own cause."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import safetensors.torch
import torch

from ckptlint.options import Options
from ckptlint.results import Report
from ckptlint.runner import check_paths
from conftest import CASES, fixture_generator, run_subprocess

CASE = CASES / "conversion"
ORIGINAL, CONVERTED, BUGGY = (str(CASE / name) for name in
                              ("original.pth", "converted.safetensors", "converted-buggy.safetensors"))
ENC1 = "model.encoder.layers.1.self_attn."
IN_PROJ1 = "transformer.encoder.layers.1.self_attn.in_proj_"


def _check(target: str, pretrained: str) -> Report:
    return check_paths([target], Options(pretrained=pretrained, hash_files=False))


def _names(report: Report) -> Counter[str]:
    return Counter(f.name for f in report.findings)


def test_a_faithful_conversion_pairs_every_original_tensor() -> None:
    report = _check(CONVERTED, ORIGINAL)
    original = fixture_generator().detr_state_dict(fixture_generator().resnet50_state_dict(seed=0))
    fused = [k for k in original if k.endswith(("in_proj_weight", "in_proj_bias"))]
    assert len(original) == 458 and len(fused) == 36
    # the backbone by its inferred prefix (model.backbone.conv_encoder.model. <-> backbone.0.body.),
    # the rest by the conversion table
    assert Counter(p.how for p in report.pairs) == Counter({"prefix": 265, "renamed": 458 - 265 - 36, "split": 3 * 36})
    assert {p.verdict for p in report.pairs} == {"copied"}
    covered = {p.pretrained.partition("[")[0] for p in report.pairs}
    assert covered == set(original)  # 100% of the original's tensors, each in_proj by its three blocks
    q = next(p for p in report.pairs if p.target == ENC1 + "q_proj.weight")
    assert q.pretrained == IN_PROJ1 + "weight[0:16]"
    v_bias = next(p for p in report.pairs if p.target == ENC1 + "v_proj.bias")
    assert v_bias.pretrained == IN_PROJ1 + "bias[32:48]"
    assert report.transfer.score == 1.0 and report.transfer.by_file[CONVERTED].scope == ""
    assert report.findings == [] and report.diagnoses == []


def test_converting_back_fuses_the_parts() -> None:
    report = _check(ORIGINAL, CONVERTED)
    assert Counter(p.how for p in report.pairs) == Counter({"prefix": 265, "renamed": 458 - 265 - 36, "fused": 3 * 36})
    fused = [p for p in report.pairs if p.how == "fused" and p.target.startswith(IN_PROJ1 + "weight")]
    assert [(p.target, p.pretrained) for p in sorted(fused, key=lambda p: p.target)] == [
        (IN_PROJ1 + "weight[0:16]", ENC1 + "q_proj.weight"),
        (IN_PROJ1 + "weight[16:32]", ENC1 + "k_proj.weight"),
        (IN_PROJ1 + "weight[32:48]", ENC1 + "v_proj.weight")]
    assert report.findings == [] and report.transfer.score == 1.0


def test_each_classic_bug_under_its_own_cause() -> None:
    report = _check(BUGGY, ORIGINAL)
    errors = {(f.key, f.evidence["error"]) for f in report.findings if f.name == "conversion-error"}
    dec2 = "model.decoder.layers.2."
    assert errors == {
        (ENC1 + "q_proj.weight", "swapped"), (ENC1 + "k_proj.weight", "swapped"),
        (ENC1 + "q_proj.bias", "swapped"), (ENC1 + "k_proj.bias", "swapped"),
        (dec2 + "self_attn.out_proj.weight", "transposed"),
        (dec2 + "encoder_attn.v_proj.weight", "offset")}
    messages = {f.key: f.message for f in report.findings}
    assert "holds rows 24:40 of transformer.decoder.layers.2.multihead_attn.in_proj_weight, not 32:48" in \
        messages[dec2 + "encoder_attn.v_proj.weight"]
    assert "swapped with k_proj.weight (holds " + IN_PROJ1 + "weight[16:32])" in messages[ENC1 + "q_proj.weight"]
    # the LayerNorm the conversion never loaded: re-initialised, not a misplacement
    reinit = {f.key: f.evidence["init"] for f in report.findings if f.name == "not-transferred"}
    assert reinit == {dec2 + "final_layer_norm.weight": "constant 1", dec2 + "final_layer_norm.bias": "constant 0"}
    # the dropped v bias: its block of in_proj_bias is the one pretrained tensor nothing took
    unused = [f.key for f in report.findings if f.name == "unused-pretrained-key"]
    assert unused == ["transformer.encoder.layers.3.self_attn.in_proj_bias[32:48]"]
    assert _names(report) == Counter({"conversion-error": 6, "not-transferred": 2, "unused-pretrained-key": 1})
    assert {f.severity for f in report.findings} == {"error"}  # a dropped part fails like the rest
    kinds = {d.kind: d for d in report.diagnoses}
    assert set(kinds) == {"conversion", "reinitialized"}
    assert kinds["conversion"].tensors and "dropped" in kinds["conversion"].title
    assert report.exit_code() == 1


def test_the_bugs_seen_from_the_other_side() -> None:
    """The original checked against the buggy conversion: the swap and offset are found on the
    fused side's row blocks."""
    report = _check(ORIGINAL, BUGGY)
    errors = {(f.key, f.evidence["error"]) for f in report.findings if f.name == "conversion-error"}
    assert (IN_PROJ1 + "weight[0:16]", "swapped") in errors and (IN_PROJ1 + "weight[16:32]", "swapped") in errors
    assert ("transformer.decoder.layers.2.multihead_attn.in_proj_weight[32:48]", "offset") in errors
    assert ("transformer.decoder.layers.2.self_attn.out_proj.weight", "transposed") in errors


def test_content_alone_pairs_split_and_fused_tensors_the_table_does_not_know(tmp_path: Path) -> None:
    """ViT-like names no table lists: ``attn.qkv`` against ``attention.q/k/v``, matched by the
    hashes of row blocks; a tensor with no identical block stays unmatched."""
    gen = torch.Generator().manual_seed(3)
    fused, split = {}, {}
    for i in range(2):
        w, b = torch.randn(24, 8, generator=gen), torch.randn(24, generator=gen)
        fused[f"blocks.{i}.attn.qkv.weight"], fused[f"blocks.{i}.attn.qkv.bias"] = w, b
        for j, name in enumerate("qkv"):
            split[f"encoder.layer.{i}.attention.{name}.weight"] = w[8 * j:8 * j + 8].clone()
            split[f"encoder.layer.{i}.attention.{name}.bias"] = b[8 * j:8 * j + 8].clone()
    split["encoder.layer.1.attention.v.weight"] = torch.randn(8, 8, generator=gen)  # from nowhere
    safetensors.torch.save_file(fused, tmp_path / "fused.safetensors")
    safetensors.torch.save_file(split, tmp_path / "split.safetensors")
    report = _check(str(tmp_path / "split.safetensors"), str(tmp_path / "fused.safetensors"))
    pairs = {p.target: (p.pretrained, p.how) for p in report.pairs}
    assert pairs["encoder.layer.0.attention.k.weight"] == ("blocks.0.attn.qkv.weight[8:16]", "split")
    assert pairs["encoder.layer.1.attention.v.bias"] == ("blocks.1.attn.qkv.bias[16:24]", "split")
    assert len(pairs) == 11 and "encoder.layer.1.attention.v.weight" not in pairs
    assert {f.key for f in report.findings if f.name == "unused-pretrained-key"} == \
        {"blocks.1.attn.qkv.weight[16:24]"}


def test_a_backbone_transfer_is_not_taken_for_a_conversion() -> None:
    """A DETR against a torchvision ResNet-50: the conversion table pairs nothing (the backbone's
    prefix is inferred as before), and the scope stays the backbone."""
    detr = str(CASES / "detr-training-checkpoint" / "checkpoint.pth")
    report = check_paths([detr], Options(pretrained=str(CASES.parent / "models" / "resnet50_tiny.pth"),
                                         hash_files=False))
    assert Counter(p.how for p in report.pairs) == Counter({"prefix": 265})
    assert report.transfer.by_file[detr].scope == "backbone.0.body"


def test_the_command_line_names_the_cause_and_fails() -> None:
    result = run_subprocess("check", BUGGY, "--pretrained", ORIGINAL, cwd=CASE)
    assert result.code == 1
    assert "the conversion is wrong in 7 tensors" in result.out
    assert "CKP212 conversion-error" not in result.out  # folded into the diagnosis unless -v
    good = run_subprocess("check", CONVERTED, "--pretrained", ORIGINAL, cwd=CASE)
    assert good.code == 0 and "the conversion is wrong" not in good.out and "0 errors, 0 warnings" in good.out
