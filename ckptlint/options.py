"""The options of a run: one typed object that the command line, the configuration file and
``lint()`` all build, checked as it is built.

Every check of a value lives here, once: an invalid value (``fail-on = "eror"``, a negative
``max-drift``, ``severity = {rule = "warn"}``) and transfer settings without a pretrained
checkpoint (they would do nothing) are a one-line ConfigError naming the setting — and, read from
a configuration file, the file — before any checkpoint is read. Settings are named as in the
configuration file (``max-drift``); each field is the same name in Python spelling (``max_drift``).
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import partial
from typing import TYPE_CHECKING, Any

from ckptlint.baseline import load_baseline
from ckptlint.errors import ConfigError
from ckptlint.presets import EXPECTATIONS, presets
from ckptlint.selection import Selection
from ckptlint.severity import FAIL_ON, SEVERITIES

if TYPE_CHECKING:
    from ckptlint.io.checkpoint import Checkpoint

Check = Callable[[str, Any], Any]  # (setting name, value) -> the value, normalised; or ConfigError


def _did_you_mean(value: Any, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(value), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if isinstance(value, str) and value in choices:
        return value
    raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {value!r}{_did_you_mean(value, choices)}")


def _preset(name: str, value: Any) -> str:
    """The presets are read from a data file only when one is named."""
    return _choice(name, value, sorted(presets()))


def _text(name: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    raise ConfigError(f"{name} must be a string, not {value!r}")


def _path(name: str, value: Any) -> str:
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    raise ConfigError(f"{name} must be a path, not {value!r}")


def _one_pretrained(name: str, value: Any) -> str | Checkpoint:
    """A path, or a checkpoint ``lint()`` built from an object in memory (it has ``tensors`` and
    ``read``, as every reader's result does). Options are shared by every stage and import none."""
    if hasattr(value, "tensors") and hasattr(value, "read"):
        return value
    return _path(name, value)


def _pretrained(name: str, value: Any) -> str | Checkpoint | tuple[str | Checkpoint, ...]:
    """One pretrained checkpoint, or several candidates (a list: the first is the expected one).
    A list of one is that one; with several, each path must exist (the ranking needs them all)
    and none may be given twice."""
    if not isinstance(value, (list, tuple)):
        return _one_pretrained(name, value)
    if not value:
        raise ConfigError(f"{name} must be a path or a list of paths, not {value!r}")
    candidates = tuple(_one_pretrained(name, item) for item in value)
    if len(candidates) == 1:
        return candidates[0]
    paths = [c for c in candidates if isinstance(c, str)]
    twice = next((p for i, p in enumerate(paths) if os.path.normpath(p) in map(os.path.normpath, paths[:i])), None)
    if twice is not None:
        raise ConfigError(f"{name} names {twice} twice")
    missing = next((p for p in paths if not os.path.exists(p)), None)
    if missing is not None:
        raise ConfigError(f"{name}: no such file or folder: {missing} (every candidate must exist)")
    return candidates


def _number(name: str, value: Any, low: float, high: float = math.inf) -> float:
    """A number from ``low`` to ``high``; a bool is no number, and NaN is in no range."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high:
        return float(value)
    bounds = f"at least {low:g}" if high == math.inf else f"between {low:g} and {high:g}"
    raise ConfigError(f"{name} must be a number {bounds}, not {value!r}")


def _strings(name: str, value: Any) -> tuple[str, ...]:
    """A list of names; a lone string is refused rather than read as a list of characters."""
    if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise ConfigError(f"{name} must be a list of rule names, not {value!r}")


def _table(name: str, value: Any, shape: str) -> Mapping[str, Any]:
    if isinstance(value, Mapping) and all(isinstance(key, str) for key in value):
        return value
    raise ConfigError(f"{name} must be a table of {shape}, not {value!r}")


def _severity(name: str, value: Any) -> dict[str, str]:
    return {rule: _choice(f"{name} for {rule}", level, SEVERITIES)
            for rule, level in _table(name, value, "rule = severity").items()}


def _params(name: str, value: Any) -> dict[str, dict[str, Any]]:
    return {rule: dict(_table(f"{name} for {rule}", values, "parameter = value"))
            for rule, values in _table(name, value, "tables (rule = {parameter = value})").items()}


def _per_key_ignores(name: str, value: Any) -> dict[str, tuple[str, ...]]:
    return {glob: _strings(f"{name} for {glob!r}", rules)
            for glob, rules in _table(name, value, "key glob = [rule names]").items()}


def _is_prefix_pair(pair: Any) -> bool:
    return (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(p, str) for p in pair)
            and bool(pair[0]))


def _maps(name: str, value: Any) -> tuple[tuple[str, str], ...]:
    """OLD = NEW key prefixes: a table (configuration, ``lint()``) or pairs (the command line)."""
    pairs = list(value.items()) if isinstance(value, Mapping) else value
    if isinstance(pairs, (list, tuple)) and all(_is_prefix_pair(pair) for pair in pairs):
        return tuple((old, new) for old, new in pairs)
    raise ConfigError(f"{name} must be a table of OLD = NEW key prefixes (OLD not empty), not {value!r}")


def _allow_globals(name: str, value: Any) -> tuple[str, ...]:
    """Exact ``module.name`` globals the project trusts its pickles to invoke: no patterns."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not all(
            isinstance(n, str) and "." in n.strip(".") and not set(n) & set(" *?[]") for n in names):
        raise ConfigError(f"{name} must be a list of exact module.name globals, not {value!r}")
    return tuple(names)


