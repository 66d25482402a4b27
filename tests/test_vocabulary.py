"""The rule vocabulary (ckptlint/vocabulary.py) is what the engine really builds, and a rule that
strays from it fails to load with a did-you-mean naming its file."""

from __future__ import annotations

import os
import re
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

import ckptlint
from ckptlint.engine.evaluate import Evaluator
from ckptlint.engine.rules import load_rule_file
from ckptlint.errors import RuleError
from ckptlint.facts.checkpoint import CheckpointFacts
from ckptlint.io.open import open_checkpoint
from ckptlint.vocabulary import MODULE_KINDS, SHAPE_CAUSES, VERDICTS, names_in_scope

REPO = Path(__file__).resolve().parent.parent
CASES = REPO / "fixtures" / "cases"
PRETRAINED = str(REPO / "fixtures" / "models" / "resnet50_tiny.pth")
Seen = dict[tuple[str, str | None, str | None], dict[str, set[str]]]


@pytest.fixture(scope="module")
def seen(tmp_path_factory: pytest.TempPathFactory) -> Seen:
    """Every subject the engine handed to rules in runs that reach every kind of subject, with
    the names in scope and the facts every one of those calls offered."""
    recorded: Seen = defaultdict(dict)
    original = Evaluator.run

    def record(self, subject, facts, file, key, context, reference=None, only_in=None):
        offered = {**context, subject.replace("-", "_"): facts}
        if subject == "pair":
            offered["source"] = facts.source_facts
        names = recorded[(subject, reference, only_in)]
        for name, value in offered.items():  # a rule may rely on what every call offers
            names[name] = names[name] & set(value) if name in names else set(value)
        return original(self, subject, facts, file, key, context, reference, only_in)

    folder_with_a_pickle = tmp_path_factory.mktemp("hf-folder")
    shutil.copy(CASES / "init-weights" / "model.safetensors", folder_with_a_pickle / "model.safetensors")
    shutil.copy(CASES / "pickle-os-system" / "model.pt", folder_with_a_pickle / "optimizer.pt")
    Evaluator.run = record  # type: ignore[method-assign]
    try:
        ckptlint.lint(str(CASES / "transfer-selective" / "detr.pth"), PRETRAINED)
        ckptlint.lint(str(CASES / "transfer-architecture-drift" / "detr.pth"), PRETRAINED)
        ckptlint.lint(str(CASES / "transfer-interpolated" / "detr.pth"), PRETRAINED)
        ckptlint.lint(str(CASES / "pickle-custom-class" / "model.pt"))
        ckptlint.lint(str(folder_with_a_pickle))
        cwd = os.getcwd()
        os.chdir(CASES / "model-code-drift")
        try:
            ckptlint.lint("../model-code/model.pt", model="drifted_net:build")
        finally:
            os.chdir(cwd)
    finally:
        Evaluator.run = original  # type: ignore[method-assign]
    return recorded


def test_the_runs_reach_every_kind_of_subject(seen: Seen) -> None:
    assert set(seen) >= {
        ("file", None, None), ("file", "pretrained", None), ("pickle-global", None, None), ("tensor", None, None),
        ("module", None, None), ("pair", "pretrained", None), ("pair", "model", None), ("transfer", "pretrained", None),
        ("tensor", "pretrained", "target"), ("tensor", "pretrained", "reference"), ("tensor", "model", "target"),
        ("tensor", "model", "reference")}


def test_the_declared_facts_are_exactly_the_facts_built(seen: Seen) -> None:
    """Every declared fact is offered on every call (a rule may rely on it), and nothing more is
    offered — except a pickle's file, of which only the path is promised (a folder's other
    pickles and unreadable files have no more)."""
    for (subject, reference, only_in), built in seen.items():
        declared = names_in_scope(subject, reference, only_in)
        assert set(built) == set(declared), (subject, reference, only_in)
        for name, facts in declared.items():
            if subject == "pickle-global" and name == "file":
                assert facts <= built[name], (subject, reference, name)
            else:
                assert sorted(built[name]) == sorted(facts), (subject, reference, only_in, name)


def test_a_rule_for_any_reference_sees_only_what_every_reference_offers() -> None:
    common = names_in_scope("pair", None, None)["pair"]
    assert common == names_in_scope("pair", "model", None)["pair"]
    assert common < names_in_scope("pair", "pretrained", None)["pair"]


