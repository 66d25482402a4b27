"""Write a module graph as JSON (node-link), GraphML or Graphviz DOT."""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import networkx as nx


def _flat_copy(graph: nx.DiGraph) -> nx.DiGraph:
    """GraphML and DOT take scalar attributes only: tensors become a comma-separated list."""
    import networkx as nx

    flat: nx.DiGraph[str] = nx.DiGraph()
    for node, data in graph.nodes(data=True):
        flat.add_node(node, kind=data["kind"], tensors=",".join(sorted(data["tensors"].values())))
    flat.add_edges_from(graph.edges(data=True))
    return flat


def graph_to_json(graph: nx.DiGraph) -> str:
    data = {
        "nodes": [
            {"id": node, "kind": attrs["kind"], "tensors": dict(sorted(attrs["tensors"].items()))}
            for node, attrs in sorted(graph.nodes(data=True))
        ],
        "edges": [{"source": s, "target": t, "relation": d["relation"]} for s, t, d in sorted(graph.edges(data=True))],
    }
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def graph_to_graphml(graph: nx.DiGraph) -> str:
    import networkx as nx

    buffer = io.BytesIO()
    nx.write_graphml(_flat_copy(graph), buffer, encoding="utf-8")
    return buffer.getvalue().decode("utf-8")


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def graph_to_dot(graph: nx.DiGraph) -> str:
    lines = ["digraph modules {", "  node [shape=box];"]
    for node, attrs in sorted(graph.nodes(data=True)):
        label = f"{node or '<root>'}\n{attrs['kind']}"
        lines.append(f"  {_dot_quote(node)} [label={_dot_quote(label)}];")
    for source, target in sorted(graph.edges()):
        lines.append(f"  {_dot_quote(source)} -> {_dot_quote(target)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


FORMATS = {"json": graph_to_json, "graphml": graph_to_graphml, "dot": graph_to_dot}