def _model(name: str, value: Any) -> str:
    module, colon, factory = _text(name, value).partition(":")
    if colon and module and factory:
        return value
    raise ConfigError(f"{name} must be package.module:factory, not {value!r}")


def _optional(check: Check) -> Check:
    """``check``, letting None (not given) through."""
    return lambda name, value: None if value is None else check(name, value)


# Every setting, named as in the configuration file, with the check of its value.
CHECKS: dict[str, Check] = {
    "select": _strings,
    "ignore": _strings,
    "severity": _severity,
    "params": _params,
    "per-key-ignores": _per_key_ignores,
    "baseline": _path,
    "fail-on": partial(_choice, choices=FAIL_ON),
    "key": _optional(_text),
    "pretrained": _optional(_pretrained),
    "pretrained-key": _optional(_text),
    "model": _optional(_model),
    "allow-globals": _allow_globals,
    "expect": partial(_choice, choices=EXPECTATIONS),
    "preset": _optional(_preset),
    "scope": _optional(_text),
    "maps": _maps,
    "max-drift": partial(_number, low=0.0),
    "min-score": partial(_number, low=0.0, high=100.0),  # low-transfer-score's min_score
}
SETTINGS = frozenset(CHECKS)
SELECTION_SETTINGS = ("select", "ignore", "severity", "params", "per-key-ignores")
TRANSFER_SETTINGS = ("expect", "preset", "scope", "maps", "max-drift")
OPTION_SETTINGS = ("fail-on", "key", "pretrained", "pretrained-key", "model", "allow-globals")
# Settings that only mean something against a pretrained checkpoint: without one they would do
# nothing, silently, so they are a usage error.
NEEDS_PRETRAINED = ("expect", "pretrained-key", "scope", "maps", "preset", "max-drift", "min-score")


def check_settings(settings: Mapping[str, Any], source: str | None = None) -> dict[str, Any]:
    """``settings`` with each value checked and normalised (lists to tuples, ``maps`` to pairs).
    Checked per table where it is read, so that an error names its file (``source``); names that
    are no setting (``targets``, ``glob``) pass through: checking names is the reader's job."""
    try:
        return {name: CHECKS[name](name, value) if name in CHECKS else value for name, value in settings.items()}
    except ConfigError as exc:
        raise ConfigError(exc.message, source) from None


def _given(name: str, value: Any) -> bool:
    return value not in (None, (), {}, []) and not (name == "expect" and value == "auto")


def check_needs_pretrained(settings: Mapping[str, Any], pretrained: Any, source: str | None = None) -> None:
    """Transfer settings without a pretrained checkpoint would do nothing: a usage error."""
    given = [name for name in NEEDS_PRETRAINED if _given(name, settings.get(name))]
    if pretrained is None and given:
        verb = "means" if len(given) == 1 else "mean"
        raise ConfigError(f"{', '.join(given)} only {verb} something against a pretrained checkpoint, and none "
                          "was given (--pretrained FILE, or pretrained = ... in the configuration)", source)


def _attribute(setting: str) -> str:
    return setting.replace("-", "_")


def _checked_fields(instance: Any, settings: Sequence[str]) -> dict[str, Any]:
    """The fields of ``instance`` that hold these settings, checked and normalised."""
    return {_attribute(name): CHECKS[name](name, getattr(instance, _attribute(name))) for name in settings}


def _keep(instance: Any, values: Mapping[str, Any]) -> None:
    """Store checked values in a frozen dataclass while it is being built."""
    for attribute, value in values.items():
        object.__setattr__(instance, attribute, value)


