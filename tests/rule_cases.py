"""Rule cases: read a ``rules/<CODE>-<name>/cases/*.toml`` spec and build the files it describes.

A case is data, so adding a rule is adding a folder: the spec names a base state dict from
fixtures/make_fixtures.py (imported, not copied, so its values look trained the same way), the
edits that make the situation, and how the result is saved. Everything is seeded: the same spec
builds the same tensors. Pickles with code or classes in them come from the named wrappers below;
building one pickles it (torch.save), nothing here ever unpickles. The format is documented in
README.md, "Writing a rule".
"""

from __future__ import annotations

import cProfile
import functools
import math
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ckptlint._toml import tomllib
from conftest import REPO, fixture_generator
from crafted import COMMAND, MARKER

FIXTURES = fixture_generator()
RULES = REPO / "rules"
CASE_FILES = sorted(RULES.glob("*/cases/*.toml"))

StateDict = OrderedDict[str, torch.Tensor]
Initialiser = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class CaseError(ValueError):
    """A spec that does not say what it means (an unknown field, an edit that matches nothing)."""


# --- the spec ---

@dataclass(frozen=True)
class Expected:
    """Findings of the case's rule one entry stands for: an exact key, or ``count`` keys matching
    a glob; each at ``severity``, with at least this ``evidence``."""

    key: str | None
    key_glob: str | None
    count: int
    severity: str
    evidence: dict[str, Any]

    def matches(self, finding: dict[str, Any]) -> bool:
        key = finding["key"] or ""
        return key == self.key if self.key is not None else fnmatchcase(key, self.key_glob or "")

    @property
    def label(self) -> str:
        return self.key if self.key is not None else f"{self.key_glob} (x{self.count})"


@dataclass(frozen=True)
class RuleCase:
    path: Path
    description: str
    args: tuple[str, ...]
    exit_code: int
    fires: tuple[Expected, ...]
    may_also_fire: frozenset[str]
    files: dict[str, dict[str, Any]]

    @property
    def rule_folder(self) -> Path:
        return self.path.parent.parent


CASE_FIELDS = {"description", "args", "exit_code", "fires", "files"}
OPTIONAL_CASE_FIELDS = {"may_also_fire"}
FILE_FIELDS = {"base", "seed", "wrap", "edits"}
# Edits draw from their own stream: seeded like the base, a fresh init would repeat the base's
# first draws and come out correlated with the values it replaces.
EDIT_SEED_OFFSET = 1_000_003


def load_case(path: Path) -> RuleCase:
    """Read and check one spec; any mistake is a CaseError naming the file."""
    data = tomllib.loads(path.read_text("utf-8"))
    _require_fields(data, CASE_FIELDS, OPTIONAL_CASE_FIELDS, str(path))
    for name, spec in data["files"].items():
        _require_fields(spec, {"base"}, FILE_FIELDS - {"base"}, f"{path}: files.{name}")
    return RuleCase(path=path, description=data["description"], args=tuple(data["args"]),
                    exit_code=data["exit_code"], fires=tuple(_expected(e, path) for e in data["fires"]),
                    may_also_fire=frozenset(data.get("may_also_fire", ())), files=data["files"])


def _expected(entry: dict[str, Any], path: Path) -> Expected:
    where = f"{path}: fires"
    if "key" in entry:
        _require_fields(entry, {"key", "severity"}, {"evidence"}, where)
    else:
        _require_fields(entry, {"key_glob", "count", "severity"}, {"evidence"}, where)
    return Expected(key=entry.get("key"), key_glob=entry.get("key_glob"), count=entry.get("count", 1),
                    severity=entry["severity"], evidence=entry.get("evidence", {}))


def _require_fields(data: dict[str, Any], required: set[str], optional: set[str], where: str) -> None:
    missing, unknown = required - set(data), set(data) - required - optional
    if missing or unknown:
        raise CaseError(f"{where}: missing {sorted(missing)}, unknown {sorted(unknown)}")


# --- building the files ---

def build_files(case: RuleCase, folder: Path) -> None:
    """Write every file of the case into ``folder`` (the folder its command runs in)."""
    for name, spec in case.files.items():
        try:
            built = built_object(spec)
        except CaseError as exc:
            raise CaseError(f"{case.path}: files.{name}: {exc}") from None
        save(folder / name, built)


