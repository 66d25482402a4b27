"""The verdict can be trusted: options that would do nothing are usage errors, failures are
visible, the score is honest and adds up, similarity is centred, causes are consistent, and the
report leads with what matters."""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

import ckptlint
from ckptlint.errors import ConfigError
from ckptlint.facts.compare import compare
from conftest import CASES, FIXTURES, fixture_generator

PRETRAINED = str(FIXTURES / "models" / "resnet50_tiny.pth")
SELECTIVE = str(CASES / "transfer-selective" / "detr.pth")
DETR = str(CASES / "detr-training-checkpoint" / "checkpoint.pth")
HF_DETR = str(CASES / "transfer-hf-naming" / "model.safetensors")


@pytest.mark.parametrize(("args", "message"), [
    (["--scope", "backbone.0.bdy"],
     "--scope backbone.0.bdy: no module of that name in .* \\(did you mean 'backbone.0.body'\\?\\)"),
    (["--scope", "nonexistent.module"], "--scope nonexistent.module: no module of that name"),
    (["--map", "backbone.bdy.="], "--map backbone.bdy.=: no key of .* starts with 'backbone.bdy.'"),
    (["--map", "backbone.0.body.=resnet."],
     "--map backbone.0.body.=resnet.: no key of .*resnet50_tiny.pth starts with"),
    (["--preset", "hf-detr"], "--preset hf-detr: .* has none of its backbone modules .*did you mean --preset detr\\?"),
])
def test_options_that_match_nothing_are_usage_errors(run, args: list[str], message: str) -> None:
    result = run("check", SELECTIVE, "--pretrained", PRETRAINED, *args)
    assert result.code == 2 and result.out == ""
    assert len(result.err.splitlines()) == 1 and "Traceback" not in result.err
    assert re.search(message, result.err), result.err


def test_an_hf_preset_on_original_detr_keys_and_back(run) -> None:
    result = run("check", HF_DETR, "--pretrained", PRETRAINED, "--preset", "detr")
    assert result.code == 2 and "did you mean --preset hf-detr?" in result.err
    assert run("check", HF_DETR, "--pretrained", PRETRAINED, "--preset", "hf-detr").code == 0


@pytest.mark.parametrize("args", [["--expect", "finetuned"], ["--scope", "backbone"], ["--min-score", "90"],
                                  ["--preset", "detr"], ["--map", "a.=b."]])
def test_transfer_options_without_pretrained_are_usage_errors(run, args: list[str]) -> None:
    result = run("check", SELECTIVE, *args)
    assert result.code == 2 and "only means something against a pretrained checkpoint" in result.err


def test_the_same_errors_from_lint_and_configuration(tmp_path: Path, run) -> None:
    with pytest.raises(ConfigError, match="did you mean 'error'"):
        ckptlint.lint(SELECTIVE, fail_on="eror")
    with pytest.raises(ConfigError, match="expect only means something against a pretrained"):
        ckptlint.lint(SELECTIVE, expect="finetuned")
    with pytest.raises(ConfigError, match=r"--scope backbone\.0\.bdy"):
        ckptlint.lint(SELECTIVE, PRETRAINED, scope="backbone.0.bdy")
    config = tmp_path / "ckptlint.toml"
    config.write_text('expect = "finetuned"\n')
    result = run("check", SELECTIVE, "--config", str(config))
    assert result.code == 2 and "expect only means something" in result.err
    config.write_text(f'pretrained = "{PRETRAINED}"\nmaps = {{ "backbone.bdy." = "" }}\n')
    assert run("check", SELECTIVE, "--config", str(config)).code == 2
    # Top-level transfer settings are defaults for the targets that do name a pretrained file: a
    # file no target glob matches is checked on its own, without an error.
    config.write_text(f'expect = "copied"\n[[targets]]\nglob = "*transfer-selective*"\npretrained = "{PRETRAINED}"\n')
    assert run("check", SELECTIVE, "--config", str(config)).code == 1
    unmatched = run("check", DETR, "--config", str(config), "--format", "json", "--no-hash")
    assert unmatched.code == 0 and unmatched.json["transfer"] is None


def test_an_unreadable_pretrained_file_is_an_error_and_the_targets_are_still_checked(run, tmp_path: Path) -> None:
    broken = tmp_path / "resnet50.pth"
    broken.write_bytes(Path(PRETRAINED).read_bytes()[:4000])
    result = run("check", SELECTIVE, "--pretrained", str(broken), "--format", "json", "--no-hash")
    assert result.code == 2 and str(broken) in result.err
    report = result.json
    assert [e["file"] for e in report["errors"]] == [str(broken)]
    assert [f["path"] for f in report["files"]] == [SELECTIVE]
    assert report["transfer"] is None and report["pairs"] == []
    assert {f["name"] for f in report["findings"]} == {"suspicious-init-scale", "default-bn-stats"}
    text = run("check", SELECTIVE, "--pretrained", str(broken)).out
    assert "Transfer:" not in text and text.startswith("FAILED: 1 file could not be read")


