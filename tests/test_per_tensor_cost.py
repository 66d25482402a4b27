"""What a check computes per tensor: nothing a selected rule does not read (init fingerprints only
for tensors a rule judges with them), the module graph walked as networkx would, and rule lists
found once per relation."""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch

import ckptlint.facts.tensor as tensor_module
from ckptlint import lint
from ckptlint.engine.evaluate import Evaluator
from ckptlint.engine.registry import load_all_rules
from ckptlint.facts.checkpoint import CheckpointFacts
from ckptlint.graph.build import ModuleTable, build_module_graph
from ckptlint.io.checkpoint import TensorRef
from ckptlint.io.dtypes import DTYPES
from ckptlint.io.memory import memory_checkpoint
from ckptlint.options import Options
from conftest import FIXTURES, fixture_generator

PRETRAINED = FIXTURES / "models" / "resnet50_tiny.pth"
SCOPE = "backbone.0.body."


@pytest.fixture(scope="module")
def fresh_detr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly assembled DETR: the fixture ResNet-50 copied into the backbone, the transformer
    and heads at torch's default initialisation (large enough to be fingerprinted)."""
    fixtures = fixture_generator()
    fixtures.D_MODEL, fixtures.FFN = 64, 256  # transformer weights above suspicious-init-scale's 2048 values
    resnet = torch.load(PRETRAINED, weights_only=True)
    detr = OrderedDict(fixtures.detr_state_dict(resnet))
    torch.manual_seed(3)
    fresh = 0
    for key, value in detr.items():
        if not key.startswith(SCOPE) and key.endswith("weight") and value.ndim >= 2:
            weight = torch.empty_like(value)
            torch.nn.init.kaiming_uniform_(weight, a=math.sqrt(5))  # nn.Linear/Conv2d's default
            detr[key] = weight
            fresh += 1
    assert fresh >= 10
    path = tmp_path_factory.mktemp("fresh-detr") / "detr.pth"
    torch.save({"model": detr}, path)
    return path


