"""Facts computed when a rule first asks for them, then cached; rules see plain data only."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar


class LazyFacts(Mapping[str, Any]):
    """A read-only mapping of fact name -> plain value (numbers, strings, lists, dicts, None).

    Subclasses set eager facts in ``_cache`` and declare ``providers``: fact name -> method that
    fills ``_cache`` with that fact (and usually its siblings computed in the same pass).
    Rules reach facts as attributes in Jinja (``tensor.std``), which falls back to ``[]``.
    """

    # No instance dictionary: a rule's ``tensor.std`` then goes straight to the mapping (see
    # fast_condition's getattr), and a million facts are smaller. Subclasses may add slots.
    __slots__ = ("_cache",)
    providers: ClassVar[dict[str, Callable[[Any], None]]] = {}

    def __init__(self, eager: dict[str, Any]) -> None:
        self._cache: dict[str, Any] = dict(eager)

    def __getitem__(self, name: str) -> Any:
        try:  # a cached fact costs one lookup (rules read a few per subject, of millions)
            return self._cache[name]
        except KeyError:
            pass
        provider = self.providers.get(name)
        if provider is None:
            raise KeyError(name) from None
        provider(self)
        return self._cache[name]

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*self._cache, *self.providers]))

    def __len__(self) -> int:
        return len(set(self._cache) | set(self.providers))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._cache.get('key', '')!r}>"


def provides(names: str, method: Callable[[Any], None]) -> dict[str, Callable[[Any], None]]:
    """``providers`` entries for a method that computes several facts at once."""
    return {name: method for name in names.split()}


class Layered(Mapping[str, Any]):
    """``base``'s facts with a few more on top, computing none of ``base``'s until asked (a
    ChainMap would need a mutable base)."""

    def __init__(self, top: Mapping[str, Any], base: Mapping[str, Any]) -> None:
        self._top, self._base = top, base

    def __getitem__(self, name: str) -> Any:
        return self._top[name] if name in self._top else self._base[name]

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*self._top, *self._base]))

    def __len__(self) -> int:
        return len(set(self._top) | set(self._base))
