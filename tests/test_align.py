"""Alignment of target and pretrained keys: each strategy, in order, and ambiguity reported."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ckptlint.align.alignment import align
from ckptlint.io import open_checkpoint
from conftest import CASES, FIXTURES


def _refs(tmp_path: Path, name: str, sd: dict, opened: list):
    torch.save(sd, tmp_path / name)
    opened.append(open_checkpoint(str(tmp_path / name)))
    return opened[-1]


@pytest.fixture
def opened():
    checkpoints: list = []
    yield checkpoints
    for checkpoint in checkpoints:
        checkpoint.close()


def test_detr_backbone_aligns_by_inferred_prefix() -> None:
    with open_checkpoint(str(CASES / "detr-training-checkpoint" / "checkpoint.pth")) as target, \
            open_checkpoint(str(FIXTURES / "models" / "resnet50_tiny.pth")) as pretrained:
        result = align(target.tensors, pretrained.tensors)
        assert result.prefix == ("backbone.0.body.", "")
        assert result.scope == "backbone.0.body"
        assert result.unmatched_target == []  # transformer, heads, query_embed are outside the scope
        expected = {k for k in target.tensors if k.startswith("backbone.0.body.")}
        assert {p.target for p in result.pairs} == expected
        assert all(p.pretrained == p.target.removeprefix("backbone.0.body.") for p in result.pairs)
        assert set(result.unused_pretrained) == {k for k in pretrained.tensors
                                                 if k.startswith("fc.") or k.endswith("num_batches_tracked")}
        assert target.bytes_read == pretrained.bytes_read == 0


def test_user_map_wins_and_exact_names_come_next(tmp_path: Path, opened: list) -> None:
    w = torch.randn(4, 4)
    target = _refs(tmp_path, "t.pt", {"enc.a.weight": w, "b.weight": w.clone(), "enc.c.weight": w.clone()}, opened)
    pretrained = _refs(tmp_path, "p.pt", {"x.a.weight": w, "b.weight": w.clone(), "enc.c.weight": w.clone()}, opened)
    result = align(target.tensors, pretrained.tensors, user_maps=[("enc.a.", "x.a.")])
    assert {(p.target, p.pretrained, p.how) for p in result.pairs} == {
        ("enc.a.weight", "x.a.weight", "user-map"), ("b.weight", "b.weight", "exact"),
        ("enc.c.weight", "enc.c.weight", "exact")}


def test_pretrained_side_prefix_suffix_ambiguity_and_content(tmp_path: Path, opened: list) -> None:
    gen = torch.Generator().manual_seed(0)
    same = torch.randn(3, 3, generator=gen)
    target = _refs(tmp_path, "t.pt", {
        "stem.conv.weight": torch.randn(2, 2, generator=gen),
        "stem.bn.weight": torch.randn(2, generator=gen),
        "a.block.conv.weight": torch.randn(5, generator=gen),
        "b.block.conv.weight": torch.randn(5, generator=gen),
        "renamed_entirely": same,
    }, opened)
    pretrained = _refs(tmp_path, "p.pt", {
        "module.stem.conv.weight": torch.randn(2, 2, generator=gen),
        "module.stem.bn.weight": torch.randn(2, generator=gen),
        "zzz.block.conv.weight": torch.randn(5, generator=gen),
        "something.else": same.clone(),
    }, opened)
    result = align(target.tensors, pretrained.tensors, read_target=lambda k: target.read(k).tobytes(),
                   read_pretrained=lambda k: pretrained.read(k).tobytes())
    hows = {p.target: (p.pretrained, p.how) for p in result.pairs}
    assert hows["stem.conv.weight"] == ("module.stem.conv.weight", "prefix")
    assert hows["renamed_entirely"] == ("something.else", "content")
    assert "a.block.conv.weight" not in hows and "b.block.conv.weight" not in hows
    assert result.ambiguous == {"a.block.conv.weight": ["zzz.block.conv.weight"],
                                "b.block.conv.weight": ["zzz.block.conv.weight"]}
