"""The state dict of a pickled ``nn.Module`` (``torch.save(model)``), read off its recorded state.

torch pickles a module as its class and its ``__dict__``: ``_parameters``, ``_buffers``,
``_non_persistent_buffers_set`` and ``_modules`` (the children, pickled the same way). Our
unpickler turns every class into an inert stub that keeps that dict, so the tensors are keyed here
exactly as ``Module.state_dict()`` keys them, without running any of the module's code — which
also means a module's own state-dict hooks and ``get_extra_state`` are not applied.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ckptlint.errors import CheckpointError
from ckptlint.io.unpickler import InertObject

# A hostile pickle can nest modules without end, make one its own child, or share a child between
# many parents so that a walk by names (which state_dict is) multiplies. Real models nest a few
# dozen levels and have far fewer entries (a 100-layer MoE with 128 experts: ~100,000).
MAX_DEPTH = 100
MAX_ENTRIES = 1_000_000


def module_state(obj: Any) -> dict[str, Any] | None:
    """The recorded ``__dict__`` of a pickled module, or None when ``obj`` is not one.

    Any class counts (torch's layers and user classes alike): a module is recognised by the
    state torch gives every ``nn.Module``, not by its name. (Every mapping the unpickler builds
    is a dict, OrderedDict included.)
    """
    if not isinstance(obj, InertObject):
        return None
    state = obj.ckpt_state
    if isinstance(state, dict) and isinstance(state.get("_parameters"), dict) \
            and isinstance(state.get("_modules"), dict):
        return state
    return None


def module_tensors(state: dict[str, Any], is_tensor: Callable[[Any], bool]) -> dict[str, Any]:
    """The tensors ``state_dict()`` would return for the module whose state this is, in its order.

    Raises CheckpointError for cyclic modules, nesting deeper than MAX_DEPTH and more than
    MAX_ENTRIES parameters, buffers and children walked.
    """
    walk = _StateDictWalk(is_tensor)
    walk.module(state, "")
    return walk.tensors


class _StateDictWalk:
    """``Module.state_dict`` over recorded state: a module's parameters that are not None, its
    persistent buffers that are not None, then each child's under ``name.``."""

    def __init__(self, is_tensor: Callable[[Any], bool]) -> None:
        self.is_tensor = is_tensor
        self.tensors: dict[str, Any] = {}
        self.entries = 0
        self.ancestors: set[int] = set()

    def module(self, state: dict[str, Any], prefix: str) -> None:
        if id(state) in self.ancestors:
            raise CheckpointError(f"module {prefix.rstrip('.') or '(root)'} contains itself: cyclic _modules")
        if len(self.ancestors) >= MAX_DEPTH:
            raise CheckpointError(f"modules nest more than {MAX_DEPTH} deep")
        parameters, children = state["_parameters"], state["_modules"]
        buffers = state.get("_buffers")
        buffers = buffers if isinstance(buffers, dict) else {}
        self._count(len(parameters) + len(buffers) + len(children))
        self.ancestors.add(id(state))
        self._tensors(parameters, prefix, skip=frozenset())
        self._tensors(buffers, prefix, skip=_non_persistent(state))
        for name, child in children.items():
            if isinstance(name, str) and (child_state := module_state(child)) is not None:
                self.module(child_state, f"{prefix}{name}.")
        self.ancestors.discard(id(state))

    def _tensors(self, entries: dict[Any, Any], prefix: str, skip: frozenset[str]) -> None:
        for name, value in entries.items():
            if isinstance(name, str) and name not in skip and self.is_tensor(value):
                self.tensors[prefix + name] = value

    def _count(self, entries: int) -> None:
        self.entries += entries
        if self.entries > MAX_ENTRIES:
            raise CheckpointError(f"modules hold more than {MAX_ENTRIES} parameters, buffers and children")


def _non_persistent(state: dict[str, Any]) -> frozenset[str]:
    """Buffers ``state_dict`` leaves out (``register_buffer(..., persistent=False)``; torch < 1.6
    has no such set)."""
    names = state.get("_non_persistent_buffers_set")
    if isinstance(names, (set, frozenset)):
        return frozenset(n for n in names if isinstance(n, str))
    return frozenset()
