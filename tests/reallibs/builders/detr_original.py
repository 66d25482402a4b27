"""The original DETR (facebookresearch/detr, not on PyPI), reproduced module for module from its
models/backbone.py, position_encoding.py, transformer.py and detr.py, so that ``state_dict()``
has exactly the released checkpoints' key names and order:

    transformer.encoder.layers.N.{self_attn.in_proj_weight,...,linear1,linear2,norm1,norm2}.*
    transformer.decoder.layers.N.{self_attn,multihead_attn,linear1,linear2,norm1..3}.*
    transformer.decoder.norm.*        (post-norm: the encoder has no final norm)
    class_embed.*  bbox_embed.layers.{0,1,2}.*  query_embed.weight  input_proj.*
    backbone.0.body.{conv1,bn1,layer1..layer4}.*   (FrozenBatchNorm2d: no num_batches_tracked)

backbone.1 (the sine position embedding) has no tensors. The training loss is DETR's
SetCriterion in miniature: Hungarian matching (scipy) on class probability, L1 and GIoU costs,
cross-entropy with eos_coef for the no-object class, L1 and GIoU box losses, auxiliary decoder
losses; it exists only to give every trainable tensor a real gradient.
"""

from __future__ import annotations

import argparse
import copy
import math

import torch
import torch.nn.functional as F
import torchvision
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import generalized_box_iou
from torchvision.ops.boxes import box_convert
from torchvision.ops.misc import FrozenBatchNorm2d


class NestedTensor:
    def __init__(self, tensors: torch.Tensor, mask: torch.Tensor):
        self.tensors = tensors
        self.mask = mask

    def decompose(self):
        return self.tensors, self.mask


# --- models/backbone.py ------------------------------------------------------------------------

class BackboneBase(nn.Module):
    def __init__(self, backbone: nn.Module, train_backbone: bool, num_channels: int,
                 return_interm_layers: bool):
        super().__init__()
        for name, parameter in backbone.named_parameters():
            if not train_backbone or ("layer2" not in name and "layer3" not in name and "layer4" not in name):
                parameter.requires_grad_(False)
        if return_interm_layers:
            return_layers = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}
        else:
            return_layers = {"layer4": "0"}
        self.body = IntermediateLayerGetter(backbone, return_layers=return_layers)
        self.num_channels = num_channels

    def forward(self, tensor_list: NestedTensor):
        xs = self.body(tensor_list.tensors)
        out = {}
        for name, x in xs.items():
            m = tensor_list.mask
            mask = F.interpolate(m[None].float(), size=x.shape[-2:]).to(torch.bool)[0]
            out[name] = NestedTensor(x, mask)
        return out


class Backbone(BackboneBase):
    """DETR's Backbone; ``pretrained_state_dict`` stands in for torchvision's ``pretrained=True``,
    which loads the ImageNet state dict into the FrozenBatchNorm resnet with load_state_dict
    (strict; FrozenBatchNorm2d drops num_batches_tracked while loading)."""

    def __init__(self, name: str, train_backbone: bool, return_interm_layers: bool, dilation: bool,
                 pretrained_state_dict: dict | None = None):
        backbone = getattr(torchvision.models, name)(
            replace_stride_with_dilation=[False, False, dilation], weights=None,
            norm_layer=FrozenBatchNorm2d)
        if pretrained_state_dict is not None:
            backbone.load_state_dict(pretrained_state_dict)
        num_channels = 512 if name in ("resnet18", "resnet34") else 2048
        super().__init__(backbone, train_backbone, num_channels, return_interm_layers)


class Joiner(nn.Sequential):
    def __init__(self, backbone, position_embedding):
        super().__init__(backbone, position_embedding)

    def forward(self, tensor_list: NestedTensor):
        xs = self[0](tensor_list)
        out, pos = [], []
        for x in xs.values():
            out.append(x)
            pos.append(self[1](x).to(x.tensors.dtype))
        return out, pos


# --- models/position_encoding.py ---------------------------------------------------------------

class PositionEmbeddingSine(nn.Module):
    def __init__(self, num_pos_feats=64, temperature=10000, normalize=False, scale=None):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, tensor_list: NestedTensor):
        x, mask = tensor_list.tensors, tensor_list.mask
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)
        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


# --- models/transformer.py ---------------------------------------------------------------------

def _get_clones(module, n):
    return nn.ModuleList([copy.deepcopy(module) for _ in range(n)])


