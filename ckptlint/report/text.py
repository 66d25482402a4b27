"""The human-readable report: why a failing check fails, one line per diagnosis with its fix,
one line per file with its verdict (and the findings no diagnosis covers), the transfer score,
then a one-line summary. Verbose: every finding and how each transfer was judged, under its file."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import TYPE_CHECKING

from ckptlint.numbers import human_count, percent
from ckptlint.severity import SEVERITIES, severity_rank

if TYPE_CHECKING:  # reporters read the results; results.Report.render calls them
    from ckptlint.results import (
        Diagnosis,
        DiffCounts,
        DiffPair,
        DiffResult,
        FileSummary,
        Finding,
        Report,
        RunTransfer,
        TargetTransfer,
    )

# How the file line counts a transfer's pairs that are not plain copies.
VERDICT_PHRASES = {"fine-tuned": "fine-tuned", "cast": "cast", "modified": "changed", "resized": "resized",
                   "reinitialized": "re-initialised", "unrelated": "unrelated", "misconverted": "misconverted"}


def _finding_line(finding: Finding) -> str:
    subject = f"{finding.key}: " if finding.key else ""
    return f"  {finding.severity:<8} {finding.code} {finding.name:<24} {subject}{finding.message}"


def _judgement_lines(described: TargetTransfer) -> list[str]:
    """How a target's transfer was judged: the expectation and why, what was frozen, and the
    modules outside the scope that are expected to be new."""
    expect = "a fine-tuned descendant" if described.expect == "finetuned" else "a copy"
    lines = [f"  judged as {expect} of the pretrained backbone {described.scope or '(the whole model)'}: "
             f"{described.expect_reason}"]
    if described.frozen_reason:
        lines.append(f"  frozen during training: {described.frozen_reason}")
    outside = described.outside_scope
    if outside.tensors:
        lines.append(f"  outside the transfer scope, expected to be new (not judged as fresh init): "
                     f"{', '.join(outside.modules)} ({outside.tensors} tensors, "
                     f"{human_count(outside.parameters)} parameters)")
    return lines


def _candidates_line(described: TargetTransfer) -> list[str]:
    """With several pretrained files: ``pretrained candidates: 1. b.pth 100.0% copied; 2. a.pth
    (expected) 0.0%``, ranked by the share of the target each explains."""
    if not described.candidates:
        return []
    ranked = []
    for c in sorted(described.candidates, key=lambda c: c.rank):
        share = percent(c.share)
        how = f" {c.how}" if c.how and share not in ("0.0%", "-") else ""  # nothing said of a few chance matches
        ranked.append(f"{c.rank}. {c.path}{' (expected)' if c.expected else ''} {share}{how}")
    return [f"  pretrained candidates: {'; '.join(ranked)}"]


def _diagnosis_line(diagnosis: Diagnosis, with_file: bool) -> str:
    where = f"{diagnosis.file}: " if with_file else ""
    return f"{diagnosis.severity:<8} {where}{diagnosis.title}. Fix: {diagnosis.fix}"


def _counts(findings: list[Finding]) -> str:
    """``2 errors, 1 info``: the severities present, most severe first."""
    counts = Counter(f.severity for f in findings)
    return ", ".join(f"{counts[s]} {s}{'s' if counts[s] != 1 and s != 'info' else ''}"
                     for s in reversed(SEVERITIES) if counts[s])


def _file_line(summary: FileSummary, findings: list[Finding], report: Report) -> str:
    """The file, what it is, and its verdict: OK or FAILED, and how much of the pretrained
    weights its transfer carried."""
    prefix = f", prefix {summary.stripped_prefix!r} removed" if summary.stripped_prefix else ""
    role = ", pretrained" if summary.role == "pretrained" else ""
    threshold = severity_rank(report.fail_on)
    status = "FAILED" if any(severity_rank(f.severity) >= threshold for f in findings) else "OK"
    described = report.transfer.by_file.get(summary.path) if report.transfer else None
    if described is not None and described.score is not None:
        verdict = f"{status}, {_transfer_phrase(described, summary.path, report)}"
    else:
        verdict = f"{status}, {_counts(findings)}" if findings else "no findings"
    return (f"{summary.path} ({summary.format}, layout {summary.layout}{prefix}, {summary.tensors} tensors, "
            f"{human_count(summary.parameters)} parameters{role}): {verdict}")


def _transfer_phrase(described: TargetTransfer, path: str, report: Report) -> str:
    """``backbone transfer 100.0% of 98.8k parameters carried, 42 tensors fine-tuned
    (judged as fine-tuned)``."""
    scope = described.scope
    verdicts = Counter(p.verdict for p in report.pairs if p.file == path and p.verdict in VERDICT_PHRASES
                       and (not scope or p.target.startswith(scope + ".")))
    changed = [f"{n} {'tensors ' if i == 0 else ''}{VERDICT_PHRASES[v]}"
               for i, (v, n) in enumerate(sorted(verdicts.items(), key=lambda kv: (-kv[1], kv[0])))]
    judged = "fine-tuned" if described.expect == "finetuned" else "a copy"
    return (f"{'backbone ' if scope else ''}transfer {percent(described.score)} of "
            f"{human_count(described.parameters)} parameters carried"
            f"{''.join(', ' + c for c in changed)} (judged as {judged})")


def render_text(report: Report, verbose: bool = False) -> str:
    by_file: dict[str, list[Finding]] = defaultdict(list)
    for finding in report.findings:
        by_file[finding.file].append(finding)
    shown = report.findings if verbose else report.undiagnosed
    listed: dict[str, list[Finding]] = defaultdict(list)
    for finding in shown:
        listed[finding.file].append(finding)
    why = report.why_failed()
    lines: list[str] = [f"FAILED: {why}"] if why else []
    with_file = len({d.file for d in report.diagnoses}) > 1
    lines += [_diagnosis_line(d, with_file) for d in report.diagnoses]
    transfers = report.transfer.by_file if report.transfer else {}
    for summary in report.files:
        lines.append(_file_line(summary, by_file[summary.path], report))
        if summary.path in transfers:
            judgement = _judgement_lines(transfers[summary.path])
            # A fine-tuned verdict passes tensors that differ: always say why it was judged so.
            lines += judgement if verbose else judgement[:1] if transfers[summary.path].expect == "finetuned" else []
            lines += _candidates_line(transfers[summary.path])
        if summary.key_mapping:
            lines.append(f"  {summary.key_mapping['description']}")
        lines += [_finding_line(f) for f in listed.pop(summary.path, [])]
    for error in report.errors:
        lines.append(f"{error.file}: error: {error.message}")
        lines += [_finding_line(f) for f in listed.pop(error.file, [])]
    for file, findings in sorted(listed.items()):  # a checked folder's other pickles, scanned for safety
        lines.append(f"{file} (scanned for pickle safety)")
        lines += [_finding_line(f) for f in findings]
    if report.transfer is not None:
        lines += _transfer_table(report.transfer)
    if report.diff is not None:
        lines += diff_lines(report.diff, verbose)
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


def _transfer_table(transfer: RunTransfer) -> list[str]:
    """Per-stage share of the parameters that should come from the pretrained file and did, with
    the verdict counts; the rows sum to the total."""
    lines = ["", f"Transfer: {percent(transfer.score)} of {human_count(transfer.parameters)} parameters "
                 f"faithfully carried (by tensors: {percent(transfer.score_by_tensors)} of {transfer.tensors})",
             f"  {'stage':<8} {'score':>7} {'params':>8} {'tensors':>7}  verdicts"]
    for stage, row in transfer.by_stage.items():
        verdicts = ", ".join(f"{n} {v}" for v, n in row.verdicts.items())
        score = percent(row.score)
        lines.append(f"  {stage:<8} {score:>7} {human_count(row.parameters):>8} {row.tensors:>7}  {verdicts}")
    return lines + [""]


# --- ckptlint diff ---

DIFF_TREE_DEPTH = 4  # without --verbose the module tree of changes stops at this depth
CHANGE_ORDER = ("removed", "resized", "changed", "added", "cast")  # what a module line counts, worst first


def _changes(counts: dict[str, int]) -> str:
    return ", ".join(f"{counts[c]} {c}" for c in CHANGE_ORDER if counts.get(c))


def diff_lines(diff: DiffResult, verbose: bool = False) -> list[str]:
    """The one-line summary, what the rules look at (dtype changes, new NaN/Inf, reset BatchNorm
    statistics, frozen tensors changed), the module tree of changes (modules with a tensor that is
    not unchanged, counts summed up the tree), the stage table, and with ``verbose`` every tensor
    that is not unchanged with its numbers."""
    lines = ["", f"Diff: {diff.summary_line()}"]
    if diff.dtype_changes:
        lines.append("  dtype changes: " + ", ".join(f"{n} x {c}" for c, n in diff.dtype_changes.items()))
    for title, items in (("new NaN/Inf", diff.new_non_finite), ("BatchNorm statistics reset", diff.bn_reset),
                         (f"frozen tensors changed ({diff.preset} preset)", diff.frozen_changed)):
        if items:
            lines.append(f"  {title}: {', '.join(items)}")
    tree: dict[str, dict[str, int]] = {}
    for pair in diff.pairs:
        if pair.category == "unchanged":
            continue
        parts = pair.key.split(".")[:-1]
        for depth in range(1, len(parts) + 1):
            node = tree.setdefault(".".join(parts[:depth]), {})
            node[pair.category] = node.get(pair.category, 0) + 1
        if not parts:
            node = tree.setdefault("(top level)", {})
            node[pair.category] = node.get(pair.category, 0) + 1
    shown = sorted(path for path in tree if verbose or path.count(".") < DIFF_TREE_DEPTH)
    if shown:
        lines.append("  changes by module:")
        width = max(len("  " * p.count(".") + p.rsplit(".", 1)[-1]) for p in shown)
        for path in shown:
            name = "  " * path.count(".") + path.rsplit(".", 1)[-1]
            lines.append(f"    {name:<{width}}  {_changes(tree[path])}")
    if len(diff.by_stage) > 1:
        lines += _diff_stage_table(diff.by_stage)
    if verbose:
        lines += [_pair_line(p) for p in diff.pairs if p.category != "unchanged"]
    return lines + [""]


def _diff_stage_table(by_stage: dict[str, DiffCounts]) -> list[str]:
    columns = ("unchanged", "cast", "changed", "resized", "added", "removed")
    lines = [f"  {'stage':<8} {'tensors':>7} {'params':>8} " + " ".join(f"{c:>9}" for c in columns)]
    for stage, row in by_stage.items():
        cells = " ".join(f"{getattr(row, c):>9}" for c in columns)
        lines.append(f"  {stage:<8} {row.tensors:>7} {human_count(row.parameters):>8} {cells}")
    return lines


def _pair_line(pair: DiffPair) -> str:
    """``  changed   classifier.weight  float32 [10, 16]  rel L2 0.0501, cosine 0.9987``."""
    old = f"{pair.old_dtype} {list(pair.old_shape)}" if pair.old_dtype and pair.old_shape is not None else "-"
    new = f"{pair.new_dtype} {list(pair.new_shape)}" if pair.new_dtype and pair.new_shape is not None else "-"
    numbers = ""
    if pair.rel_l2 is not None and pair.cosine is not None and pair.category in ("changed", "cast"):
        numbers = f"  rel L2 {pair.rel_l2:.3g}, cosine {pair.cosine:.4g}"
    return f"  {pair.category:<9} {pair.key}  {old if old == new else old + ' -> ' + new}{numbers}"
