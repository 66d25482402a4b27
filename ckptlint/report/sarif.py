"""SARIF 2.1.0 for GitHub code scanning: one run, every enabled rule, file-level locations; one
result per diagnosis (under the rule of its worst findings) and one per finding no diagnosis covers."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import ckptlint
from ckptlint.identity import diagnosis_fingerprint, finding_fingerprint, relative_path
from ckptlint.report.diagnosis import primary_code, tensor_list
from ckptlint.severity import severity_rank

if TYPE_CHECKING:  # reporters read the results; results.Report.render calls them
    from ckptlint.results import Diagnosis, Finding, Report

SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
INFORMATION_URI = "https://pypi.org/project/ckptlint/"
MAX_RESULTS = 5000  # GitHub code scanning's limit per upload
MAX_NAMED_TENSORS = 50  # a diagnosis's message names this many tensors; its properties list them all
LEVELS = {"error": "error", "warning": "warning", "info": "note"}


def _first_sentence(text: str) -> str:
    flat = " ".join(text.split())
    end = flat.find(". ")
    return flat if end < 0 else flat[: end + 1]


def _help_markdown(docs: dict[str, str]) -> str:
    sections = (("What it finds", "what"), ("Why it matters", "why"), ("Example", "example"), ("How to fix", "fix"))
    return "\n\n".join(f"## {title}\n{docs[key].strip()}" for title, key in sections)


def _rule(rule: dict[str, Any]) -> dict[str, Any]:
    properties: dict[str, Any] = {"tags": rule["tags"] or ["correctness"], "precision": "high"}
    if rule["security_severity"]:
        properties["security-severity"] = rule["security_severity"]
    return {
        "id": rule["code"],
        "name": rule["name"],
        "shortDescription": {"text": _first_sentence(rule["docs"]["what"])},
        "fullDescription": {"text": " ".join(rule["docs"]["what"].split())},
        "help": {"text": " ".join(" ".join(rule["docs"][k].split()) for k in ("why", "fix")),
                 "markdown": _help_markdown(rule["docs"])},
        "defaultConfiguration": {"level": LEVELS[rule["severity"]]},
        "properties": properties,
    }


def _artifact(path: str, root: str) -> dict[str, str]:
    relative = relative_path(path, root)
    if relative.startswith("/"):
        return {"uri": "file://" + quote(relative)}
    return {"uri": quote(relative), "uriBaseId": "%SRCROOT%"}


def _result(finding: Finding, index: dict[str, int], root: str, suppressed: bool) -> dict[str, Any]:
    location: dict[str, Any] = {"physicalLocation": {"artifactLocation": _artifact(finding.file, root)}}
    if finding.key:
        location["logicalLocations"] = [{"fullyQualifiedName": finding.key, "kind": "member"}]
    result: dict[str, Any] = {
        "ruleId": finding.code,
        "ruleIndex": index[finding.code],
        "level": LEVELS[finding.severity],
        "message": {"text": f"{finding.key}: {finding.message}" if finding.key else finding.message},
        "locations": [location],
        "partialFingerprints": {"primaryLocationLineHash": f"{finding_fingerprint(finding, root)}:1"},
        "properties": {"name": finding.name, "evidence": finding.evidence},
    }
    if suppressed:
        result["suppressions"] = [{"kind": "external", "justification": "accepted in the ckptlint baseline"}]
    return result


def _diagnosis_result(diagnosis: Diagnosis, index: dict[str, int], root: str) -> dict[str, Any]:
    """One result for the cause, under the rule of its worst and most frequent findings."""
    code = primary_code(diagnosis)
    location: dict[str, Any] = {"physicalLocation": {"artifactLocation": _artifact(diagnosis.file, root)}}
    if diagnosis.modules:
        location["logicalLocations"] = [{"fullyQualifiedName": m, "kind": "module"} for m in diagnosis.modules]
    text = f"{diagnosis.title}. Fix: {diagnosis.fix}. {tensor_list(diagnosis, MAX_NAMED_TENSORS)}"
    return {
        "ruleId": code,
        "ruleIndex": index[code],
        "level": LEVELS[diagnosis.severity],
        "message": {"text": text.strip()},
        "locations": [location],
        "partialFingerprints": {"primaryLocationLineHash": f"{diagnosis_fingerprint(diagnosis, root)}:1"},
        "properties": {"diagnosis": diagnosis.id, "kind": diagnosis.kind, "rules": diagnosis.rules,
                       "modules": list(diagnosis.modules), "tensors": list(diagnosis.tensors),
                       "parameters": diagnosis.parameters, "findings": len(diagnosis.findings),
                       "evidence": diagnosis.evidence},
    }


def _notification(text: str, level: str, path: str | None, root: str) -> dict[str, Any]:
    note: dict[str, Any] = {"level": level, "message": {"text": text}}
    if path:
        note["locations"] = [{"physicalLocation": {"artifactLocation": _artifact(path, root)}}]
    return note


def render_sarif(report: Report) -> str:
    root = report.source_root
    index = {rule["code"]: i for i, rule in enumerate(report.rules)}
    # (severity, suppressed, where, result), where sorts like Finding.sort_key
    items = [(d.severity, False, (d.file, -severity_rank(d.severity), "", d.kind, d.title),
              _diagnosis_result(d, index, root)) for d in report.diagnoses]
    items += [(f.severity, suppressed, f.sort_key(), _result(f, index, root, suppressed))
              for findings, suppressed in ((report.undiagnosed, False), (report.suppressed, True)) for f in findings]
    ranked = sorted(items, key=lambda item: (-severity_rank(item[0]), item[1], item[2]))
    kept = ranked[:MAX_RESULTS]
    notifications = [_notification(f"{e.file}: {e.message}", "error", e.file, root) for e in report.errors]
    if len(ranked) > MAX_RESULTS:
        notifications.append(_notification(
            f"{len(ranked) - MAX_RESULTS} of {len(ranked)} results were left out (GitHub code scanning takes "
            f"{MAX_RESULTS}); the least severe went first.", "warning", None, root))
    kept.sort(key=lambda item: item[2])
    run = {
        "tool": {"driver": {"name": "ckptlint", "semanticVersion": ckptlint.__version__,
                            "version": ckptlint.__version__, "informationUri": INFORMATION_URI,
                            "rules": [_rule(rule) for rule in report.rules]}},
        "automationDetails": {"id": "ckptlint/"},
        "invocations": [{"executionSuccessful": not report.errors, "toolExecutionNotifications": notifications}],
        "results": [result for *_, result in kept],
    }
    if report.diff is not None:  # `ckptlint diff`: what changed, in one line (the findings are results)
        run["properties"] = {"diff": report.diff.summary_line()}
    log = {"$schema": SCHEMA_URI, "version": "2.1.0", "runs": [run]}
    return json.dumps(log, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
