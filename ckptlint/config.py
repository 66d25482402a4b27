"""Configuration: ``[tool.ckptlint]`` in pyproject.toml or a ckptlint.toml, merged with the
command line (which wins) into one or more jobs: the paths and the Options to check them with.

Found by walking up from the current directory (never from a checked file's folder), or named
with --config; a discovered one may not import code or silence the pickle rules. Paths in the
file are relative to its folder; ``[[targets]]`` give per-glob settings, such as the pretrained
checkpoint for ``models/detr_*.pt``.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Sequence

from ckptlint._toml import tomllib
from ckptlint.baseline import load_baseline
from ckptlint.engine.selection import Selection
from ckptlint.errors import ConfigError
from ckptlint.options import Options, TransferOptions
from ckptlint.severity import SEVERITIES
from ckptlint.presets import EXPECTATIONS, presets

# Settings a target glob may override, and the ones only the top level takes.
PER_TARGET = {"pretrained", "pretrained-key", "key", "scope", "maps", "expect", "preset", "max-drift", "min-score",
              "model"}
# Settings that only mean something against a pretrained checkpoint: without one they would do
# nothing, silently, so they are a usage error.
NEEDS_PRETRAINED = ("pretrained-key", "scope", "maps", "preset", "max-drift", "min-score")
TOP_LEVEL = PER_TARGET | {"select", "ignore", "fail-on", "baseline", "severity", "params",
                          "per-key-ignores", "targets", "allow-globals"}
PATH_SETTINGS = ("pretrained", "baseline")


@dataclass(frozen=True)
class Config:
    """A configuration file's settings and the folder its relative paths start from."""

    path: str
    folder: Path
    settings: dict[str, Any]


