"""Several pretrained candidates (``--pretrained a --pretrained b ...``): which one the backbone came
from — the ranking, its diagnosis, the exit code, the JSON and text reports, and what must not change
with one pretrained file."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from ckptlint import lint
from ckptlint.errors import ConfigError
from ckptlint.options import Options
from conftest import CASES, FIXTURES, REPO, fixture_generator

V1 = "../../models/resnet50_tiny.pth"  # the expected one in the fixture cases
V2 = "../../models/resnet50_tiny_v2.pth"
BACKBONE_PARAMETERS = 98812  # the fixture DETR's in-scope parameters, as the score counts them


def _check(run, case: str, *args: str):
    return run("check", *args, "--format", "json", "--no-hash", cwd=CASES / case)


def _candidates(report: dict) -> list[tuple[int, str, bool, float, str]]:
    return [(c["rank"], c["path"], c["expected"], c["share"], c["how"]) for c in report["transfer"]["candidates"]]


def test_copied_from_the_other_candidate_is_ranked_first_and_diagnosed(run) -> None:
    result = _check(run, "transfer-candidates-wrong", "detr.pth", "--pretrained", V1, "--pretrained", V2)
    assert result.code == 1
    report = result.json
    ranking = report["transfer"]["candidates"]
    assert ranking == report["transfer"]["by_file"]["detr.pth"]["candidates"]
    assert [(c["rank"], c["path"], c["expected"]) for c in ranking] == [(1, V2, False), (2, V1, True)]
    assert ranking[0] == {"path": V2, "rank": 1, "expected": False, "share": 1.0, "parameters": BACKBONE_PARAMETERS,
                          "copied": BACKBONE_PARAMETERS, "cast": 0, "finetuned": 0, "tensors": 265, "how": "copied"}
    # v1 explains nothing but a few tiny BatchNorm vectors that happen to lie within --max-drift of it
    assert ranking[1]["copied"] == ranking[1]["cast"] == 0 and ranking[1]["share"] < 0.001
    assert ranking[1]["parameters"] == BACKBONE_PARAMETERS
    (diagnosis,) = [d for d in report["diagnoses"] if d["kind"] == "wrong-pretrained-candidate"]
    assert diagnosis["title"] == f"the backbone is {V2} (100.0% copied), not {V1} (0.0%)"
    assert diagnosis["severity"] == "error"
    # one cause said once: the 265 unrelated tensors are under it, no "wrong pretrained file?" besides
    assert diagnosis["rules"] == ["not-transferred", "wrong-pretrained-candidate"] and len(diagnosis["findings"]) == 266
    assert {d["kind"] for d in report["diagnoses"]} == {"wrong-pretrained-candidate", "head-dropped"}


def test_fine_tuned_from_the_other_candidate(run) -> None:
    result = _check(run, "transfer-candidates-finetuned", "detr.pth", "--pretrained", V1, "--pretrained", V2)
    assert result.code == 1
    best, expected = result.json["transfer"]["candidates"]
    assert (best["path"], best["share"], best["how"]) == (V2, 1.0, "copied and fine-tuned")
    # the drifted convolutions of layer2-layer4 (conv1 and layer1 left alone, as in DETR's training)
    assert best["finetuned"] > 0.9 * BACKBONE_PARAMETERS and best["copied"] + best["finetuned"] == BACKBONE_PARAMETERS
    assert expected["path"] == V1 and expected["share"] < 0.001
    titles = [d["title"] for d in result.json["diagnoses"]]
    assert f"the backbone is {V2} (100.0% copied and fine-tuned), not {V1} (0.0%)" in titles


def test_the_expected_candidate_is_ranked_first_and_nothing_is_said(run) -> None:
    result = _check(run, "detr-training-checkpoint", "checkpoint.pth", "--pretrained", V1, "--pretrained", V2)
    assert result.code == 0
    expected, other = _candidates(result.json)
    assert expected == (1, V1, True, 1.0, "copied")
    assert other[:3] == (2, V2, False) and other[3] < 0.001  # a few tiny BatchNorm vectors close by chance
    assert "wrong-pretrained-candidate" not in {f["name"] for f in result.json["findings"]}
    assert [d["kind"] for d in result.json["diagnoses"]] == ["head-dropped"]


def test_text_report_ranks_the_candidates(run) -> None:
    out = run("check", "detr.pth", "--pretrained", V1, "--pretrained", V2, cwd=CASES / "transfer-candidates-wrong").out
    lines = out.splitlines()
    assert lines[1].startswith(f"error    the backbone is {V2} (100.0% copied), not {V1} (0.0%). Fix: ")
    file_line = next(i for i, line in enumerate(lines) if line.startswith("detr.pth ("))
    assert lines[file_line + 1] == f"  pretrained candidates: 1. {V2} 100.0% copied; 2. {V1} (expected) 0.0%"
    # the expected file is judged as before: its pretrained-file block, then the candidate's
    assert f"{V1} (torch-zip, layout bare, 320 tensors, 111.8k parameters, pretrained): no findings" in lines
    assert f"{V2} (torch-zip, layout bare, 320 tensors, 111.8k parameters, pretrained): no findings" in lines


def test_order_given_decides_which_is_expected(run) -> None:
    """Given first, v2 is the expected one: the same target then passes the ranking."""
    result = _check(run, "transfer-candidates-wrong", "detr.pth", "--pretrained", V2, "--pretrained", V1)
    assert result.code == 0
    assert [(c["rank"], c["path"], c["expected"]) for c in result.json["transfer"]["candidates"]] == \
        [(1, V2, True), (2, V1, False)]
    assert result.json["transfer"]["by_file"]["detr.pth"]["pretrained"] == V2


def test_one_pretrained_file_gives_no_ranking(run) -> None:
    result = _check(run, "transfer-candidates-wrong", "detr.pth", "--pretrained", V1)
    assert result.code == 1
    transfer = result.json["transfer"]
    assert "candidates" not in transfer and "candidates" not in transfer["by_file"]["detr.pth"]
    assert "wrong-pretrained-candidate" not in {f["name"] for f in result.json["findings"]}
    assert {d["kind"] for d in result.json["diagnoses"]} == {"wrong-pretrained", "head-dropped"}
    text = run("check", "detr.pth", "--pretrained", V1, cwd=CASES / "transfer-candidates-wrong").out
    assert "pretrained candidates" not in text


def test_ignoring_the_rule_leaves_the_transfer_findings(run) -> None:
    result = _check(run, "transfer-candidates-wrong", "detr.pth", "--pretrained", V1, "--pretrained", V2,
                    "--ignore", "wrong-pretrained-candidate")
    assert result.code == 1
    assert "wrong-pretrained-candidate" not in {f["name"] for f in result.json["findings"]}
    assert {d["kind"] for d in result.json["diagnoses"]} == {"wrong-pretrained", "head-dropped"}
    assert result.json["transfer"]["candidates"][0]["path"] == V2  # the ranking is data, reported either way


def test_a_missing_candidate_is_a_one_line_usage_error(run) -> None:
    result = run("check", "detr.pth", "--pretrained", V1, "--pretrained", "resnet50_v3.pth",
                 cwd=CASES / "transfer-candidates-wrong")
    assert result.code == 2 and result.out == ""
    assert result.err == ("ckptlint: error: pretrained: no such file or folder: resnet50_v3.pth "
                          "(every candidate must exist)\n")


def test_a_candidate_given_twice_is_a_usage_error(run) -> None:
    result = run("check", "detr.pth", "--pretrained", V1, "--pretrained", V1, cwd=CASES / "transfer-candidates-wrong")
    assert result.code == 2
    assert result.err == f"ckptlint: error: pretrained names {V1} twice\n"


def test_options_lint_and_configuration_take_a_list() -> None:
    wrong = str(CASES / "transfer-candidates-wrong" / "detr.pth")
    v1, v2 = str(FIXTURES / "models" / "resnet50_tiny.pth"), str(FIXTURES / "models" / "resnet50_tiny_v2.pth")
    listed = Options(pretrained=[v1, v2])
    assert (listed.pretrained, listed.candidates) == (v1, (v2,))
    assert Options(pretrained=v1, candidates=(v2,)) == listed
    assert Options(pretrained=[v1]) == Options(pretrained=v1)
    with pytest.raises(ConfigError, match="needs one expected pretrained checkpoint first"):
        Options(candidates=(v2,))
    report = lint(wrong, pretrained=[v1, v2])
    (target,) = report.transfer.by_file.values()
    assert (target.candidates[0].path, target.candidates[0].rank, target.candidates[0].share) == (v2, 1, 1.0)
    assert report.exit_code() == 1


def test_configuration_lists_candidates_relative_to_its_folder(run, tmp_path: Path) -> None:
    config = tmp_path / "ckptlint.toml"
    models = FIXTURES / "models"
    config.write_text(f'pretrained = ["{models / "resnet50_tiny.pth"}", "{models / "resnet50_tiny_v2.pth"}"]\n')
    result = run("check", str(CASES / "transfer-candidates-wrong" / "detr.pth"), "--format", "json", "--no-hash",
                 cwd=tmp_path)
    assert result.code == 1
    assert [c["path"] for c in result.json["transfer"]["candidates"]] == \
        [str(models / "resnet50_tiny_v2.pth"), str(models / "resnet50_tiny.pth")]


def test_in_memory_candidates() -> None:
    generator = fixture_generator()
    v1, v2 = generator.resnet50_state_dict(seed=0), generator.resnet50_state_dict(seed=1)
    detr = generator.detr_state_dict(v2)
    (target,) = lint(detr, pretrained=[v1, v2]).transfer.by_file.values()
    best = target.candidates[0]
    assert (best.path, best.rank, best.expected, best.share) == ("<pretrained 2>", 1, False, 1.0)


# --- ten candidates of ResNet-50 size ---

def _resnet50_shapes() -> dict[str, tuple[int, ...]]:
    """torchvision's ResNet-50 keys and shapes (full width), from the fixture generator."""
    generator = fixture_generator()  # a private copy: widening it changes no other test's fixtures
    generator.WIDTH_DIV, generator.NUM_CLASSES = 1, 1000
    return {key: tuple(value.shape) for key, value in generator.resnet50_state_dict(seed=0).items()}


