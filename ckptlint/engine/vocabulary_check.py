"""Check a rule's Jinja2 against the vocabulary when it loads: names, facts, compared values.

A condition that misspells a fact (``pair.verdit``) or a value (``'frozen_batch_norm'``) is not a
syntax error: it is a rule that quietly finds nothing. Every such mistake found here is one line
naming the expression, the word and the closest known one.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping

from jinja2 import meta, nodes

from ckptlint.vocabulary import VALUES

# Names every expression may use besides its facts: Jinja2's own globals and loop variables.
JINJA_GLOBALS = frozenset({"range", "dict", "lipsum", "cycler", "joiner", "namespace", "loop", "true", "false",
                           "none", "True", "False", "None"})
COMPARISONS = ("eq", "ne", "in", "notin")


def check_expression(tree: nodes.Template, names: Mapping[str, frozenset[str]]) -> str | None:
    """The first problem in ``tree`` (a parsed expression or message), or None. ``names``: each
    name the rule may use and the facts it offers."""
    # values first: Jinja2's code generator, which finds the undeclared names, folds constant
    # tuples in the tree it walks
    for problem in (*_unknown_values(tree), *_unknown_facts(tree, names), *_unknown_names(tree, names)):
        return problem
    return None


def _did_you_mean(word: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown_names(tree: nodes.Template, names: Mapping[str, frozenset[str]]) -> Iterator[str]:
    for name in sorted(meta.find_undeclared_variables(tree) - set(names) - JINJA_GLOBALS):
        yield f"unknown name {name!r}{_did_you_mean(name, names)}; this rule may use {', '.join(sorted(names))}"


def _unknown_facts(tree: nodes.Template, names: Mapping[str, frozenset[str]]) -> Iterator[str]:
    for node in tree.find_all(nodes.Getattr):
        if isinstance(node.node, nodes.Name) and node.node.name in names:
            known = names[node.node.name]
            if node.attr not in known:
                what = "parameter" if node.node.name == "params" else "fact"
                yield (f"{node.node.name}.{node.attr} is not a {what} this rule can read"
                       f"{_did_you_mean(node.attr, known)}")


def _fact(node: nodes.Node) -> tuple[str, str] | None:
    """``pair.verdict`` -> ("pair", "verdict")."""
    if isinstance(node, nodes.Getattr) and isinstance(node.node, nodes.Name):
        return node.node.name, node.attr
    return None


def _literals(node: nodes.Node) -> list[str]:
    """The strings a comparison's other side spells out: a constant or a tuple/list of them."""
    if isinstance(node, nodes.Const) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, nodes.Const) and isinstance(node.value, tuple):  # a folded tuple
        return [value for value in node.value if isinstance(value, str)]
    if isinstance(node, (nodes.Tuple, nodes.List)):
        return [item.value for item in node.items if isinstance(item, nodes.Const) and isinstance(item.value, str)]
    return []


def _unknown_literals(fact_node: nodes.Node, literal_node: nodes.Node) -> Iterator[str]:
    """``pair.verdict == 'reinitialised'``: a literal the fact never takes."""
    fact = _fact(fact_node)
    allowed = VALUES.get(fact) if fact else None
    if fact is None or allowed is None:
        return
    for value in _literals(literal_node):
        if value not in allowed:
            yield (f"{fact[0]}.{fact[1]} is never {value!r}{_did_you_mean(value, allowed)}; "
                   f"it is one of {', '.join(allowed)}")


def _unknown_values(tree: nodes.Template) -> Iterator[str]:
    for compare in tree.find_all(nodes.Compare):
        left = compare.expr
        for operand in compare.ops:
            right = operand.expr
            if operand.op in COMPARISONS:
                # ``fact in ('a', 'b')`` is membership; ``'a' in fact`` would be a substring test
                sides = ((left, right), (right, left)) if operand.op in ("eq", "ne") else ((left, right),)
                for fact_node, literal_node in sides:
                    yield from _unknown_literals(fact_node, literal_node)
            left = right