def check_setting_names(table: dict[str, Any], allowed: set[str], where: str, path: str | None) -> None:
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
    security rules."""
    tables = [config.settings, *[t for t in config.settings.get("targets", []) if isinstance(t, dict)]]
    problems = []
    if any("model" in table for table in tables):
        problems.append("`model` imports code")
    named = [*config.settings.get("ignore", ()), *config.settings.get("severity", {}),
             *config.settings.get("per-key-ignores", {}).values()]
    flat = {name for entry in named for name in ([entry] if isinstance(entry, str) else entry)}
    if flat & set(SECURITY_RULES):
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
    where = "[tool.ckptlint]" if config.path.endswith("pyproject.toml") else "the top level"
    check_setting_names(config.settings, TOP_LEVEL, where, config.path)
    for index, target in enumerate(config.settings.get("targets", [])):
        if not isinstance(target, dict) or "glob" not in target:
            raise ConfigError(f"targets[{index}] needs a glob", config.path)
        check_setting_names(target, PER_TARGET | {"glob"}, f"targets[{index}]", config.path)
        check_needs_pretrained(target, target.get("pretrained", config.settings.get("pretrained")), config.path)
    # Top-level transfer settings are defaults for the targets that name a pretrained file.
    pretrained_somewhere = config.settings.get("pretrained") or next(
        (t["pretrained"] for t in config.settings.get("targets", []) if isinstance(t, dict) and "pretrained" in t),
        None)
    check_needs_pretrained(config.settings, pretrained_somewhere, config.path)
    fail_on = config.settings.get("fail-on")
    if fail_on is not None and fail_on not in (*SEVERITIES, "never"):
        raise ConfigError(f"fail-on must be one of {', '.join(SEVERITIES)}, never", config.path)
    return config


def _absolute(settings: dict[str, Any], folder: Path) -> dict[str, Any]:
    return {k: (str(folder / v) if k in PATH_SETTINGS and isinstance(v, str) else v) for k, v in settings.items()}


def _target_settings(path: str, config: Config) -> dict[str, Any]:
    relative = os.path.relpath(Path(path).resolve(), config.folder).replace(os.sep, "/")
    for target in config.settings.get("targets", []):
        if fnmatchcase(relative, target["glob"]) or fnmatchcase(path, target["glob"]):
            return _absolute({k: v for k, v in target.items() if k != "glob"}, config.folder)
    return {}


def resolve_jobs(paths: Sequence[str], cli: dict[str, Any], config: Config | None,
                 hash_files: bool = True) -> list[tuple[list[str], Options]]:
    """Group ``paths`` by their effective settings (file, then its target glob, then the command
    line) and build the Options of each group."""
    base = _absolute({k: v for k, v in config.settings.items() if k != "targets"}, config.folder) if config else {}
    jobs: dict[str, tuple[list[str], Options]] = {}
    for path in paths:
        settings = {**base, **(_target_settings(path, config) if config else {}), **cli}
        check_needs_pretrained(cli, settings.get("pretrained"), None)
        options = options_from_settings(settings, hash_files, config.path if config else None)
        jobs.setdefault(repr(options), ([], options))[0].append(path)
    return list(jobs.values())


def _maps(value: Any, source: str | None) -> tuple[tuple[str, str], ...]:
    if isinstance(value, dict):
        return tuple((str(k), str(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)) and all(isinstance(v, (tuple, list)) and len(v) == 2 for v in value):
        return tuple((str(a), str(b)) for a, b in value)
    raise ConfigError("maps must be a table of OLD = NEW prefixes", source)


def _choice(settings: dict[str, Any], name: str, choices: Sequence[str], source: str | None) -> None:
    value = settings.get(name)
    if value is not None and value not in choices:
        close = difflib.get_close_matches(str(value), list(choices), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {value!r}{hint}", source)


def check_needs_pretrained(settings: dict[str, Any], pretrained: Any, source: str | None) -> None:
    """Transfer settings without a pretrained checkpoint would do nothing: a usage error."""
    if pretrained is not None:
        return
    given = [name for name in NEEDS_PRETRAINED if settings.get(name) not in (None, (), {}, [])]
    if settings.get("expect") not in (None, "auto"):
        given.insert(0, "expect")
    if given:
        verb = "means" if len(given) == 1 else "mean"
        raise ConfigError(f"{', '.join(given)} only {verb} something against a pretrained checkpoint, and none "
                          "was given (--pretrained FILE, or pretrained = ... in the configuration)", source)


def _validate(settings: dict[str, Any], source: str | None) -> None:
    """Every value checked once, whoever gave it (command line, configuration, ``lint()``)."""
    _choice(settings, "fail-on", (*SEVERITIES, "never"), source)
    _choice(settings, "expect", EXPECTATIONS, source)
    _choice(settings, "preset", sorted(presets()), source)
    for name, low, high in (("max-drift", 0.0, None), ("min-score", 0.0, 100.0)):
        value = settings.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or value < low or (high is not None and value > high)):
            bounds = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
            raise ConfigError(f"{name} must be a number {bounds}, not {value!r}", source)


def options_from_settings(settings: dict[str, Any], hash_files: bool, source: str | None = None) -> Options:
    """Options from settings named as in the configuration file (``fail-on``, ``max-drift``),
    validated: an invalid value or a setting that would do nothing is a ConfigError."""
    _validate(settings, source)
    baseline = settings.get("baseline")
    selection = Selection(
        select=tuple(settings.get("select", ())),
        ignore=tuple(settings.get("ignore", ())),
        severity=dict(settings.get("severity", {})),
        params=_params(settings),
        per_key_ignores={k: tuple(v) for k, v in settings.get("per-key-ignores", {}).items()},
        baseline=load_baseline(baseline) if baseline else frozenset(),
    )
    transfer = TransferOptions(
        expect=settings.get("expect", "auto"), preset=settings.get("preset"), scope=settings.get("scope"),
        maps=_maps(settings.get("maps", ()), source), max_drift=float(settings.get("max-drift", 0.25)),
    )
    return Options(selection=selection, fail_on=settings.get("fail-on", "error"), key=settings.get("key"),
                   hash_files=hash_files, pretrained=settings.get("pretrained"),
                   pretrained_key=settings.get("pretrained-key"), transfer=transfer, model=settings.get("model"),
                   allow_globals=_allow_globals(settings.get("allow-globals", ()), source))


def _allow_globals(value: Any, source: str | None) -> tuple[str, ...]:
    """``allow-globals``: exact ``module.name`` globals the project trusts its pickles to invoke."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not all(
            isinstance(n, str) and "." in n.strip(".") and not set(n) & set(" *?[]") for n in names):
        raise ConfigError(f"allow-globals must be a list of exact module.name globals, not {value!r}", source)
    return tuple(names)


def _params(settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Rule parameters; ``min-score`` is low-transfer-score's minimum."""
    params = {k: dict(v) for k, v in settings.get("params", {}).items()}
    if settings.get("min-score") is not None:
        params.setdefault("low-transfer-score", {})["min_score"] = float(settings["min-score"])
    return params