def test_the_element_types_are_the_readers_own() -> None:
    from ckptlint.io.dtypes import DTYPES
    from ckptlint.vocabulary import DTYPE_KINDS, DTYPE_NAMES

    assert set(DTYPE_NAMES) == set(DTYPES) and set(DTYPE_KINDS) == {d.kind for d in DTYPES.values()}


def test_values_come_from_the_vocabulary() -> None:
    """Verdicts, kinds and shape causes the fixtures produce are the ones rules may compare with."""
    report = ckptlint.lint(str(CASES / "transfer-interpolated" / "detr.pth"), PRETRAINED)
    assert {p.verdict for p in report.pairs} <= set(VERDICTS)
    assert {f.evidence["cause"] for f in report.findings if f.name == "shape-mismatch"} <= set(SHAPE_CAUSES)
    for path in (CASES / "transfer-hf-naming" / "model.safetensors", CASES / "model-code" / "model.pt"):
        with open_checkpoint(str(path)) as checkpoint:
            kinds = {data["kind"] for _, data in CheckpointFacts(checkpoint).graph.nodes(data=True)}
        assert kinds <= set(MODULE_KINDS) and len(kinds) >= 4


# --- rule files that stray from the vocabulary ---

def _rule_copy(tmp_path: Path, rule: str, old: str, new: str) -> Path:
    folder = tmp_path / rule
    shutil.copytree(REPO / "rules" / rule, folder)
    text = (folder / "rule.toml").read_text()
    assert old in text
    (folder / "rule.toml").write_text(text.replace(old, new, 1))
    return folder / "rule.toml"


