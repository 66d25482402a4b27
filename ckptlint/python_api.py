"""``ckptlint.lint``: the same check as the CLI on paths, state dicts or modules, in a notebook."""

from __future__ import annotations

import os
from typing import Any

from ckptlint.config import check_setting_names, job_settings, load_config
from ckptlint.io.checkpoint import Checkpoint
from ckptlint.io.memory import memory_checkpoint
from ckptlint.options import SETTINGS, Options, check_settings
from ckptlint.report import renderer
from ckptlint.results import Report
from ckptlint.runner import run_jobs

PathLike = (str, os.PathLike)


class LintReport(Report):
    """What ``lint()`` returns: the report's data (a ``Report``), and ``render`` in any format.
    Rendering lives here, with the caller, so the data does not depend on its reporters."""

    def render(self, fmt: str = "text", verbose: bool = False) -> str:
        """The report as ``text``, ``json``, ``sarif``, ``html`` or ``github``; ``verbose``: the
        text report lists every finding and how each transfer was judged."""
        return renderer(fmt, verbose)(self)


def _source(obj: Any, label: str, key: str | None) -> str | Checkpoint:
    """A path stays a path (read by the file readers); anything else is read from memory."""
    return os.fspath(obj) if isinstance(obj, PathLike) else memory_checkpoint(obj, label, key)


def lint(target: Any, pretrained: Any = None, *, config: str | bool | None = None, **options: Any) -> LintReport:
    """Lint ``target`` (against ``pretrained``), exactly as ``ckptlint check`` would.

    ``target`` and ``pretrained`` may each be a path, a state dict of torch tensors or numpy
    arrays (or a checkpoint dict holding one, such as ``{"model": ...}``), or a
    ``torch.nn.Module``. Options are the CLI's, in Python spelling: ``select``, ``ignore``,
    ``fail_on``, ``key``, ``pretrained_key``, ``scope``, ``maps`` (``{"old.": "new."}``),
    ``expect``, ``preset``, ``max_drift``, ``min_score``, ``model``, ``severity``, ``params``,
    ``per_key_ignores``, ``baseline``, ``allow_globals``. ``config``: a configuration file's path,
    or True to find one from the current directory as the CLI does; a path target gets the
    settings of the file's first matching ``[[targets]]`` glob too, and ``options`` win. An invalid
    option is a ConfigError (named as in the configuration: ``fail-on``) before anything is read.
    """
    given = {name.replace("_", "-"): value for name, value in options.items() if value is not None}
    check_setting_names(given, SETTINGS - {"pretrained"}, "lint() options", None)
    given = check_settings(given)  # before pretrained-key is used to read an object in memory
    if pretrained is not None:
        given["pretrained"] = pretrained
    found = load_config(config if isinstance(config, str) else None) if config else None
    settings = job_settings(os.fspath(target) if isinstance(target, PathLike) else None, given, found)
    if settings.get("pretrained") is not None:
        settings["pretrained"] = _source(settings["pretrained"], "<pretrained>", settings.get("pretrained-key"))
    # the report may be rendered as HTML later: keep its histograms
    chosen = Options.from_settings(settings, hash_files=False, histograms=True)
    return run_jobs([([_source(target, "<target>", chosen.key)], chosen)], report_type=LintReport)
