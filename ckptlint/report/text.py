"""The human-readable report: why a failing check fails, findings grouped by file (most severe
first), how each transfer was judged, the transfer score, then a one-line summary."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from ckptlint.model import SEVERITIES, Finding, Report
from ckptlint.report.numbers import human_count, percent


def _finding_line(finding: Finding) -> str:
    subject = f"{finding.key}: " if finding.key else ""
    return f"  {finding.severity:<8} {finding.code} {finding.name:<24} {subject}{finding.message}"


def _judgement_lines(described: dict[str, Any]) -> list[str]:
    """How a target's transfer was judged: the expectation and why, what was frozen, and the
    modules outside the scope that are expected to be new."""
    expect = "a fine-tuned descendant" if described["expect"] == "finetuned" else "a copy"
    lines = [f"  judged as {expect} of the pretrained backbone {described['scope'] or '(the whole model)'}: "
             f"{described['expect_reason']}"]
    if described["frozen_reason"]:
        lines.append(f"  frozen during training: {described['frozen_reason']}")
    outside = described["outside_scope"]
    if outside["tensors"]:
        lines.append(f"  outside the transfer scope, expected to be new (not judged as fresh init): "
                     f"{', '.join(outside['modules'])} ({outside['tensors']} tensors, "
                     f"{human_count(outside['parameters'])} parameters)")
    return lines


def render_text(report: Report) -> str:
    by_file: dict[str, list[Finding]] = defaultdict(list)
    for finding in report.findings:
        by_file[finding.file].append(finding)
    why = report.why_failed()
    lines: list[str] = [f"FAILED: {why}"] if why else []
    transfers = report.transfer["by_file"] if report.transfer else {}
    for summary in report.files:
        prefix = f", prefix {summary.stripped_prefix!r} removed" if summary.stripped_prefix else ""
        role = ", pretrained" if summary.role == "pretrained" else ""
        lines.append(f"{summary.path} ({summary.format}, layout {summary.layout}{prefix}, "
                     f"{summary.tensors} tensors, {human_count(summary.parameters)} parameters{role})")
        if summary.path in transfers:
            lines += _judgement_lines(transfers[summary.path])
        if summary.key_mapping:
            lines.append(f"  {summary.key_mapping['description']}")
        findings = by_file.pop(summary.path, [])
        lines += [_finding_line(f) for f in findings] or ["  no findings"]
    for error in report.errors:
        lines.append(f"{error.file}: error: {error.message}")
        lines += [_finding_line(f) for f in by_file.pop(error.file, [])]
    if report.transfer is not None:
        lines += _transfer_table(report.transfer)
    lines.append(tally_line(report))
    return "\n".join(lines) + "\n"


def tally_line(report: Report) -> str:
    """``3 errors, 0 warnings, 0 info in 2 files.``"""
    counts = Counter(f.severity for f in report.findings)
    tally = ", ".join(f"{counts[s]} {s}{'s' if counts[s] != 1 and s != 'info' else ''}" for s in reversed(SEVERITIES))
    checked = len(report.files) + len(report.errors)
    unreadable = f", {len(report.errors)} unreadable" if report.errors else ""
    baseline = f" ({len(report.suppressed)} more accepted in the baseline)" if report.suppressed else ""
    return f"{tally} in {checked} file{'s' if checked != 1 else ''}{unreadable}.{baseline}"


def _transfer_table(transfer: dict[str, Any]) -> list[str]:
    """Per-stage share of the parameters that should come from the pretrained file and did, with
    the verdict counts; the rows sum to the total."""
    lines = ["", f"Transfer: {percent(transfer['score'])} of {human_count(transfer['parameters'])} parameters "
                 f"faithfully carried (by tensors: {percent(transfer['score_by_tensors'])} of {transfer['tensors']})",
             f"  {'stage':<8} {'score':>7} {'params':>8} {'tensors':>7}  verdicts"]
    for stage, row in transfer["by_stage"].items():
        verdicts = ", ".join(f"{n} {v}" for v, n in row["verdicts"].items())
        score = percent(row["score"]) if row["score"] is not None else "-"
        lines.append(f"  {stage:<8} {score:>7} {human_count(row['parameters']):>8} {row['tensors']:>7}  {verdicts}")
    return lines + [""]
