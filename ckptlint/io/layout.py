"""Find the state dict inside a checkpoint object, and strip wrapper prefixes from its keys."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from ckptlint.errors import CheckpointError
from ckptlint.io.module_state import module_state, module_tensors
from ckptlint.io.unpickler import PickledTensor

T = TypeVar("T")

# Where common tools put the weights, most specific first (DETR: model; Lightning: state_dict;
# timm: state_dict_ema; many training scripts: model_state_dict).
STATE_DICT_KEYS = (
    "state_dict", "model_state_dict", "model", "module", "net", "network",
    "ema", "state_dict_ema", "model_ema", "ema_state_dict", "params", "weights",
)
# Prefixes that wrappers add to every key: DataParallel/DDP and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
LIGHTNING_MARKERS = ("pytorch-lightning_version", "lightning_version", "hyper_parameters")
SEARCH_DEPTH = 4
MAX_KEY_DEPTH = 100  # as module_state.MAX_DEPTH: real models nest a few dozen modules


def is_pickled_tensor(value: Any) -> bool:
    return isinstance(value, PickledTensor)


def find_state_dict(root: Any, key_path: str | None,
                    is_tensor: Callable[[Any], bool] = is_pickled_tensor) -> tuple[str, dict[str, Any]]:
    """Return the path to the state dict inside ``root`` ("" for a bare one) and its tensors.

    A pickled module (``torch.save(model)``, ``{"model": model}``) holds a state dict too: its
    ``state_dict()`` keys. With ``key_path`` (dotted, ``--key``) the user chooses; otherwise the
    first well-known key that holds tensors wins, then the mapping or module with the most tensors
    (breadth-first, each object once, bounded depth: a hostile nested, shared or cyclic pickle
    costs no more than its size).
    """
    def _tensors_in(obj: Any) -> dict[str, Any]:
        if (state := module_state(obj)) is not None:
            return module_tensors(state, is_tensor)
        if not isinstance(obj, Mapping):
            return {}
        return {k: v for k, v in obj.items() if isinstance(k, str) and is_tensor(v)}

    if key_path:
        if not (tensors := _tensors_in(_entry_at(root, key_path))):
            raise CheckpointError(f"--key {key_path}: that entry holds no tensors")
        return key_path, tensors
    if tensors := _tensors_in(root):
        return "", tensors
    if isinstance(root, Mapping):
        for name in STATE_DICT_KEYS:
            if tensors := _tensors_in(root.get(name)):
                return name, tensors
    best: tuple[str, dict[str, Any]] = ("", {})
    queue: deque[tuple[str, Any, int]] = deque([("", root, 0)])
    visited = {id(root)}  # a shared or cyclic mapping is searched once, by its shortest path
    while queue:
        path, obj, depth = queue.popleft()
        tensors = _tensors_in(obj)
        if len(tensors) > len(best[1]):
            best = (path, tensors)
        if not isinstance(obj, Mapping) or depth == SEARCH_DEPTH:
            continue
        for name, child in obj.items():
            if isinstance(name, str) and id(child) not in visited and (
                    isinstance(child, Mapping) or module_state(child) is not None):
                visited.add(id(child))
                queue.append((f"{path}.{name}" if path else name, child, depth + 1))
    if not best[1]:
        raise CheckpointError("the pickle holds no tensors")
    return best


def _entry_at(root: Any, key_path: str) -> Any:
    obj = root
    walked: list[str] = []
    for part in key_path.split("."):
        if not isinstance(obj, Mapping) or part not in obj:
            names = sorted(k for k in obj if isinstance(k, str))[:12] if isinstance(obj, Mapping) else []
            choices = ", ".join(names)
            where = ".".join(walked) or "the top level"
            raise CheckpointError(f"--key {key_path}: no entry {part!r} at {where} (entries: {choices or 'none'})")
        obj = obj[part]
        walked.append(part)
    return obj


def is_lightning(root: Any) -> bool:
    return isinstance(root, Mapping) and any(marker in root for marker in LIGHTNING_MARKERS)


def strip_prefixes(tensors: dict[str, T], lightning: bool) -> tuple[dict[str, T], str]:
    """Remove prefixes that every key carries because of a wrapper; return what was removed.

    Lightning modules keep the network in an attribute (``model.``), so that prefix is removed
    too, but only for Lightning checkpoints: in a bare state dict ``model.`` is a real name. Keys
    are compared in place and cut once, so the work is linear in the keys however many prefixes.
    """
    candidates = WRAPPER_PREFIXES + (("model.",) if lightning else ())
    removed: list[str] = []
    at = 0
    while tensors and (prefix := next((p for p in candidates if all(k.startswith(p, at) for k in tensors)), None)):
        removed.append(prefix)
        at += len(prefix)
    if not at:
        return tensors, ""
    return {k[at:]: v for k, v in tensors.items()}, "".join(removed)


def check_key_depth(keys: Iterable[str]) -> None:
    """Refuse a key nesting deeper than any model (each dotted part is a module of the graph)."""
    for key in keys:
        if key.count(".") >= MAX_KEY_DEPTH:
            raise CheckpointError(f"tensor key {key[:40]!r}... nests {key.count('.') + 1} parts deep, "
                                  f"more than the {MAX_KEY_DEPTH} a model's modules do")


def select_prefix(tensors: dict[str, T], key_path: str) -> dict[str, T]:
    """``--key`` on a flat format (safetensors): keep the keys under that prefix, without it."""
    prefix = key_path.rstrip(".") + "."
    chosen = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not chosen:
        raise CheckpointError(f"--key {key_path}: no tensor key starts with {prefix!r}")
    return chosen
