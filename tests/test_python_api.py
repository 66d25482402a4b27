"""ckptlint.lint on modules, state dicts and paths; the pytest helper; the seed scenario."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

import ckptlint
from ckptlint.errors import ConfigError
from ckptlint.testing import assert_transferred
from conftest import CASES, FIXTURES


class FrozenBatchNorm2d(nn.Module):
    """DETR's: statistics and affine parameters are all buffers."""

    def __init__(self, n: int) -> None:
        super().__init__()
        for name, value in (("weight", torch.ones(n)), ("bias", torch.zeros(n)),
                            ("running_mean", torch.zeros(n)), ("running_var", torch.ones(n))):
            self.register_buffer(name, value)


def _block(channels: int, norm) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), norm(channels))


class TinyResNet(nn.Module):
    """torchvision's names (conv1, bn1, layer1..., fc), few channels."""

    def __init__(self, norm=nn.BatchNorm2d, in_channels: int = 3, head: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 7, bias=False)
        self.bn1 = norm(16)
        self.layer1 = _block(16, norm)
        self.layer2 = _block(16, norm)
        if head:
            self.fc = nn.Linear(16, 10)


class Backbone(nn.Module):
    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.body = TinyResNet(FrozenBatchNorm2d, in_channels, head=False)


class DetrLike(nn.Module):
    """backbone.0.body.* as in DETR, plus a transformer-ish head and tied embeddings."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.backbone = nn.ModuleList([Backbone(in_channels)])
        self.input_proj = nn.Conv2d(16, 8, 1)
        self.query_embed = nn.Embedding(10, 8)
        self.class_embed = nn.Linear(8, 5)
        self.aux_class_embed = self.class_embed  # shared parameters: one tensor, two names


def pretrained_resnet() -> TinyResNet:
    """Trained-looking: heavy-tailed weights, real statistics."""
    torch.manual_seed(0)
    model = TinyResNet()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn_like(tensor) * torch.exp(0.5 * torch.randn_like(tensor)) * 0.2
                             + (1.0 if name.endswith("running_var") else 0.0))
    return model


def load_backbone_properly(detr: DetrLike, pretrained: nn.Module) -> None:
    state = {k: v for k, v in pretrained.state_dict().items() if not k.startswith("fc.") and "num_batches" not in k}
    detr.backbone[0].body.load_state_dict(state)


def test_correct_transfer_from_modules_with_tied_weights_and_frozen_bn() -> None:
    detr, pretrained = DetrLike(), pretrained_resnet()
    load_backbone_properly(detr, pretrained)
    report = ckptlint.lint(detr, pretrained)
    assert report.ok and report.transfer.score == 1.0
    assert {f.name for f in report.findings} == {"unused-pretrained-key"}  # fc.* and num_batches_tracked
    assert {f.key for f in report.findings} == {"fc.weight", "fc.bias"}
    assert not [f for f in report.findings if "class_embed" in (f.key or "")]
    assert Counter(p.verdict for p in report.pairs) == Counter({"copied": 3 + 3 * 4})  # 3 convs, 3 FrozenBNs


def test_seed_scenarios_naive_interpolated_selective() -> None:
    pretrained = pretrained_resnet()
    naive = DetrLike()
    result = naive.backbone.load_state_dict(pretrained.state_dict(), strict=False)  # wrong prefix: loads nothing
    assert result.missing_keys and result.unexpected_keys
    report = ckptlint.lint(naive, pretrained)
    not_transferred = {f.key for f in report.findings if f.name == "not-transferred"}
    assert not_transferred == {k for k in naive.state_dict() if k.startswith("backbone.0.body.")}
    assert report.transfer.score == 0.0 and not report.ok
    nothing_loaded, head = report.diagnoses
    assert nothing_loaded.kind == "nothing-loaded" and head.kind == "head-dropped" and not report.undiagnosed
    assert '{"backbone.0.body." + k: v for k, v in sd.items()}' in nothing_loaded.fix

    interpolated = DetrLike(in_channels=4)
    state = {k: v for k, v in pretrained.state_dict().items() if not k.startswith("fc.") and "num_batches" not in k}
    state["conv1.weight"] = torch.cat([state["conv1.weight"], state["conv1.weight"].mean(1, keepdim=True)], 1)
    interpolated.backbone[0].body.load_state_dict(state)
    report = ckptlint.lint(interpolated, pretrained)
    assert [(f.name, f.key, f.evidence["cause"]) for f in report.findings if f.severity == "error"] == [
        ("shape-mismatch", "backbone.0.body.conv1.weight", "input_channels")]

    selective = DetrLike()
    load_backbone_properly(selective, pretrained)
    torch.manual_seed(1)
    nn.init.xavier_uniform_(selective.backbone[0].body.layer2[0].weight)
    report = ckptlint.lint(selective, pretrained)
    (finding,) = [f for f in report.findings if f.name == "not-transferred"]
    assert finding.key == "backbone.0.body.layer2.0.weight" and finding.evidence["init"] == "xavier_uniform"
    assert report.diagnoses[0].title.startswith("layer2.0 re-initialised (xavier_uniform convolutions): 1 tensor,")
    assert report.transfer.by_stage["layer1"].score == 1.0 and report.transfer.by_stage["layer2"].score < 1


def test_numpy_state_dicts_paths_and_options() -> None:
    pretrained = str(FIXTURES / "models" / "resnet50_tiny.pth")
    target = str(CASES / "transfer-float16" / "detr.pth")
    from_path = ckptlint.lint(target, pretrained)
    assert {f.name for f in from_path.findings} == {"precision-loss", "unused-pretrained-key"}
    with ckptlint.open_checkpoint(target) as checkpoint:
        arrays = {"model": {key: checkpoint.read(key).astype(np.float16) if key.startswith("backbone") else
                            checkpoint.read(key) for key in checkpoint.tensors}}
    in_memory = ckptlint.lint(arrays, pretrained, select=["precision-loss"], severity={"precision-loss": "error"})
    assert len(in_memory.findings) == len([f for f in from_path.findings if f.name == "precision-loss"])
    assert {f.severity for f in in_memory.findings} == {"error"} and not in_memory.ok
    with pytest.raises(ConfigError, match="did you mean 'max-drift'"):
        ckptlint.lint(target, pretrained, max_drif=0.1)


def test_lint_with_a_configuration_gives_a_path_its_target_globs_settings(run, tmp_path) -> None:
    """``lint(path, config=FILE)`` checks the path with exactly the settings ``ckptlint check
    --config FILE`` gives it, its ``[[targets]]`` glob included."""
    selective, other = str(CASES / "transfer-selective" / "detr.pth"), str(CASES / "non-finite" / "model.pt")
    config = tmp_path / "named.toml"
    config.write_text(f'fail-on = "warning"\n[[targets]]\nglob = "*transfer-selective*"\n'
                      f'pretrained = "{FIXTURES / "models" / "resnet50_tiny.pth"}"\npreset = "detr"\n')
    transfers = {}
    for path in (selective, other):
        report = ckptlint.lint(path, config=str(config))
        as_json = json.loads(report.render("json"))
        cli = run("check", path, "--config", str(config), "--format", "json", "--no-hash", cwd=tmp_path).json
        assert [(f["name"], f["key"], f["severity"]) for f in as_json["findings"]] == [
            (f["name"], f["key"], f["severity"]) for f in cli["findings"]]
        assert as_json["transfer"] == cli["transfer"] and report.fail_on == "warning"
        transfers[path] = as_json["transfer"]
    assert transfers[selective]["score"] < 1
    assert transfers[other] is None  # no glob matched: no pretrained file


def test_render_every_format() -> None:
    report = ckptlint.lint(str(CASES / "non-finite" / "model.pt"))
    assert "non-finite" in report.render("text")
    assert json.loads(report.render("json"))["findings"][0]["name"] == "non-finite"
    assert json.loads(report.render("sarif"))["version"] == "2.1.0"
    assert report.render("html").startswith("<!DOCTYPE html>")


def test_assert_transferred() -> None:
    detr, pretrained = DetrLike(), pretrained_resnet()
    with pytest.raises(AssertionError, match="not-transferred") as failure:
        assert_transferred(detr, pretrained)
    message = str(failure.value)
    assert "transfer score 0.0%" in message and "judged as copied" in message
    assert len(message.splitlines()) <= 24, "the message names the first failing findings, not the whole report"
    load_backbone_properly(detr, pretrained)
    assert assert_transferred(detr, pretrained).transfer.score == 1.0


def test_model_option_in_python(monkeypatch) -> None:
    monkeypatch.chdir(CASES / "model-code-drift")
    report = ckptlint.lint(str(CASES / "model-code" / "model.pt"), model="drifted_net:build")
    assert Counter(f.name for f in report.findings) == Counter(
        {"missing-key": 2, "unexpected-key": 2, "shape-mismatch": 1})


def test_torch_is_imported_only_for_torch_objects() -> None:
    code = ("import sys, numpy as np, ckptlint; "
            "r = ckptlint.lint({'w': np.zeros((64, 64), np.float32)}, {'w': np.ones((64, 64), np.float32)}); "
            "assert [(f.name, f.key) for f in r.findings] == [('not-transferred', 'w')], r.findings; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_model_factory_failures_are_one_line(run, tmp_path) -> None:
    (tmp_path / "broken_factory.py").write_text("def build():\n    raise RuntimeError('CUDA not available')\n")
    target = str(CASES / "model-code" / "model.pt")
    result = run("check", target, "--model", "broken_factory:build", cwd=tmp_path)
    assert result.code == 2 and "RuntimeError: CUDA not available" in result.err and result.err.count("\n") == 1
    assert run("check", target, "--model", "no_such_module:build", cwd=tmp_path).code == 2
    assert run("check", target, "--model", "missing-colon", cwd=tmp_path).code == 2
