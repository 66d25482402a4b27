"""Configuration: ``[tool.ckptlint]`` in pyproject.toml or a ckptlint.toml, merged with the
command line (which wins) into one or more jobs: the paths and the Options to check them with.

Found by walking up from the current directory (never from a checked file's folder), or named
with --config; a discovered one may not import code or silence the pickle rules. Paths in the
file are relative to its folder; ``[[targets]]`` give per-glob settings, such as the pretrained
checkpoint for ``models/detr_*.pt``. What each value may be is ckptlint.options' to say; a file's
values are checked as it is read, so that an error names the file.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from ckptlint._toml import tomllib
from ckptlint.errors import ConfigError
from ckptlint.options import NEEDS_PRETRAINED, SETTINGS, Options, check_needs_pretrained, check_settings

# Settings a target glob may override; the top level takes every setting, and the targets.
PER_TARGET = {"pretrained", "pretrained-key", "key", "scope", "maps", "expect", "preset", "max-drift", "min-score",
              "model"}
TOP_LEVEL = SETTINGS | {"targets"}
PATH_SETTINGS = ("pretrained", "baseline")


@dataclass(frozen=True)
class Config:
    """A configuration file's settings and the folder its relative paths start from."""

    path: str
    folder: Path
    settings: dict[str, Any]


def check_setting_names(table: Mapping[str, Any], allowed: Collection[str], where: str, path: str | None) -> None:
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown setting {key!r} in {where}{hint}", path)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot parse ({exc})", str(path)) from None
    if path.name == "pyproject.toml":
        return data.get("tool", {}).get("ckptlint")
    return data


def load_config(explicit: str | None = None) -> Config | None:
    """The configuration for a run: ``explicit`` if given, else the nearest one from the current
    directory upward — the project being linted, never the folder a checked file lies in (a
    downloaded model folder could ship a configuration that turns the gate off or names code)."""
    if explicit:
        settings = _read(Path(explicit))
        return _validated(Config(explicit, Path(explicit).resolve().parent, settings or {}))
    start = Path.cwd()
    for folder in (start, *start.parents):
        for name in ("ckptlint.toml", "pyproject.toml"):
            candidate = folder / name
            if candidate.is_file():
                settings = _read(candidate)
                if settings is not None:
                    return _trusted(_validated(Config(str(candidate), folder, settings)))
    return None


# Rules that a configuration found by discovery may not silence or lower: the gate against
# pickles that run code must not be turned off by a file that came with the data.
SECURITY_RULES = ("unsafe-pickle", "CKP001", "unknown-pickle-global", "CKP002")


def _trusted(config: Config) -> Config:
    """Refuse what only a configuration the user named may do: import code, weaken the
    security rules. Runs on a validated configuration: targets are tables, rule names come in lists."""
    problems = []
    if any("model" in table for table in (config.settings, *config.settings.get("targets", []))):
        problems.append("`model` imports code")
    named = {*config.settings.get("ignore", ()), *config.settings.get("severity", {}),
             *(rule for rules in config.settings.get("per-key-ignores", {}).values() for rule in rules)}
    if named & set(SECURITY_RULES):
        problems.append("it ignores or re-rates the pickle-safety rules")
    select = config.settings.get("select", ())
    if select and not set(select) & set(SECURITY_RULES[:2]):
        problems.append("its `select` leaves out unsafe-pickle")
    if config.settings.get("fail-on") == "never":
        problems.append("`fail-on = \"never\"` turns the gate off")
    if config.settings.get("allow-globals"):
        problems.append("`allow-globals` lets pickles run the code it names")
    if problems:
        raise ConfigError(f"found by discovery, this configuration may not do what it asks: {'; '.join(problems)}. "
                          "Name it with --config (or lint(config=PATH)) if you trust it", config.path)
    return config


