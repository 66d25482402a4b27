"""The JSON report: stable field names, sorted, byte-identical for the same inputs."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import ckptlint
from ckptlint.model import Report

SCHEMA_VERSION = 1


def report_data(report: Report) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "ckptlint", "version": ckptlint.__version__},
        "files": [asdict(f) for f in report.files],
        "findings": [asdict(f) for f in report.findings],
        "errors": [asdict(e) for e in report.errors],
        "suppressed": [asdict(f) for f in report.suppressed],
        "pairs": [asdict(p) for p in report.pairs],
        "transfer": report.transfer,
    }


def render_json(report: Report) -> str:
    return json.dumps(report_data(report), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
