"""Which rules run and how severe their findings are: decided here, and only here."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Iterable

from ckptlint.engine.rules import Rule
from ckptlint.errors import ConfigError
from ckptlint.model import SEVERITIES


@dataclass(frozen=True)
class Selection:
    """``select``/``ignore`` take rule names or codes; ``severity`` overrides by name or code."""

    select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    severity: dict[str, str] = field(default_factory=dict)

    def enabled(self, rules: Iterable[Rule]) -> list[Rule]:
        rules = list(rules)
        known = {ident for rule in rules for ident in (rule.name, rule.code)}
        for ident in (*self.select, *self.ignore, *self.severity):
            if ident not in known:
                close = difflib.get_close_matches(ident, sorted(known), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"unknown rule {ident!r}{hint}")
        for ident, level in self.severity.items():
            if level not in SEVERITIES:
                raise ConfigError(f"severity for {ident!r} must be one of {', '.join(SEVERITIES)}")

        def chosen(rule: Rule) -> bool:
            picked = not self.select or rule.name in self.select or rule.code in self.select
            return picked and rule.name not in self.ignore and rule.code not in self.ignore

        return [rule for rule in rules if chosen(rule)]

    def severity_of(self, rule: Rule, declared: str) -> str:
        return self.severity.get(rule.name, self.severity.get(rule.code, declared))
