"""--model with a transformers model: the checkpoint's keys are compared under the names
transformers gives them when it loads them (its conversion mapping), so ckptlint's missing,
unexpected and shape-mismatched keys are exactly ``from_pretrained``'s; a plain torch model is
compared as before.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import DetrForObjectDetection

import ckptlint
from ckptlint.facts.checkpoint import CheckpointFacts
from ckptlint.facts.model_reference import ModelReference
from ckptlint.io.open import open_checkpoint
from ckptlint.user_model import load_model
from conftest import run_subprocess

KEY_RULES = ("missing-key", "unexpected-key", "shape-mismatch")

# A small DETR with transformers' own ResNet backbone (no timm, no torchvision, nothing downloaded).
DETR_FACTORY = textwrap.dedent("""
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    def build():
        backbone = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                layer_type="basic", out_features=["stage1", "stage2"])
        config = DetrConfig(use_timm_backbone=False, backbone_config=backbone, use_pretrained_backbone=False,
                            d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                            decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=5,
                            num_labels=3)
        return DetrForObjectDetection(config)
""")

PLAIN_FACTORY = textwrap.dedent("""
    from torch import nn

    def build():
        return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
""")


def _factory(folder: Path, source: str) -> str:
    """Write a factory module into ``folder`` (the current directory of the run) under a fresh name,
    so no earlier test's module of the same name is reused from sys.modules."""
    name = f"factory_{uuid.uuid4().hex[:12]}"
    (folder / f"{name}.py").write_text(source, "utf-8")
    return f"{name}:build"


@pytest.fixture
def detr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """A save_pretrained folder of the small DETR and the factory spec building it; cwd is tmp_path."""
    monkeypatch.chdir(tmp_path)
    spec = _factory(tmp_path, DETR_FACTORY)
    torch.manual_seed(0)
    module_name = spec.partition(":")[0]
    sys.path.insert(0, str(tmp_path))
    try:
        model = __import__(module_name).build()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(module_name, None)
    model.save_pretrained(tmp_path / "detr")
    return tmp_path / "detr", spec


def _transformers_says(folder: Path) -> tuple[set[str], set[str], dict[str, tuple]]:
    """from_pretrained's own missing, unexpected and shape-mismatched keys (name -> shapes)."""
    _, info = DetrForObjectDetection.from_pretrained(folder, output_loading_info=True,
                                                     ignore_mismatched_sizes=True)
    mismatched = {name: (tuple(saved), tuple(wanted)) for name, saved, wanted in info["mismatched_keys"]}
    return set(info["missing_keys"]), set(info["unexpected_keys"]), mismatched


def _ckptlint_says(findings: list, folder: Path, spec: str) -> tuple[set[str], set[str], dict[str, tuple]]:
    """The same three from ckptlint's findings. A missing key is the model's name; an unexpected key
    is reported under its on-disk name, so it is put under the name it loads as (the mapping
    ckptlint applied); a shape mismatch names the model tensor it was compared with."""
    context = _context(folder, spec)
    missing = {f.key for f in findings if f.name == "missing-key"}
    unexpected = {context.mapping.name(f.key) for f in findings if f.name == "unexpected-key"}
    mismatched = {f.evidence["source"]: (tuple(f.evidence["target_shape"]), tuple(f.evidence["source_shape"]))
                  for f in findings if f.name == "shape-mismatch"}
    return missing, unexpected, mismatched


def _context(folder: Path, spec: str) -> ModelReference:
    with load_model(spec) as model, open_checkpoint(str(folder)) as target:
        return ModelReference(target, CheckpointFacts(model))


def _findings(report: ckptlint.Report) -> set[tuple[str, str | None]]:
    return {(f.name, f.key) for f in report.findings}


def _edit(folder: Path, edit) -> None:
    """Change the saved tensors in place (keeping the file's metadata, as transformers needs)."""
    path = folder / "model.safetensors"
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata=metadata)


def test_save_pretrained_folder_loads_clean_as_transformers_says(detr) -> None:
    folder, spec = detr
    assert _transformers_says(folder) == (set(), set(), {})

    report = ckptlint.lint(str(folder), model=spec)
    assert not [f for f in report.findings if f.name in KEY_RULES], report.render("text")
    # nothing at all that the model adds: the remaining findings are the file's own (random BN statistics)
    assert _findings(report) == _findings(ckptlint.lint(str(folder)))

    cli = run_subprocess("check", str(folder), "--model", spec, "--format", "json", "--no-hash", cwd=folder.parent)
    assert cli.code == 0, cli.err
    assert not [f for f in cli.json["findings"] if f["name"] in KEY_RULES]


def test_the_mapping_applied_is_described(detr) -> None:
    folder, spec = detr
    mapping = _context(folder, spec).mapping
    assert mapping is not None and mapping.loader == f"transformers {transformers.__version__}"
    assert mapping.name("model.backbone.conv_encoder.model.embedder.embedder.convolution.weight") == \
        "model.backbone.model.embedder.embedder.convolution.weight"
    assert mapping.name("model.encoder.layers.0.self_attn.out_proj.weight") == \
        "model.encoder.layers.0.self_attn.o_proj.weight"
    assert mapping.name("model.encoder.layers.0.fc1.bias") == "model.encoder.layers.0.mlp.fc1.bias"
    assert mapping.name("class_labels_classifier.weight") == "class_labels_classifier.weight"  # not renamed
    assert not (mapping.converted or mapping.unverified or mapping.shadowed or mapping.error)
    line = mapping.describe()
    assert line.startswith(f"keys renamed as transformers {transformers.__version__} loads them: "
                           f"{len(mapping.loaded_as)} of {mapping.keys}")
    assert "out_proj -> o_proj" in line and "backbone.conv_encoder -> backbone" in line
    assert mapping.summary()["renamed"] == len(mapping.loaded_as) > 0


