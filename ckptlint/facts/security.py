"""Facts about the globals a pickle names: the allowlist decides, the denylist explains.

A global the pickle *invokes* (calls, instantiates, sets the state of, modifies, or reaches
through a resolver such as ``getattr``) runs code in a real loader, so it is unsafe unless it is
allowlisted (ckptlint's ALLOWLIST, or the project's ``allow-globals``). A global on the denylist
(``data/dangerous_globals.toml``) is unsafe wherever it appears, even only passed along as data,
and the denylist says what it is known to do; the project's ``allow-globals`` cannot overrule it.
A global that is only named, and neither allowlisted nor denylisted, is merely unknown.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from fnmatch import fnmatchcase
from functools import cache
from importlib import resources
from typing import Any

from ckptlint._toml import tomllib
from ckptlint.io.pickle_walk import CHANGED, NAMED, USES
from ckptlint.io.unpickler import PickleGlobal

NOT_ALLOWLISTED = ("is not on the allowlist of tensor records and plain data (a loader imports its module and "
                   "runs its code)")
CHANGES_A_GLOBAL = ("changes a global object in place (BUILD on the global itself), and with it every file "
                    "loaded after it in the same process")


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


def why_unsafe(item: PickleGlobal, allow_globals: Collection[str] = ()) -> str | None:
    """Why loading a pickle that uses ``item`` so would run code it should not, or None.

    ckptlint's own allowlist wins over the denylist's patterns (``numpy.random._pickle.
    __randomstate_ctor`` matches ``*.__*``); the project's ``allow-globals`` does not.
    """
    if CHANGED in item.uses:
        return CHANGES_A_GLOBAL
    if item.allowed:
        return None
    if (danger := danger_of(item.qualname)) is not None:
        return danger
    if item.invoked and item.qualname not in allow_globals:
        return NOT_ALLOWLISTED
    return None


def _how(uses: tuple[str, ...]) -> str:
    """``("instantiates", "sets the state of", "names")`` -> "instantiates and sets the state of"."""
    verbs = [use for use in uses if use != NAMED] or [NAMED]
    return verbs[0] if len(verbs) == 1 else f"{', '.join(verbs[:-1])} and {verbs[-1]}"


def pickle_global_facts(item: PickleGlobal, allow_globals: Collection[str] = ()) -> dict[str, Any]:
    danger = None if item.allowed else danger_of(item.qualname)
    why = why_unsafe(item, allow_globals)
    return {
        "module": item.module,
        "name": item.name,
        "qualname": item.qualname,
        "where": item.where,
        "allowed": item.allowed or item.qualname in allow_globals,
        "invoked": item.invoked,
        "how": _how(item.uses),
        "via": ", ".join(item.via) or None,
        "dangerous": danger is not None,
        "danger": danger,
        "unsafe": why is not None,
        "why": why,
        "count": item.count,
    }


def _merged(items: list[PickleGlobal]) -> PickleGlobal:
    """One global as several pickles of a file (or several records) use it."""
    uses = {use for item in items for use in item.uses}
    via = sorted({v for item in items for v in item.via})
    first = items[0]
    return PickleGlobal(first.module, first.name, first.where, first.allowed,
                        tuple(use for use in USES if use in uses) or (NAMED,), tuple(via),
                        sum(item.count for item in items))


def distinct_global_facts(items: Iterable[PickleGlobal], allow_globals: Collection[str] = ()) -> list[dict[str, Any]]:
    """``pickle_global.*`` for each distinct global once: every use, and how many times it was named."""
    grouped: dict[str, list[PickleGlobal]] = {}
    for item in items:
        grouped.setdefault(item.qualname, []).append(item)
    return [pickle_global_facts(_merged(group), allow_globals) for group in grouped.values()]
