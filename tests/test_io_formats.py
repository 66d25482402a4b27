"""Every format, dtype and layout, written by the real libraries, reads back value for value."""

from __future__ import annotations

import argparse
import json
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

from ckptlint.errors import CheckpointError, LfsPointerError
from ckptlint.io import open_checkpoint

FLOAT8 = ["float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu"]


def every_dtype() -> OrderedDict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(5, 7, generator=gen) * 3
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    sd["f64"] = base.double()
    sd["f32"] = base
    sd["f16"] = base.half()
    sd["bf16"] = base.bfloat16()
    for name in FLOAT8:
        sd[name] = base.to(getattr(torch, name))
    sd["i64"] = torch.arange(-10, 10)
    sd["i32"] = torch.arange(-10, 10, dtype=torch.int32)
    sd["i16"] = torch.arange(-10, 10, dtype=torch.int16)
    sd["i8"] = torch.arange(-10, 10, dtype=torch.int8)
    sd["u8"] = torch.arange(0, 250, 7, dtype=torch.uint8)
    sd["bool"] = torch.tensor([True, False, True])
    sd["scalar"] = torch.tensor(2.5)
    sd["empty"] = torch.zeros(0, 4)
    sd["nan"] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0])
    return sd


def as_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16 or "float8" in str(tensor.dtype):
        tensor = tensor.float()
    return tensor.numpy()


def assert_same_values(path: Path, expected: dict[str, torch.Tensor], **kwargs) -> None:
    with open_checkpoint(str(path), **kwargs) as checkpoint:
        assert list(checkpoint.tensors) == list(expected)
        for key, tensor in expected.items():
            ref = checkpoint.tensors[key]
            assert ref.shape == tuple(tensor.shape), key
            assert ref.dtype.name == str(tensor.dtype).removeprefix("torch."), key
            values = checkpoint.read(key)
            assert values.shape == tuple(tensor.shape)
            np.testing.assert_array_equal(values, as_numpy(tensor), err_msg=key)


def test_torch_zip_every_dtype(tmp_path: Path) -> None:
    sd = every_dtype()
    torch.save(sd, tmp_path / "all.pt")
    loaded = torch.load(tmp_path / "all.pt", weights_only=True)
    assert_same_values(tmp_path / "all.pt", loaded)


def test_torch_zip_views_shared_storage_and_parameters(tmp_path: Path) -> None:
    base = torch.arange(48, dtype=torch.float32).reshape(6, 8)
    param = torch.nn.Parameter(torch.randn(3, 3))
    sd = OrderedDict(
        base=base,
        offset_view=base[2:, 3:],  # storage offset
        transposed=base[1:5, :6].t(),  # non-contiguous strides
        strided=base[::2, ::3],
        tied=base,  # same storage, same view: tied weights
        param=param,
        f8_view=base.to(torch.float8_e4m3fn)[1:4, 2:],
    )
    for ext in ("pt", "pth", "bin", "ckpt"):
        torch.save(sd, tmp_path / f"views.{ext}")
        loaded = torch.load(tmp_path / f"views.{ext}", weights_only=True)
        assert_same_values(tmp_path / f"views.{ext}", loaded)
    with open_checkpoint(str(tmp_path / "views.pt")) as checkpoint:
        assert checkpoint.tensors["param"].is_parameter is True
        assert checkpoint.tensors["base"].is_parameter is False
        assert checkpoint.tensors["tied"].storage_id == checkpoint.tensors["base"].storage_id


def test_torch_legacy_format(tmp_path: Path) -> None:
    sd = OrderedDict((k, v) for k, v in every_dtype().items() if "float8" not in k)
    sd["view"] = sd["f32"][1:, 2:].t()
    torch.save({"model": sd}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    loaded = torch.load(tmp_path / "legacy.pth", weights_only=True)["model"]
    assert_same_values(tmp_path / "legacy.pth", loaded)
    with open_checkpoint(str(tmp_path / "legacy.pth")) as checkpoint:
        assert (checkpoint.format, checkpoint.layout) == ("torch-legacy", "model")


def test_safetensors_from_torch_and_numpy(tmp_path: Path) -> None:
    sd = OrderedDict((k, v.contiguous()) for k, v in every_dtype().items())
    safetensors.torch.save_file(sd, tmp_path / "t.safetensors", metadata={"format": "pt"})
    loaded = safetensors.torch.load_file(tmp_path / "t.safetensors")
    with open_checkpoint(str(tmp_path / "t.safetensors")) as checkpoint:
        assert checkpoint.metadata == {"format": "pt"}
        assert set(checkpoint.tensors) == set(loaded)
        for key, tensor in loaded.items():
            np.testing.assert_array_equal(checkpoint.read(key), as_numpy(tensor), err_msg=key)
    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.array([1, 2], dtype=np.uint16)}
    safetensors.numpy.save_file(arrays, tmp_path / "n.safetensors")
    with open_checkpoint(str(tmp_path / "n.safetensors")) as checkpoint:
        for key, array in arrays.items():
            np.testing.assert_array_equal(checkpoint.read(key), array)


