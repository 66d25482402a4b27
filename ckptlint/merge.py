"""Partial reports merged into one ``Report``, one part at a time, as they arrive.

The only way a many-file run (``check --jobs``, ``--shard``, ``--cache``, ``lint_many``) and
``ckptlint merge`` build their report: each part is read back into typed results
(``report_data.py``), files shared by several parts (the pretrained file, candidates) are kept
once, findings, errors and pairs are added, the targets' transfers kept, and the parts' score
groups added up. ``result()`` then does what ``runner.run_jobs`` does at the end of a run: the
run's transfer from the summed score, the report's own sort, the diagnoses on the merged report.
So the same files give the same bytes however they were split, in whatever order parts arrive
(ties in the sort keep the order parts were added: callers add them in path order).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

import ckptlint
from ckptlint import report_data
from ckptlint.diagnose import diagnose
from ckptlint.engine.evaluate import Evaluator
from ckptlint.engine.registry import load_all_rules
from ckptlint.facts.score import ScoreEntry, grouped_score_summary
from ckptlint.identity import find_source_root
from ckptlint.options import Options
from ckptlint.report.json_report import SCHEMA_VERSION
from ckptlint.report.json_report import report_data as json_data
from ckptlint.results import ReadError, Report, RunTransfer, TargetTransfer
from ckptlint.runner import MAX_HISTOGRAMS, run_transfer

ReportT = TypeVar("ReportT", bound=Report)
ScoreKey = tuple[str, Any, bool, str]  # stage, module, carried, verdict


class PartError(ValueError):
    """A partial report that cannot be merged (wrong version, wrong shape)."""


class _Part:
    """One partial report, read and checked before anything of it is merged."""

    def __init__(self, data: Any) -> None:
        if not isinstance(data, Mapping):
            raise PartError("not a ckptlint JSON report (not an object)")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise PartError(f"schema_version {data.get('schema_version')!r}; this ckptlint reads {SCHEMA_VERSION}")
        tool = data.get("tool")
        version = tool.get("version") if isinstance(tool, Mapping) else None
        if not isinstance(tool, Mapping) or tool.get("name") != "ckptlint" or version != ckptlint.__version__:
            raise PartError(f"written by ckptlint {version!r}; this is {ckptlint.__version__}: lint the parts with "
                            "one version")
        if data.get("diff") is not None:
            raise PartError("a `ckptlint diff` report: only check reports merge")
        try:
            self.files = report_data.files(data)
            self.findings = report_data.findings(data)
            self.suppressed = report_data.findings(data, "suppressed")
            self.errors = report_data.errors(data)
            self.pairs = report_data.pairs(data)
            self.transfer = data.get("transfer")
            self.by_file = report_data.by_file(self.transfer)
            partial = data.get("partial")
            if partial is not None and not isinstance(partial, Mapping):
                raise ValueError("partial must be an object")
            partial = partial or {}
            self.score: list[tuple[ScoreKey, int, int]] | None = None
            if "score" in partial:
                self.score = [((row[0], row[1], bool(row[2]), row[3]), int(row[4]), int(row[5]))
                              for row in partial["score"]]
            self.rules: list[dict[str, Any]] = list(partial.get("rules", []))
            if not all(isinstance(rule, Mapping) and "code" in rule for rule in self.rules):
                raise ValueError("partial.rules must be rule objects")
            self.histograms = [(str(row[0]), str(row[1]), row[2]) for row in partial.get("histograms", [])]
            self.opaque = self.transfer is not None and self.score is None
            if self.opaque:  # a report without score groups: its transfer block is taken whole
                self.run_transfer = report_data.run_transfer(self.transfer)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            raise PartError(f"not a ckptlint check report: {type(exc).__name__}: {exc}") from None


def read_part(data: Any) -> None:
    """Raise PartError unless ``data`` is a partial report a merge can take."""
    _Part(data)


def enabled_rules(options: Iterable[Options]) -> list[dict[str, Any]]:
    """The rules runs with these options enable, described as reports show them (as a run of
    all of them would list them: each code once, in the first options' terms)."""
    rules: dict[str, dict[str, Any]] = {}
    loaded = load_all_rules()
    for chosen in options:
        for rule in Evaluator(loaded, chosen.selection, chosen.allow_globals).rules:
            rules.setdefault(rule.code, rule.describe())
    return list(rules.values())


class Merger:
    """Partial reports added one by one; only the merged data is kept (memory stays flat)."""

    def __init__(self, *, fail_on: str = "error", source_root: str | None = None,
                 rules: Sequence[dict[str, Any]] | None = None, report_type: type[Report] = Report) -> None:
        """``rules``: the enabled rules, described (``enabled_rules``), for parts that do not list
        them (plain JSON reports; a worker's parts); None: every rule at its default. Diagnoses
        read them: a rule's subject says what its findings are about."""
        self.report = report_type(fail_on=fail_on, source_root=source_root or find_source_root())
        self._fallback_rules = None if rules is None else list(rules)
        self._rules: dict[str, dict[str, Any]] = {}
        self._files: set[tuple[str, str]] = set()
        self._blocks: set[str] = set()  # files whose findings and errors a part gave
        self._pair_files: set[str] = set()
        self._by_file: dict[str, TargetTransfer] = {}
        self._score: dict[ScoreKey, list[int]] = {}
        self._opaque: list[RunTransfer | None] = []
        self._with_score = 0
        self.parts = 0

    def add(self, data: Any) -> None:
        """Merge one partial report (a PartError, and nothing merged, when it cannot be)."""
        part = _Part(data)
        self.parts += 1
        report = self.report
        for summary in part.files:
            if (summary.path, summary.role) not in self._files:
                self._files.add((summary.path, summary.role))
                report.files.append(summary)
        # A file shared by several parts (the pretrained file) has the same findings in each: once.
        blocks = {f.file for f in (*part.findings, *part.suppressed)} | {e.file for e in part.errors}
        fresh = blocks - self._blocks
        self._blocks |= blocks
        report.findings += [f for f in part.findings if f.file in fresh]
        report.suppressed += [f for f in part.suppressed if f.file in fresh]
        report.errors += [e for e in part.errors if e.file in fresh]
        pair_files = {p.file for p in part.pairs}
        report.pairs += [p for p in part.pairs if p.file not in self._pair_files]
        self._pair_files |= pair_files
        for path, target in part.by_file.items():
            self._by_file.setdefault(path, target)
        if part.opaque:
            self._opaque.append(part.run_transfer)
        elif part.score:
            self._with_score += 1
            for key, tensors, parameters in part.score:
                counts = self._score.setdefault(key, [0, 0])
                counts[0] += tensors
                counts[1] += parameters
        for rule in part.rules:
            self._rules.setdefault(rule["code"], dict(rule))
        for file, tensor, histogram in part.histograms:
            if len(report.histograms) < MAX_HISTOGRAMS:
                report.histograms.setdefault((file, tensor), histogram)

    def add_error(self, path: str, message: str) -> None:
        """A file no part could be made for (its worker died twice)."""
        if path not in self._blocks:
            self._blocks.add(path)
            self.report.errors.append(ReadError(path, message))

    def score_rows(self) -> list[list[Any]]:
        """The summed score groups, as a partial report carries them."""
        return [[*key, *counts] for key, counts in sorted(self._score.items(), key=lambda kv: repr(kv[0]))]

    def _transfer(self) -> RunTransfer | None:
        if self._opaque:
            if len(self._opaque) > 1 or self._with_score:
                raise PartError("several parts carry a transfer score but not its parts (`partial.score`): "
                                "write the parts with `ckptlint check --shard k/N --format json`")
            return self._opaque[0]
        summary = grouped_score_summary(
            (ScoreEntry(stage, module, parameters, carried, verdict), tensors)
            for (stage, module, carried, verdict), (tensors, parameters) in sorted(self._score.items(),
                                                                                   key=lambda kv: repr(kv[0])))
        return run_transfer(summary, self._by_file)

    def result(self) -> Report:
        """The merged report: transfer, sort and diagnoses as at the end of a run."""
        report = self.report
        fallback = self._fallback_rules
        report.rules = list(self._rules.values()) or (enabled_rules([Options(hash_files=False)]) if fallback is None
                                                      else fallback)
        report.transfer = self._transfer()
        report.sort()
        report.diagnoses = diagnose(report)
        return report


def merge_reports(parts: Iterable[Any], **merger: Any) -> Report:
    """Merge partial reports (an iterable, consumed one part at a time) into one Report."""
    merged = Merger(**merger)
    for part in parts:
        merged.add(part)
    return merged.result()


def render_partial(merged: Merger, report: Report) -> str:
    """The JSON report of a merged run with the ``partial`` data a later merge needs (``--shard``)."""
    data = json_data(report)
    data["partial"] = {"score": merged.score_rows(), "rules": report.rules}
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"

