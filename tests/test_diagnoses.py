"""Diagnoses: the grouping mechanics, the fixes they print, and the shapes reports give them.
(Every fixture case's exact diagnoses are checked in test_cases.py.)"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch

import ckptlint
from ckptlint.diagnose.cover import KeyTree, cover
from ckptlint.diagnose.kinds import kinds, parse_kinds
from ckptlint.diagnose.prefix import missed_prefix, renamed_prefix
from ckptlint.engine.registry import load_all_rules
from ckptlint.errors import ConfigError, RuleError
from ckptlint.results import PairRecord
from conftest import CASES, FIXTURES, fixture_generator

PRETRAINED = str(FIXTURES / "models" / "resnet50_tiny.pth")
SELECTIVE = str(CASES / "transfer-selective" / "detr.pth")
NAIVE = str(CASES / "transfer-naive-copy" / "detr.pth")


def test_cover_climbs_to_the_largest_wholly_affected_subtree_and_no_further() -> None:
    keys = [f"body.layer{s}.{b}.conv{c}.weight" for s in (3, 4) for b in (0, 1) for c in (1, 2)]
    tree = KeyTree(keys)
    layer4 = [k for k in keys if ".layer4." in k]
    assert cover([(k, False) for k in layer4], layer4, tree, "body") == ["body.layer4"]
    assert cover([(k, False) for k in keys], keys, tree, "body") == ["body"]  # never above the scope
    one = ["body.layer3.0.conv1.weight"]
    assert cover([(k, False) for k in one], one, tree, "body") == ["body.layer3.0.conv1"]
    # a block the pretrained model lacks (no known key under it) is covered whole
    new = ["body.layer4.0.se.fc1.weight", "body.layer4.0.se.fc2.weight"]
    assert cover([(k, False) for k in new], new, tree, "body") == ["body.layer4.0.se"]
    # without known keys nothing is assumed: each finding keeps its own module
    assert cover([("a.b.weight", False), ("a.c", True)], [], KeyTree([]), None) == ["a.b", "a.c"]


def _pairs(*names: tuple[str, str]) -> list[PairRecord]:
    return [PairRecord("f", target, pretrained, "prefix", "reinitialized") for target, pretrained in names]


@pytest.mark.parametrize(("pairs", "stripped", "expected"), [
    (_pairs(("backbone.0.body.conv1.weight", "conv1.weight"), ("backbone.0.body.fc.bias", "fc.bias")), "",
     {"target": "backbone.0.body.", "pretrained": "", "code": '{"backbone.0.body." + k: v for k, v in sd.items()}'}),
    (_pairs(("conv1.weight", "conv1.weight")), "module.",
     {"target": "", "pretrained": "module.", "code": '{k.removeprefix("module."): v for k, v in sd.items()}'}),
    (_pairs(("model.backbone.conv1.weight", "resnet.conv1.weight")), "model.",
     {"target": "model.backbone.", "pretrained": "model.resnet.",
      "code": '{"model.backbone." + k.removeprefix("model.resnet."): v for k, v in sd.items()}'}),
    (_pairs(("conv1.weight", "conv1.weight")), "", None),  # the names match: no prefix to blame
    (_pairs(("a.embedder.convolution.weight", "conv1.weight"), ("a.encoder.stages.0.x.weight", "layer1.0.y.weight")),
     "", None),  # another naming scheme: no single prefix explains the pairs
])
def test_the_prefix_the_loader_missed_comes_from_the_alignment(pairs, stripped, expected) -> None:
    assert missed_prefix(pairs, stripped) == expected


def test_a_renamed_module_explains_missing_and_unexpected_keys() -> None:
    rename = renamed_prefix([("head.weight", 20), ("head.bias", 4)],
                            [("classifier.weight", 20), ("classifier.bias", 4)])
    assert rename is not None and (rename["new"], rename["old"]) == ("head.", "classifier.")
    loaded = eval(rename["code"], {"sd": {"classifier.weight": 1, "features.0.weight": 2}})  # noqa: S307 - our own code
    assert loaded == {"head.weight": 1, "features.0.weight": 2}
    assert renamed_prefix([("head.weight", 20)], [("classifier.weight", 21)]) is None  # sizes differ: no rename


def test_the_fix_for_a_naive_copy_is_code_that_loads_every_backbone_tensor() -> None:
    report = ckptlint.lint(NAIVE, PRETRAINED)
    (nothing,) = [d for d in report.diagnoses if d.kind == "nothing-loaded"]
    assert nothing.fix.startswith("map the keys when loading: model.load_state_dict(") and nothing.evidence["prefix"]
    pretrained = torch.load(PRETRAINED, weights_only=True)
    mapped = eval(nothing.evidence["prefix"]["code"], {"sd": pretrained})  # noqa: S307 - our own code
    backbone = {key for key in torch.load(NAIVE, weights_only=True)["model"] if key.startswith("backbone.0.body.")}
    assert backbone <= set(mapped)


def test_a_dataparallel_pretrained_file_names_the_module_prefix(tmp_path: Path) -> None:
    gen = fixture_generator()
    pretrained = gen.resnet50_state_dict(seed=0)
    torch.save(OrderedDict(("module." + k, v) for k, v in pretrained.items()), tmp_path / "dp.pth")
    torch.save(gen.untrained_resnet50(pretrained), tmp_path / "fresh.pth")
    report = ckptlint.lint(str(tmp_path / "fresh.pth"), str(tmp_path / "dp.pth"))
    (only,) = report.diagnoses
    assert only.kind == "nothing-loaded" and only.severity == "error"
    assert 'the pretrained file\'s keys start with "module.", the model\'s do not' in only.title
    assert '{k.removeprefix("module."): v for k, v in sd.items()}' in only.fix
    assert set(report.findings) == set(only.findings)  # 267 findings, one cause


def test_a_wrong_pretrained_file_is_one_cause() -> None:
    other = fixture_generator().resnet50_state_dict(seed=7)  # same architecture, independent values
    report = ckptlint.lint(str(CASES / "detr-training-checkpoint" / "checkpoint.pth"), other)
    assert [d.kind for d in report.diagnoses] == ["wrong-pretrained", "head-dropped"]
    assert report.diagnoses[0].title.startswith("wrong pretrained file? 263 of 265 tensors of backbone.0.body")


def test_ignored_rules_leave_the_cause_to_the_rest() -> None:
    report = ckptlint.lint(SELECTIVE, PRETRAINED, ignore=["default-bn-stats"])
    (layer4,) = [d for d in report.diagnoses if d.kind == "reinitialized"]
    assert layer4.modules == ("backbone.0.body.layer4",) and len(layer4.findings) == 50
    assert not ckptlint.lint(SELECTIVE, PRETRAINED, ignore=["not-transferred", "default-bn-stats"]).failing


def test_text_report_is_one_line_per_cause_and_verbose_lists_every_finding(run) -> None:
    lines = run("check", SELECTIVE, "--pretrained", PRETRAINED).out.splitlines()
    before_table = lines[:lines.index("")]
    assert len(before_table) <= 5 and before_table[1].startswith(
        "error    layer4 re-initialised (xavier_uniform convolutions, BatchNorm at defaults): 50 tensors, 61.2k "
        "parameters. Fix: load layer4 from the pretrained weights too")
    assert not any("CKP202" in line for line in lines)
    verbose = run("check", SELECTIVE, "--pretrained", PRETRAINED, "--verbose").out
    assert verbose.count("CKP202 not-transferred") == 50 and verbose.count("CKP103 default-bn-stats") == 10
    wrong = run("check", SELECTIVE, "--format", "json", "-v")
    assert wrong.code == 2 and "--verbose changes only the text report" in wrong.err
    with pytest.raises(ConfigError, match="only the text report"):
        ckptlint.lint(SELECTIVE, PRETRAINED).render("sarif", verbose=True)


def test_every_kind_claims_shipped_rules_and_a_broken_kind_names_the_file() -> None:
    rules = {rule.name for rule in load_all_rules()}
    for kind in kinds():
        assert set(kind.claims) <= rules, kind.name
    with pytest.raises(RuleError, match=r"diagnoses\.toml.*group must be one of"):
        parse_kinds('[[diagnosis]]\nkind = "x"\nclaims = { non-finite = "true" }\ngroup = "run"\n'
                    'title = "t"\nfix = "f"\n', "diagnoses.toml")
    with pytest.raises(RuleError, match="x title does not compile"):
        parse_kinds('[[diagnosis]]\nkind = "x"\nclaims = { non-finite = "true" }\ntitle = "{{ oops"\nfix = "f"\n',
                    "diagnoses.toml")
