"""The JSON report: stable field names, sorted, byte-identical for the same inputs."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import ckptlint

if TYPE_CHECKING:  # reporters read the results; results.Report.render calls them
    from ckptlint.results import Diagnosis, DiffResult, Report

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
        "transfer": transfer_data(report),
        **({"diff": diff_data(report.diff)} if report.diff is not None else {}),
    }


def transfer_data(report: Report) -> dict[str, Any] | None:
    """The run's transfer block. With several pretrained files each target's ``candidates`` ranking
    is given (and, for a run of one target, as ``transfer.candidates`` too); with one there is none."""
    if report.transfer is None:
        return None
    data = asdict(report.transfer)
    for path, target in data["by_file"].items():
        if not target["candidates"]:
            del target["candidates"]
            continue
        for candidate, described in zip(target["candidates"], report.transfer.by_file[path].candidates,
                                        strict=True):
            candidate["how"] = described.how
    if len(data["by_file"]) == 1:
        (only,) = data["by_file"].values()
        if "candidates" in only:
            data["candidates"] = only["candidates"]
    return data


def render_json(report: Report) -> str:
    return json.dumps(report_data(report), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _plain(value: Any) -> Any:
    """JSON-ready: a non-finite float (the change of a tensor of zeros) becomes a string, as in evidence."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def diff_data(diff: DiffResult) -> dict[str, Any]:
    """``ckptlint diff``: every pair (old, new, key, category, dtypes, shapes, rel_l2, cosine, ...),
    the summary (with its one line), per module and per stage."""
    data: dict[str, Any] = _plain(asdict(diff))
    data["summary"]["line"] = diff.summary_line()
    for pair, record in zip(diff.pairs, data["pairs"], strict=True):
        record["key"] = pair.key
    return data
