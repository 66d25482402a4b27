"""SARIF 2.1.0 for GitHub code scanning: one run, every enabled rule, file-level locations."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import ckptlint
from ckptlint.fingerprint import fingerprint, relative_path
from ckptlint.model import Finding, Report, severity_rank

SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
INFORMATION_URI = "https://pypi.org/project/ckptlint/"
MAX_RESULTS = 5000  # GitHub code scanning's limit per upload
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
        "partialFingerprints": {"primaryLocationLineHash": f"{fingerprint(finding, root)}:1"},
        "properties": {"name": finding.name, "evidence": finding.evidence},
    }
    if suppressed:
        result["suppressions"] = [{"kind": "external", "justification": "accepted in the ckptlint baseline"}]
    return result


def _notification(text: str, level: str, path: str | None, root: str) -> dict[str, Any]:
    note: dict[str, Any] = {"level": level, "message": {"text": text}}
    if path:
        note["locations"] = [{"physicalLocation": {"artifactLocation": _artifact(path, root)}}]
    return note


def render_sarif(report: Report) -> str:
    root = report.source_root
    index = {rule["code"]: i for i, rule in enumerate(report.rules)}
    ranked = sorted([(f, False) for f in report.findings] + [(f, True) for f in report.suppressed],
                    key=lambda item: (-severity_rank(item[0].severity), item[1], item[0].sort_key()))
    kept = ranked[:MAX_RESULTS]
    notifications = [_notification(f"{e.file}: {e.message}", "error", e.file, root) for e in report.errors]
    if len(ranked) > MAX_RESULTS:
        notifications.append(_notification(
            f"{len(ranked) - MAX_RESULTS} of {len(ranked)} results were left out (GitHub code scanning takes "
            f"{MAX_RESULTS}); the least severe went first.", "warning", None, root))
    kept.sort(key=lambda item: item[0].sort_key())
    run = {
        "tool": {"driver": {"name": "ckptlint", "semanticVersion": ckptlint.__version__,
                            "version": ckptlint.__version__, "informationUri": INFORMATION_URI,
                            "rules": [_rule(rule) for rule in report.rules]}},
        "automationDetails": {"id": "ckptlint/"},
        "invocations": [{"executionSuccessful": not report.errors, "toolExecutionNotifications": notifications}],
        "results": [_result(f, index, root, suppressed) for f, suppressed in kept],
    }
    log = {"$schema": SCHEMA_URI, "version": "2.1.0", "runs": [run]}
    return json.dumps(log, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
