"""Every fixture case folder: the exact findings, what must not be reported, the exit code.

A new case is a new folder under fixtures/cases with a case.toml; no new test code.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ckptlint._toml import tomllib
from ckptlint.engine.registry import load_all_rules
from ckptlint.engine.rules import DOC_SECTIONS
from conftest import CASES

CASE_DIRS = sorted(p.parent for p in CASES.glob("*/case.toml"))


def load_case(folder: Path) -> dict:
    return tomllib.loads((folder / "case.toml").read_text("utf-8"))


@pytest.mark.parametrize("folder", CASE_DIRS, ids=[p.name for p in CASE_DIRS])
def test_case(folder: Path, run) -> None:
    case = load_case(folder)
    result = run(*case["args"], "--format", "json", cwd=folder)
    assert result.code == case["exit_code"], result.err
    found = [(f["name"], f["key"] or "") for f in result.json["findings"]]
    expected = [(e["name"], e["key"]) for e in case["expect"]]
    assert sorted(found) == sorted(expected), "findings differ from the case's exact expectation"
    by_subject = {(f["name"], f["key"] or ""): f for f in result.json["findings"]}
    for entry in case["expect"]:
        evidence = by_subject[(entry["name"], entry["key"])]["evidence"]
        for name, value in entry.get("evidence", {}).items():
            assert evidence[name] == value, f"{entry['name']} on {entry['key']}: evidence {name}"
    for rule in case.get("silent_for", []):
        assert rule not in {name for name, _ in found}


def test_every_rule_has_a_firing_and_a_silent_case_and_complete_docs() -> None:
    fires: set[str] = set()
    silent: set[str] = set()
    for folder in CASE_DIRS:
        case = load_case(folder)
        fires |= {e["name"] for e in case["expect"]}
        silent |= set(case.get("silent_for", []))
    for rule in load_all_rules():
        assert rule.name in fires, f"no case where {rule.name} must fire"
        assert rule.name in silent, f"no case where {rule.name} must stay silent"
        assert all(len(rule.docs[s]) > 30 for s in DOC_SECTIONS), f"{rule.name}: thin docs"