class Transformer(nn.Module):
    def __init__(self, d_model=512, nhead=8, num_encoder_layers=6, num_decoder_layers=6,
                 dim_feedforward=2048, dropout=0.1, normalize_before=False, return_intermediate_dec=False):
        super().__init__()
        encoder_layer = TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout)
        self.encoder = TransformerEncoder(encoder_layer, num_encoder_layers, None)
        decoder_layer = TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout)
        self.decoder = TransformerDecoder(decoder_layer, num_decoder_layers, nn.LayerNorm(d_model),
                                          return_intermediate=return_intermediate_dec)
        self._reset_parameters()
        self.d_model = d_model
        self.nhead = nhead

    def _reset_parameters(self):
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src, mask, query_embed, pos_embed):
        bs, c, h, w = src.shape
        src = src.flatten(2).permute(2, 0, 1)
        pos_embed = pos_embed.flatten(2).permute(2, 0, 1)
        query_embed = query_embed.unsqueeze(1).repeat(1, bs, 1)
        mask = mask.flatten(1)
        tgt = torch.zeros_like(query_embed)
        memory = self.encoder(src, src_key_padding_mask=mask, pos=pos_embed)
        hs = self.decoder(tgt, memory, memory_key_padding_mask=mask, pos=pos_embed, query_pos=query_embed)
        return hs.transpose(1, 2), memory.permute(1, 2, 0).view(bs, c, h, w)


class TransformerEncoder(nn.Module):
    def __init__(self, encoder_layer, num_layers, norm=None):
        super().__init__()
        self.layers = _get_clones(encoder_layer, num_layers)
        self.num_layers = num_layers
        self.norm = norm

    def forward(self, src, src_key_padding_mask=None, pos=None):
        output = src
        for layer in self.layers:
            output = layer(output, src_key_padding_mask=src_key_padding_mask, pos=pos)
        if self.norm is not None:
            output = self.norm(output)
        return output


class TransformerDecoder(nn.Module):
    def __init__(self, decoder_layer, num_layers, norm=None, return_intermediate=False):
        super().__init__()
        self.layers = _get_clones(decoder_layer, num_layers)
        self.num_layers = num_layers
        self.norm = norm
        self.return_intermediate = return_intermediate

    def forward(self, tgt, memory, memory_key_padding_mask=None, pos=None, query_pos=None):
        output = tgt
        intermediate = []
        for layer in self.layers:
            output = layer(output, memory, memory_key_padding_mask=memory_key_padding_mask, pos=pos,
                           query_pos=query_pos)
            if self.return_intermediate:
                intermediate.append(self.norm(output))
        if self.norm is not None:
            output = self.norm(output)
            if self.return_intermediate:
                intermediate.pop()
                intermediate.append(output)
        if self.return_intermediate:
            return torch.stack(intermediate)
        return output.unsqueeze(0)


class TransformerEncoderLayer(nn.Module):
    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src, src_key_padding_mask=None, pos=None):
        q = k = src if pos is None else src + pos
        src2 = self.self_attn(q, k, value=src, key_padding_mask=src_key_padding_mask)[0]
        src = self.norm1(src + self.dropout1(src2))
        src2 = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout2(src2))


class TransformerDecoderLayer(nn.Module):
    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, tgt, memory, memory_key_padding_mask=None, pos=None, query_pos=None):
        q = k = tgt + query_pos
        tgt2 = self.self_attn(q, k, value=tgt)[0]
        tgt = self.norm1(tgt + self.dropout1(tgt2))
        tgt2 = self.multihead_attn(query=tgt + query_pos, key=memory + pos, value=memory,
                                   key_padding_mask=memory_key_padding_mask)[0]
        tgt = self.norm2(tgt + self.dropout2(tgt2))
        tgt2 = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(tgt2))


# --- models/detr.py ----------------------------------------------------------------------------

class MLP(nn.Module):
    def __init__(self, input_dim, hidden_dim, output_dim, num_layers):
        super().__init__()
        self.num_layers = num_layers
        h = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip([input_dim] + h, h + [output_dim], strict=True))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < self.num_layers - 1 else layer(x)
        return x


class DETR(nn.Module):
    def __init__(self, backbone, transformer, num_classes, num_queries, aux_loss=False):
        super().__init__()
        self.num_queries = num_queries
        self.transformer = transformer
        hidden_dim = transformer.d_model
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.input_proj = nn.Conv2d(backbone.num_channels, hidden_dim, kernel_size=1)
        self.backbone = backbone
        self.aux_loss = aux_loss

    def forward(self, samples: NestedTensor):
        features, pos = self.backbone(samples)
        src, mask = features[-1].decompose()
        hs = self.transformer(self.input_proj(src), mask, self.query_embed.weight, pos[-1])[0]
        outputs_class = self.class_embed(hs)
        outputs_coord = self.bbox_embed(hs).sigmoid()
        out = {"pred_logits": outputs_class[-1], "pred_boxes": outputs_coord[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b}
                                  for a, b in zip(outputs_class[:-1], outputs_coord[:-1], strict=True)]
        return out


# --- main.py's defaults (get_args_parser) ------------------------------------------------------

