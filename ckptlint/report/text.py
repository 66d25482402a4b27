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
    counts = Counter(f.severity for f in report.findings)
    tally = ", ".join(f"{counts[s]} {s}{'s' if counts[s] != 1 and s != 'info' else ''}" for s in reversed(SEVERITIES))
    checked = len(report.files) + len(report.errors)
    unreadable = f", {len(report.errors)} unreadable" if report.errors else ""
    lines.append(f"{tally} in {checked} file{'s' if checked != 1 else ''}{unreadable}.")
    return "\n".join(lines) + "\n"