def test_large_tensors_are_mapped_and_read_back_exactly(tmp_path: Path) -> None:
    """Tensors from MAP_MIN_BYTES up are views of the file's pages: at offsets that are not
    page-aligned (safetensors), widened (bfloat16), as strided views; never writable."""
    from ckptlint.io.checkpoint import MAP_MIN_BYTES

    gen = torch.Generator().manual_seed(3)
    big = torch.randn(1024, 1024, generator=gen)
    assert big.numel() * 4 >= MAP_MIN_BYTES
    sd = OrderedDict(small=torch.randn(3, 5, generator=gen), big=big, big_bf16=big.bfloat16(),
                     big_half=big[:, :600].contiguous().half(), offset_view=big[1:, 3:], transposed=big.t())
    torch.save(sd, tmp_path / "big.pt")
    assert_same_values(tmp_path / "big.pt", torch.load(tmp_path / "big.pt", weights_only=True))
    safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "big.safetensors")
    loaded = safetensors.torch.load_file(tmp_path / "big.safetensors")
    with open_checkpoint(str(tmp_path / "big.safetensors")) as checkpoint:
        assert checkpoint.tensors["big_half"].storage_start % 4096  # the mapping must start before it
        for key, tensor in loaded.items():
            np.testing.assert_array_equal(checkpoint.read(key), as_numpy(tensor), err_msg=key)
        mapped = checkpoint.read("big")
    assert not mapped.flags.owndata and not mapped.flags.writeable
    np.testing.assert_array_equal(mapped, big.numpy())  # still valid after the file is closed


def _write_index(folder: Path, name: str, weight_map: dict[str, str]) -> Path:
    path = folder / name
    path.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return path


def test_sharded_safetensors_and_bin_and_hf_folders(tmp_path: Path) -> None:
    sd = OrderedDict((f"layer{i}.weight", torch.randn(4, 3)) for i in range(4))
    keys = list(sd)
    st_dir, bin_dir = tmp_path / "st", tmp_path / "bin"
    st_dir.mkdir()
    bin_dir.mkdir()
    weight_map = {}
    for shard, part in enumerate((keys[:2], keys[2:]), start=1):
        safetensors.torch.save_file({k: sd[k] for k in part}, st_dir / f"model-0000{shard}-of-00002.safetensors")
        torch.save({k: sd[k] for k in part}, bin_dir / f"pytorch_model-0000{shard}-of-00002.bin")
        weight_map.update({k: f"model-0000{shard}-of-00002.safetensors" for k in part})
    index = _write_index(st_dir, "model.safetensors.index.json", weight_map)
    bin_map = {k: v.replace("model-", "pytorch_model-").replace(".safetensors", ".bin") for k, v in weight_map.items()}
    _write_index(bin_dir, "pytorch_model.bin.index.json", bin_map)
    for path, fmt in ((index, "safetensors-sharded"), (st_dir, "safetensors-sharded"), (bin_dir, "torch-sharded")):
        with open_checkpoint(str(path)) as checkpoint:
            assert checkpoint.format == fmt
            assert len(checkpoint.files) == 3
        assert_same_values(path, sd)
    single = tmp_path / "hf"
    single.mkdir()
    safetensors.torch.save_file(dict(sd), single / "model.safetensors")
    assert_same_values(single, sd)


def test_shard_index_may_not_point_outside_its_folder(tmp_path: Path) -> None:
    index = _write_index(tmp_path, "model.safetensors.index.json", {"w": "../../etc/passwd"})
    with pytest.raises(CheckpointError, match="outside its folder"):
        open_checkpoint(str(index))