def test_report_says_the_mapping_was_applied(detr) -> None:
    folder, spec = detr
    report = ckptlint.lint(str(folder), model=spec)
    (summary,) = report.files
    assert summary.key_mapping["loader"] == f"transformers {transformers.__version__}"
    assert "keys renamed as transformers" in report.render("text")
    cli = run_subprocess("check", str(folder), "--model", spec, "--format", "json", "--no-hash", cwd=folder.parent)
    assert cli.json["files"][0]["key_mapping"]["renamed"] == summary.key_mapping["renamed"]


def test_planted_problems_agree_with_transformers(detr, run) -> None:
    folder, spec = detr
    clean = ckptlint.lint(str(folder), model=spec)

    def plant(tensors: dict[str, torch.Tensor]) -> None:
        del tensors["model.decoder.layers.0.self_attn.out_proj.bias"]  # deleted, loads as ...o_proj.bias
        del tensors["class_labels_classifier.bias"]  # deleted, not renamed
        # renamed: still renamed by transformers' rule (layers.N.fc1 -> layers.N.mlp.fc1), to a name the model lacks
        tensors["model.decoder.layers.0.fc1.weight_orig"] = tensors.pop("model.decoder.layers.0.fc1.weight")
        tensors["model.query_embeddings.weight"] = tensors.pop("model.query_position_embeddings.weight")
        tensors["model.encoder.layers.0.fc2.weight"] = tensors["model.encoder.layers.0.fc2.weight"][:, :-1].clone()
        weight = tensors["class_labels_classifier.weight"]  # 4 classes (3 + no-object) in the model, 7 saved
        tensors["class_labels_classifier.weight"] = torch.cat([weight, weight[:3]])

    _edit(folder, plant)
    expected = _transformers_says(folder)
    missing, unexpected, mismatched = expected
    assert missing == {"model.decoder.layers.0.self_attn.o_proj.bias", "class_labels_classifier.bias",
                       "model.decoder.layers.0.mlp.fc1.weight", "model.query_position_embeddings.weight"}
    assert unexpected == {"model.decoder.layers.0.mlp.fc1.weight_orig", "model.query_embeddings.weight"}
    assert set(mismatched) == {"model.encoder.layers.0.mlp.fc2.weight", "class_labels_classifier.weight"}

    report = ckptlint.lint(str(folder), model=spec)
    assert _ckptlint_says(report.findings, folder, spec) == expected
    # no false alarm: what the planting added is exactly these eight findings, nothing else
    added = _findings(report) - _findings(clean)
    assert added == {("missing-key", k) for k in missing} | {
        ("unexpected-key", "model.decoder.layers.0.fc1.weight_orig"),  # on-disk names
        ("unexpected-key", "model.query_embeddings.weight"),
        ("shape-mismatch", "model.encoder.layers.0.fc2.weight"), ("shape-mismatch", "class_labels_classifier.weight")}
    assert _findings(clean) - _findings(report) == set()

    cli = run("check", str(folder), "--model", spec, "--format", "json", "--no-hash", cwd=folder.parent)
    assert cli.code == 1
    assert {(f["name"], f["key"]) for f in cli.json["findings"] if f["name"] in KEY_RULES} == \
        {(f.name, f.key) for f in report.findings if f.name in KEY_RULES}


def test_plain_torch_model_is_compared_as_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = _factory(tmp_path, PLAIN_FACTORY)
    with load_model(spec) as model:
        assert model.load_mapping is None
        state = {key: torch.zeros(model.tensors[key].shape) for key in model.tensors}
    state["1.gamma"] = state.pop("1.weight")  # transformers would rename this; plain torch does not
    state["2.weight"] = torch.zeros(3, 8)
    torch.save(state, tmp_path / "plain.pt")
    report = ckptlint.lint(str(tmp_path / "plain.pt"), model=spec)
    assert {(f.name, f.key) for f in report.findings if f.name in KEY_RULES} == {
        ("missing-key", "1.weight"), ("unexpected-key", "1.gamma"), ("shape-mismatch", "2.weight")}
    (mismatch,) = [f for f in report.findings if f.name == "shape-mismatch"]
    assert mismatch.evidence["source"] == "2.weight"


def test_transformers_is_imported_only_by_the_users_factory(tmp_path: Path) -> None:
    spec = _factory(tmp_path, PLAIN_FACTORY)
    torch.save({"0.weight": torch.zeros(8, 4)}, tmp_path / "plain.pt")
    code = ("import sys, ckptlint, ckptlint.load_mapping, ckptlint.user_model, ckptlint.facts.model_reference; "
            "assert not {'torch', 'transformers'} & set(sys.modules), 'imported by ckptlint'; "
            f"report = ckptlint.lint('plain.pt', model={spec!r}); "
            "assert 'missing-key' in {f.name for f in report.findings}; "
            "assert 'transformers' not in sys.modules, 'transformers imported for a plain torch model'")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