def built_object(spec: dict[str, Any]) -> Any:
    """The base, edited in order, then wrapped: what is saved."""
    seed = spec.get("seed", 0)
    if spec["base"] not in BASES:
        raise CaseError(f"unknown base {spec['base']!r}; bases: {', '.join(BASES)}")
    state_dict = OrderedDict(_base(spec["base"], seed))
    generator = torch.Generator().manual_seed(EDIT_SEED_OFFSET + seed)
    for edit in spec.get("edits", []):
        state_dict = edited(state_dict, edit, generator)
    wrap = spec.get("wrap", "none")
    if wrap not in WRAPPERS:
        raise CaseError(f"unknown wrap {wrap!r}; wrappers: {', '.join(WRAPPERS)}")
    return WRAPPERS[wrap](state_dict)


def save(path: Path, obj: Any) -> None:
    """.safetensors for a bare state dict, torch.save (a pickle) for anything else."""
    if path.suffix == ".safetensors":
        save_file({key: value.contiguous() for key, value in obj.items()}, str(path))
    else:
        torch.save(obj, path)


# --- bases: state dicts from fixtures/make_fixtures.py, seeded ---

def _resnet50(seed: int) -> StateDict:
    """torchvision-named ResNet-50 at reduced width, classifier included: a pretrained file."""
    return FIXTURES.resnet50_state_dict(seed=seed)


def _detr(seed: int) -> StateDict:
    """DETR whose FrozenBatchNorm backbone is the ``resnet50`` base of the same seed, copied."""
    return FIXTURES.detr_state_dict(FIXTURES.resnet50_state_dict(seed=seed))


def _hf_detr(seed: int) -> StateDict:
    """The same DETR in Hugging Face transformers' key names."""
    return FIXTURES.hf_detr_state_dict(FIXTURES.resnet50_state_dict(seed=seed))


def _converted_detr(seed: int) -> StateDict:
    """The ``detr`` base converted to Hugging Face names (in_proj split into q, k and v)."""
    return FIXTURES.converted_detr_state_dict(_detr(seed))


