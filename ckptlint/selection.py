"""Which rules run, with which parameters, and which findings count: decided here, and only here."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from ckptlint.errors import ConfigError
from ckptlint.identity import finding_fingerprint
from ckptlint.results import Finding

if TYPE_CHECKING:  # the engine's rules are judged here by name, code and declared severity
    from ckptlint.engine.rules import Rule


def _unknown(ident: str, known: Iterable[str], what: str) -> ConfigError:
    close = difflib.get_close_matches(ident, sorted(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown {what} {ident!r}{hint}")


def _same_kind(default: Any, value: Any) -> bool:
    """A number for a number (int or float, never a bool), a string for a string, and so on."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float))
    if isinstance(default, list):
        return isinstance(value, list) and all(_same_kind(default[0], item) for item in value) if default else True
    return isinstance(value, type(default))


def _parameter_problem(default: Any, value: Any, allowed: tuple[str, ...] | None) -> str | None:
    """Why an override of a rule parameter cannot work, or None: it must be of its default's
    kind, and a parameter the rule compares with a fact must hold values that fact takes."""
    if not _same_kind(default, value):
        return f"must be like its default {default!r}, not {value!r}"
    if allowed is None:
        return None
    for item in value if isinstance(value, list) else [value]:
        if item not in allowed:
            close = difflib.get_close_matches(str(item), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return f"holds {item!r}, which is none of {', '.join(allowed)}{hint}"
    return None


@dataclass(frozen=True)
class Selection:
    """Rule choice and finding decisions. Rules are named by name or code everywhere.

    ``select``/``ignore``: which rules run. ``severity``: overrides per rule. ``params``: rule
    parameters per rule. ``per_key_ignores``: key glob -> rules whose findings on matching keys
    are dropped. ``baseline``: fingerprints of accepted findings (suppressed, not dropped).
    """

    select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    severity: dict[str, str] = field(default_factory=dict)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    per_key_ignores: dict[str, tuple[str, ...]] = field(default_factory=dict)
    baseline: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not (isinstance(self.baseline, frozenset) and all(isinstance(f, str) for f in self.baseline)):
            raise ConfigError(f"a baseline is a set of finding fingerprints, not {self.baseline!r}")

    def enabled(self, rules: Iterable[Rule]) -> list[Rule]:
        rules = list(rules)
        by_ident = {ident: rule for rule in rules for ident in (rule.name, rule.code)}
        named = [*self.select, *self.ignore, *self.severity, *self.params,
                 *(r for names in self.per_key_ignores.values() for r in names)]
        for ident in named:
            if ident not in by_ident:
                raise _unknown(ident, by_ident, "rule")
        for ident, values in self.params.items():
            rule = by_ident[ident]
            for param, value in values.items():
                if param not in rule.params:
                    raise _unknown(param, rule.params, f"parameter of {ident}")
                problem = _parameter_problem(rule.params[param], value, rule.param_values.get(param))
                if problem:
                    raise ConfigError(f"params for {ident}: {param} {problem}")

        def chosen(rule: Rule) -> bool:
            picked = not self.select or rule.name in self.select or rule.code in self.select
            return picked and rule.name not in self.ignore and rule.code not in self.ignore

        return [rule for rule in rules if chosen(rule)]

    def _for(self, table: dict[str, Any], rule: Rule) -> Any:
        return table.get(rule.name, table.get(rule.code))

    def severity_of(self, rule: Rule, declared: str) -> str:
        return self._for(self.severity, rule) or declared

    def params_of(self, rule: Rule) -> dict[str, Any]:
        return {**rule.params, **(self._for(self.params, rule) or {})}

    def split_baseline(self, findings: list[Finding], root: str) -> tuple[list[Finding], list[Finding]]:
        """(active, suppressed): findings whose fingerprint the baseline holds are suppressed."""
        active: list[Finding] = []
        suppressed: list[Finding] = []
        for finding in findings:
            (suppressed if finding_fingerprint(finding, root) in self.baseline else active).append(finding)
        return active, suppressed

    def keeps(self, finding: Finding) -> bool:
        """False when a per-key ignore covers the finding."""
        key = finding.key or ""
        return not any(fnmatchcase(key, glob) and (finding.name in rules or finding.code in rules)
                       for glob, rules in self.per_key_ignores.items())
