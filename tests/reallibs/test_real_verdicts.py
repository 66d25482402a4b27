"""The verdict on checkpoints built and saved by torchvision, timm and transformers themselves,
checked with the README's own command and no flags: what must be reported, and what must not.

The scenarios (their construction and what was planted) are described in each builder and in the
merged manifest; see conftest.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

HF_DETRS = [f"hf{version}-{backbone}" for version in (4, 5) for backbone in ("timm", "hfresnet")]


def _check(target: Path, pretrained: Path, *args: str) -> tuple[int, dict, str]:
    """``ckptlint check TARGET --pretrained PRETRAINED`` as a user runs it."""
    done = subprocess.run([sys.executable, "-m", "ckptlint", "check", str(target), "--pretrained", str(pretrained),
                           "--format", "json", "--no-hash", *args], capture_output=True, text=True, timeout=600)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout), done.stderr


def _findings(report: dict, *severities: str) -> Counter:
    return Counter(f["name"] for f in report["findings"] if f["severity"] in severities)


def _run(scenarios, name: str, pretrained_role: str = "pretrained", *args: str) -> tuple[int, dict]:
    scenario = scenarios.get(name)
    code, report, _ = _check(Path(scenario["files"]["target"]), Path(scenario["files"][pretrained_role]), *args)
    return code, report


def test_released_training_checkpoint_of_a_fine_tuned_detr_passes_as_fine_tuned(reallibs_scenarios) -> None:
    code, report = _run(reallibs_scenarios, "detr-finetuned")
    transfer = report["transfer"]
    assert code == 0 and transfer["score"] == 1.0
    assert transfer["expect"] == "finetuned" and "training state (optimizer, lr_scheduler, epoch, args)" in \
        transfer["expect_reason"]
    assert _findings(report, "error", "warning") == Counter()
    verdicts = Counter(p["verdict"] for p in report["pairs"])
    trainable = reallibs_scenarios.get("detr-finetuned")["planted"]["trainable_backbone"]
    assert verdicts["fine-tuned"] == len(trainable) and set(verdicts) == {"copied", "fine-tuned"}
    assert {p["target"] for p in report["pairs"] if p["verdict"] == "fine-tuned"} == set(trainable)


def test_one_frozen_batchnorm_statistic_changed_is_frozen_param_changed(reallibs_scenarios) -> None:
    code, report = _run(reallibs_scenarios, "detr-finetuned-frozen-changed")
    planted = reallibs_scenarios.get("detr-finetuned-frozen-changed")["planted"]["frozen_changed"]["key"]
    assert code == 1
    errors = [(f["name"], f["key"]) for f in report["findings"] if f["severity"] == "error"]
    assert errors == [("frozen-param-changed", planted)]
    assert report["transfer"]["expect"] == "finetuned" and report["transfer"]["score"] < 1.0


def test_r101_loaded_from_r50_weights_fails_on_exactly_the_blocks_nobody_loaded(reallibs_scenarios) -> None:
    code, report = _run(reallibs_scenarios, "detr-r101-from-r50", "actual_source")
    assert code == 1
    unmatched = {f["key"] for f in report["findings"]
                 if f["name"] == "unmatched-target-key" and f["severity"] == "error"}
    layer3_blocks = {key.split(".")[4] for key in unmatched}
    assert {key.split(".")[3] for key in unmatched} == {"layer3"} and layer3_blocks == {str(b) for b in range(6, 23)}
    assert not any(f["name"] == "not-transferred" for f in report["findings"])
    assert report["transfer"]["score"] < 0.6 and report["transfer"]["by_stage"]["layer3"]["score"] < 0.3


def test_naive_copy_that_loaded_nothing_fails_on_every_backbone_tensor(reallibs_scenarios) -> None:
    code, report = _run(reallibs_scenarios, "detr-naive")
    assert code == 1 and report["transfer"]["score"] == 0.0
    assert _findings(report, "error") == Counter({"not-transferred": 265})


def test_the_wrong_pretrained_file_is_errors_even_when_fine_tuning_is_asked_for(reallibs_scenarios) -> None:
    code, report = _run(reallibs_scenarios, "detr-wrong-pretrained", "pretrained", "--expect", "finetuned")
    assert code == 1
    assert {p["verdict"] for p in report["pairs"]} <= {"unrelated", "reinitialized"}
    not_transferred = [f for f in report["findings"] if f["name"] == "not-transferred"]
    assert len(not_transferred) == 265 and {f["severity"] for f in not_transferred} == {"error"}


def test_an_assembled_detr_with_a_copied_backbone_passes_with_no_warning(reallibs_scenarios) -> None:
    code, report = _run(reallibs_scenarios, "detr-assembled")
    assert code == 0 and report["transfer"]["score"] == 1.0 and report["transfer"]["expect"] == "copied"
    assert _findings(report, "error", "warning") == Counter()
    outside = report["transfer"]["by_file"][str(reallibs_scenarios.file("detr-assembled"))]["outside_scope"]
    assert {"transformer", "query_embed", "input_proj", "class_embed", "bbox_embed"} <= set(outside["modules"])


@pytest.mark.parametrize("detr", HF_DETRS)
@pytest.mark.parametrize("stage", ["assembled", "finetuned"])
def test_transformers_4_and_5_detrs_behave_alike(reallibs_scenarios, detr: str, stage: str) -> None:
    """timm and HF-ResNet backbones, transformers 4 and 5 naming, copied then trained three steps:
    every one passes at 100% with nothing worse than info, whatever each version freezes."""
    name = f"{detr}-{stage}"
    code, report = _run(reallibs_scenarios, name)
    assert code == 0, report["findings"][:5]
    assert _findings(report, "error", "warning") == Counter()
    assert report["transfer"]["score"] == 1.0
    assert set(report["transfer"]["by_stage"]) == {"stem", "layer1", "layer2", "layer3", "layer4"}
    changed = reallibs_scenarios.get(name).get("planted", {}).get("backbone_changed", {}).get("count", 0)
    assert report["transfer"]["expect"] == ("finetuned" if changed else "copied")
    fine_tuned = sum(p["verdict"] == "fine-tuned" for p in report["pairs"])
    assert fine_tuned == changed


@pytest.mark.parametrize("detr", ["hf4-timm-finetuned", "hf5-timm-finetuned"])
def test_the_hf_detr_preset_gives_no_false_frozen_findings(reallibs_scenarios, detr: str) -> None:
    code, report = _run(reallibs_scenarios, detr, "pretrained", "--preset", "hf-detr")
    assert code == 0 and _findings(report, "error", "warning") == Counter()


@pytest.mark.parametrize("version", [4, 5])
def test_a_resized_classifier_head_gets_one_cause(reallibs_scenarios, version: int) -> None:
    _, report = _run(reallibs_scenarios, f"hf{version}-labels2-from10")
    causes = {f["key"]: f["evidence"]["cause"] for f in report["findings"] if f["name"] == "shape-mismatch"}
    assert causes == {"class_labels_classifier.weight": "smaller", "class_labels_classifier.bias": "smaller"}
