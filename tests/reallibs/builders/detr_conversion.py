"""DETR conversion between the original (facebookresearch/detr) and the Hugging Face file names.

``original_to_hf`` transcribes transformers' own conversion script
(src/transformers/models/detr/convert_detr_original_pytorch_checkpoint_to_pytorch.py, timm
backbone: its ``rename_keys`` list, ``rename_backbone_keys``, ``read_in_q_k_v`` with rows [:256],
[256:512], [-256:] and the ``model.`` prefix). The script is not in the transformers wheels, so it
cannot be imported; it is written here step by step, as the script does it, and independently of
the table-driven ``hf_to_original``, so that the round trip checks one against the other.

HF names are the ones ``save_pretrained`` writes in both transformers 4 and 5 (transformers 5
renames them in memory: ``V5_IN_MEMORY``).
"""

from __future__ import annotations

import re
from collections import OrderedDict

import torch

D_MODEL = 256
LAYERS = 6

# --- the forward conversion, as transformers' script does it ---------------------------------


def _script_rename_keys() -> list[tuple[str, str]]:
    """The script's module-level ``rename_keys`` list (original name, HF name), in its order."""
    keys = []
    for i in range(LAYERS):
        enc, hf_enc = f"transformer.encoder.layers.{i}", f"encoder.layers.{i}"
        dec, hf_dec = f"transformer.decoder.layers.{i}", f"decoder.layers.{i}"
        modules = [
            (f"{enc}.self_attn.out_proj", f"{hf_enc}.self_attn.out_proj"),
            (f"{enc}.linear1", f"{hf_enc}.fc1"),
            (f"{enc}.linear2", f"{hf_enc}.fc2"),
            (f"{enc}.norm1", f"{hf_enc}.self_attn_layer_norm"),
            (f"{enc}.norm2", f"{hf_enc}.final_layer_norm"),
            (f"{dec}.self_attn.out_proj", f"{hf_dec}.self_attn.out_proj"),
            (f"{dec}.multihead_attn.out_proj", f"{hf_dec}.encoder_attn.out_proj"),
            (f"{dec}.linear1", f"{hf_dec}.fc1"),
            (f"{dec}.linear2", f"{hf_dec}.fc2"),
            (f"{dec}.norm1", f"{hf_dec}.self_attn_layer_norm"),
            (f"{dec}.norm2", f"{hf_dec}.encoder_attn_layer_norm"),
            (f"{dec}.norm3", f"{hf_dec}.final_layer_norm"),
        ]
        keys.extend((f"{src}.{leaf}", f"{dest}.{leaf}") for src, dest in modules for leaf in ("weight", "bias"))
    keys.extend([
        ("input_proj.weight", "input_projection.weight"),
        ("input_proj.bias", "input_projection.bias"),
        ("query_embed.weight", "query_position_embeddings.weight"),
        ("transformer.decoder.norm.weight", "decoder.layernorm.weight"),
        ("transformer.decoder.norm.bias", "decoder.layernorm.bias"),
        ("class_embed.weight", "class_labels_classifier.weight"),
        ("class_embed.bias", "class_labels_classifier.bias"),
        ("bbox_embed.layers.0.weight", "bbox_predictor.layers.0.weight"),
        ("bbox_embed.layers.0.bias", "bbox_predictor.layers.0.bias"),
        ("bbox_embed.layers.1.weight", "bbox_predictor.layers.1.weight"),
        ("bbox_embed.layers.1.bias", "bbox_predictor.layers.1.bias"),
        ("bbox_embed.layers.2.weight", "bbox_predictor.layers.2.weight"),
        ("bbox_embed.layers.2.bias", "bbox_predictor.layers.2.bias"),
    ])
    return keys


def _script_read_in_q_k_v(state_dict: dict) -> None:
    """The script's ``read_in_q_k_v`` (not panoptic): split each fused in_proj into q, k, v."""
    attentions = [(f"transformer.encoder.layers.{i}.self_attn", f"encoder.layers.{i}.self_attn")
                  for i in range(LAYERS)]
    for i in range(LAYERS):
        attentions.append((f"transformer.decoder.layers.{i}.self_attn", f"decoder.layers.{i}.self_attn"))
        attentions.append((f"transformer.decoder.layers.{i}.multihead_attn", f"decoder.layers.{i}.encoder_attn"))
    for original, hf in attentions:
        in_proj_weight = state_dict.pop(f"{original}.in_proj_weight")
        in_proj_bias = state_dict.pop(f"{original}.in_proj_bias")
        state_dict[f"{hf}.q_proj.weight"] = in_proj_weight[:256, :]
        state_dict[f"{hf}.q_proj.bias"] = in_proj_bias[:256]
        state_dict[f"{hf}.k_proj.weight"] = in_proj_weight[256:512, :]
        state_dict[f"{hf}.k_proj.bias"] = in_proj_bias[256:512]
        state_dict[f"{hf}.v_proj.weight"] = in_proj_weight[-256:, :]
        state_dict[f"{hf}.v_proj.bias"] = in_proj_bias[-256:]


def original_to_hf(original: dict) -> dict:
    """convert_detr_checkpoint's state-dict steps for detr_resnet50 (timm backbone)."""
    state_dict = OrderedDict(original)
    for src, dest in _script_rename_keys():
        state_dict[dest] = state_dict.pop(src)
    state_dict = OrderedDict((key.replace("backbone.0.body", "backbone.conv_encoder.model"), value)
                             for key, value in state_dict.items())
    _script_read_in_q_k_v(state_dict)
    for key in list(state_dict):
        if not key.startswith(("class_labels_classifier", "bbox_predictor")):
            state_dict[f"model.{key}"] = state_dict.pop(key)
    return dict(state_dict)


