"""``ckptlint.lint``: the same check as the CLI on paths, state dicts or modules, in a notebook."""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import Executor
from typing import Any, cast

from ckptlint.config import check_setting_names, job_settings, load_config, resolve_jobs
from ckptlint.errors import ConfigError
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
        chosen_pretrained = settings["pretrained"]
        if isinstance(chosen_pretrained, (list, tuple)):  # candidates: the first is the expected one
            settings["pretrained"] = [
                _source(item, "<pretrained>" if i == 0 else f"<pretrained {i + 1}>", settings.get("pretrained-key"))
                for i, item in enumerate(chosen_pretrained)]
        else:
            settings["pretrained"] = _source(chosen_pretrained, "<pretrained>", settings.get("pretrained-key"))
    # the report may be rendered as HTML later: keep its histograms
    chosen = Options.from_settings(settings, hash_files=False, histograms=True)
    return run_jobs([([_source(target, "<target>", chosen.key)], chosen)], report_type=LintReport)


def lint_many(paths: Iterable[str | os.PathLike[str]], pretrained: Any = None, *, jobs: int = 1,
              executor: Executor | None = None, client: Any = None, cache: str | os.PathLike[str] | None = None,
              config: str | bool | None = None, **options: Any) -> LintReport:
    """Lint many checkpoint files (paths or glob patterns such as ``"zoo/**/*.safetensors"``) into
    one report, exactly as ``ckptlint check --jobs N`` does: each file's partial report is made in
    this process (``jobs=1``), in ``jobs`` local worker processes, or on ``executor`` (any
    ``concurrent.futures.Executor``: a thread pool, a cluster client's executor), and merged as
    it arrives, in path order, so the report is the same however the work was spread. A file
    whose worker dies twice is reported in ``errors``. ``cache``: a folder of partial reports
    (``--cache``). ``client``: a ``distributed.Client`` or a Dask scheduler's address (``check
    --dask``): each file is a task on the cluster, and its worker reads it. ``pretrained`` is a path
    (workers read it themselves); the other options and ``config`` are ``lint()``'s."""
    from ckptlint.many import merge_many
    from ckptlint.targets import expand_paths

    if jobs < 1:
        raise ConfigError(f"jobs must be at least 1, not {jobs!r}")
    if client is not None and (executor is not None or jobs != 1):
        raise ConfigError("lint_many: give client, executor or jobs, not several")
    given = {name.replace("_", "-"): value for name, value in options.items() if value is not None}
    check_setting_names(given, SETTINGS - {"pretrained"}, "lint_many() options", None)
    given = check_settings(given)
    if pretrained is not None:
        given["pretrained"] = os.fspath(pretrained) if isinstance(pretrained, PathLike) else pretrained
    found = load_config(config if isinstance(config, str) else None) if config else None
    expanded = expand_paths(os.fspath(path) for path in paths)
    groups = resolve_jobs(expanded, given, found, hash_files=False, histograms=True)
    options_of = {path: chosen for group, chosen in groups for path in group}
    tasks = [(path, options_of[path]) for path in expanded]
    fail_on = groups[0][1].fail_on if groups else "error"
    if client is not None:
        from ckptlint.dask_backend import merge_many_dask

        _, report = merge_many_dask(tasks, client, fail_on=fail_on, cache_dir=cache, report_type=LintReport)
    else:
        _, report = merge_many(tasks, fail_on=fail_on, jobs=jobs, executor=executor, cache_dir=cache,
                               report_type=LintReport)
    return cast(LintReport, report)


def diff(old: Any, new: Any, *, config: str | bool | None = None, **options: Any) -> LintReport:
    """What ``new`` changed against ``old``, exactly as ``ckptlint diff OLD NEW`` says it: the
    report's ``diff`` (a ``DiffResult``: every tensor's pair and category, by module and stage)
    and the findings of the diff and pickle rules.

    ``old`` and ``new`` may each be a path, a state dict (torch or numpy) or a ``torch.nn.Module``.
    Options, in Python spelling: ``select``, ``ignore``, ``fail_on``, ``key``, ``severity``,
    ``params``, ``per_key_ignores``, ``baseline``, ``allow_globals``, ``preset`` (which tensors
    training leaves frozen). ``config``: as for ``lint()``.
    """
    from ckptlint.diff_runner import DIFF_SETTINGS, diff_options, run_diff

    given = {name.replace("_", "-"): value for name, value in options.items() if value is not None}
    check_setting_names(given, {*DIFF_SETTINGS, "preset"}, "diff() options", None)
    found = load_config(config if isinstance(config, str) else None) if config else None
    chosen, preset_name = diff_options(given, found, os.fspath(new) if isinstance(new, PathLike) else None,
                                       hash_files=False)
    return run_diff(_source(old, "<old>", chosen.key), _source(new, "<new>", chosen.key), chosen,
                    preset_name=preset_name, report_type=LintReport)
