"""The unit of work of a many-file run: one target path linted, its partial report as plain data.

A partial report is the JSON report (``report/json_report.py``'s ``report_data``) of a check of
that one path, plus a ``partial`` object with what the JSON report leaves out but a merge needs:
``score``, the target's tensors' parts in the transfer score grouped by (stage, module, carried,
verdict) with their tensor and parameter counts (a run's score is recomputed from these, not
from floored per-file scores), and ``histograms`` when the options keep them (HTML). Plain data,
so it crosses process boundaries (and any ``concurrent.futures`` executor) without pickling a
ckptlint object, and so ``ckptlint merge`` reads the same thing from files.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Iterable
from typing import Any

from ckptlint.facts.score import ScoreEntry
from ckptlint.options import Options
from ckptlint.report.json_report import report_data
from ckptlint.results import Report
from ckptlint.runner import run_jobs

# Test hook only, never set by users: in a worker process (not the client), lint_part of a path
# equal to this variable's value kills the process, as the OOM killer would (tests/test_many.py).
TEST_CRASH_ENV = "_CKPTLINT_TEST_CRASH_WORKER_ON"

ScoreGroup = tuple[str, str | None, bool, str]  # stage, module, carried, verdict


def score_groups(entries: Iterable[ScoreEntry]) -> list[list[Any]]:
    """Score entries as ``[stage, module, carried, verdict, tensors, parameters]`` rows, sorted."""
    groups: dict[ScoreGroup, list[int]] = {}
    for entry in entries:
        counts = groups.setdefault((entry.stage, entry.module, entry.carried, entry.verdict), [0, 0])
        counts[0] += 1
        counts[1] += entry.parameters
    return [[*key, *counts] for key, counts in sorted(groups.items(), key=lambda kv: repr(kv[0]))]


def lint_part(path: str, options: Options, source_root: str | None = None) -> dict[str, Any]:
    """Lint one target path (against ``options.pretrained`` when given) exactly as ``ckptlint
    check`` would, and return its partial report (see the module's docstring)."""
    crash_on = os.environ.get(TEST_CRASH_ENV)
    if crash_on is not None and crash_on == path and multiprocessing.parent_process() is not None:
        os._exit(70)
    entries: list[ScoreEntry] = []
    report: Report = run_jobs([([path], options)], source_root, score_entries=entries)
    data = report_data(report)
    data["partial"] = {"score": score_groups(entries)}
    if options.histograms:
        data["partial"]["histograms"] = [[file, key, histogram] for (file, key), histogram in report.histograms.items()]
    # The same values whether the part comes from this process, a worker, a cache or a file:
    # tuples become lists here, as they would on the way through JSON.
    result: dict[str, Any] = json.loads(json.dumps(data))
    return result
