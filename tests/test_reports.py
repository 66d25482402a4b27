"""SARIF, GitHub annotations and baselines, on every fixture case and on hostile keys."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import torch

from conftest import CASES, REPO
from test_cases import CASE_DIRS, load_case

SCHEMA = json.loads((REPO / "tests" / "schemas" / "sarif-schema-2.1.0.json").read_text())
VALIDATOR = jsonschema.Draft4Validator(SCHEMA)


@pytest.mark.parametrize("folder", CASE_DIRS, ids=[p.name for p in CASE_DIRS])
def test_sarif_validates_and_is_ready_for_code_scanning(folder: Path, run) -> None:
    case = load_case(folder)
    result = run(*case["args"], "--format", "sarif", "--no-hash", cwd=folder)
    log = json.loads(result.out)
    VALIDATOR.validate(log)
    (sarif_run,) = log["runs"]
    driver = sarif_run["tool"]["driver"]
    assert driver["name"] == "ckptlint" and driver["semanticVersion"] and driver["informationUri"]
    rule_ids = [rule["id"] for rule in driver["rules"]]
    json_report = run(*case["args"], "--format", "json", "--no-hash", cwd=folder).json
    diagnoses = {d["id"]: d for d in json_report["diagnoses"]}
    diagnosed = sum(len(d["findings"]) for d in diagnoses.values())
    assert len(sarif_run["results"]) == len(diagnoses) + len(json_report["findings"]) - diagnosed
    for result_entry in sarif_run["results"]:
        assert rule_ids[result_entry["ruleIndex"]] == result_entry["ruleId"]
        (location,) = result_entry["locations"]
        artifact = location["physicalLocation"]["artifactLocation"]
        assert artifact["uriBaseId"] == "%SRCROOT%" and not artifact["uri"].startswith("/")
        assert "region" not in location["physicalLocation"]
        diagnosis = diagnoses.get(result_entry["properties"].get("diagnosis"))
        if diagnosis:  # one result for the cause: its title first, its modules and tensors listed
            assert result_entry["message"]["text"].startswith(diagnosis["title"])
            assert [m["fullyQualifiedName"] for m in location.get("logicalLocations", [])] == diagnosis["modules"]
            assert len(result_entry["properties"]["tensors"]) == diagnosis["tensors"]
        else:
            key = location.get("logicalLocations", [{}])[0].get("fullyQualifiedName")
            if key:
                assert result_entry["message"]["text"].startswith(key + ":")
        assert result_entry["partialFingerprints"]["primaryLocationLineHash"]
    assert sarif_run["automationDetails"]["id"]
    assert sarif_run["invocations"][0]["executionSuccessful"] is True


def test_sarif_rules_carry_docs_and_security_metadata(run) -> None:
    log = json.loads(run("check", str(CASES / "pickle-os-system" / "model.pt"), "--format", "sarif").out)
    rules = {rule["name"]: rule for rule in log["runs"][0]["tool"]["driver"]["rules"]}
    unsafe = rules["unsafe-pickle"]
    assert {"security", "external/cwe/cwe-502"} <= set(unsafe["properties"]["tags"])
    assert float(unsafe["properties"]["security-severity"]) >= 9.0
    assert unsafe["defaultConfiguration"]["level"] == "error"
    assert "## Why it matters" in unsafe["help"]["markdown"] and unsafe["help"]["text"]
    assert rules["precision-loss"]["defaultConfiguration"]["level"] == "note"
    assert len(rules) == len(list((REPO / "rules").glob("*/rule.toml")))


def test_sarif_fingerprints_are_stable_and_notifications_name_unreadable_files(run, tmp_path: Path) -> None:
    args = ("check", str(CASES / "non-finite" / "model.pt"), str(tmp_path / "gone.pt"), "--format", "sarif")
    first, second = run(*args).out, run(*args).out
    assert first == second
    log = json.loads(first)
    VALIDATOR.validate(log)
    invocation = log["runs"][0]["invocations"][0]
    assert invocation["executionSuccessful"] is False
    (note,) = invocation["toolExecutionNotifications"]
    assert "gone.pt" in note["message"]["text"] and note["level"] == "error"


def test_sarif_truncates_past_githubs_limit_by_severity(tmp_path: Path, run) -> None:
    sd = {f"bad{i}": torch.tensor([float("nan")]) for i in range(5003)}
    sd.update({f"ok{i}.weight": torch.zeros(8, 8) for i in range(3)})  # constant linear: warnings
    torch.save(sd, tmp_path / "many.pt")
    log = json.loads(run("check", str(tmp_path / "many.pt"), "--format", "sarif", "--no-hash").out)
    VALIDATOR.validate(log)
    results = log["runs"][0]["results"]
    assert len(results) == 5000 and {r["level"] for r in results} == {"error"}
    notes = log["runs"][0]["invocations"][0]["toolExecutionNotifications"]
    assert any("left out" in n["message"]["text"] for n in notes)


def test_github_annotations_are_escaped_and_summary_is_written(tmp_path: Path, run, monkeypatch) -> None:
    sd = {"w,with:odd%chars\nnewline": torch.tensor([float("nan")])}
    torch.save(sd, tmp_path / "odd, name.pt")
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    out = run("check", str(tmp_path / "odd, name.pt"), "--format", "github").out
    (line,) = out.splitlines()
    assert line.startswith("::error file=") and "title=ckptlint non-finite::" in line
    assert "odd%2C name.pt" in line and "w,with:odd%25chars%0Anewline: 1 of 1" in line
    text = summary.read_text()
    assert text.startswith("earlier step\n") and "### ckptlint failed" in text and "`non-finite`" in text


def test_a_pull_request_gets_one_annotation_per_cause(run) -> None:
    args = ("check", str(CASES / "transfer-selective" / "detr.pth"), "--pretrained",
            str(REPO / "fixtures" / "models" / "resnet50_tiny.pth"))
    annotations = run(*args, "--format", "github").out.splitlines()
    assert len(annotations) <= 3 and annotations[0].startswith("::error file=")
    assert "detr.pth,title=ckptlint reinitialized::layer4 re-initialised (xavier_uniform" in annotations[0]
    assert "%0ATensors (50): backbone.0.body.layer4.0.bn1.bias, " in annotations[0]
    naive = run("check", str(CASES / "transfer-naive-copy" / "detr.pth"), *args[2:], "--format", "github").out
    (error,) = [line for line in naive.splitlines() if line.startswith("::error")]
    assert 'load_state_dict({"backbone.0.body." + k: v for k, v in sd.items()}, strict=False)' in error


def test_baseline_drops_a_diagnosis_whose_findings_are_all_accepted(tmp_path: Path, run) -> None:
    args = ("check", str(CASES / "transfer-selective" / "detr.pth"), "--pretrained",
            str(REPO / "fixtures" / "models" / "resnet50_tiny.pth"))
    baseline = tmp_path / "baseline.json"
    run(*args, "--write-baseline", str(baseline), "--select", "not-transferred,default-bn-stats")
    quiet = run(*args, "--baseline", str(baseline), "--format", "json")
    assert quiet.code == 0 and [d["kind"] for d in quiet.json["diagnoses"]] == ["head-dropped"]
    assert len(quiet.json["suppressed"]) == 60
    sarif = json.loads(run(*args, "--baseline", str(baseline), "--format", "sarif").out)
    VALIDATOR.validate(sarif)
    results = sarif["runs"][0]["results"]
    assert len(results) == 61 and sum("suppressions" in r for r in results) == 60  # accepted ones stay listed


def test_baseline_suppresses_accepted_findings(tmp_path: Path, run) -> None:
    target = str(CASES / "non-finite" / "model.pt")
    baseline = tmp_path / "baseline.json"
    assert run("check", target, "--write-baseline", str(baseline)).code == 1
    entries = json.loads(baseline.read_text())["findings"]
    assert {e["key"] for e in entries} == {"features.0.weight", "classifier.bias"}
    quiet = run("check", target, "--baseline", str(baseline), "--format", "json")
    assert quiet.code == 0 and quiet.json["findings"] == []
    sarif = json.loads(run("check", target, "--baseline", str(baseline), "--format", "sarif").out)
    VALIDATOR.validate(sarif)
    assert [r["suppressions"][0]["kind"] for r in sarif["runs"][0]["results"]] == ["external", "external"]
    assert run("check", target, "--baseline", str(tmp_path / "nope.json")).code == 2


def test_json_gives_every_file_s_sha256_hashed_beside_the_check(run) -> None:
    """The digests are computed in a worker thread while the files are checked: they must be the
    files' own, for the target and the pretrained file, and absent when not asked for."""
    import hashlib

    target = CASES / "transfer-selective" / "detr.pth"
    pretrained = REPO / "fixtures" / "models" / "resnet50_tiny.pth"
    report = run("check", str(target), "--pretrained", str(pretrained), "--format", "json").json
    digests = {f["path"]: f["sha256"] for f in report["files"]}
    assert digests == {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in (target, pretrained)}
    unhashed = run("check", str(target), "--pretrained", str(pretrained), "--format", "json", "--no-hash").json
    assert {f["sha256"] for f in unhashed["files"]} == {None}
