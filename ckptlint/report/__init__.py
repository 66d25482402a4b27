"""Reporters: pure functions from a Report to text; one module per format."""

from typing import Callable

from ckptlint.model import Report
from ckptlint.report.json_report import render_json
from ckptlint.report.text import render_text

RENDERERS: dict[str, Callable[[Report], str]] = {"text": render_text, "json": render_json}

__all__ = ["RENDERERS", "render_json", "render_text"]
