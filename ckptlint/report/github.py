"""GitHub Actions workflow commands (annotations) and the step-summary markdown."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from ckptlint.numbers import human_count, percent
from ckptlint.report.diagnosis import tensor_list
from ckptlint.severity import SEVERITIES

if TYPE_CHECKING:  # reporters read the results; results.Report.render calls them
    from ckptlint.results import Report

COMMANDS = {"error": "error", "warning": "warning", "info": "notice"}
MAX_NAMED_TENSORS = 50  # an annotation's message names this many of a diagnosis's tensors


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _cell(text: str) -> str:
    """Text in a markdown table cell (keys come from the files: a ``|`` would split the row)."""
    return text.replace("|", "\\|")


def render_github(report: Report) -> str:
    """One annotation per diagnosis (``::error file=PATH,title=ckptlint KIND::title. Fix: ...``, its
    tensors on the next lines) and ``::error file=PATH,title=ckptlint NAME::KEY: message`` per finding
    no diagnosis covers; file-level, no line."""
    lines = []
    for diagnosis in report.diagnoses:
        properties = f"file={_escape_property(diagnosis.file)},title={_escape_property('ckptlint ' + diagnosis.kind)}"
        message = f"{diagnosis.title}. Fix: {diagnosis.fix}.\n{tensor_list(diagnosis, MAX_NAMED_TENSORS)}"
        lines.append(f"::{COMMANDS[diagnosis.severity]} {properties}::{_escape_data(message.strip())}")
    for finding in report.undiagnosed:
        subject = f"{finding.key}: " if finding.key else ""
        properties = f"file={_escape_property(finding.file)},title={_escape_property('ckptlint ' + finding.name)}"
        lines.append(f"::{COMMANDS[finding.severity]} {properties}::{_escape_data(subject + finding.message)}")
    for error in report.errors:
        lines.append(f"::error file={_escape_property(error.file)},title=ckptlint::{_escape_data(error.message)}")
    return "\n".join(lines) + ("\n" if lines else "")


def render_step_summary(report: Report) -> str:
    """A short markdown summary for ``$GITHUB_STEP_SUMMARY``."""
    counts = Counter(f.severity for f in report.findings)
    verdict = "failed" if not report.ok else "passed"
    lines = [f"### ckptlint {verdict}", "",
             " · ".join(f"{counts[s]} {s}" for s in reversed(SEVERITIES)) +
             (f" · {len(report.errors)} unreadable" if report.errors else "") +
             (f" · {len(report.suppressed)} in baseline" if report.suppressed else ""), ""]
    if report.transfer is not None:
        lines += [f"Transfer score: **{percent(report.transfer.score)}** (judged as {report.transfer.expect})",
                  "", "| stage | score |", "| --- | --- |"]
        lines += [f"| {stage} | {percent(row.score)} |" for stage, row in report.transfer.by_stage.items()]
        lines.append("")
    if report.diff is not None:
        tally = report.diff.summary
        lines += [report.diff.summary_line(), "", "| unchanged | cast | changed | resized | added | removed |",
                  "| --- | --- | --- | --- | --- | --- |",
                  f"| {tally.unchanged} | {tally.cast} | {tally.changed} | {tally.resized} | {tally.added} "
                  f"| {tally.removed} |", ""]
    if report.diagnoses:
        lines += ["| severity | cause | tensors | parameters | fix |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {d.severity} | {_cell(d.title)} | {len(d.tensors)} | {human_count(d.parameters)} "
                  f"| {_cell(d.fix)} |"
                  for d in report.diagnoses]
        lines.append("")
    undiagnosed = set(report.undiagnosed)
    worst = sorted((f for f in report.failing if f in undiagnosed), key=lambda f: f.sort_key())[:20]
    if worst:
        lines += ["| severity | rule | file | key |", "| --- | --- | --- | --- |"]
        lines += [f"| {f.severity} | `{f.name}` | `{f.file}` | `{f.key or ''}` |" for f in worst]
    return "\n".join(lines) + "\n"
