"""Whole-module pickles (``torch.save(model)``, ``{"model": model}``) read as their ``state_dict()``,
without running the module's code; torch's own layers are data, user classes are still named."""

from __future__ import annotations

import importlib
import pkgutil
import struct
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import malicious_corpus as corpus
from ckptlint.errors import CheckpointError
from ckptlint.io import open_checkpoint
from ckptlint.io.module_state import MAX_DEPTH, MAX_ENTRIES
from ckptlint.io.unpickler import ALLOWLIST, TORCH_NN_LAYERS
from conftest import run_subprocess

SECURITY_RULES = ("unsafe-pickle", "unknown-pickle-global")


def _seeded(model: nn.Module) -> nn.Module:
    """Trained-looking values: random weights and BatchNorm statistics that are not the defaults."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1 + (1.0 if "running_var" in name else 0.0))
            elif name.endswith("num_batches_tracked"):
                tensor.fill_(7)
    return model


def _block(channels: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(channels, channels, 3, padding=1, bias=False), bn1=nn.BatchNorm2d(channels),
        relu=nn.ReLU(), conv2=nn.Conv2d(channels, channels, 3, padding=1, bias=False), bn2=nn.BatchNorm2d(channels)))


def resnet_like() -> nn.Module:
    """A small ResNet made of torch.nn classes only: stem, two stages, a head tied to an embedding,
    a shared block, a non-persistent buffer, a None parameter and a None buffer."""
    model = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=False), bn1=nn.BatchNorm2d(8), relu=nn.ReLU(),
        maxpool=nn.MaxPool2d(3, 2, 1),
        layer1=nn.Sequential(_block(8), _block(8)),
        layer2=nn.Sequential(OrderedDict(downsample=nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False),
                                                                  nn.BatchNorm2d(16)))),
        avgpool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(),
        embed=nn.Embedding(10, 16), fc=nn.Linear(16, 10)))
    model.fc.weight = model.embed.weight  # tied: two names, one tensor
    model.layer1.add_module("2", model.layer1[0])  # one block under two names, as state_dict lists it
    model.register_buffer("pixel_mean", torch.tensor([0.485, 0.456, 0.406]), persistent=False)
    model.register_parameter("unused", None)
    model.register_buffer("absent", None)
    return _seeded(model)


class Conv(nn.Module):
    """A user layer (YOLOv5's models.common.Conv)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.SiLU()


class DetectionModel(nn.Module):
    """A user model in the style of YOLOv5: numbers, numpy arrays, a dict and an unregistered
    tensor as plain attributes, which state_dict ignores."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Sequential(Conv(3, 4), Conv(4, 8), nn.Upsample(scale_factor=2.0), nn.Conv2d(8, 6, 1))
        self.register_buffer("anchors", torch.tensor([[10.0, 13.0], [16.0, 30.0]]))
        self.stride = torch.tensor([8.0, 16.0])
        self.yaml = {"nc": 1, "depth_multiple": 0.33, "anchors": np.arange(6).reshape(3, 2)}
        self.names = ["person"]


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def assert_reads_as_state_dict(path: Path, model: nn.Module, **kwargs: object) -> None:
    """Keys, order, shapes, dtypes and values as ``model.state_dict()`` gives them."""
    expected = model.state_dict()
    with open_checkpoint(str(path), **kwargs) as checkpoint:
        assert list(checkpoint.tensors) == list(expected)
        for key, tensor in expected.items():
            ref = checkpoint.tensors[key]
            assert (ref.shape, ref.dtype.name) == (tuple(tensor.shape), str(tensor.dtype).removeprefix("torch.")), key
            np.testing.assert_array_equal(checkpoint.read(key), tensor.numpy(), err_msg=key)


def security_findings(path: Path) -> set[tuple[str, str]]:
    result = run_subprocess("check", str(path), "--format", "json", timeout=60)
    assert result.code in (0, 1), result.err
    return {(f["name"], f["evidence"]["global"]) for f in result.json["findings"] if f["name"] in SECURITY_RULES}


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_sequential_saved_whole(tmp_path: Path, legacy: bool) -> None:
    model = _seeded(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2)))
    path = tmp_path / "sequential.pt"
    torch.save(model, path, _use_new_zipfile_serialization=not legacy)
    assert_reads_as_state_dict(path, model)
    with open_checkpoint(str(path)) as checkpoint:
        assert checkpoint.layout == "whole-module"
        assert all(g.allowed for g in checkpoint.pickle_globals), [g.qualname for g in checkpoint.pickle_globals]


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_resnet_from_torch_nn_is_its_state_dict_and_reports_no_global(tmp_path: Path, legacy: bool) -> None:
    model = resnet_like()
    expected = model.state_dict()
    assert {"fc.weight", "embed.weight", "layer1.2.bn1.num_batches_tracked"} <= set(expected)
    assert not {"pixel_mean", "unused", "absent", "conv1.bias"} & set(expected)
    path = tmp_path / "resnet.pt"
    torch.save(model, path, _use_new_zipfile_serialization=not legacy)
    assert_reads_as_state_dict(path, model)
    with open_checkpoint(str(path)) as checkpoint:
        tensors = checkpoint.tensors
        assert tensors["fc.weight"].storage_id == tensors["embed.weight"].storage_id
        assert tensors["layer1.2.conv1.weight"].storage_id == tensors["layer1.0.conv1.weight"].storage_id
        assert tensors["conv1.weight"].is_parameter and not tensors["bn1.running_mean"].is_parameter
    assert security_findings(path) == set()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_user_model_is_read_and_its_classes_are_named(tmp_path: Path, legacy: bool) -> None:
    model = DetectionModel().half()
    _seeded(model)
    path = tmp_path / "yolo.pt"
    torch.save(model, path, _use_new_zipfile_serialization=not legacy)
    assert_reads_as_state_dict(path, model)
    named = security_findings(path)  # loading instantiates them and runs their __setstate__: unsafe
    assert named == {("unsafe-pickle", _qualname(DetectionModel)), ("unsafe-pickle", _qualname(Conv))}


def test_training_checkpoint_holding_the_model(tmp_path: Path) -> None:
    model = resnet_like()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for parameter in model.parameters():
        parameter.grad = torch.ones_like(parameter)
    optimizer.step()
    path = tmp_path / "train.pt"
    torch.save({"model": model, "optimizer": optimizer.state_dict(), "epoch": 3}, path)
    assert_reads_as_state_dict(path, model)
    assert_reads_as_state_dict(path, model, key_path="model")
    with open_checkpoint(str(path)) as checkpoint:
        assert checkpoint.layout == "model"
    assert security_findings(path) == set()


@pytest.mark.parametrize("wrap", [
    lambda m: {"ema": m, "updates": 100},
    lambda m: {"epoch": 3, "checkpoint": {"weights": {"net": m}}},
    lambda m: nn.DataParallel(m),
], ids=["ema", "nested", "data-parallel"])
def test_module_found_wherever_it_is(tmp_path: Path, wrap) -> None:
    model = resnet_like()
    path = tmp_path / "wrapped.pt"
    torch.save(wrap(model), path)
    assert_reads_as_state_dict(path, model)
    with open_checkpoint(str(path)) as checkpoint:
        assert all(g.allowed for g in checkpoint.pickle_globals), [g.qualname for g in checkpoint.pickle_globals]


def test_transformer_layers_and_their_activations_are_data(tmp_path: Path) -> None:
    layer = nn.TransformerEncoderLayer(8, 2, 16, activation="gelu")
    model = _seeded(nn.ModuleDict({
        "encoder": nn.TransformerEncoder(layer, 2, enable_nested_tensor=False),
        "decoder": nn.TransformerDecoderLayer(8, 2, 16), "lstm": nn.LSTM(8, 4, 2), "norm": nn.RMSNorm(8)}))
    path = tmp_path / "transformer.pt"
    torch.save(model, path)
    assert_reads_as_state_dict(path, model)
    with open_checkpoint(str(path)) as checkpoint:
        assert all(g.allowed for g in checkpoint.pickle_globals), [g.qualname for g in checkpoint.pickle_globals]


def test_cli_checks_a_whole_module_file(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    model = resnet_like()
    torch.save(model, path)
    result = run_subprocess("check", str(path), timeout=60)
    assert result.code == 0, result.out + result.err
    assert "holds no tensors" not in result.out + result.err
    assert f"layout whole-module, {len(model.state_dict())} tensors" in result.out
    user = tmp_path / "user.pt"
    torch.save({"model": DetectionModel()}, user)
    result = run_subprocess("check", str(user), "--fail-on", "warning", timeout=60)
    assert result.code == 1 and _qualname(DetectionModel) in result.out, result.out + result.err


# --- the allowlist of torch's layers ---

def _torch_layer_classes() -> set[tuple[str, str]]:
    """Every public nn.Module class defined in a torch.nn.modules submodule of the installed torch."""
    found = set()
    for info in pkgutil.iter_modules(nn.modules.__path__):
        module = importlib.import_module(f"torch.nn.modules.{info.name}")
        found |= {(module.__name__, name) for name, value in vars(module).items()
                  if isinstance(value, type) and issubclass(value, nn.Module)
                  and value.__module__ == module.__name__ and not name.startswith("_")}
    return found


def test_layer_table_is_exactly_torchs_layer_classes() -> None:
    table = {(f"torch.nn.modules.{module}", name) for module, names in TORCH_NN_LAYERS.items()
             for name in names.split()}
    found = _torch_layer_classes()
    assert table == found, f"TORCH_NN_LAYERS vs torch {torch.__version__}: lacks {found - table}, extra {table - found}"
    assert table <= set(ALLOWLIST)


@pytest.mark.parametrize("module, name", [
    ("torch.nn.modules.conv", "F"),  # the torch.nn.functional module: BUILD would patch it
    ("torch.nn.modules._functions", "SyncBatchNorm"),  # an autograd Function, not the layer
    ("torch.nn.modules.module", "register_module_forward_hook"),
    ("torch.nn.modules.module", "Tensor"),
    ("torchvision.ops.misc", "FrozenBatchNorm2d"),  # ties the file to torchvision: still reported
])
def test_other_names_beside_the_layers_are_not_allowed(module: str, name: str) -> None:
    assert (module, name) not in ALLOWLIST


# --- hostile module structure, built opcode by opcode ---

def _module(modules: bytes, parameters: bytes = b"}", memo: bytes = b"") -> bytes:
    """An ``nn.Module``-shaped object of a user class: NEWOBJ (then ``memo``, to refer to it), then
    BUILD with ``_parameters`` and ``_modules`` (opcodes pushing each dict)."""
    state = b"}(" + corpus.text("_parameters") + parameters + corpus.text("_modules") + modules + b"u"
    return corpus.glob("evil", "Net") + b")\x81" + memo + state + b"b"


def _children(**named: bytes) -> bytes:
    return b"}(" + b"".join(corpus.text(name) + child for name, child in named.items()) + b"u"


def _put(index: int) -> bytes:
    return b"r" + struct.pack("<I", index)


def _get(index: int) -> bytes:
    return b"j" + struct.pack("<I", index)


WEIGHT = _children(weight=corpus.tensor_record())


def cyclic() -> bytes:
    """A module that is its own child."""
    return _module(_children(self=_get(1)), WEIGHT, memo=_put(1))


def deep(levels: int) -> bytes:
    """Modules nested ``levels`` deep; MARK and SETITEMS work on the unpickler's own stack, so
    unpickling them does not recurse."""
    head, tail = _module(_children(c=b"<child>")).split(b"<child>")
    return head * levels + _module(b"}", WEIGHT) + tail * levels


def shared(levels: int) -> bytes:
    """Each level's two children are the same module: a walk by names visits 2**levels leaves."""
    out = _module(b"}", WEIGHT, memo=_put(0))
    for level in range(1, levels + 1):
        out += b"0" + _module(_children(a=_get(level - 1), b=_get(level - 1)), memo=_put(level))  # POP the last
    return out


@pytest.mark.parametrize("build, problem", [
    (cyclic, "module self contains itself: cyclic _modules"),
    (lambda: deep(50_000), f"modules nest more than {MAX_DEPTH} deep"),
    (lambda: shared(80), f"modules hold more than {MAX_ENTRIES} parameters, buffers and children"),
], ids=["cyclic", "deep", "shared"])
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_hostile_module_structure_is_one_clear_error_fast(tmp_path: Path, build, problem: str, legacy: bool) -> None:
    data = corpus.plain_pickle(build())
    path = tmp_path / "hostile.pt"
    if legacy:
        corpus.legacy_checkpoint(path, data)
    else:
        corpus.zip_checkpoint(path, data)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=problem) as raised:
        open_checkpoint(str(path))
    assert time.perf_counter() - start < 30  # ~0.5 s on an idle machine for the shared case, the slowest
    assert "evil.Net" in {g.qualname for g in raised.value.pickle_globals}


def test_hostile_module_structure_from_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "cyclic.pt"
    corpus.zip_checkpoint(path, corpus.plain_pickle(cyclic()))
    result = run_subprocess("check", str(path), "--format", "json", timeout=60)
    assert result.code == 1 and "Traceback" not in result.err  # the unsafe global outranks the read error
    [line] = result.err.strip().splitlines()
    assert str(path) in line and "module self contains itself: cyclic _modules" in line
    named = {(f["name"], f["evidence"]["global"]) for f in result.json["findings"]}
    assert ("unsafe-pickle", "evil.Net") in named
