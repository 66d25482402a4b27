"""The kinds of cause, declared in ``ckptlint/data/diagnoses.toml`` and compiled once.

Their conditions and templates are Jinja2 in the rules' sandbox, compiled by the rules' compiler
and kept in the same code cache, so a run pays for parsing them only when the file changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from ckptlint._toml import tomllib
from ckptlint.engine import code_cache
from ckptlint.engine.rules import Compiler, Expression, MessageTemplate
from ckptlint.errors import RuleError

SOURCE = "ckptlint/data/diagnoses.toml"
GROUPS = ("file", "pretrained")  # one diagnosis per file, or per pretrained file with its targets' findings
FIELDS = {"kind", "claims", "group", "when", "evidence", "title", "fix"}


@dataclass(frozen=True)
class Kind:
    """One kind of cause: which findings it claims, when a group of them is that cause, and
    how to say it."""

    name: str
    claims: dict[str, Expression]  # rule name -> does this finding belong to the cause?
    group: str
    when: Expression | None
    evidence: dict[str, Expression]
    title: MessageTemplate
    fix: MessageTemplate


@cache
def kinds() -> tuple[Kind, ...]:
    """The shipped kinds, in the order they claim findings."""
    return parse_kinds(resources.files("ckptlint.data").joinpath("diagnoses.toml").read_text("utf-8"), SOURCE)


def parse_kinds(text: str, where: str) -> tuple[Kind, ...]:
    """Validate and compile a diagnoses file; any problem is a RuleError naming it."""
    try:
        tables = tomllib.loads(text).get("diagnosis", [])
    except tomllib.TOMLDecodeError as exc:
        raise RuleError(f"cannot parse diagnoses ({exc})", where) from None
    cached = code_cache.load(text)
    compiler = Compiler(where, cached or {})
    parsed = tuple(_kind(table, compiler, where) for table in tables)
    if len({k.name for k in parsed}) != len(parsed):
        raise RuleError("two diagnoses have the same kind", where)
    if cached is None:
        code_cache.store(text, compiler.codes())
    return parsed


def _kind(table: dict[str, Any], compiler: Compiler, where: str) -> Kind:
    name = table.get("kind")
    unknown = set(table) - FIELDS
    if not isinstance(name, str) or unknown or not isinstance(table.get("claims"), dict) or not table["claims"]:
        raise RuleError(f"diagnosis {name!r}: needs kind, claims, title and fix"
                        f"{'; unknown ' + ', '.join(sorted(unknown)) if unknown else ''}", where)
    group = table.get("group", "file")
    if group not in GROUPS:
        raise RuleError(f"diagnosis {name}: group must be one of {', '.join(GROUPS)}", where)
    evidence = table.get("evidence", {})
    if not isinstance(evidence, dict):
        raise RuleError(f"diagnosis {name}: evidence must be a table", where)
    return Kind(
        name=name,
        claims={rule: compiler.expression(condition, f"{name} claims.{rule}")
                for rule, condition in table["claims"].items()},
        group=group,
        when=compiler.expression(table["when"], f"{name} when") if "when" in table else None,
        evidence={key: compiler.expression(source, f"{name} evidence.{key}") for key, source in evidence.items()},
        title=compiler.message(table.get("title"), f"{name} title"),
        fix=compiler.message(table.get("fix"), f"{name} fix"),
    )
