"""A pytest helper: one line in a user's own test suite guards their weight loading."""

from __future__ import annotations

from typing import Any

from ckptlint.numbers import percent
from ckptlint.python_api import lint
from ckptlint.report.text import tally_line
from ckptlint.results import Report

MAX_LISTED = 20  # failing findings named in the message; the rest are counted


def assert_transferred(model_or_state_dict: Any, pretrained: Any, **options: Any) -> Report:
    """Raise AssertionError with the text report when any finding at or above ``fail_on``
    (default ``error``) exists or a checkpoint could not be read; else return the report. The
    options are ``lint()``'s: an invalid one (``fail_on="warn"``) raises ConfigError before
    anything is read, so a guard that could never fail does not pass silently.

    ``assert_transferred(detr.backbone, torchvision_resnet50, scope="0.body")``
    """
    report = lint(model_or_state_dict, pretrained, **options)
    if not report.ok:
        raise AssertionError(failure_message(report))
    return report


def failure_message(report: Report) -> str:
    """What a failing test shows: why, the score, each failing cause with its fix, the first
    failing findings no diagnosis covers (most severe first), and how many more; the whole report
    is ``report.render("text", verbose=True)``."""
    lines = [f"ckptlint: the weights do not reflect the pretrained ones: {report.why_failed()}"]
    if report.transfer is not None:
        lines.append(f"transfer score {percent(report.transfer.score)} of {report.transfer.parameters} "
                     f"parameters; judged as {report.transfer.expect}: {report.transfer.expect_reason}")
    lines += [f"  {e.file}: {e.message}" for e in report.errors]
    failing = set(report.failing)
    lines += [f"  {d.severity} {d.title}. Fix: {d.fix}" for d in report.diagnoses
              if any(f in failing for f in d.findings)]
    alone = [f for f in report.undiagnosed if f in failing]
    lines += [f"  {f.severity} {f.name} {f.key or f.file}: {f.message}" for f in alone[:MAX_LISTED]]
    if len(alone) > MAX_LISTED:
        lines.append(f"  ... and {len(alone) - MAX_LISTED} more (report.render('text', verbose=True) has them all)")
    lines.append(tally_line(report))
    return "\n".join(lines)
