"""Reporters: pure functions from a Report to text; one module per format, imported on use."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from importlib import import_module
from typing import TYPE_CHECKING

from ckptlint.errors import ConfigError

if TYPE_CHECKING:  # reporters read the results; results.Report.render calls them
    from ckptlint.results import Report

FORMATS = {
    "text": "ckptlint.report.text:render_text",
    "json": "ckptlint.report.json_report:render_json",
    "sarif": "ckptlint.report.sarif:render_sarif",
    "github": "ckptlint.report.github:render_github",
    "html": "ckptlint.report.html:render_html",
}


def renderer(fmt: str, verbose: bool = False) -> Callable[[Report], str]:
    """The render function of a format (its module is imported only now). ``verbose`` lists
    every finding in the text report; the other formats always hold them all."""
    module, _, function = FORMATS[fmt].partition(":")
    render = getattr(import_module(module), function)
    if not verbose:
        return render
    if fmt != "text":
        raise ConfigError(f"--verbose changes only the text report, not --format {fmt}")
    return partial(render, verbose=True)


__all__ = ["FORMATS", "renderer"]
