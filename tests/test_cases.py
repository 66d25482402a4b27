"""Every fixture case folder: the exact findings, what must not be reported, the exit code, and
the exact diagnoses.

A new case is a new folder under fixtures/cases with a case.toml; no new test code. An expected
finding names an exact ``key`` (``""`` for a whole-file finding), or a ``key_glob`` with the
``count`` of findings of that rule it must match; every finding must be expected by some entry.
``diagnoses`` lists every diagnosis by ``kind`` (one per kind in a case), with its ``modules`` (or
their ``module_count``), ``tensors``, ``parameters``, number of ``findings``, ``severity``, a part of
its ``title`` and ``evidence`` values; nothing else may be diagnosed.
"""

from __future__ import annotations

from collections import Counter
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

from ckptlint._toml import tomllib
from conftest import CASES

CASE_DIRS = sorted(p.parent for p in CASES.glob("*/case.toml"))


def load_case(folder: Path) -> dict:
    return tomllib.loads((folder / "case.toml").read_text("utf-8"))


def _matches(entry: dict, finding: dict) -> bool:
    key = finding["key"] or ""
    if entry["name"] != finding["name"]:
        return False
    return key == entry["key"] if "key" in entry else fnmatchcase(key, entry["key_glob"])


@pytest.mark.parametrize("folder", CASE_DIRS, ids=[p.name for p in CASE_DIRS])
def test_case(folder: Path, run) -> None:
    case = load_case(folder)
    result = run(*case["args"], "--format", "json", "--no-hash", cwd=folder)
    assert result.code == case["exit_code"], result.err
    findings = result.json["findings"]
    unexpected = [(f["name"], f["key"]) for f in findings if not any(_matches(e, f) for e in case["expect"])]
    assert unexpected == [], "findings the case does not expect"
    for entry in case["expect"]:
        matched = [f for f in findings if _matches(entry, f)]
        assert len(matched) == entry.get("count", 1), f"{entry['name']} {entry.get('key', entry.get('key_glob'))}"
        for finding in matched:
            if "severity" in entry:
                assert finding["severity"] == entry["severity"], finding["key"]
            for name, value in entry.get("evidence", {}).items():
                assert finding["evidence"][name] == value, f"{finding['name']} on {finding['key']}: {name}"
    for rule in case.get("silent_for", []):
        assert rule not in {f["name"] for f in findings}
    if "transfer" in case:
        transfer = result.json["transfer"]
        if "score" in case["transfer"]:
            assert transfer["score"] == pytest.approx(case["transfer"]["score"])
        if "expect" in case["transfer"]:
            assert transfer["expect"] == case["transfer"]["expect"], transfer["expect_reason"]
        for stage, score in case["transfer"].get("by_stage", {}).items():
            assert transfer["by_stage"][stage]["score"] == pytest.approx(score), stage
    if "pairs_how" in case:
        assert Counter(p["how"] for p in result.json["pairs"]) == Counter(case["pairs_how"])
    if "pairs_verdicts" in case:
        assert Counter(p["verdict"] for p in result.json["pairs"]) == Counter(case["pairs_verdicts"])
    _assert_honest_score(result.json)
    _assert_diagnoses(case["diagnoses"], result.json)


def _assert_diagnoses(expected: list[dict], report: dict) -> None:
    """Exactly the expected diagnoses; each holds findings of the rules it names, none twice."""
    diagnoses = {d["kind"]: d for d in report["diagnoses"]}
    assert len(diagnoses) == len(report["diagnoses"]), "one diagnosis per kind in a case"
    assert sorted(diagnoses) == sorted(e["kind"] for e in expected), "diagnosed kinds"
    for entry in expected:
        diagnosis = diagnoses[entry["kind"]]
        for name in ("modules", "tensors", "parameters", "severity"):
            if name in entry:
                assert diagnosis[name] == entry[name], f"{entry['kind']}: {name}"
        if "module_count" in entry:
            assert len(diagnosis["modules"]) == entry["module_count"], f"{entry['kind']}: modules"
        if "findings" in entry:
            assert len(diagnosis["findings"]) == entry["findings"], f"{entry['kind']}: findings"
        assert entry.get("title", "") in diagnosis["title"]
        for name, value in entry.get("evidence", {}).items():
            assert diagnosis["evidence"][name] == value, f"{entry['kind']}: evidence {name}"
    grouped = [i for d in report["diagnoses"] for i in d["findings"]]
    assert len(grouped) == len(set(grouped)), "a finding in two diagnoses"
    for diagnosis in report["diagnoses"]:
        assert sorted({report["findings"][i]["name"] for i in diagnosis["findings"]}) == diagnosis["rules"]


def _assert_honest_score(report: dict) -> None:
    """Every stage row adds up to the total; a check that transfer rules fail never scores 100%."""
    transfer = report["transfer"]
    if transfer is None:
        return
    rows = transfer["by_stage"].values()
    assert sum(row["parameters"] for row in rows) == transfer["parameters"]
    assert sum(row["tensors"] for row in rows) == transfer["tensors"]
    carried_as_errors = [f for f in report["findings"] if f["severity"] == "error"
                         and f["name"] in ("not-transferred", "unmatched-target-key", "frozen-param-changed")]
    if carried_as_errors:
        assert transfer["score"] < 1.0