def _untrained_resnet50(seed: int) -> StateDict:
    """What ``torchvision.models.resnet50()`` without weights holds (torch.nn.init draws from the
    global generator: seeded here, and restored afterwards)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return FIXTURES.untrained_resnet50(FIXTURES.resnet50_state_dict())


def _untrained_detr(seed: int) -> StateDict:
    """A DETR that faithfully copied the ``untrained-resnet50`` base of the same seed."""
    return FIXTURES.detr_state_dict(_untrained_resnet50(seed))


def _small(seed: int) -> StateDict:
    """A conv, a BatchNorm and a classifier (features.0, features.1, classifier): fits small_net()."""
    return FIXTURES._small_model(seed)


@functools.cache
def _base(name: str, seed: int) -> StateDict:
    """Each base is built once per test run (most cases share a few); edits never change a tensor
    in place, they return new ones, so the cached tensors stay as built."""
    return BASES[name](seed)


BASES: dict[str, Callable[[int], StateDict]] = {
    "resnet50": _resnet50, "detr": _detr, "hf-detr": _hf_detr,
    "converted-detr": _converted_detr, "untrained-resnet50": _untrained_resnet50,
    "untrained-detr": _untrained_detr, "small": _small,
}


# --- edits: { keys = "glob", <one operation> } applied in order ---

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
          "float64": torch.float64}


def _init(function: Callable[..., torch.Tensor], **options: Any) -> Initialiser:
    return lambda tensor, generator: function(tensor, generator=generator, **options)


INITS: dict[str, Initialiser] = {
    "zeros": lambda tensor, generator: tensor.zero_(),
    "ones": lambda tensor, generator: tensor.fill_(1.0),
    "nan": lambda tensor, generator: tensor.fill_(math.nan),  # what a diverged layer holds
    "pytorch_default": _init(torch.nn.init.kaiming_uniform_, a=math.sqrt(5)),
    "kaiming_normal_fan_out": _init(torch.nn.init.kaiming_normal_, mode="fan_out", nonlinearity="relu"),
    "xavier_uniform": _init(torch.nn.init.xavier_uniform_),
    "normal_0.02": _init(torch.nn.init.normal_, std=0.02),
}


def initialised(shape: tuple[int, ...], how: str, generator: torch.Generator, scale: float) -> torch.Tensor:
    """Fresh float32 values: a torch.nn.init, or ``trained`` (trained-looking values of the given
    scale, from make_fixtures: unrelated to any other tensor)."""
    if how == "trained":
        return FIXTURES.trained_like(shape, scale, generator)
    if how not in INITS:
        raise CaseError(f"unknown init {how!r}; inits: trained, {', '.join(INITS)}")
    return INITS[how](torch.empty(shape), generator)


def _replaced(tensor: torch.Tensor, how: str, edit: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
    """New values of the same shape and dtype (``trained`` ones at the tensor's own scale unless given)."""
    scale = edit.get("scale", float(tensor.float().std()) if tensor.numel() > 1 else 1.0)
    return initialised(tuple(tensor.shape), how, generator, scale).to(tensor.dtype)


def _noisy(tensor: torch.Tensor, size: float, edit: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise of ``size`` times the tensor's std: a drift, as training leaves."""
    return tensor + size * tensor.std() * torch.randn(tensor.shape, generator=generator)


def _shifted(tensor: torch.Tensor, amount: float, edit: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
    """Every value moved by ``amount``: a small change a copy cannot explain."""
    return tensor + amount


def _cast(tensor: torch.Tensor, dtype: str, edit: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
    """Stored in ``dtype`` (floating tensors only, as ``model.half()`` does)."""
    return tensor.to(DTYPES[dtype]) if tensor.is_floating_point() else tensor


def _round_trip(tensor: torch.Tensor, dtype: str, edit: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
    """Rounded through ``dtype`` and stored back at full precision (``model.half().float()``)."""
    return tensor.to(DTYPES[dtype]).to(tensor.dtype) if tensor.is_floating_point() else tensor


def _put(tensor: torch.Tensor, value: str | float, edit: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
    """One value (``nan``, ``inf``, ``-inf`` or a number) at the index ``at``."""
    changed = tensor.clone()
    changed[tuple(edit["at"])] = float(value)
    return changed


def _resized(tensor: torch.Tensor, size: list[int], edit: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
    """A conv kernel interpolated to ``size`` (bilinear): a shape "fixed" by hand."""
    return torch.nn.functional.interpolate(tensor, size=tuple(size), mode="bilinear", align_corners=False)


def _in_channels(tensor: torch.Tensor, channels: int, edit: dict[str, Any],
                 generator: torch.Generator) -> torch.Tensor:
    """A conv widened to ``channels`` inputs: ``how = "append-mean"`` appends the mean filter per new
    channel (a hand-made adaptation); ``"timm"`` is timm's adapt_input_conv (repeat, rescale)."""
    rgb = tensor.shape[1]
    if edit.get("how") == "timm":
        return torch.cat([tensor] * math.ceil(channels / rgb), dim=1)[:, :channels] * (rgb / channels)
    if edit.get("how") == "append-mean":
        return torch.cat([tensor] + [tensor.mean(dim=1, keepdim=True)] * (channels - rgb), dim=1)
    raise CaseError(f"in_channels needs how = 'append-mean' or 'timm', not {edit.get('how')!r}")


def _sliced(tensor: torch.Tensor, shape: list[int], edit: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
    """The leading ``shape`` slice: channels cut off."""
    return tensor[tuple(slice(0, n) for n in shape)].clone()


def _transposed(tensor: torch.Tensor, flag: bool, edit: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
    """A 2-D weight saved the other way round (``transpose = true``)."""
    return tensor.t().contiguous() if flag else tensor


ValueEdit = Callable[[torch.Tensor, Any, dict[str, Any], torch.Generator], torch.Tensor]
# operation -> (what it does to each matched tensor, the further fields it takes)
VALUE_EDITS: dict[str, tuple[ValueEdit, set[str]]] = {
    "to": (_replaced, {"scale"}), "noise": (_noisy, set()), "shift": (_shifted, set()), "cast": (_cast, set()),
    "round_trip": (_round_trip, set()), "put": (_put, {"at"}), "resize": (_resized, set()),
    "in_channels": (_in_channels, {"how"}), "slice": (_sliced, set()), "transpose": (_transposed, set()),
}
KEY_EDITS = {"drop", "rename", "prefix", "swap"}


def edited(state_dict: StateDict, edit: dict[str, Any], generator: torch.Generator) -> StateDict:
    """The state dict after one edit; the input is not changed."""
    if "add" in edit:
        return _added(state_dict, edit, generator)
    operations = (set(VALUE_EDITS) | KEY_EDITS) & set(edit)
    if len(operations) != 1:
        raise CaseError(f"an edit needs exactly one operation of {sorted(VALUE_EDITS) + sorted(KEY_EDITS)}: {edit}")
    (operation,) = operations
    extra = VALUE_EDITS[operation][1] if operation in VALUE_EDITS else set()
    _require_fields(edit, {"keys", operation}, extra, f"edit {edit}")
    keys = _matching(state_dict, edit["keys"])
    if operation == "swap":  # the values of one matched key and of ``swap`` exchanged
        if edit["swap"] not in state_dict or len(keys) != 1 or edit["swap"] in keys:
            raise CaseError(f"swap needs one matched key and another existing key: {edit}")
        (first,) = keys
        partner = {first: edit["swap"], edit["swap"]: first}
        return OrderedDict((key, state_dict[partner.get(key, key)]) for key in state_dict)
    result: StateDict = OrderedDict()
    for key, tensor in state_dict.items():
        if key not in keys:
            result[key] = tensor
        elif operation == "rename":
            old, new = edit["rename"]
            result[key.replace(old, new, 1)] = tensor
        elif operation == "prefix":
            result[edit["prefix"] + key] = tensor
        elif operation != "drop":
            result[key] = VALUE_EDITS[operation][0](tensor, edit[operation], edit, generator)
    return result


def _added(state_dict: StateDict, edit: dict[str, Any], generator: torch.Generator) -> StateDict:
    """``{ add = "key", shape = [...], to = "init", scale = s }``: a tensor the base does not have."""
    _require_fields(edit, {"add", "shape", "to"}, {"scale"}, f"edit {edit}")
    if edit["add"] in state_dict:
        raise CaseError(f"add: {edit['add']} is already there")
    result = OrderedDict(state_dict)
    result[edit["add"]] = initialised(tuple(edit["shape"]), edit["to"], generator, edit.get("scale", 0.05))
    return result


def _matching(state_dict: StateDict, pattern: str) -> set[str]:
    keys = {key for key in state_dict if fnmatchcase(key, pattern)}
    if not keys:
        raise CaseError(f"edit keys {pattern!r} match nothing")
    return keys


# --- wrappers: what is saved around the (edited) state dict ---

def _bare(state_dict: StateDict) -> Any:
    return state_dict


def _under_model(state_dict: StateDict) -> Any:
    return {"model": state_dict}


def _training_checkpoint(state_dict: StateDict) -> Any:
    """DETR's main.py checkpoint: optimizer, lr_scheduler, epoch, and args (an argparse.Namespace)."""
    return FIXTURES.detr_training_checkpoint(state_dict)


def _os_system_hook(state_dict: StateDict) -> Any:
    """A malicious checkpoint: an object whose ``__reduce__`` calls ``os.system`` on load."""
    return {"model": state_dict, "hook": FIXTURES._Payload(os.system, (COMMAND,))}


def _exec_hook(state_dict: StateDict) -> Any:
    """The same, through ``builtins.exec``."""
    return {"model": state_dict, "hook": FIXTURES._Payload(exec, (f"open('{MARKER}', 'w')",))}


def _cprofile_hook(state_dict: StateDict) -> Any:
    """A call of ``cProfile.run``: on no denylist, but invoked and not allowlisted."""
    return {"model": state_dict, "hook": FIXTURES._Payload(cProfile.run, ("pass",))}


def _config_instance(state_dict: StateDict) -> Any:
    """An instance of the user's own class (mytraining.config.TrainConfig): instantiated on load."""
    return {"model": state_dict, "config": FIXTURES._foreign_config_class()()}


def _config_class(state_dict: StateDict) -> Any:
    """The user's class itself kept as a value: named, never invoked."""
    return {"model": state_dict, "config_class": FIXTURES._foreign_config_class()}


WRAPPERS: dict[str, Callable[[StateDict], Any]] = {
    "none": _bare, "model": _under_model, "training-checkpoint": _training_checkpoint,
    "os-system-hook": _os_system_hook, "exec-hook": _exec_hook, "cprofile-hook": _cprofile_hook,
    "config-instance": _config_instance, "config-class": _config_class,
}


# --- model code for --model rule_cases:FACTORY (the current folder is importable, this module is) ---

class _SmallNet(torch.nn.Module):
    def __init__(self, in_channels: int = 8, head: str = "classifier") -> None:
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(in_channels, 16, 3, bias=False), torch.nn.BatchNorm2d(16))
        self.add_module(head, torch.nn.Linear(16, 10))


def small_net() -> torch.nn.Module:
    """The code the ``small`` base was saved from."""
    return _SmallNet()


def small_net_head_renamed() -> torch.nn.Module:
    """That code after a branch renamed ``classifier`` to ``head``."""
    return _SmallNet(head="head")


def small_net_three_channels() -> torch.nn.Module:
    """That code after a branch made the stem take 3 input channels."""
    return _SmallNet(in_channels=3)
