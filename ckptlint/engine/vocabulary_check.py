"""Check a rule's Jinja2 against the vocabulary when it loads: names, facts, compared values.

A condition that misspells a fact (``pair.verdit``) or a value (``'frozen_batch_norm'``) is not a
syntax error: it is a rule that quietly finds nothing. Every such mistake found here is one line
naming the expression, the word and the closest known one.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping
from itertools import pairwise
from typing import Any

from jinja2 import meta, nodes

# Names every expression may use besides its facts: Jinja2's own globals and loop variables.
JINJA_GLOBALS = frozenset({"range", "dict", "lipsum", "cycler", "joiner", "namespace", "loop", "true", "false",
                           "none", "True", "False", "None"})
COMPARISONS = ("eq", "ne", "in", "notin")


def check_expression(tree: nodes.Template, names: Mapping[str, frozenset[str]],
                     values: Mapping[tuple[str, str], tuple[str, ...]], params: Mapping[str, Any]) -> str | None:
    """The first problem in ``tree`` (a parsed expression or message), or None. ``names``: each
    name the rule may use and the facts it offers; ``values``: what the facts with a closed set
    of values may be, for this rule; ``params``: the rule's parameters (a list compared with a
    fact is checked like literals)."""
    # values first: Jinja2's code generator, which finds the undeclared names, folds constant
    # tuples in the tree it walks
    for problem in (*_unknown_values(tree, values, params), *_unknown_facts(tree, names),
                    *_unknown_names(tree, names)):
        return problem
    return None


def _did_you_mean(word: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown_names(tree: nodes.Template, names: Mapping[str, frozenset[str]]) -> Iterator[str]:
    for name in sorted(meta.find_undeclared_variables(tree) - set(names) - JINJA_GLOBALS):
        yield f"unknown name {name!r}{_did_you_mean(name, names)}; this rule may use {', '.join(sorted(names))}"


def _unknown_facts(tree: nodes.Template, names: Mapping[str, frozenset[str]]) -> Iterator[str]:
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        fact = _fact(node)
        if fact is not None and fact[0] in names and fact[1] not in names[fact[0]]:
            what = "parameter" if fact[0] == "params" else "fact"
            yield f"{fact[0]}.{fact[1]} is not a {what} this rule can read{_did_you_mean(fact[1], names[fact[0]])}"


def _fact(node: nodes.Node) -> tuple[str, str] | None:
    """``pair.verdict`` and ``pair['verdict']`` -> ("pair", "verdict")."""
    if isinstance(node, nodes.Getattr) and isinstance(node.node, nodes.Name):
        return node.node.name, node.attr
    if (isinstance(node, nodes.Getitem) and isinstance(node.node, nodes.Name) and isinstance(node.arg, nodes.Const)
            and isinstance(node.arg.value, str)):
        return node.node.name, node.arg.value
    return None


def _literals(node: nodes.Node, params: Mapping[str, Any]) -> list[str]:
    """The strings a comparison's other side spells out: a constant, a tuple/list of them, or a
    parameter's declared list (``tensor.module_kind in params.kinds``)."""
    fact = _fact(node)
    if fact is not None and fact[0] == "params" and isinstance(params.get(fact[1]), (list, tuple)):
        return [value for value in params[fact[1]] if isinstance(value, str)]
    if isinstance(node, nodes.Const) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, nodes.Const) and isinstance(node.value, tuple):  # a folded tuple
        return [value for value in node.value if isinstance(value, str)]
    if isinstance(node, (nodes.Tuple, nodes.List)):
        return [item.value for item in node.items if isinstance(item, nodes.Const) and isinstance(item.value, str)]
    return []


def compared_parameters(tree: nodes.Template,
                        values: Mapping[tuple[str, str], tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """Parameters compared with a fact of a closed set of values (``tensor.module_kind in
    params.kinds``) -> those values: an override must keep to them too."""
    found: dict[str, tuple[str, ...]] = {}
    for compare in tree.find_all(nodes.Compare):
        operands = [compare.expr, *(operand.expr for operand in compare.ops)]
        for left, right in pairwise(operands):
            for fact_node, param_node in ((left, right), (right, left)):
                fact, param = _fact(fact_node), _fact(param_node)
                if fact and param and param[0] == "params" and fact in values:
                    found[param[1]] = values[fact]
    return found


def _unknown_literals(fact_node: nodes.Node, literal_node: nodes.Node,
                      values: Mapping[tuple[str, str], tuple[str, ...]], params: Mapping[str, Any]) -> Iterator[str]:
    """``pair.verdict == 'reinitialised'``: a literal the fact never takes."""
    fact = _fact(fact_node)
    allowed = values.get(fact) if fact else None
    if fact is None or allowed is None:
        return
    for value in _literals(literal_node, params):
        if value not in allowed:
            yield (f"{fact[0]}.{fact[1]} is never {value!r}{_did_you_mean(value, allowed)}; "
                   f"it is one of {', '.join(allowed)}")


def _unknown_values(tree: nodes.Template, values: Mapping[tuple[str, str], tuple[str, ...]],
                    params: Mapping[str, Any]) -> Iterator[str]:
    for compare in tree.find_all(nodes.Compare):
        left = compare.expr
        for operand in compare.ops:
            right = operand.expr
            if operand.op in COMPARISONS:
                # ``fact in ('a', 'b')`` is membership; ``'a' in fact`` would be a substring test
                sides = ((left, right), (right, left)) if operand.op in ("eq", "ne") else ((left, right),)
                for fact_node, literal_node in sides:
                    yield from _unknown_literals(fact_node, literal_node, values, params)
            left = right
