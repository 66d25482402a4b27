"""Module graphs: kinds inferred from real layers' state dicts, and the three export formats."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import networkx as nx
import torch

from ckptlint.graph.build import build_module_graph
from ckptlint.graph.export import FORMATS as GRAPH_FORMATS
from ckptlint.io import open_checkpoint
from conftest import CASES


class FrozenBatchNorm2d(torch.nn.Module):
    """DETR's: running statistics as buffers, no num_batches_tracked."""

    def __init__(self, n: int) -> None:
        super().__init__()
        for name, value in (("weight", torch.ones(n)), ("bias", torch.zeros(n)),
                            ("running_mean", torch.zeros(n)), ("running_var", torch.ones(n))):
            self.register_buffer(name, value)


def test_kinds_of_real_modules(tmp_path) -> None:
    model = torch.nn.ModuleDict({
        "conv": torch.nn.Conv2d(3, 4, 3), "bn": torch.nn.BatchNorm2d(4), "frozen": FrozenBatchNorm2d(4),
        "fc": torch.nn.Linear(4, 2), "ln": torch.nn.LayerNorm(4), "gn": torch.nn.GroupNorm(2, 4),
        "query_embed": torch.nn.Embedding(10, 4), "attn": torch.nn.MultiheadAttention(4, 2),
        "conv1d": torch.nn.Conv1d(2, 2, 3),
    })
    torch.save(model.state_dict(), tmp_path / "m.pt")
    with open_checkpoint(str(tmp_path / "m.pt")) as checkpoint:
        graph = build_module_graph(checkpoint.tensors)
    kinds = {node: graph.nodes[node]["kind"] for node in graph}
    assert kinds == {"": "container", "conv": "conv", "bn": "batchnorm", "frozen": "frozen_batchnorm",
                     "fc": "linear", "ln": "layernorm", "gn": "groupnorm", "query_embed": "embedding",
                     "attn": "multihead_attention", "attn.out_proj": "linear", "conv1d": "conv"}
    assert graph.nodes["bn"]["tensors"]["running_var"] == "bn.running_var"
    assert set(graph.successors("attn")) == {"attn.out_proj"}


def test_detr_graph_and_exports(run, tmp_path) -> None:
    path = CASES / "detr-training-checkpoint" / "checkpoint.pth"
    with open_checkpoint(str(path)) as checkpoint:
        graph = build_module_graph(checkpoint.tensors)
        assert checkpoint.bytes_read == 0
    assert graph.nodes["backbone.0.body.layer1.0.bn1"]["kind"] == "frozen_batchnorm"
    assert graph.nodes["transformer.encoder.layers.0.norm1"]["kind"] == "layernorm"
    assert graph.nodes["transformer.encoder.layers.0.self_attn"]["kind"] == "multihead_attention"
    assert nx.is_tree(graph)
    as_json = json.loads(run("graph", str(path), "--format", "json").out)
    assert {n["id"] for n in as_json["nodes"]} == set(graph)
    graphml = run("graph", str(path), "--format", "graphml", "-o", str(tmp_path / "g.graphml"))
    assert graphml.code == 0
    assert nx.read_graphml(tmp_path / "g.graphml").number_of_nodes() == graph.number_of_nodes()
    ET.parse(tmp_path / "g.graphml")  # noqa: S314 - our own output
    dot = run("graph", str(path), "--format", "dot").out
    assert dot.startswith("digraph") and dot.count("->") == graph.number_of_edges()
    assert set(GRAPH_FORMATS) == {"json", "graphml", "dot"}
