"""GitHub Actions workflow commands (annotations) and the step-summary markdown."""

from __future__ import annotations

from collections import Counter

from ckptlint.model import SEVERITIES, Report
from ckptlint.report.numbers import percent

COMMANDS = {"error": "error", "warning": "warning", "info": "notice"}


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def render_github(report: Report) -> str:
    """``::error file=PATH,title=ckptlint NAME::KEY: message`` per finding (file-level, no line)."""
    lines = []
    for finding in report.findings:
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
        lines += [f"Transfer score: **{percent(report.transfer['score'])}** (judged as {report.transfer['expect']})",
                  "", "| stage | score |", "| --- | --- |"]
        lines += [f"| {stage} | {percent(row['score'])} |" for stage, row in report.transfer["by_stage"].items()]
        lines.append("")
    worst = sorted(report.failing, key=lambda f: f.sort_key())[:20]
    if worst:
        lines += ["| severity | rule | file | key |", "| --- | --- | --- | --- |"]
        lines += [f"| {f.severity} | `{f.name}` | `{f.file}` | `{f.key or ''}` |" for f in worst]
    return "\n".join(lines) + "\n"