@pytest.fixture
def fingerprinted(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """Keys whose init group was computed, and the calls of ``matching_inits``."""
    seen: dict[str, list] = {"keys": [], "calls": []}
    original_group, original_match = tensor_module._GROUP_FUNCTIONS["init"], tensor_module.matching_inits

    def group(values: np.ndarray, facts: tensor_module.TensorFacts) -> dict:
        seen["keys"].append(facts["key"])
        return original_group(values, facts)

    def match(values: np.ndarray, kind: str) -> list:
        seen["calls"].append(kind)
        return original_match(values, kind)

    monkeypatch.setitem(tensor_module._GROUP_FUNCTIONS, "init", group)
    monkeypatch.setattr(tensor_module, "matching_inits", match)
    return seen


def test_tensors_outside_the_transfer_scope_are_not_fingerprinted(fresh_detr: Path, fingerprinted: dict) -> None:
    report = lint(str(fresh_detr), str(PRETRAINED))
    assert not [f for f in report.findings if f.name == "suspicious-init-scale"]
    outside = [k for k in fingerprinted["keys"] if k.startswith(("transformer.", "class_embed", "bbox_embed",
                                                                  "query_embed", "input_proj"))]
    assert outside == []
    # What is left: at most the untrained-pretrained rule's sample of the pretrained file's weights
    # (the copied pairs are settled without a fingerprint).
    assert len(fingerprinted["calls"]) <= 16


def test_a_selection_without_init_rules_fingerprints_nothing(fresh_detr: Path, fingerprinted: dict) -> None:
    lint(str(fresh_detr), str(PRETRAINED), select=["non-finite"])
    lint(str(fresh_detr), select=["non-finite"])
    assert fingerprinted["calls"] == [] and fingerprinted["keys"] == []


def test_without_a_pretrained_file_the_fresh_weights_are_fingerprinted(fresh_detr: Path, fingerprinted: dict) -> None:
    report = lint(str(fresh_detr), select=["suspicious-init-scale"])
    keys = set(fingerprinted["keys"])
    assert "transformer.encoder.layers.0.linear1.weight" in keys
    assert len(fingerprinted["calls"]) == len(fingerprinted["keys"]) >= 10
    assert {f.key for f in report.findings} >= {"transformer.encoder.layers.0.linear1.weight"}


def _refs(keys: list[str]) -> dict[str, TensorRef]:
    shapes = {"weight": (4, 3, 3, 3), "bias": (4,), "running_mean": (4,), "running_var": (4,),
              "num_batches_tracked": (), "in_proj_weight": (12, 4)}
    return {k: TensorRef(k, DTYPES["float32"], shapes.get(k.rpartition(".")[2], (2, 2)), "x", 0, 108)
            for k in keys}


KEYS = ["stem.weight", "b.2.x.weight", "a.bn1.weight", "a.bn1.bias", "a.bn1.running_mean", "top",
        "b.0.conv.weight", "b.2.y.bias", "a.attn.in_proj_weight", "b.0.conv.bias", "c.d.e.f.g.weight",
        "b.1.bn.num_batches_tracked", "a.embed.weight", "", "x..y.weight"]


def _graph_as_before(tensors: dict[str, TensorRef]) -> nx.DiGraph:
    """The graph as it was built before the table: node by node from the root."""
    from ckptlint.graph.kinds import infer_kind

    graph: nx.DiGraph = nx.DiGraph()
    graph.add_node("", tensors={})

    def add(module: str) -> None:
        if module in graph:
            return
        parent = module.rpartition(".")[0]
        add(parent)
        graph.add_node(module, tensors={})
        graph.add_edge(parent, module, relation="contains")

    for key in tensors:
        module, _, leaf = key.rpartition(".")
        add(module)
        graph.nodes[module]["tensors"][leaf] = key
    for module, data in graph.nodes(data=True):
        data["kind"] = infer_kind(module, {leaf: tensors[key] for leaf, key in data["tensors"].items()})
    return graph


def test_the_module_table_is_the_graph_in_the_same_order() -> None:
    tensors = _refs(KEYS)
    graph, before = build_module_graph(tensors), _graph_as_before(tensors)
    assert list(graph.nodes(data=True)) == list(before.nodes(data=True))
    assert list(graph.edges(data=True)) == list(before.edges(data=True))
    assert [list(graph.successors(n)) for n in graph] == [list(before.successors(n)) for n in before]
    assert ModuleTable(tensors).preorder() == list(nx.dfs_preorder_nodes(before, ""))


def test_module_groups_walk_every_tensor_once_in_graph_order() -> None:
    arrays = {k: np.zeros(ref.shape, np.float32) for k, ref in _refs([k for k in KEYS if k]).items()}
    facts = CheckpointFacts(memory_checkpoint(arrays, "mem"))
    walked = [(module["path"], list(tensors)) for module, tensors in facts.module_groups()]
    assert [path for path, _ in walked] == list(nx.dfs_preorder_nodes(facts.graph, ""))
    assert sorted(k for _, keys in walked for k in keys) == sorted(arrays)
    tensor = facts.tensor("b.0.conv.weight")
    assert (tensor["module"], tensor["leaf"], tensor["module_kind"], tensor["numel"], tensor["nbytes"],
            tensor["fan_in"], tensor["fan_out"], tensor["shape"]) == ("b.0.conv", "weight", "conv", 108, 432,
                                                                       27, 36, [4, 3, 3, 3])


def test_rule_lists_are_found_once_per_relation() -> None:
    options = Options()
    evaluator = Evaluator(load_all_rules(), options.selection)
    first = evaluator.judging("tensor")
    assert first == evaluator.judging("tensor") and first is not evaluator.judging("tensor")
    assert {r.name for r in first} >= {"non-finite", "suspicious-init-scale"}
    assert evaluator.judging("tensor", "pretrained", "target") != first
    assert evaluator.judging("no-such-subject") == []
