"""The JSON report read back into the typed results: the inverse of ``report/json_report.py``.

Partial reports (one per file, from ``ckptlint check --format json`` or a worker) are plain JSON
data; ``merge.py`` rebuilds the typed ``Report`` pieces from them here. A value of the wrong
shape is a ``ValueError`` naming the field, never a half-built object.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ckptlint.results import (
    Candidate,
    FileSummary,
    Finding,
    OutsideScope,
    PairRecord,
    ReadError,
    RunTransfer,
    StageScore,
    TargetTransfer,
)


def _fields(data: Any, what: str, names: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """``data``'s values for these names (all of ``names``, those of ``optional`` present)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{what} must be an object, not {type(data).__name__}")
    missing = [name for name in names if name not in data]
    if missing:
        raise ValueError(f"{what} lacks {', '.join(missing)}")
    return {name: data[name] for name in (*names, *optional) if name in data}


def _list(data: Mapping[str, Any], key: str) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise ValueError(f"{key} must be a list")
    return value


FINDING = ("code", "name", "severity", "file", "key", "message")


def finding(data: Any) -> Finding:
    return Finding(**_fields(data, "a finding", FINDING, ("evidence",)))


def file_summary(data: Any) -> FileSummary:
    return FileSummary(**_fields(data, "a file", ("path", "format", "layout", "tensors", "parameters", "bytes",
                                                  "sha256"), ("stripped_prefix", "role", "key_mapping")))


def read_error(data: Any) -> ReadError:
    return ReadError(**_fields(data, "an error", ("file", "message")))


def pair_record(data: Any) -> PairRecord:
    return PairRecord(**_fields(data, "a pair", ("file", "target", "pretrained", "how", "verdict"),
                                ("evidence", "numel", "module_kind")))


CANDIDATE = ("path", "rank", "expected", "share", "parameters", "copied", "cast", "finetuned", "tensors")


def _candidate(data: Any) -> Candidate:
    return Candidate(**_fields(data, "a candidate", CANDIDATE))  # "how" is derived: not read


def target_transfer(data: Any) -> TargetTransfer:
    """One target's transfer (``transfer.by_file[...]``)."""
    values = _fields(data, "a target's transfer", ("score", "parameters", "score_by_tensors", "tensors",
                                                    "pretrained", "expect", "expect_reason", "frozen",
                                                    "frozen_reason", "scope", "outside_scope", "unmatched"))
    outside = _fields(values["outside_scope"], "outside_scope", ("modules", "tensors", "parameters"))
    values["outside_scope"] = OutsideScope(tuple(outside["modules"]), outside["tensors"], outside["parameters"])
    values["unmatched"] = tuple(values["unmatched"])
    candidates = data.get("candidates", [])
    return TargetTransfer(**values, candidates=tuple(_candidate(c) for c in candidates))


def by_file(transfer: Any) -> dict[str, TargetTransfer]:
    """The targets' transfers of a report's ``transfer`` block (empty when it is null)."""
    if transfer is None:
        return {}
    table = _fields(transfer, "transfer", ("by_file",))["by_file"]
    if not isinstance(table, Mapping):
        raise ValueError("transfer.by_file must be an object")
    return {path: target_transfer(target) for path, target in table.items()}


def findings(data: Mapping[str, Any], key: str = "findings") -> list[Finding]:
    return [finding(item) for item in _list(data, key)]


def files(data: Mapping[str, Any]) -> list[FileSummary]:
    return [file_summary(item) for item in _list(data, "files")]


def errors(data: Mapping[str, Any]) -> list[ReadError]:
    return [read_error(item) for item in _list(data, "errors")]


def pairs(data: Mapping[str, Any]) -> list[PairRecord]:
    return [pair_record(item) for item in _list(data, "pairs")]


def _score(data: Any, what: str) -> dict[str, Any]:
    return _fields(data, what, ("score", "parameters", "score_by_tensors", "tensors"))


def run_transfer(data: Any) -> RunTransfer | None:
    """A report's whole ``transfer`` block (None when it is null)."""
    if data is None:
        return None
    values = _fields(data, "transfer", ("by_stage", "by_module", "expect", "expect_reason", "by_file"))
    stages = {name: StageScore(**_score(row, f"transfer.by_stage.{name}"),
                               verdicts=_fields(row, f"transfer.by_stage.{name}", ("verdicts",))["verdicts"])
              for name, row in values["by_stage"].items()}
    return RunTransfer(**_score(data, "transfer"), by_stage=stages, by_module=dict(values["by_module"]),
                       expect=values["expect"], expect_reason=values["expect_reason"], by_file=by_file(data))