@dataclass(frozen=True)
class TransferOptions:
    """How the target should relate to the pretrained checkpoint."""

    expect: str = "auto"  # auto: decided from the evidence; copied; finetuned
    preset: str | None = None
    scope: str | None = None
    maps: tuple[tuple[str, str], ...] = ()
    max_drift: float = 0.25  # relative L2 change a fine-tuned trainable tensor may show

    def __post_init__(self) -> None:
        _keep(self, _checked_fields(self, TRANSFER_SETTINGS))

    def changed(self) -> dict[str, Any]:
        """The settings that differ from the defaults, named as in the configuration file."""
        defaults = {f.name: f.default for f in fields(self)}
        return {name: getattr(self, _attribute(name)) for name in TRANSFER_SETTINGS
                if getattr(self, _attribute(name)) != defaults[_attribute(name)]}


@dataclass(frozen=True)
class Options:
    """Everything that shapes a run. Built from settings by ``Options.from_settings``; built
    directly, its values are checked all the same: an invalid Options cannot exist."""

    selection: Selection = field(default_factory=Selection)
    fail_on: str = "error"
    key: str | None = None
    hash_files: bool = True
    histograms: bool = False  # keep value histograms of pairs that did not carry the values (HTML draws them)
    pretrained: str | Checkpoint | None = None  # a path, or an in-memory checkpoint
    pretrained_key: str | None = None
    transfer: TransferOptions = field(default_factory=TransferOptions)
    model: str | None = None  # package.module:factory building the model to load into
    allow_globals: tuple[str, ...] = ()  # pickle globals the project trusts (`allow-globals`)
    # Other pretrained files the target may have come from (``--pretrained a --pretrained b``):
    # ranked with ``pretrained``, the expected one, against which the transfer is judged.
    candidates: tuple[str | Checkpoint, ...] = ()

    def __post_init__(self) -> None:
        for attribute, kind in (("selection", Selection), ("transfer", TransferOptions), ("hash_files", bool),
                                ("histograms", bool)):
            if not isinstance(getattr(self, attribute), kind):
                raise ConfigError(f"Options.{attribute} must be a {kind.__name__}, not {getattr(self, attribute)!r}")
        if self.candidates:  # given apart: checked as the list they make with the expected file
            if self.pretrained is None or isinstance(self.pretrained, (list, tuple)):
                raise ConfigError("Options.candidates needs one expected pretrained checkpoint first")
            _keep(self, {"pretrained": (self.pretrained, *self.candidates), "candidates": ()})
        _keep(self, _checked_fields(self, OPTION_SETTINGS))
        if isinstance(self.pretrained, tuple):
            _keep(self, {"pretrained": self.pretrained[0], "candidates": self.pretrained[1:]})
        _keep(self, {"selection": replace(self.selection, **_checked_fields(self.selection, SELECTION_SETTINGS))})
        check_needs_pretrained({**self.transfer.changed(), "pretrained-key": self.pretrained_key}, self.pretrained)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], *, hash_files: bool, histograms: bool = False,
                      source: str | None = None) -> Options:
        """Options from settings named as in the configuration file (``fail-on``, ``max-drift``,
        ``min-score``, ``baseline``: a path), whose names the caller has checked. ``source``: the
        configuration file they come from, named in errors; None for the command line and
        ``lint()``. ``hash_files``: whether the report gives each file's SHA-256; ``histograms``: whether
        it draws value histograms (what the report's format shows decides what is computed)."""
        checked = check_settings(settings, source)
        check_needs_pretrained(checked, checked.get("pretrained"), source)
        selection = Selection(**{**_fields_of(checked, SELECTION_SETTINGS), "params": _params_with_min_score(checked)},
                              baseline=load_baseline(checked["baseline"]) if "baseline" in checked else frozenset())
        return cls(selection=selection, transfer=TransferOptions(**_fields_of(checked, TRANSFER_SETTINGS)),
                   hash_files=hash_files, histograms=histograms, **_fields_of(checked, OPTION_SETTINGS))


def _fields_of(settings: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """The given ones of these settings, by field name: absent ones keep the field's default."""
    return {_attribute(name): settings[name] for name in names if name in settings}


def _params_with_min_score(settings: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Rule parameters; ``min-score`` is low-transfer-score's ``min_score``."""
    params = {rule: dict(values) for rule, values in settings.get("params", {}).items()}
    if "min-score" in settings:
        for name in ("low-transfer-score", "CKP209"):
            given = params.get(name, {}).get("min_score", settings["min-score"])
            if given != settings["min-score"]:
                raise ConfigError(f"min-score {settings['min-score']:g} and params for {name}: min_score {given!r} "
                                  "say two things: give one")
        params.setdefault("low-transfer-score", {})["min_score"] = settings["min-score"]
    return params