def _trained_like(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    """Heavy-tailed values with per-row offsets (as the fixtures' trained_like), one seed per candidate."""
    rng = np.random.default_rng(seed)
    values = {}
    for key, shape in shapes.items():
        if not shape:
            values[key] = np.array(450450, dtype=np.int64)
            continue
        base = rng.standard_normal(shape, dtype=np.float32) * np.exp(0.6 * rng.standard_normal(shape, dtype=np.float32))
        offset = 0.3 * rng.standard_normal((shape[0],) + (1,) * (len(shape) - 1), dtype=np.float32)
        values[key] = ((base + offset) * 0.05).astype(np.float32)
    return values


def test_ten_resnet50_size_candidates(run, tmp_path: Path) -> None:
    shapes = _resnet50_shapes()
    assert sum(int(np.prod(s)) for s in shapes.values()) > 25_000_000
    source = 7  # the backbone's real origin; candidate 0 is the expected one
    for index in range(10):
        candidate = _trained_like(shapes, seed=100 + index)
        save_file(candidate, str(tmp_path / f"resnet50_{index}.safetensors"))
        if index == source:
            target = OrderedDict((f"backbone.0.body.{k}", v) for k, v in candidate.items() if not k.startswith("fc."))
            target["transformer.encoder.layers.0.linear1.weight"] = np.ones((8, 8), np.float32)
            save_file(dict(target), str(tmp_path / "detr.safetensors"))
    args = [arg for index in range(10) for arg in ("--pretrained", f"resnet50_{index}.safetensors")]
    result = run("check", "detr.safetensors", *args, "--format", "json", "--no-hash", cwd=tmp_path)
    assert result.code == 1
    ranking = result.json["transfer"]["candidates"]
    assert len(ranking) == 10 and [c["rank"] for c in ranking] == list(range(1, 11))
    best = ranking[0]
    assert (best["path"], best["share"], best["how"], best["copied"]) == \
        (f"resnet50_{source}.safetensors", 1.0, "copied", best["parameters"])
    assert best["parameters"] > 23_000_000  # the backbone without the classifier
    assert all(c["share"] < 0.01 for c in ranking[1:])
    # ties keep the order given: the expected file first among the ones explaining (next to) nothing
    assert ranking[1]["path"] == "resnet50_0.safetensors" or ranking[1]["share"] > ranking[2]["share"]
    (diagnosis,) = [d for d in result.json["diagnoses"] if d["kind"] == "wrong-pretrained-candidate"]
    assert diagnosis["title"].startswith(f"the backbone is resnet50_{source}.safetensors (100.0% copied), "
                                         "not resnet50_0.safetensors (0.")


def test_readme_documents_the_candidates() -> None:
    readme = (REPO / "README.md").read_text("utf-8")
    assert "--pretrained fixtures/models/resnet50_tiny.pth --pretrained fixtures/models/resnet50_tiny_v2.pth" in readme
    assert json.dumps("candidates") in readme or "`transfer.candidates`" in readme
