"""``ckptlint.lint``: the same check as the CLI on paths, state dicts or modules, in a notebook."""

from __future__ import annotations

import os
from typing import Any

from ckptlint.runner import run_jobs
from ckptlint.config import (PER_TARGET, TOP_LEVEL, check_needs_pretrained, check_setting_names, load_config,
                             options_from_settings)
from ckptlint.io.checkpoint import Checkpoint
from ckptlint.io.memory import memory_checkpoint
from ckptlint.results import Report

PathLike = (str, os.PathLike)


def _source(obj: Any, label: str, key: str | None) -> str | Checkpoint:
    """A path stays a path (read by the file readers); anything else is read from memory."""
    return os.fspath(obj) if isinstance(obj, PathLike) else memory_checkpoint(obj, label, key)


def lint(target: Any, pretrained: Any = None, *, config: str | bool | None = None, **options: Any) -> Report:
    """Lint ``target`` (against ``pretrained``), exactly as ``ckptlint check`` would.

    ``target`` and ``pretrained`` may each be a path, a state dict of torch tensors or numpy
    arrays (or a checkpoint dict holding one, such as ``{"model": ...}``), or a
    ``torch.nn.Module``. Options are the CLI's, in Python spelling: ``select``, ``ignore``,
    ``fail_on``, ``key``, ``pretrained_key``, ``scope``, ``maps`` (``{"old.": "new."}``),
    ``expect``, ``preset``, ``max_drift``, ``model``, ``severity``, ``params``,
    ``per_key_ignores``, ``baseline``. ``config``: a configuration file's path, or True to find
    one from the current directory as the CLI does; its settings are overridden by ``options``.
    """
    settings = {name.replace("_", "-"): value for name, value in options.items() if value is not None}
    check_setting_names(settings, (TOP_LEVEL | PER_TARGET) - {"targets", "pretrained"}, "lint() options", None)
    found = load_config(config if isinstance(config, str) else None) if config else None
    merged = {**({k: v for k, v in found.settings.items() if k != "targets"} if found else {}), **settings}
    target_source = _source(target, "<target>", merged.get("key"))
    if pretrained is not None:
        merged["pretrained"] = _source(pretrained, "<pretrained>", merged.get("pretrained-key"))
    elif found and isinstance(found.settings.get("pretrained"), str):
        merged["pretrained"] = str(found.folder / found.settings["pretrained"])
    check_needs_pretrained(settings, merged.get("pretrained"), None)
    return run_jobs([([target_source], options_from_settings(merged, hash_files=False))])