@pytest.mark.parametrize(("rule", "old", "new", "problem"), [
    ("CKP103-default-bn-stats", "'frozen_batchnorm'", "'frozen_batch_norm'",
     r"module.kind is never 'frozen_batch_norm' \(did you mean 'frozen_batchnorm'\?\)"),
    ("CKP202-not-transferred", "pair.verdict in ('reinitialized'", "pair.verdict in ('reinitialised'",
     r"pair.verdict is never 'reinitialised' \(did you mean 'reinitialized'\?\)"),
    ("CKP206-frozen-param-changed", "pair.expect == 'finetuned'", "pair.expect == 'fine-tuned'",
     r"pair.expect is never 'fine-tuned' \(did you mean 'finetuned'\?\)"),
    ("CKP202-not-transferred", "pair.shape_equal", "pair.shape_equals",
     r"pair.shape_equals is not a fact this rule can read \(did you mean 'shape_equal'\?\)"),
    ("CKP101-non-finite", "tensor.is_float", "tensr.is_float", r"unknown name 'tensr' \(did you mean 'tensor'\?\)"),
    ("CKP201-shape-mismatch", "not pair.shape_equal", "pair.verdict == 'resized'",
     r"pair.verdict is not a fact this rule can read"),  # no reference: only what model pairs have too
    ("CKP001-unsafe-pickle", 'condition = "pickle_global.unsafe"',
     'condition = "pickle_global.unsafe and file.role == \'target\'"',
     r"file.role is not a fact this rule can read"),  # a pickle's file may be unreadable: only its path
    ("CKP101-non-finite", "tensor.is_float", "tensor['dtype_kind'] == 'floot' and tensor.is_float",
     r"tensor.dtype_kind is never 'floot' \(did you mean 'float'\?\)"),
    ("CKP101-non-finite", "tensor.is_float", "tensor['is_flaot']", r"tensor.is_flaot is not a fact"),
    ("CKP202-not-transferred", "pair.shape_equal", "pair.reference == 'model' and pair.shape_equal",
     r"pair.reference is never 'model'"),  # the header says pretrained
    ("CKP104-suspicious-init-scale", '"linear", "embedding"', '"lineer", "embedding"',
     r"tensor.module_kind is never 'lineer' \(did you mean 'linear'\?\)"),  # a parameter's own list
    ("CKP101-non-finite", 'subject = "tensor"', 'subject = ["tensor"]', r"subject must be one of"),
    ("CKP209-low-transfer-score", "params.min_score > 0", "params.min_scor > 0",
     r"params.min_scor is not a parameter this rule can read \(did you mean 'min_score'\?\)"),
    ("CKP203-unmatched-target-key", 'only_in = "target"', 'only_in = "targets"',
     r"needs only_in = target or reference"),
    ("CKP202-not-transferred", 'subject = "pair"', 'subject = "pairs"',
     r"subject must be one of .*did you mean 'pair'"),
    ("CKP102-missing-bn-stats", 'subject = "module"', 'subject = "module"\nreference = "model"',
     r"a module rule's reference must be absent"),
])
def test_a_rule_that_strays_from_the_vocabulary_does_not_load(tmp_path: Path, rule: str, old: str, new: str,
                                                              problem: str) -> None:
    path = _rule_copy(tmp_path, rule, old, new)
    with pytest.raises(RuleError, match=problem) as caught:
        load_rule_file(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_the_old_scope_field_says_what_replaced_it(tmp_path: Path) -> None:
    path = _rule_copy(tmp_path, "CKP101-non-finite", 'subject = "tensor"', 'scope = "tensor"')
    with pytest.raises(RuleError, match="`scope` is now `subject`"):
        load_rule_file(path)


def test_the_shipped_rules_load_and_a_close_but_valid_rule_still_loads(tmp_path: Path) -> None:
    """No false alarm: membership in a list of valid values, substring tests and literals the
    vocabulary does not constrain all load."""
    path = _rule_copy(tmp_path, "CKP101-non-finite", 'condition = "tensor.is_float and',
                      "condition = \"tensor.module_kind in ('conv', 'linear') and 'bn' not in tensor.key and "
                      "tensor.leaf != 'anything' and tensor.is_float and")
    assert load_rule_file(path).name == "non-finite"
    for shipped in sorted((REPO / "rules").glob("*/rule.toml")):
        load_rule_file(shipped)


def test_the_engine_hands_a_rule_only_the_subjects_its_header_names(tmp_path: Path) -> None:
    """No rule guards against a reference it does not mean: a pretrained-pair rule whose
    condition is always true still never sees a --model pair."""
    from ckptlint.selection import Selection

    headers = ("CKP202-not-transferred", "CKP201-shape-mismatch", "CKP207-missing-key")
    rules = []
    for folder in headers:
        path = _rule_copy(tmp_path, folder, "condition = ", "condition = ")
        always = re.sub(r'^condition = (""".*?"""|".*?")$', 'condition = "true"', path.read_text(), count=1,
                        flags=re.S | re.M)
        path.write_text(always)
        rules.append(load_rule_file(path))
    judging = Evaluator(rules, Selection()).judging
    assert [r.name for r in judging("pair", "model")] == ["shape-mismatch"]
    assert sorted(r.name for r in judging("pair", "pretrained")) == ["not-transferred", "shape-mismatch"]
    assert judging("tensor") == [] and judging("tensor", "pretrained", "reference") == []
    assert [r.name for r in judging("tensor", "model", "reference")] == ["missing-key"]


@pytest.mark.parametrize(("params", "problem"), [
    ({"suspicious-init-scale": {"kinds": ["lineer"]}}, r"kinds holds 'lineer'.*did you mean 'linear'"),
    ({"suspicious-init-scale": {"kinds": "linear"}}, r"kinds must be like its default \['conv'"),
    ({"low-transfer-score": {"min_score": "50"}}, r"min_score must be like its default 0.0, not '50'"),
    ({"suspicious-init-scale": {"min_elements": True}}, r"min_elements must be like its default"),
])
def test_a_rule_parameter_override_must_fit_the_rule(params: dict, problem: str) -> None:
    """Overrides are checked against the rule: its default's kind, and for a parameter the rule
    compares with a fact, the values that fact takes."""
    from ckptlint.errors import ConfigError

    state = {"conv.weight": np.zeros((8, 8, 3, 3), np.float32)}
    with pytest.raises(ConfigError, match=problem):
        ckptlint.lint(state, params=params)
    assert ckptlint.lint(state, params={"suspicious-init-scale": {"kinds": ["linear"], "min_elements": 10}}).ok


def test_a_misspelt_rule_name_in_a_configuration_file_names_the_file(tmp_path: Path) -> None:
    from ckptlint.errors import ConfigError

    config = tmp_path / "ckptlint.toml"
    config.write_text('ignore = ["non-finit"]\n')
    with pytest.raises(ConfigError, match=r"unknown rule 'non-finit' \(did you mean 'non-finite'\?\)") as caught:
        ckptlint.lint({"w": np.zeros(3, np.float32)}, config=str(config))
    assert caught.value.path == str(config)
