"""A pytest helper: one line in a user's own test suite guards their weight loading."""

from __future__ import annotations

from typing import Any

from ckptlint.model import Report
from ckptlint.python_api import lint


def assert_transferred(model_or_state_dict: Any, pretrained: Any, **options: Any) -> Report:
    """Raise AssertionError with the text report when any finding at or above ``fail_on``
    (default ``error``) exists or a checkpoint could not be read; else return the report.

    ``assert_transferred(detr.backbone, torchvision_resnet50, scope="0.body")``
    """
    report = lint(model_or_state_dict, pretrained, **options)
    if not report.ok:
        raise AssertionError("ckptlint: the weights do not reflect the pretrained ones\n" + report.render("text"))
    return report
