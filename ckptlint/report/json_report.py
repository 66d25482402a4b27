"""The JSON report: stable field names, sorted, byte-identical for the same inputs."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import ckptlint

if TYPE_CHECKING:  # reporters read the results; results.Report.render calls them
    from ckptlint.results import Diagnosis, Report

SCHEMA_VERSION = 1


def diagnosis_data(diagnosis: Diagnosis, index: dict[Any, int]) -> dict[str, Any]:
    """A diagnosis with its findings as indexes into the report's ``findings``."""
    return {"id": diagnosis.id, "kind": diagnosis.kind, "file": diagnosis.file, "title": diagnosis.title,
            "severity": diagnosis.severity, "rules": diagnosis.rules, "modules": list(diagnosis.modules),
            "tensors": len(diagnosis.tensors), "parameters": diagnosis.parameters, "evidence": diagnosis.evidence,
            "fix": diagnosis.fix, "findings": sorted(index[f] for f in diagnosis.findings)}


def report_data(report: Report) -> dict[str, Any]:
    index = {finding: i for i, finding in enumerate(report.findings)}
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "ckptlint", "version": ckptlint.__version__},
        "files": [asdict(f) for f in report.files],
        "diagnoses": [diagnosis_data(d, index) for d in report.diagnoses],
        "findings": [asdict(f) for f in report.findings],
        "errors": [asdict(e) for e in report.errors],
        "suppressed": [asdict(f) for f in report.suppressed],
        "pairs": [asdict(p) for p in report.pairs],
        "transfer": asdict(report.transfer) if report.transfer else None,
    }


def render_json(report: Report) -> str:
    return json.dumps(report_data(report), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