# --- the inverse, table-driven ---------------------------------------------------------------

# HF module (under model.encoder.layers.N / model.decoder.layers.N) -> original module.
ENCODER_LAYER = {"self_attn.out_proj": "self_attn.out_proj", "fc1": "linear1", "fc2": "linear2",
                 "self_attn_layer_norm": "norm1", "final_layer_norm": "norm2"}
DECODER_LAYER = {"self_attn.out_proj": "self_attn.out_proj", "encoder_attn.out_proj": "multihead_attn.out_proj",
                 "fc1": "linear1", "fc2": "linear2", "self_attn_layer_norm": "norm1",
                 "encoder_attn_layer_norm": "norm2", "final_layer_norm": "norm3"}
# HF attention -> original nn.MultiheadAttention, whose in_proj stacks q, k, v in that order.
ENCODER_FUSED = {"self_attn": "self_attn"}
DECODER_FUSED = {"self_attn": "self_attn", "encoder_attn": "multihead_attn"}
QKV = ("q_proj", "k_proj", "v_proj")
TOP_LEVEL = {"model.backbone.conv_encoder.model": "backbone.0.body", "model.input_projection": "input_proj",
             "model.query_position_embeddings": "query_embed", "model.decoder.layernorm": "transformer.decoder.norm",
             "class_labels_classifier": "class_embed", "bbox_predictor": "bbox_embed"}

# transformers 5's in-memory names (its conversion_mapping "DetrModel" renames), from the file names.
V5_IN_MEMORY = ((r"backbone\.conv_encoder\.", "backbone."), (r"\.out_proj\.", ".o_proj."),
                (r"layers\.(\d+)\.fc([12])\.", r"layers.\1.mlp.fc\2."))


def module_table(layers: int = LAYERS) -> dict[str, str]:
    """Every renamed (not fused) HF module prefix -> its original prefix."""
    table = dict(TOP_LEVEL)
    for i in range(layers):
        for side, per_layer in (("encoder", ENCODER_LAYER), ("decoder", DECODER_LAYER)):
            for hf, original in per_layer.items():
                table[f"model.{side}.layers.{i}.{hf}"] = f"transformer.{side}.layers.{i}.{original}"
    return table


def fused_table(layers: int = LAYERS) -> dict[str, str]:
    """HF attention prefix (holding q/k/v_proj) -> original nn.MultiheadAttention prefix."""
    table = {}
    for i in range(layers):
        for side, fused in (("encoder", ENCODER_FUSED), ("decoder", DECODER_FUSED)):
            for hf, original in fused.items():
                table[f"model.{side}.layers.{i}.{hf}"] = f"transformer.{side}.layers.{i}.{original}"
    return table


def _rename(key: str, table: dict[str, str]) -> str | None:
    """The key under the longest table prefix that holds it, renamed; None when no prefix does."""
    module = key.rpartition(".")[0]
    while module:
        if module in table:
            return f"{table[module]}{key[len(module):]}"
        module = module.rpartition(".")[0]
    return None


def hf_to_original(hf: dict, layers: int = LAYERS) -> dict:
    """The HF file's tensors in original DETR naming: renames by table, q/k/v fused into in_proj.
    Raises KeyError when an HF key has no place in the original, or a q/k/v part is missing."""
    fused = fused_table(layers)
    renames = module_table(layers)
    out: dict = {}
    for key, value in hf.items():
        attention, _, proj = key.rpartition(".")[0].rpartition(".")
        if attention in fused and proj in QKV:
            continue
        new = _rename(key, renames)
        if new is None:
            raise KeyError(f"no original name for {key}")
        out[new] = value
    for attention, original in fused.items():
        for leaf in ("weight", "bias"):
            out[f"{original}.in_proj_{leaf}"] = torch.cat([hf[f"{attention}.{p}.{leaf}"] for p in QKV])
    return out


def in_proj_rows(hf_key: str, layers: int = LAYERS, d_model: int = D_MODEL) -> tuple[str, int, int] | None:
    """Where a q/k/v tensor comes from: (original in_proj key, first row, end row); None if not fused."""
    module, _, leaf = hf_key.rpartition(".")
    attention, _, proj = module.rpartition(".")
    original = fused_table(layers).get(attention)
    if original is None or proj not in QKV:
        return None
    start = QKV.index(proj) * d_model
    return f"{original}.in_proj_{leaf}", start, start + d_model


def conversion_map(hf_keys: list[str], layers: int = LAYERS) -> dict[str, list]:
    """HF key -> [original key, first row, end row] (rows null when the whole tensor is copied)."""
    renames = module_table(layers)
    out = {}
    for key in hf_keys:
        fused = in_proj_rows(key, layers)
        out[key] = list(fused) if fused else [_rename(key, renames), None, None]
    return out


def v5_in_memory_name(key: str) -> str:
    """A file key's transformers-5 in-memory name: planting a bug edits the model, not the file."""
    for old, new in V5_IN_MEMORY:
        key = re.sub(old, new, key)
    return key


def bit_identical(a: dict, b: dict) -> bool:
    """Same keys, dtypes, shapes and bytes (torch.equal would call -0.0 and 0.0 equal)."""
    if set(a) != set(b):
        return False
    for key, x in a.items():
        y = b[key]
        if x.dtype != y.dtype or x.shape != y.shape:
            return False
        if not torch.equal(x.contiguous().reshape(-1).view(torch.uint8), y.contiguous().reshape(-1).view(torch.uint8)):
            return False
    return True
