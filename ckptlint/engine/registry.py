"""Find rules — the built-in ``rules/`` and third-party packs — and load them all.

A rule is a folder, ``<CODE>-<name>/``: its ``rule.toml`` and its ``cases/*.toml``, the situations
where it must fire and must stay silent, which the tests build and run. The documented example is
one of those cases: ``[docs] example = "cases/NAME.toml"`` names it, and the rule's example text is
that case's description, so what ``explain`` shows is what a test executes. Only a rule without
cases (a pack's) writes its example out in ``[docs]``.

A pack registers in the entry-point group ``ckptlint.rules``; the entry point resolves to a
folder of rule folders (a path, or a module/package whose folder holds them). Packs load through
the same path as the built-in rules; one that fails is an error naming its package.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from functools import cache
from importlib import metadata, resources
from pathlib import Path
from types import ModuleType

import ckptlint
from ckptlint._toml import tomllib
from ckptlint.engine.rules import Rule, load_rule_file
from ckptlint.errors import RuleError

ENTRY_POINT_GROUP = "ckptlint.rules"
EXAMPLE_CASE = re.compile(r"^cases/[^/\\]+\.toml$")  # [docs] example naming one of the rule's cases


def builtin_rules_dir() -> Path:
    """The shipped rules: inside the installed package, or the repository's ``rules/`` when
    running from a source checkout (an editable install)."""
    packaged = Path(str(resources.files("ckptlint"))) / "rules"
    return packaged if packaged.is_dir() else Path(ckptlint.__file__).resolve().parent.parent / "rules"


def pack_folders() -> list[tuple[str, Path]]:
    """(package name, rule folder) of every installed rule pack."""
    found = []
    for entry in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        package = entry.dist.name if entry.dist else entry.value
        try:
            target = entry.load()
            if isinstance(target, ModuleType):
                folder = Path(target.__file__ or next(iter(target.__path__))).resolve()
                folder = folder.parent if folder.is_file() else folder
            else:
                folder = Path(os.fspath(target))
        except Exception as exc:  # noqa: BLE001 - a broken pack is reported, whatever broke
            raise RuleError(f"rule pack {package!r} (entry point {entry.name}) failed to load: "
                            f"{type(exc).__name__}: {exc}") from None
        found.append((package, folder))
    return found


def load_rules_from(folder: Path, package: str | None = None) -> list[Rule]:
    """Every rule folder in ``folder``: each subfolder (but ``__pycache__`` and dot-folders) is one,
    holding ``rule.toml`` and named ``<CODE>-<name>`` after the rule it holds. A rule file lying flat
    in ``folder`` is the layout of ckptlint before rules were folders: an error saying how to move
    it. Nothing in a rules folder is skipped silently: a misspelt ``rule.toml`` is an error too."""
    owner = f"rule pack {package!r}: " if package else ""
    if not folder.is_dir():
        raise RuleError(f"{owner}rule folder not found", str(folder))
    flat = sorted(folder.glob("*.toml"))
    if flat:
        stem = flat[0].stem
        raise RuleError(f"{owner}a rule is a folder now: move this file to {stem}/rule.toml "
                        f"(and its cases to {stem}/cases/)", str(flat[0]))
    return [load_rule_folder(sub, owner) for sub in sorted(folder.iterdir())
            if sub.is_dir() and sub.name != "__pycache__" and not sub.name.startswith(".")]


def load_rule_folder(folder: Path, owner: str = "") -> Rule:
    """``folder/rule.toml``, its example taken from the case it names; the folder must be named
    ``<CODE>-<name>`` after the rule."""
    if not (folder / "rule.toml").is_file():
        found = ", ".join(sorted(p.name for p in folder.glob("*.toml"))) or "no .toml file"
        raise RuleError(f"{owner}a rule folder must hold rule.toml (found: {found})", str(folder))
    rule = load_rule_file(folder / "rule.toml")
    expected = f"{rule.code}-{rule.name}"
    if folder.name != expected:
        raise RuleError(f"{owner}the folder of rule {rule.code} ({rule.name}) must be named {expected}, "
                        f"not {folder.name}", str(folder))
    return replace(rule, docs={**rule.docs, "example": example_text(rule, folder)})


def example_text(rule: Rule, folder: Path) -> str:
    """The description of the case ``[docs] example`` names, which must be one where the rule fires.
    A rule with cases must name one (one way to give an example: an executed one); a rule without
    cases gives its example as text."""
    named = rule.docs["example"]
    has_cases = any((folder / "cases").glob("*.toml"))
    if not EXAMPLE_CASE.match(named):
        if has_cases:
            raise RuleError('[docs] example must name one of the rule\'s cases: example = "cases/NAME.toml"',
                            rule.source)
        return named
    try:
        case = tomllib.loads((folder / named).read_text("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RuleError(f"[docs] example {named}: cannot read the case ({exc})", rule.source) from None
    description = case.get("description")
    if not isinstance(description, str) or not description.strip():
        raise RuleError(f"[docs] example {named}: the case has no description", rule.source)
    if not case.get("fires"):
        raise RuleError(f"[docs] example {named}: the rule stays silent in that case; name one where it fires",
                        rule.source)
    return " ".join(description.split())


@cache
def load_all_rules() -> list[Rule]:
    """Every rule (shipped and from installed packs), sorted by code; two rules may not share a code
    or a name. Loaded once per process: every caller shares the list, which must not be changed."""
    sources = [(None, builtin_rules_dir()), *pack_folders()]
    rules = [rule for package, folder in sources for rule in load_rules_from(folder, package)]
    seen: dict[str, Rule] = {}
    for rule in rules:
        for ident in (rule.code, rule.name):
            if ident in seen:
                raise RuleError(f"{ident} is declared twice (also in {seen[ident].source})", rule.source)
            seen[ident] = rule
    return sorted(rules, key=lambda r: r.code)
