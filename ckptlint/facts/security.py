"""Facts about the globals a pickle names: allowed, known dangerous, or unknown."""

from __future__ import annotations

from fnmatch import fnmatchcase
from functools import cache
from importlib import resources

from typing import Any, Iterable

from ckptlint._toml import tomllib
from ckptlint.io.unpickler import PickleGlobal


@cache
def dangerous_patterns() -> dict[str, str]:
    """Glob over ``module.name`` -> why it is dangerous (``data/dangerous_globals.toml``)."""
    text = resources.files("ckptlint.data").joinpath("dangerous_globals.toml").read_text("utf-8")
    return dict(tomllib.loads(text)["patterns"])


def danger_of(qualname: str) -> str | None:
    """Why a global is dangerous, or None when no pattern matches."""
    for pattern, why in dangerous_patterns().items():
        if fnmatchcase(qualname, pattern):
            return why
    return None


def pickle_global_facts(item: PickleGlobal) -> dict[str, Any]:
    danger = None if item.allowed else danger_of(item.qualname)
    return {
        "module": item.module,
        "name": item.name,
        "qualname": item.qualname,
        "where": item.where,
        "allowed": item.allowed,
        "dangerous": danger is not None,
        "danger": danger,
    }


def distinct_global_facts(items: Iterable[PickleGlobal]) -> list[dict[str, Any]]:
    """``pickle_global.*`` for each distinct global once, with how many times it was named."""
    distinct: dict[str, dict[str, Any]] = {}
    for item in items:
        facts = distinct.setdefault(item.qualname, {**pickle_global_facts(item), "count": 0})
        facts["count"] += 1
    return list(distinct.values())
