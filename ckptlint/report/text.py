"""The human-readable report: findings grouped by file, then a one-line summary."""

from __future__ import annotations

from collections import Counter, defaultdict

from ckptlint.model import SEVERITIES, Finding, Report


def _human_count(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _finding_line(finding: Finding) -> str:
    subject = f"{finding.key}: " if finding.key else ""
    return f"  {finding.severity:<8} {finding.code} {finding.name:<24} {subject}{finding.message}"


def render_text(report: Report) -> str:
    by_file: dict[str, list[Finding]] = defaultdict(list)
    for finding in report.findings:
        by_file[finding.file].append(finding)
    lines: list[str] = []
    for summary in report.files:
        prefix = f", prefix {summary.stripped_prefix!r} removed" if summary.stripped_prefix else ""
        lines.append(f"{summary.path} ({summary.format}, layout {summary.layout}{prefix}, "
                     f"{summary.tensors} tensors, {_human_count(summary.parameters)} parameters)")
        findings = by_file.pop(summary.path, [])
        lines += [_finding_line(f) for f in findings] or ["  no findings"]
    for error in report.errors:
        lines.append(f"{error.file}: error: {error.message}")
        lines += [_finding_line(f) for f in by_file.pop(error.file, [])]
    if report.transfer is not None:
        lines += _transfer_table(report.transfer)
    counts = Counter(f.severity for f in report.findings)
    tally = ", ".join(f"{counts[s]} {s}{'s' if counts[s] != 1 and s != 'info' else ''}" for s in reversed(SEVERITIES))
    checked = len(report.files) + len(report.errors)
    unreadable = f", {len(report.errors)} unreadable" if report.errors else ""
    baseline = f" ({len(report.suppressed)} more accepted in the baseline)" if report.suppressed else ""
    lines.append(f"{tally} in {checked} file{'s' if checked != 1 else ''}{unreadable}.{baseline}")
    return "\n".join(lines) + "\n"


def _transfer_table(transfer: dict) -> list[str]:
    """Per-stage share of pretrained parameters faithfully carried, with the verdict counts."""
    lines = ["", f"Transfer: {transfer['score']:.1%} of {_human_count(transfer['parameters'])} pretrained "
                 "parameters faithfully carried",
             f"  {'stage':<8} {'score':>7} {'params':>8}  verdicts"]
    for stage, row in transfer["by_stage"].items():
        verdicts = ", ".join(f"{n} {v}" for v, n in row["verdicts"].items())
        lines.append(f"  {stage:<8} {row['score']:>7.1%} {_human_count(row['parameters']):>8}  {verdicts}")
    return lines + [""]