def test_json_always_has_pairs_and_transfer(run) -> None:
    report = run("check", DETR, "--format", "json", "--no-hash").json
    assert report["pairs"] == [] and report["transfer"] is None


def test_findings_lead_with_the_most_severe(run) -> None:
    findings = run("check", SELECTIVE, "--pretrained", PRETRAINED, "--format", "json", "--no-hash").json["findings"]
    ranks = [("info", "warning", "error").index(f["severity"]) for f in findings if f["file"] == SELECTIVE]
    assert ranks == sorted(ranks, reverse=True) and ranks[0] == 2 and ranks[-1] == 0
    errors = [f["key"] for f in findings if f["severity"] == "error"]
    assert errors == sorted(errors)


def test_a_report_written_to_a_file_still_says_how_it_went(run, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    result = run("check", SELECTIVE, "--pretrained", PRETRAINED, "--format", "html", "-o", str(out))
    assert result.code == 1 and result.out == ""
    assert result.err.startswith("ckptlint: FAILED: 50 findings at or above error (not-transferred x50); 50 errors")
    assert str(out) in result.err and out.stat().st_size > 0
    clean = run("check", DETR, "--pretrained", PRETRAINED, "--format", "json", "-o", str(tmp_path / "r.json"))
    assert clean.code == 0 and "FAILED" not in clean.err and "0 errors" in clean.err


def test_text_header_says_why_a_check_fails_and_floors_the_score(run) -> None:
    text = run("check", SELECTIVE, "--pretrained", PRETRAINED).out
    assert text.splitlines()[0] == "FAILED: 50 findings at or above error (not-transferred x50)"
    assert "backbone transfer 38.0% of 98.8k parameters carried, 50 tensors re-initialised " \
           "(judged as a copy)" in text
    verbose = run("check", SELECTIVE, "--pretrained", PRETRAINED, "-v").out
    assert "judged as a copy of the pretrained backbone backbone.0.body" in verbose
    assert "outside the transfer scope, expected to be new (not judged as fresh init): bbox_embed, class_embed, " \
           "input_proj, query_embed, transformer" in verbose
    assert not run("check", DETR, "--pretrained", PRETRAINED).out.startswith("FAILED")


@pytest.mark.parametrize(("score", "shown"), [(0.99949, "99.9%"), (0.9999999, "99.9%"), (1.0, "100.0%"),
                                              (0.5, "50.0%"), (0.0, "0.0%"), (0.123456, "12.3%")])
def test_percent_is_rounded_down(score: float, shown: str) -> None:
    from ckptlint.numbers import percent
    assert percent(score) == shown


def test_independent_positive_tensors_are_not_called_modified() -> None:
    """Independent BatchNorm weights and variances (all positive, near 1) have a cosine near 1;
    their centred correlation is near 0, so a wrong pretrained file is not "modified"."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = (1 + 0.2 * rng.standard_normal(256)).astype(np.float32)
        b = (1 + 0.2 * rng.standard_normal(256)).astype(np.float32)
        numbers = compare(a, b, "float32", "float32")
        assert numbers["cosine"] > 0.9 and abs(numbers["correlation"]) < 0.3
    drifted = b + 0.01 * rng.standard_normal(256).astype(np.float32)
    assert compare(drifted, b, "float32", "float32")["correlation"] > 0.99
    assert compare(np.ones(8, np.float32), b[:8], "float32", "float32")["correlation"] is None


def test_a_wrong_pretrained_file_gives_errors_even_under_fine_tuning() -> None:
    gen = fixture_generator()
    other = gen.resnet50_state_dict(seed=7)  # same architecture, independent values
    report = ckptlint.lint(DETR, other, expect="finetuned")
    verdicts = {p.verdict for p in report.pairs}
    assert "modified" not in verdicts and "fine-tuned" not in verdicts
    bn = [p for p in report.pairs if p.target.endswith((".running_var", "bn1.weight"))]
    assert bn and {p.verdict for p in bn} <= {"unrelated", "reinitialized"}
    assert not report.ok and {f.severity for f in report.findings if f.name == "not-transferred"} == {"error"}


def test_step_counters_never_decide_the_exit_code() -> None:
    gen = fixture_generator()
    pretrained = gen.resnet50_state_dict(seed=0)
    target = OrderedDict((k, torch.zeros_like(v) if k.endswith("num_batches_tracked") else v.clone())
                         for k, v in pretrained.items())
    report = ckptlint.lint(target, pretrained)
    counters = [f for f in report.findings if f.key and f.key.endswith("num_batches_tracked")]
    assert len(counters) == 53 and {f.severity for f in counters} == {"info"}
    assert report.ok and report.transfer.score == 1.0


def _stage_rows(report) -> dict:
    transfer = report.transfer
    assert sum(r.parameters for r in transfer.by_stage.values()) == transfer.parameters
    return transfer.by_stage


def test_stage_rows_add_up_under_a_map_and_with_hugging_face_names(tmp_path: Path) -> None:
    gen = fixture_generator()
    backbone = gen.resnet50_state_dict(seed=0)
    hf = {f"resnet.{gen.hf_resnet_name(k)}": v.contiguous() for k, v in backbone.items() if not k.startswith("fc.")}
    hf_file = tmp_path / "model.safetensors"
    safetensors.torch.save_file(hf, hf_file)
    rows = _stage_rows(ckptlint.lint(DETR, str(hf_file)))
    assert list(rows) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    mapped = ckptlint.lint(DETR, PRETRAINED, maps={"backbone.0.body.layer4.": "layer3."})
    rows = _stage_rows(mapped)
    assert rows["layer3"].verdicts.get("resized", 0) > 0 and "other" not in rows


def test_a_module_gets_one_cause_for_its_resized_tensors() -> None:
    """A classifier head re-created for fewer classes: a zero bias equals the leading slice of a
    zero bias, but proves nothing; weight and bias share the weight's cause."""
    rng = np.random.default_rng(1)
    pretrained = {"class_embed.weight": rng.standard_normal((11, 64)).astype(np.float32),
                  "class_embed.bias": np.zeros(11, np.float32),
                  "body.weight": rng.standard_normal((64, 64)).astype(np.float32)}
    fresh = {"class_embed.weight": rng.standard_normal((3, 64)).astype(np.float32),
             "class_embed.bias": np.zeros(3, np.float32),
             "body.weight": pretrained["body.weight"].copy()}
    causes = {p.target: p.evidence["shape_cause"] for p in ckptlint.lint(fresh, pretrained).pairs
              if p.verdict == "resized"}
    assert causes == {"class_embed.weight": "shape shrank [11, 64] -> [3, 64]",
                      "class_embed.bias": "shape shrank [11] -> [3]"}
    sliced = dict(fresh, **{"class_embed.weight": pretrained["class_embed.weight"][:3].copy()})
    causes = {p.target: p.evidence["shape_cause"] for p in ckptlint.lint(sliced, pretrained).pairs
              if p.verdict == "resized"}
    assert causes == {"class_embed.weight": "channels sliced [11, 64] -> [3, 64] (the first ones kept)",
                      "class_embed.bias": "channels sliced [11] -> [3] (the first ones kept)"}


# --- cases a review found could be fooled --------------------------------------------------------

FINETUNED = str(CASES / "transfer-finetuned" / "detr.pth")


def _detr_model(path: str | None = None) -> OrderedDict[str, torch.Tensor]:
    """A fixture DETR's state dict: the copied one (rebuilt by make_fixtures), or one read from
    a fixture of ours."""
    if path is None:
        gen = fixture_generator()
        return gen.detr_state_dict(gen.resnet50_state_dict(seed=0))
    return torch.load(path, weights_only=True)["model"]


def _save(tmp_path: Path, name: str, state: dict) -> str:
    path = tmp_path / name
    torch.save({"model": state}, path)
    return str(path)


def test_a_copied_head_alone_does_not_make_the_backbone_out_of_scope(tmp_path: Path, run) -> None:
    pretrained = torch.load(PRETRAINED, weights_only=True)
    target = OrderedDict({f"net.block{i}.weight": torch.randn(64, 64) for i in range(4)})
    target.update({k: v for k, v in pretrained.items() if k.startswith("fc.")})
    result = run("check", _save(tmp_path, "headonly.pth", target), "--pretrained", PRETRAINED, "--format", "json",
                 "--no-hash")
    assert result.code == 1
    assert {f["key"] for f in result.json["findings"] if f["name"] == "unmatched-target-key"} >= {
        f"net.block{i}.weight" for i in range(4)}


def test_noise_is_not_fine_tuning(tmp_path: Path, run) -> None:
    state = _detr_model()
    gen = torch.Generator().manual_seed(3)
    for key, value in state.items():
        if key.startswith("backbone.0.body.") and value.dim() == 4:
            state[key] = value + 0.2 * value.pow(2).mean().sqrt() * torch.randn(value.shape, generator=gen)
    report = run("check", _save(tmp_path, "noise.pth", state), "--pretrained", PRETRAINED, "--format", "json",
                 "--no-hash").json
    assert report["transfer"]["expect"] == "copied" and report["transfer"]["score"] < 0.5


def test_a_round_trip_through_half_precision_is_a_cast(tmp_path: Path, run) -> None:
    state = _detr_model()
    for key, value in state.items():
        if key.startswith("backbone.0.body.") and value.is_floating_point():
            state[key] = value.to(torch.bfloat16).float()
    result = run("check", _save(tmp_path, "bf16rt.pth", state), "--pretrained", PRETRAINED, "--format", "json",
                 "--no-hash")
    verdicts = {p["verdict"] for p in result.json["pairs"]}
    assert result.code == 0 and verdicts <= {"copied", "cast"} and "cast" in verdicts
    assert result.json["transfer"]["expect"] == "copied" and result.json["transfer"]["score"] == 1.0
    assert "and back (stored as float32)" in next(f["message"] for f in result.json["findings"]
                                                   if f["name"] == "precision-loss")


def test_a_fine_tuned_checkpoint_saved_in_half_precision_passes(tmp_path: Path, run) -> None:
    state = OrderedDict((k, v.half() if v.is_floating_point() else v) for k, v in _detr_model(FINETUNED).items())
    result = run("check", _save(tmp_path, "ft-half.pth", state), "--pretrained", PRETRAINED, "--format", "json",
                 "--no-hash")
    assert result.code == 0, [f for f in result.json["findings"] if f["severity"] == "error"][:3]
    assert result.json["transfer"]["expect"] == "finetuned"


def test_batchnorm_statistics_without_counters_that_moved_were_not_frozen(tmp_path: Path, run) -> None:
    state = _detr_model(FINETUNED)
    gen = torch.Generator().manual_seed(4)
    for key, value in state.items():
        if key.startswith("backbone.0.body.") and key.endswith(("running_mean", "running_var")):
            state[key] = value + 0.02 * value.abs().mean() * torch.randn(value.shape, generator=gen)
    result = run("check", _save(tmp_path, "ft-bn.pth", state), "--pretrained", PRETRAINED, "--format", "json",
                 "--no-hash")
    assert "frozen-param-changed" not in {f["name"] for f in result.json["findings"]}
    assert "most of them moved" in result.json["transfer"]["by_file"][str(tmp_path / "ft-bn.pth")]["frozen_reason"]


def test_a_narrower_scope_judges_only_what_it_names(run) -> None:
    report = run("check", FINETUNED, "--pretrained", PRETRAINED, "--scope", "backbone.0.body.layer1",
                 "--format", "json", "--no-hash").json
    assert {p["target"].split(".")[3] for p in report["pairs"]} == {"layer1"}
    assert not [f for f in report["findings"] if f["severity"] == "error"]


def test_a_map_to_a_prefixed_pretrained_file_scores_as_without_it(tmp_path: Path, run) -> None:
    prefixed = tmp_path / "prefixed.pth"
    torch.save({f"model.{k}": v for k, v in torch.load(PRETRAINED, weights_only=True).items()}, prefixed)
    plain = run("check", FINETUNED, "--pretrained", str(prefixed), "--format", "json", "--no-hash").json
    mapped = run("check", FINETUNED, "--pretrained", str(prefixed), "--map", "backbone.0.body.=model.",
                 "--format", "json", "--no-hash").json
    for report in (plain, mapped):
        assert report["transfer"]["score"] == 1.0 and set(report["transfer"]["by_stage"]) == {
            "stem", "layer1", "layer2", "layer3", "layer4"}
        assert {(f["key"], f["severity"]) for f in report["findings"]} == {("model.fc.weight", "info"),
                                                                           ("model.fc.bias", "info")}


def test_a_preset_is_checked_even_with_an_explicit_scope(run) -> None:
    result = run("check", SELECTIVE, "--pretrained", PRETRAINED, "--preset", "hf-detr", "--scope", "backbone.0.body")
    assert result.code == 2 and "did you mean --preset detr?" in result.err


def test_min_score_at_exactly_the_score_passes(run) -> None:
    report = run("check", SELECTIVE, "--pretrained", PRETRAINED, "--format", "json", "--no-hash").json
    score = report["transfer"]["score"]
    at = f"{score * 100:.4f}"
    findings = run("check", SELECTIVE, "--pretrained", PRETRAINED, "--min-score", at, "--format", "json",
                   "--no-hash").json["findings"]
    assert "low-transfer-score" not in {f["name"] for f in findings}
