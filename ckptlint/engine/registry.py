"""Find rule files — the built-in ``rules/`` and third-party packs — and load them all.

A pack registers in the entry-point group ``ckptlint.rules``; the entry point resolves to a
folder of rule files (a path, or a module/package whose folder holds them). Packs load through
the same path as the built-in rules; one that fails is an error naming its package.
"""

from __future__ import annotations

import os
from importlib import metadata, resources
from pathlib import Path
from types import ModuleType

import ckptlint
from ckptlint.engine.rules import Rule, load_rule_file
from ckptlint.errors import RuleError

ENTRY_POINT_GROUP = "ckptlint.rules"


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
    if not folder.is_dir():
        owner = f"rule pack {package!r}: " if package else ""
        raise RuleError(f"{owner}rule folder not found", str(folder))
    return [load_rule_file(path) for path in sorted(folder.glob("*/rule.toml"))]


def load_all_rules(extra_folders: tuple[Path, ...] = ()) -> list[Rule]:
    """Every rule, sorted by code; two rules may not share a code or a name."""
    sources = [(None, builtin_rules_dir()), *pack_folders(), *((None, f) for f in extra_folders)]
    rules = [rule for package, folder in sources for rule in load_rules_from(folder, package)]
    seen: dict[str, Rule] = {}
    for rule in rules:
        for ident in (rule.code, rule.name):
            if ident in seen:
                raise RuleError(f"{ident} is declared twice (also in {seen[ident].source})", rule.source)
            seen[ident] = rule
    return sorted(rules, key=lambda r: r.code)