def _validated(config: Config) -> Config:
    """Every name and value of the file, and every target, checked as the file is read."""
    where = "[tool.ckptlint]" if config.path.endswith("pyproject.toml") else "the top level"
    check_setting_names(config.settings, TOP_LEVEL, where, config.path)
    check_settings(config.settings, config.path)
    targets = config.settings.get("targets", [])
    if not isinstance(targets, list):
        raise ConfigError("targets must be an array of tables ([[targets]] with a glob each)", config.path)
    for index, target in enumerate(targets):
        if not isinstance(target, dict) or not isinstance(target.get("glob"), str):
            raise ConfigError(f"targets[{index}] needs a glob", config.path)
        check_setting_names(target, PER_TARGET | {"glob"}, f"targets[{index}]", config.path)
        check_settings(target, config.path)
        check_needs_pretrained(target, target.get("pretrained", config.settings.get("pretrained")), config.path)
    # Top-level transfer settings are defaults for the targets that name a pretrained file.
    pretrained_somewhere = config.settings.get("pretrained") or next(
        (target["pretrained"] for target in targets if "pretrained" in target), None)
    check_needs_pretrained(config.settings, pretrained_somewhere, config.path)
    _check_rule_names(config)
    return config


RULE_SETTINGS = ("select", "ignore", "severity", "params", "per-key-ignores")


def _check_rule_names(config: Config) -> None:
    """Rule names and parameters exist only once the rules are loaded: checked here too, so that
    a misspelt one in the file names the file."""
    from ckptlint.engine.registry import load_all_rules

    named = {name: value for name, value in config.settings.items() if name in RULE_SETTINGS}
    if not named:
        return
    try:
        Options.from_settings(named, hash_files=False, source=config.path).selection.enabled(load_all_rules())
    except ConfigError as exc:
        raise ConfigError(exc.message, config.path) from None


def _absolute(settings: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Paths relative to the file's folder (``pretrained`` may be a list of candidates)."""
    def absolute(value: Any) -> Any:
        if isinstance(value, list):
            return [absolute(item) for item in value]
        return str(folder / value) if isinstance(value, str) else value

    return {k: (absolute(v) if k in PATH_SETTINGS else v) for k, v in settings.items()}


def _target_settings(path: str, config: Config) -> dict[str, Any]:
    relative = os.path.relpath(Path(path).resolve(), config.folder).replace(os.sep, "/")
    for target in config.settings.get("targets", []):
        if fnmatchcase(relative, target["glob"]) or fnmatchcase(path, target["glob"]):
            return _absolute({k: v for k, v in target.items() if k != "glob"}, config.folder)
    return {}


def job_settings(path: str | None, given: Mapping[str, Any], config: Config | None) -> dict[str, Any]:
    """The settings ``path`` is checked with: the file's, then those of the first target glob it
    matches (none for a target in memory, ``path`` None), then ``given`` (the command line's or
    ``lint()``'s), which win. The file's transfer settings are defaults for the targets that have
    a pretrained checkpoint: a path without one does not get them."""
    if config is None:
        return dict(given)
    from_file = _absolute({k: v for k, v in config.settings.items() if k != "targets"}, config.folder)
    if path is not None:
        from_file.update(_target_settings(path, config))
    if from_file.get("pretrained") is None and given.get("pretrained") is None:
        from_file = {name: value for name, value in from_file.items() if name not in NEEDS_PRETRAINED}
    return {**from_file, **given}


def resolve_jobs(paths: Sequence[str], given: Mapping[str, Any], config: Config | None,
                 hash_files: bool = True, histograms: bool = False) -> list[tuple[list[str], Options]]:
    """Group ``paths`` by their settings (``job_settings``) and build the Options of each group.
    The file's values were checked as it was read: an error here is about ``given``."""
    jobs: dict[str, tuple[list[str], Options]] = {}
    for path in paths:
        options = Options.from_settings(job_settings(path, given, config), hash_files=hash_files,
                                        histograms=histograms)
        jobs.setdefault(repr(options), ([], options))[0].append(path)
    return list(jobs.values())
