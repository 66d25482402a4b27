"""``ckptlint diff OLD NEW``: exact pairs and categories on the shipped fixtures (fixtures/diff/),
the diff rules' findings (and that no other rule speaks), exit codes, every report format,
``--git`` on a real repository (Git LFS pointers with and without their object), bad input,
the Python API, and the diff subject's facts against the vocabulary."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import torch

import ckptlint
from ckptlint.engine.evaluate import Evaluator
from ckptlint.vocabulary import DIFF, names_in_scope
from conftest import CASES, FIXTURES, REPO

DIFFS = FIXTURES / "diff"
SMALL_KEYS = ("features.0.weight", "features.1.weight", "features.1.bias", "features.1.running_mean",
              "features.1.running_var", "features.1.num_batches_tracked", "classifier.weight", "classifier.bias")
DIFF_RULES = {"diff-key-removed", "diff-frozen-changed", "diff-dtype-downcast", "diff-new-non-finite",
              "diff-bn-stats-reset", "diff-key-added", "diff-resized"}
SARIF = jsonschema.Draft4Validator(json.loads((REPO / "tests" / "schemas" / "sarif-schema-2.1.0.json").read_text()))


def _small(**categories: str) -> dict[str, str]:
    """Every key of the small model unchanged, except the given ones (dots as __)."""
    expected = dict.fromkeys(SMALL_KEYS, "unchanged")
    expected.update({key.replace("__", "."): category for key, category in categories.items()})
    return expected


def _json(run: Any, *args: str) -> tuple[int, dict[str, Any]]:
    result = run("diff", *args, "--format", "json")
    return result.code, result.json


def _findings(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    return sorted((f["name"], f["key"] or "", f["severity"]) for f in report["findings"])


def _categories(report: dict[str, Any]) -> dict[str, str]:
    return {pair["key"]: pair["category"] for pair in report["diff"]["pairs"]}


SCENARIOS = [
    ("identical", _small(), [], 0),
    ("head-fine-tuned", _small(classifier__weight="changed", classifier__bias="changed"), [], 0),
    ("key-removed-added", {**_small(classifier__bias="removed"), "aux_head.weight": "added"},
     [("diff-key-added", "aux_head.weight", "info"), ("diff-key-removed", "classifier.bias", "error")], 1),
    ("downcast", _small(classifier__weight="cast"), [("diff-dtype-downcast", "classifier.weight", "warning")], 0),
    ("nan-introduced", _small(features__0__weight="changed"),
     [("diff-new-non-finite", "features.0.weight", "error")], 1),
    ("bn-stats-reset", _small(features__1__running_mean="changed", features__1__running_var="changed"),
     [("diff-bn-stats-reset", "features.1.running_mean", "warning")], 0),
    ("head-resized", _small(classifier__weight="resized", classifier__bias="resized"),
     [("diff-resized", "classifier.bias", "warning"), ("diff-resized", "classifier.weight", "warning")], 0),
]


@pytest.mark.parametrize(("scenario", "categories", "findings", "exit_code"), SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_fixture_scenarios(scenario: str, categories: dict[str, str], findings: list[tuple[str, str, str]],
                           exit_code: int, run: Any) -> None:
    folder = DIFFS / scenario
    code, report = _json(run, str(folder / "old.pt"), str(folder / "new.pt"))
    assert _categories(report) == categories  # every tensor, and nothing else
    assert _findings(report) == findings  # exactly these: no pickle rule, no other diff rule
    assert code == exit_code
    assert report["errors"] == []
    counts = report["diff"]["summary"]
    assert counts["tensors"] == len(categories)
    for category in ("unchanged", "cast", "changed", "resized", "added", "removed"):
        assert counts[category] == sum(c == category for c in categories.values())


def test_pairs_carry_dtypes_shapes_and_numbers(run: Any) -> None:
    _, tuned = _json(run, str(DIFFS / "head-fine-tuned" / "old.pt"), str(DIFFS / "head-fine-tuned" / "new.pt"))
    pairs = {p["key"]: p for p in tuned["diff"]["pairs"]}
    weight = pairs["classifier.weight"]
    assert (weight["old"], weight["new"], weight["old_dtype"], weight["new_dtype"]) == (
        "classifier.weight", "classifier.weight", "float32", "float32")
    assert weight["old_shape"] == weight["new_shape"] == [10, 16]
    assert 0.02 < weight["rel_l2"] < 0.1 and 0.99 < weight["cosine"] < 1.0  # drifted by 5% of the std
    assert pairs["features.0.weight"]["rel_l2"] == 0.0 and pairs["features.0.weight"]["cosine"] == 1.0
    assert tuned["diff"]["by_module"]["classifier"]["changed"] == 2
    assert tuned["diff"]["by_module"]["features.0"] == {"tensors": 1, "parameters": 1152, "unchanged": 1, "cast": 0,
                                                        "changed": 0, "resized": 0, "added": 0, "removed": 0}
    assert tuned["diff"]["summary"]["line"].endswith("8 tensors — 6 unchanged, 2 changed")
    _, downcast = _json(run, str(DIFFS / "downcast" / "old.pt"), str(DIFFS / "downcast" / "new.pt"))
    assert downcast["diff"]["dtype_changes"] == {"float32 -> float16": 1}
    cast = next(p for p in downcast["diff"]["pairs"] if p["key"] == "classifier.weight")
    assert (cast["old_dtype"], cast["new_dtype"], cast["category"]) == ("float32", "float16", "cast")
    _, removed = _json(run, str(DIFFS / "key-removed-added" / "old.pt"), str(DIFFS / "key-removed-added" / "new.pt"))
    by_key = {p["key"]: p for p in removed["diff"]["pairs"]}
    assert (by_key["classifier.bias"]["new"], by_key["classifier.bias"]["new_shape"]) == (None, None)
    assert (by_key["aux_head.weight"]["old"], by_key["aux_head.weight"]["old_dtype"]) == (None, None)
    _, nan = _json(run, str(DIFFS / "nan-introduced" / "old.pt"), str(DIFFS / "nan-introduced" / "new.pt"))
    assert nan["diff"]["new_non_finite"] == ["features.0.weight"]
    assert {p["key"]: p["new_nonfinite"] for p in nan["diff"]["pairs"]}["features.0.weight"] == 2


def test_frozen_tensors_come_from_the_preset(run: Any) -> None:
    old, new = str(DIFFS / "frozen-changed" / "old.pth"), str(DIFFS / "frozen-changed" / "new.pth")
    code, report = _json(run, old, new, "--preset", "detr")
    assert _findings(report) == [("diff-frozen-changed", "backbone.0.body.conv1.weight", "error")]
    assert code == 1
    assert report["diff"]["frozen_changed"] == ["backbone.0.body.conv1.weight"]
    changed = {k for k, c in _categories(report).items() if c != "unchanged"}
    assert len(changed) == 40 and "backbone.0.body.conv1.weight" in changed
    by_stage = report["diff"]["by_stage"]
    assert (by_stage["stem"]["changed"], by_stage["layer1"]["changed"], by_stage["layer2"]["changed"]) == (1, 0, 12)
    # without a preset nothing says which tensors are frozen: the same change passes
    code, report = _json(run, old, new)
    assert (code, _findings(report), report["diff"]["frozen_changed"]) == (0, [], [])
    # a preset whose scopes neither file has would freeze nothing: a usage error
    result = run("diff", str(DIFFS / "identical" / "old.pt"), str(DIFFS / "identical" / "new.pt"), "--preset", "detr")
    assert result.code == 2 and result.err.count("\n") == 1 and "backbone.0.body" in result.err


def test_selection_and_fail_on_apply(run: Any) -> None:
    old, new = str(DIFFS / "key-removed-added" / "old.pt"), str(DIFFS / "key-removed-added" / "new.pt")
    code, report = _json(run, old, new, "--ignore", "diff-key-removed")
    assert (code, _findings(report)) == (0, [("diff-key-added", "aux_head.weight", "info")])
    code, report = _json(run, old, new, "--select", "CKP306", "--fail-on", "info")
    assert (code, _findings(report)) == (1, [("diff-key-added", "aux_head.weight", "info")])
    code, report = _json(run, old, new, "--fail-on", "never")
    assert code == 0 and len(report["findings"]) == 2
    sarif = json.loads(run("diff", old, new, "--format", "sarif").out)
    rules = {rule["id"] for rule in sarif["runs"][0]["tool"]["driver"]["rules"]}
    assert rules == {"CKP001", "CKP002", *(f"CKP30{i}" for i in range(1, 8))}  # what a diff can judge


def test_text_report(run: Any) -> None:
    result = run("diff", str(DIFFS / "key-removed-added" / "old.pt"), str(DIFFS / "key-removed-added" / "new.pt"))
    assert result.code == 1
    out = result.out
    assert out.startswith("FAILED: 1 finding at or above error (diff-key-removed x1)\n")
    assert f"Diff: {DIFFS / 'key-removed-added' / 'new.pt'} vs {DIFFS / 'key-removed-added' / 'old.pt'}: " \
           "9 tensors — 7 unchanged, 1 added, 1 removed" in out
    assert "CKP301 diff-key-removed" in out and "classifier.bias" in out
    assert "    aux_head    1 added\n" in out and "    classifier  1 removed\n" in out
    assert "features" not in out.split("changes by module:")[1]  # unchanged modules are left out
    assert "stage" not in out  # no ResNet stages here: no stage table
    verbose = run("diff", str(DIFFS / "head-fine-tuned" / "old.pt"), str(DIFFS / "head-fine-tuned" / "new.pt"), "-v")
    assert "  changed   classifier.weight  float32 [10, 16]  rel L2 " in verbose.out
    assert "unchanged features" not in verbose.out


def test_sarif_github_and_html(run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = str(DIFFS / "key-removed-added" / "old.pt"), str(DIFFS / "key-removed-added" / "new.pt")
    sarif = run("diff", old, new, "--format", "sarif")
    log = json.loads(sarif.out)
    SARIF.validate(log)
    (sarif_run,) = log["runs"]
    assert sorted((r["ruleId"], r["level"]) for r in sarif_run["results"]) == [("CKP301", "error"), ("CKP306", "note")]
    assert sarif_run["properties"]["diff"].endswith("9 tensors — 7 unchanged, 1 added, 1 removed")
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    github = run("diff", old, new, "--format", "github")
    lines = github.out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("::error file=") and "title=ckptlint diff-key-removed::classifier.bias: " in lines[0]
    assert lines[1].startswith("::notice file=") and "aux_head.weight" in lines[1]
    assert "| 7 | 0 | 0 | 0 | 1 | 1 |" in summary.read_text()
    html = run("diff", old, new, "--format", "html", "-o", str(tmp_path / "report.html"))
    assert html.code == 1 and "Report: " in html.err
    page = (tmp_path / "report.html").read_text()
    assert '<section id="diff">' in page and "9 tensors — 7 unchanged, 1 added, 1 removed" in page
    assert 'class="badge v-removed">1 removed' in page and "aux_head" in page
    plain = run("diff", str(DIFFS / "identical" / "old.pt"), str(DIFFS / "identical" / "new.pt"), "--format", "html")
    assert 'v-removed">1' not in plain.out and "8 tensors — 8 unchanged" in plain.out


def test_plain_check_runs_no_diff_rule(run: Any) -> None:
    result = run("check", str(DIFFS / "nan-introduced" / "new.pt"), "--format", "json")
    names = {f["name"] for f in result.json["findings"]}
    assert "non-finite" in names and not names & DIFF_RULES
    assert "diff" not in result.json


def test_malicious_new_is_reported_as_check_reports_it(run: Any, tmp_path: Path) -> None:
    old = tmp_path / "old.pt"
    torch.save(ckptlint_small(2), old)
    code, report = _json(run, str(old), str(CASES / "pickle-os-system" / "model.pt"))
    assert code == 1
    assert {(f["name"], f["file"]) for f in report["findings"]} == {
        ("unsafe-pickle", str(CASES / "pickle-os-system" / "model.pt"))}
    assert set(_categories(report).values()) == {"unchanged"}  # the weights are read, never unpickled
    assert not (tmp_path / "ckptlint-fixture-marker-must-never-exist").exists()


def ckptlint_small(seed: int) -> dict[str, torch.Tensor]:
    from conftest import fixture_generator

    return fixture_generator()._small_model(seed)


@pytest.mark.parametrize("args", [
    ("missing.pt", "also-missing.pt"),
    ("README.md", "README.md"),
])
def test_bad_input_is_one_line_and_exit_2(args: tuple[str, ...], run: Any) -> None:
    result = run("diff", *args, cwd=REPO)
    assert result.code == 2
    assert result.out.count("Diff:") == 0
    errors = [line for line in result.err.splitlines() if line]
    assert sorted(line.split(": ")[1] for line in errors) == sorted(args)  # one line per unreadable file
    assert all(line.startswith("ckptlint: ") for line in errors)
    assert "Traceback" not in result.err


@pytest.mark.parametrize("args", [("only-one.pt",), ("a", "b", "c"), ("--git", "HEAD", "a", "b")])
def test_wrong_arguments_are_usage_errors(args: tuple[str, ...], run: Any) -> None:
    result = run("diff", *args)
    assert result.code == 2 and result.err.count("\n") == 1 and result.err.startswith("ckptlint: error: ")


# --- --git ---

def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", *args],
                          cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository whose model.pt was the small model at v1 and is fine-tuned in v2 (committed)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    _git(tmp_path, "init", "-q", "-b", "main")
    shutil.copy(DIFFS / "head-fine-tuned" / "old.pt", tmp_path / "model.pt")
    _git(tmp_path, "add", "model.pt")
    _git(tmp_path, "commit", "-q", "-m", "v1")
    shutil.copy(DIFFS / "key-removed-added" / "new.pt", tmp_path / "model.pt")
    _git(tmp_path, "commit", "-q", "-am", "v2")
    return tmp_path


def test_git_reads_the_old_version(repo: Path, run: Any) -> None:
    result = run("diff", "--git", "HEAD~1", "model.pt", "--format", "json", cwd=repo)
    assert result.code == 1
    report = result.json
    assert report["diff"]["old"] == "HEAD~1:model.pt" and report["diff"]["new"] == "model.pt"
    assert [f["path"] for f in report["files"]] == ["HEAD~1:model.pt", "model.pt"]
    assert _findings(report) == [("diff-key-added", "aux_head.weight", "info"),
                                 ("diff-key-removed", "classifier.bias", "error")]
    assert {f["file"] for f in report["findings"]} == {"model.pt"}
    same = run("diff", "--git", "HEAD", "model.pt", cwd=repo)
    assert same.code == 0 and "model.pt vs HEAD:model.pt: 8 tensors — 8 unchanged" in same.out
    assert not list(Path(tempfile.gettempdir()).glob("ckptlint-git-*/model.pt"))  # the temporary copy is gone


@pytest.mark.parametrize(("args", "message"), [
    (("--git", "no-such-branch", "model.pt"), "--git no-such-branch: no such revision in this repository"),
    (("--git", "HEAD", "other.pt"), "--git HEAD: other.pt is not in HEAD"),
])
def test_git_errors_are_one_line(repo: Path, run: Any, args: tuple[str, ...], message: str) -> None:
    (repo / "other.pt").write_bytes((repo / "model.pt").read_bytes())
    result = run("diff", *args, cwd=repo)
    assert (result.code, result.out) == (2, "")
    assert result.err == f"ckptlint: error: {message}\n"


def test_git_outside_a_repository(tmp_path: Path, run: Any) -> None:
    shutil.copy(DIFFS / "identical" / "new.pt", tmp_path / "model.pt")
    result = run("diff", "--git", "HEAD", "model.pt", cwd=tmp_path)
    assert result.code == 2 and result.err.startswith("ckptlint: error: --git HEAD: the current folder is not in a git")
    assert result.err.count("\n") == 1


def _pointer(data: bytes) -> tuple[str, bytes]:
    oid = hashlib.sha256(data).hexdigest()
    return oid, f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n".encode()


def test_git_lfs_pointer_with_and_without_its_object(repo: Path, run: Any) -> None:
    weights = (DIFFS / "head-fine-tuned" / "old.pt").read_bytes()
    oid, pointer = _pointer(weights)
    (repo / "lfs.pt").write_bytes(pointer)
    _git(repo, "add", "lfs.pt")
    _git(repo, "commit", "-q", "-m", "an LFS pointer")
    shutil.copy(DIFFS / "head-fine-tuned" / "new.pt", repo / "lfs.pt")  # the working tree has the real file
    missing = run("diff", "--git", "HEAD", "lfs.pt", cwd=repo)
    assert (missing.code, missing.out) == (2, "")
    assert missing.err == ("ckptlint: error: HEAD:lfs.pt: is a Git LFS pointer and its object is not present "
                           "locally (run `git lfs fetch origin HEAD`, or check out with LFS, then run this again)\n")
    store = repo / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4]
    store.mkdir(parents=True)
    (store / oid).write_bytes(weights[:100] + bytes([weights[100] ^ 1]) + weights[101:])  # same size, another digest
    corrupt = run("diff", "--git", "HEAD", "lfs.pt", cwd=repo)
    assert corrupt.code == 2 and "does not match its pointer" in corrupt.err and corrupt.err.count("\n") == 1
    (store / oid).write_bytes(weights)
    present = run("diff", "--git", "HEAD", "lfs.pt", "--format", "json", cwd=repo)
    assert present.code == 0, present.err
    assert _categories(present.json) == _small(classifier__weight="changed", classifier__bias="changed")
    assert present.json["diff"]["old"] == "HEAD:lfs.pt" and present.json["findings"] == []


# --- the Python API ---

def test_python_api_takes_paths_and_state_dicts() -> None:
    old = ckptlint_small(5)
    new = dict(old)
    new["classifier.weight"] = old["classifier.weight"].half()
    del new["classifier.bias"]
    report = ckptlint.diff(old, new, fail_on="warning")
    assert isinstance(report, ckptlint.Report) and report.diff is not None
    assert {p.key: p.category for p in report.diff.pairs} == _small(classifier__weight="cast",
                                                                     classifier__bias="removed")
    assert sorted(f.name for f in report.findings) == ["diff-dtype-downcast", "diff-key-removed"]
    assert report.exit_code() == 1 and report.diff.summary_line() == (
        "<new> vs <old>: 8 tensors — 6 unchanged, 1 cast, 1 removed")
    assert json.loads(report.render("json"))["diff"]["summary"]["cast"] == 1
    from_files = ckptlint.diff(DIFFS / "identical" / "old.pt", DIFFS / "identical" / "new.pt")
    assert from_files.exit_code() == 0 and from_files.findings == [] and from_files.diff.summary.unchanged == 8
    with pytest.raises(ckptlint.CkptlintError, match="pretrained"):
        ckptlint.diff(old, new, pretrained="x.pt")  # no transfer settings in a diff


def test_zero_tensor_that_became_nonzero_is_json_safe() -> None:
    old = {"w": np.zeros((4, 4), dtype=np.float32)}
    new = {"w": np.ones((4, 4), dtype=np.float32)}
    report = ckptlint.diff(old, new)
    (pair,) = json.loads(report.render("json"))["diff"]["pairs"]
    assert (pair["category"], pair["rel_l2"]) == ("changed", "inf")


# --- the vocabulary: the diff subject's facts are exactly the declared ones ---

def test_the_diff_facts_are_the_declared_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, set[str], set[str]]] = []
    original = Evaluator.run

    def record(self, subject, facts, file, key, context, reference=None, only_in=None):
        if subject == "diff":
            seen.append((facts["category"], set(facts), set(context)))
        return original(self, subject, facts, file, key, context, reference, only_in)

    monkeypatch.setattr(Evaluator, "run", record)
    ckptlint.diff(DIFFS / "key-removed-added" / "old.pt", DIFFS / "key-removed-added" / "new.pt")
    ckptlint.diff(DIFFS / "downcast" / "old.pt", DIFFS / "downcast" / "new.pt")
    ckptlint.diff(DIFFS / "head-resized" / "old.pt", DIFFS / "head-resized" / "new.pt")
    assert {category for category, _, _ in seen} == {"unchanged", "cast", "resized", "added", "removed"}
    assert set(names_in_scope("diff", None, None)) == {"diff"}
    for _, facts, context in seen:
        assert facts == set(DIFF) and context == set()


# --- the README shows real output ---

README_EXAMPLES = [block for block in re.findall(r"```console\n(.*?)```", (REPO / "README.md").read_text("utf-8"),
                                                 re.S) if block.startswith("$ ckptlint diff fixtures/")]


@pytest.mark.parametrize("example", README_EXAMPLES, ids=[e.partition("\n")[0][2:] for e in README_EXAMPLES])
def test_readme_diff_example_is_the_real_output(example: str, run: Any) -> None:
    command, _, shown = example.partition("\n")
    shown, _, exit_shown = shown.partition("$ echo $?\n")
    result = run(*shlex.split(command)[2:], cwd=REPO)
    assert result.out == shown
    if exit_shown:
        assert result.code == int(exit_shown)


def test_readme_has_the_diff_examples() -> None:
    assert len(README_EXAMPLES) == 2
    readme = (REPO / "README.md").read_text("utf-8")
    assert "ckptlint diff --git origin/${{ github.base_ref }} {} --format github" in readme
