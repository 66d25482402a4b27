"""Reporters: pure functions from a Report to text; one module per format, imported on use."""

from importlib import import_module
from typing import Callable

from ckptlint.model import Report

FORMATS = {
    "text": "ckptlint.report.text:render_text",
    "json": "ckptlint.report.json_report:render_json",
    "sarif": "ckptlint.report.sarif:render_sarif",
    "github": "ckptlint.report.github:render_github",
    "html": "ckptlint.report.html:render_html",
}


def renderer(fmt: str) -> Callable[[Report], str]:
    """The render function of a format (its module is imported only now)."""
    module, _, function = FORMATS[fmt].partition(":")
    return getattr(import_module(module), function)


__all__ = ["FORMATS", "renderer"]
