"""Find rule files — the built-in ``rules/`` and third-party packs — and load them all."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import ckptlint
from ckptlint.engine.rules import Rule, load_rule_file
from ckptlint.errors import RuleError


def builtin_rules_dir() -> Path:
    """The shipped rules: inside the installed package, or the repository's ``rules/`` when
    running from a source checkout (an editable install)."""
    packaged = Path(str(resources.files("ckptlint"))) / "rules"
    return packaged if packaged.is_dir() else Path(ckptlint.__file__).resolve().parent.parent / "rules"


def load_rules_from(folder: Path) -> list[Rule]:
    if not folder.is_dir():
        raise RuleError("rule folder not found", str(folder))
    return [load_rule_file(path) for path in sorted(folder.glob("*.toml"))]


def load_all_rules(extra_folders: tuple[Path, ...] = ()) -> list[Rule]:
    """Every rule, sorted by code; two rules may not share a code or a name."""
    rules = [rule for folder in (builtin_rules_dir(), *extra_folders) for rule in load_rules_from(folder)]
    seen: dict[str, Rule] = {}
    for rule in rules:
        for ident in (rule.code, rule.name):
            if ident in seen:
                raise RuleError(f"{ident} is declared twice (also in {seen[ident].source})", rule.source)
            seen[ident] = rule
    return sorted(rules, key=lambda r: r.code)