def test_git_lfs_pointer_is_named_as_such(tmp_path: Path) -> None:
    pointer = tmp_path / "model.safetensors"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\n"
                       "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 102400\n")
    with pytest.raises(LfsPointerError, match="git lfs pull"):
        open_checkpoint(str(pointer))


def small_sd() -> OrderedDict[str, torch.Tensor]:
    return OrderedDict([("conv.weight", torch.randn(4, 3, 3, 3)), ("bn.running_mean", torch.zeros(4))])


@pytest.mark.parametrize("wrap, layout, prefix", [
    (lambda sd: sd, "bare", ""),
    (lambda sd: {"model": sd}, "model", ""),
    (lambda sd: {"model_state_dict": sd, "optimizer_state_dict": {}, "epoch": 3}, "model_state_dict", ""),
    (lambda sd: {"state_dict_ema": sd, "epoch": 3}, "state_dict_ema", ""),
    (lambda sd: {"ema": sd}, "ema", ""),
    (lambda sd: OrderedDict((f"module.{k}", v) for k, v in sd.items()), "bare", "module."),
    (lambda sd: OrderedDict((f"_orig_mod.{k}", v) for k, v in sd.items()), "bare", "_orig_mod."),
    (lambda sd: {"state_dict": OrderedDict((f"model.{k}", v) for k, v in sd.items()),
                 "hyper_parameters": {"lr": 0.1}, "pytorch-lightning_version": "2.4.0", "epoch": 1},
     "lightning:state_dict", "model."),
])
def test_layouts_are_detected(tmp_path: Path, wrap, layout, prefix) -> None:
    sd = small_sd()
    torch.save(wrap(sd), tmp_path / "ckpt.pt")
    with open_checkpoint(str(tmp_path / "ckpt.pt")) as checkpoint:
        assert (checkpoint.layout, checkpoint.stripped_prefix) == (layout, prefix)
        assert list(checkpoint.tensors) == list(sd)


def test_detr_training_checkpoint_with_args_and_key_choice(tmp_path: Path) -> None:
    sd = small_sd()
    other = OrderedDict(("x.weight", torch.ones(2)) for _ in range(1))
    ckpt = {"model": sd, "model_ema": other, "optimizer": {"state": {0: {"exp_avg": torch.ones(3)}}},
            "epoch": 5, "args": argparse.Namespace(lr=1e-4, backbone="resnet50")}
    torch.save(ckpt, tmp_path / "detr.pth")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "detr.pth", weights_only=True)  # what we must be able to read anyway
    with open_checkpoint(str(tmp_path / "detr.pth")) as checkpoint:
        assert checkpoint.layout == "model"
        assert {g.qualname for g in checkpoint.pickle_globals if not g.allowed} == set()
    with open_checkpoint(str(tmp_path / "detr.pth"), key_path="model_ema") as checkpoint:
        assert list(checkpoint.tensors) == ["x.weight"]
    with pytest.raises(CheckpointError, match="no entry 'nope'"):
        open_checkpoint(str(tmp_path / "detr.pth"), key_path="nope")


def test_key_selects_a_prefix_in_safetensors(tmp_path: Path) -> None:
    safetensors.torch.save_file({"model.a": torch.ones(2), "ema.a": torch.zeros(2)}, tmp_path / "m.safetensors")
    with open_checkpoint(str(tmp_path / "m.safetensors"), key_path="ema") as checkpoint:
        assert list(checkpoint.tensors) == ["a"]
        assert checkpoint.read("a").tolist() == [0.0, 0.0]


def test_safetensors_whose_header_length_starts_like_a_pickle(tmp_path: Path) -> None:
    """A header length's first byte can be 0x80, the pickle PROTO opcode."""
    for pad in range(0, 64):  # grow a key until the header's length ends in the byte 0x80
        arrays = {"a": np.ones(1, dtype=np.float32), "b" * (0x100 + pad): np.ones(1, dtype=np.float32)}
        safetensors.numpy.save_file(arrays, tmp_path / "m.safetensors")
        if (tmp_path / "m.safetensors").read_bytes()[0] == 0x80:
            break
    assert (tmp_path / "m.safetensors").read_bytes()[0] == 0x80
    with open_checkpoint(str(tmp_path / "m.safetensors")) as checkpoint:
        assert checkpoint.format == "safetensors" and len(checkpoint.tensors) == 2
