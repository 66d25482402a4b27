"""Reporters: pure functions from a Report to text; one module per format."""

from typing import Callable

from ckptlint.model import Report
from ckptlint.report.github import render_github, render_step_summary
from ckptlint.report.html import render_html
from ckptlint.report.json_report import render_json
from ckptlint.report.sarif import render_sarif
from ckptlint.report.text import render_text

RENDERERS: dict[str, Callable[[Report], str]] = {
    "text": render_text, "json": render_json, "sarif": render_sarif, "github": render_github,
    "html": render_html,
}

__all__ = ["RENDERERS", "render_github", "render_html", "render_json", "render_sarif", "render_step_summary",
           "render_text"]