def default_args(**overrides) -> argparse.Namespace:
    args = argparse.Namespace(
        lr=1e-4, lr_backbone=1e-5, batch_size=2, weight_decay=1e-4, epochs=300, lr_drop=200,
        clip_max_norm=0.1, frozen_weights=None, backbone="resnet50", dilation=False,
        position_embedding="sine", enc_layers=6, dec_layers=6, dim_feedforward=2048, hidden_dim=256,
        dropout=0.1, nheads=8, num_queries=100, pre_norm=False, masks=False, aux_loss=True,
        set_cost_class=1, set_cost_bbox=5, set_cost_giou=2, mask_loss_coef=1, dice_loss_coef=1,
        bbox_loss_coef=5, giou_loss_coef=2, eos_coef=0.1, dataset_file="coco", coco_path="/data/coco",
        coco_panoptic_path=None, remove_difficult=False, output_dir="outputs", device="cuda", seed=42,
        resume="", start_epoch=0, eval=False, num_workers=2, world_size=1, dist_url="env://",
        distributed=False)
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def build_detr(args: argparse.Namespace, num_classes: int = 91,
               pretrained_state_dict: dict | None = None) -> DETR:
    """build_backbone + build_transformer + DETR, in DETR's order of construction."""
    position_embedding = PositionEmbeddingSine(args.hidden_dim // 2, normalize=True)
    backbone = Backbone(args.backbone, args.lr_backbone > 0, args.masks, args.dilation,
                        pretrained_state_dict=pretrained_state_dict)
    joiner = Joiner(backbone, position_embedding)
    joiner.num_channels = backbone.num_channels
    transformer = Transformer(d_model=args.hidden_dim, dropout=args.dropout, nhead=args.nheads,
                              dim_feedforward=args.dim_feedforward, num_encoder_layers=args.enc_layers,
                              num_decoder_layers=args.dec_layers, normalize_before=args.pre_norm,
                              return_intermediate_dec=True)
    return DETR(joiner, transformer, num_classes=num_classes, num_queries=args.num_queries,
                aux_loss=args.aux_loss)


def param_dicts(model: DETR, args: argparse.Namespace) -> list[dict]:
    """main.py's optimizer parameter groups."""
    return [
        {"params": [p for n, p in model.named_parameters() if "backbone" not in n and p.requires_grad]},
        {"params": [p for n, p in model.named_parameters() if "backbone" in n and p.requires_grad],
         "lr": args.lr_backbone},
    ]


def random_targets(gen: torch.Generator, batch: int, num_classes: int) -> list[dict]:
    targets = []
    for _ in range(batch):
        n = int(torch.randint(1, 4, (1,), generator=gen))
        centre = 0.2 + 0.6 * torch.rand(n, 2, generator=gen)
        size = 0.1 + 0.3 * torch.rand(n, 2, generator=gen)
        targets.append({"labels": torch.randint(0, num_classes, (n,), generator=gen),
                        "boxes": torch.cat([centre, size], dim=1)})
    return targets


def _set_loss(outputs: dict, targets: list[dict], args: argparse.Namespace, num_classes: int) -> torch.Tensor:
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    bs, nq = logits.shape[:2]
    with torch.no_grad():
        prob = logits.flatten(0, 1).softmax(-1)
        out_bbox = boxes.flatten(0, 1)
        tgt_ids = torch.cat([t["labels"] for t in targets])
        tgt_bbox = torch.cat([t["boxes"] for t in targets])
        cost = (args.set_cost_bbox * torch.cdist(out_bbox, tgt_bbox, p=1)
                - args.set_cost_class * prob[:, tgt_ids]
                - args.set_cost_giou * generalized_box_iou(box_convert(out_bbox, "cxcywh", "xyxy"),
                                                           box_convert(tgt_bbox, "cxcywh", "xyxy")))
        cost = cost.view(bs, nq, -1)
        sizes = [len(t["boxes"]) for t in targets]
        indices = [linear_sum_assignment(c[i]) for i, c in enumerate(cost.split(sizes, -1))]
    batch_idx = torch.cat([torch.full((len(src),), i) for i, (src, _) in enumerate(indices)])
    src_idx = torch.cat([torch.as_tensor(src) for src, _ in indices])
    target_classes = torch.full((bs, nq), num_classes, dtype=torch.long)
    target_classes[batch_idx, src_idx] = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices, strict=True)])
    weight = torch.ones(num_classes + 1)
    weight[-1] = args.eos_coef
    loss_ce = F.cross_entropy(logits.transpose(1, 2), target_classes, weight)
    src_boxes = boxes[batch_idx, src_idx]
    tgt_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices, strict=True)])
    n = max(len(tgt_boxes), 1)
    loss_bbox = F.l1_loss(src_boxes, tgt_boxes, reduction="sum") / n
    loss_giou = (1 - torch.diag(generalized_box_iou(box_convert(src_boxes, "cxcywh", "xyxy"),
                                                    box_convert(tgt_boxes, "cxcywh", "xyxy")))).sum() / n
    return loss_ce + args.bbox_loss_coef * loss_bbox + args.giou_loss_coef * loss_giou


def criterion(outputs: dict, targets: list[dict], args: argparse.Namespace, num_classes: int) -> torch.Tensor:
    loss = _set_loss(outputs, targets, args, num_classes)
    for aux in outputs.get("aux_outputs", []):
        loss = loss + _set_loss(aux, targets, args, num_classes)
    return loss
