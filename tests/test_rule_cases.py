"""Every rule's own cases (rules/<CODE>-<name>/cases/*.toml), built and checked through the CLI.

A case passes when the command exits as stated, the case's rule fires on exactly the keys it
lists at their severities, and no rule outside the case's ``may_also_fire`` fires at all: a false
alarm by any rule fails the case. ``pytest tests/test_rule_cases.py -k default-bn-stats`` runs one
rule's cases. The format is documented in README.md, "Writing a rule"; the builder is rule_cases.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ckptlint._toml import tomllib
from ckptlint.cli import main
from ckptlint.engine.registry import builtin_rules_dir, load_rules_from
from ckptlint.engine.rule_table import README_COMMAND, markdown_table, table_in
from ckptlint.engine.rules import DOC_SECTIONS, Rule
from conftest import REPO
from rule_cases import CASE_FILES, RULES, Expected, RuleCase, build_files, load_case

BUILTIN_RULES = load_rules_from(builtin_rules_dir())
RULE_OF_FOLDER = {Path(rule.source).parent.name: rule for rule in BUILTIN_RULES}
RULE_NAMES = {rule.name for rule in BUILTIN_RULES}


def _case_id(path: Path) -> str:
    return f"{path.parent.parent.name}/{path.stem}"


@pytest.mark.parametrize("path", CASE_FILES, ids=_case_id)
def test_rule_case(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str]) -> None:
    case = load_case(path)
    rule = RULE_OF_FOLDER[case.rule_folder.name]
    assert case.may_also_fire <= RULE_NAMES - {rule.name}, "may_also_fire names other rules, by name"
    build_files(case, tmp_path)
    monkeypatch.chdir(tmp_path)
    exit_code = main([*case.args, "--format", "json", "-o", "report.json"])
    report = json.loads((tmp_path / "report.json").read_text("utf-8"))
    assert report["errors"] == [], capsys.readouterr().err
    findings = report["findings"]
    _assert_fires_exactly(case.fires, [f for f in findings if f["name"] == rule.name])
    false_alarms = sorted({(f["name"], f["key"] or "") for f in findings
                           if f["name"] != rule.name and f["name"] not in case.may_also_fire})
    assert false_alarms == [], "rules outside may_also_fire fired"
    assert exit_code == case.exit_code


def _assert_fires_exactly(expected: tuple[Expected, ...], fired: list[dict[str, Any]]) -> None:
    """Each entry matches its count of findings, at its severity, with its evidence; nothing else fired."""
    unexpected = sorted(f["key"] or "" for f in fired if not any(e.matches(f) for e in expected))
    assert unexpected == [], "the rule fired on keys the case does not list"
    for entry in expected:
        matched = [f for f in fired if entry.matches(f)]
        assert len(matched) == entry.count, f"findings on {entry.label}"
        for finding in matched:
            assert finding["severity"] == entry.severity, finding["key"]
            for name, value in entry.evidence.items():
                assert finding["evidence"][name] == value, f"{finding['key']}: evidence {name}"


def _cases_of(folder: Path) -> list[RuleCase]:
    return [load_case(path) for path in sorted((folder / "cases").glob("*.toml"))]


@pytest.mark.parametrize("folder", sorted(RULE_OF_FOLDER))
def test_every_rule_has_a_firing_and_a_silent_case(folder: str) -> None:
    cases = _cases_of(RULES / folder)
    assert any(case.fires for case in cases), "no case where the rule fires"
    assert any(not case.fires for case in cases), "no case where the rule must stay silent"


@pytest.mark.parametrize("rule", BUILTIN_RULES, ids=lambda rule: rule.name)
def test_docs_are_complete_and_the_example_is_an_executed_case(rule: Rule, run) -> None:
    """Every section written; the example is the description of a case where the rule fires (so
    ``explain``, the reports and the SARIF help show a situation the suite builds and runs)."""
    assert all(rule.docs[section].strip() for section in DOC_SECTIONS)
    folder = Path(rule.source).parent
    named = tomllib.loads((folder / "rule.toml").read_text("utf-8"))["docs"]["example"]
    case = load_case(folder / named)
    assert case.fires, f"{named}: the documented example must be a case where the rule fires"
    assert rule.docs["example"] == " ".join(case.description.split())
    assert _without_spaces(f"## Example {rule.docs['example']}") in _without_spaces(run("explain", rule.name).out)


def _without_spaces(text: str) -> str:
    """``explain`` wraps lines, at hyphens too: compare the text, not where its lines break."""
    return "".join(text.split())


def test_every_case_belongs_to_a_rule_folder() -> None:
    """A case in a folder without rule.toml would never run against a rule."""
    assert {case.parent.parent.name for case in CASE_FILES} <= set(RULE_OF_FOLDER)
    assert {path.parent.name for path in RULES.glob("*/rule.toml")} == set(RULE_OF_FOLDER)


def test_readme_rule_table_is_generated_from_the_rules() -> None:
    readme = (REPO / "README.md").read_text("utf-8")
    assert table_in(readme) == markdown_table(BUILTIN_RULES), f"README's rule table is stale: run `{README_COMMAND}`"


def test_readme_case_example_is_the_real_case_file() -> None:
    """The annotated spec in "Writing a rule" says what the file says (its comments aside)."""
    marker = "# rules/CKP103-default-bn-stats/cases/one-detr-block.toml\n"
    readme = (REPO / "README.md").read_text("utf-8")
    shown = readme[readme.index(marker):].split("```", 1)[0]
    assert tomllib.loads(shown) == tomllib.loads((REPO / marker[2:].strip()).read_text("utf-8"))
