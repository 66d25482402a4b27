"""Run the enabled rules over a checkpoint's facts, subject by subject, and collect findings."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from jinja2.exceptions import SecurityError, TemplateError

from ckptlint.engine.rules import Rule
from ckptlint.errors import RuleError
from ckptlint.facts.security import distinct_global_facts
from ckptlint.io.unpickler import PickleGlobal
from ckptlint.progress import NoProgress, Progress
from ckptlint.results import Finding
from ckptlint.selection import Selection

if TYPE_CHECKING:  # the facts stage imports numpy and networkx: a pickle-only run needs neither
    from ckptlint.facts.checkpoint import CheckpointFacts
    from ckptlint.facts.tensor import TensorFacts
    from ckptlint.facts.transfer import Reference


def plain(value: Any) -> Any:
    """Evidence as JSON-ready data: non-finite floats become strings, containers are copied."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


class Evaluator:
    """The enabled rules, grouped by subject, and how to turn a true condition into a Finding."""

    def __init__(self, rules: Iterable[Rule], selection: Selection, allow_globals: Iterable[str] = ()) -> None:
        self.selection = selection
        self.allow_globals = frozenset(allow_globals)  # the project's additions to the pickle allowlist
        self.rules = selection.enabled(rules)
        self._params = {rule.code: selection.params_of(rule) for rule in self.rules}
        # What each rule's expressions call its subject, and its parameters: found once per rule
        self._names = {rule.code: (rule.subject_name, self._params[rule.code]) for rule in self.rules}
        self._by_subject: dict[str, list[Rule]] = defaultdict(list)
        for rule in self.rules:
            self._by_subject[rule.subject].append(rule)
        # The rules per (subject, reference, only_in), found once: runs ask millions of times.
        self._judging: dict[tuple[str, str | None, str | None], tuple[Rule, ...]] = {}

    def judging(self, subject: str, reference: str | None = None, only_in: str | None = None) -> list[Rule]:
        """The enabled rules that judge this subject in this relation to a reference: the rules
        declare it, so none has to guard against subjects it does not mean."""
        return list(self._rules_judging(subject, reference, only_in))

    def _rules_judging(self, subject: str, reference: str | None, only_in: str | None) -> tuple[Rule, ...]:
        relation = (subject, reference, only_in)
        rules = self._judging.get(relation)
        if rules is None:
            rules = self._judging[relation] = tuple(rule for rule in self._by_subject.get(subject, ())
                                                    if rule.applies(reference, only_in))
        return rules

    def evaluate(self, rule: Rule, subject: Any, file: str, key: str | None,
                 context: Mapping[str, Any]) -> Finding | None:
        name, params = self._names[rule.code]
        env = {**context, name: subject, "params": params}
        try:
            if not rule.condition(**env):
                return None
            evidence = {name: plain(expr(**env)) for name, expr in rule.evidence.items()}
            severity = next((o.severity for o in rule.severity_if if o.when(**env)), rule.severity)
            message = " ".join(rule.message.render(**env, evidence=evidence).split())
        except (TemplateError, SecurityError, TypeError, ValueError, KeyError, AttributeError) as exc:
            raise RuleError(f"rule {rule.name} failed on {key or file}: {type(exc).__name__}: {exc}",
                            rule.source) from None
        finding = Finding(rule.code, rule.name, self.selection.severity_of(rule, severity), file, key,
                          message, evidence)
        return finding if self.selection.keeps(finding) else None

    def run(self, subject: str, facts: Any, file: str, key: str | None, context: Mapping[str, Any],
            reference: str | None = None, only_in: str | None = None) -> list[Finding]:
        """Findings of the rules judging ``facts`` (a ``subject`` met in this relation)."""
        findings = []
        for rule in self._rules_judging(subject, reference, only_in):
            finding = self.evaluate(rule, facts, file, key, context)
            if finding is not None:
                findings.append(finding)
        return findings


def check_pickle_globals(evaluator: Evaluator, items: list[PickleGlobal], file: str,
                         file_facts: Mapping[str, Any], reference: str | None = None) -> list[Finding]:
    """The security rules; they also run on files that failed to read past their pickle."""
    findings = []
    for facts in distinct_global_facts(items, evaluator.allow_globals):
        findings += evaluator.run("pickle-global", facts, file, None, {"file": file_facts}, reference)
    return findings


def check_checkpoint(evaluator: Evaluator, facts: CheckpointFacts, label: str,
                     references: Sequence[Reference] = (), progress: Progress | None = None) -> list[Finding]:
    """Every enabled rule on a target checkpoint, and on its relation to each reference (a
    pretrained checkpoint, the model's code); findings name the file ``label``."""
    checkpoint = facts.checkpoint
    file_facts = facts.file_facts("target")
    context = {"file": file_facts}
    findings = evaluator.run("file", file_facts, label, None, context)
    findings += check_pickle_globals(evaluator, checkpoint.pickle_globals, label, file_facts)
    tensor_rules, module_rules = evaluator.judging("tensor"), evaluator.judging("module")
    if not (tensor_rules or module_rules or references):
        return findings

    def tensor_extra(key: str) -> dict[str, Any]:
        return {k: v for reference in references for k, v in reference.tensor_extra(key).items()}

    def module_extra(path: str, tensors: dict[str, str]) -> dict[str, Any]:
        return {k: v for reference in references for k, v in reference.module_extra(path, tensors).items()}

    progress = progress or NoProgress()
    progress.start(label, len(checkpoint.tensors))
    # without a reference there is nothing to add to a tensor's or module's facts
    groups = facts.module_groups(tensor_extra, module_extra) if references else facts.module_groups()
    for module, tensors in groups:
        if tensors:
            progress.advance(len(tensors))
            for key, tensor in tensors.items():
                for reference in references:
                    findings += _reference_findings(evaluator, reference, key, tensor, label, context)
                if tensor_rules:
                    findings += evaluator.run("tensor", tensor, label, key, context)
            if module_rules:
                findings += evaluator.run("module", module, label, module["path"], context)
            for tensor in tensors.values():
                tensor.release()  # memory stays bounded by the largest module
    for reference in references:
        for tensor in reference.unused_facts():
            findings += evaluator.run("tensor", tensor, label, tensor["key"], context, reference.name, "reference")
            tensor.release()
    return findings


def _reference_findings(evaluator: Evaluator, reference: Reference, key: str, tensor: TensorFacts,
                        label: str, context: Mapping[str, Any]) -> list[Finding]:
    pairs = reference.pairs_of(key, tensor)
    if pairs:
        return [finding for pair in pairs
                for finding in evaluator.run("pair", pair, label, pair["target"],
                                             {**context, "target": pair.target_facts, "source": pair.source_facts},
                                             reference.name)]
    unmatched = reference.unmatched_facts(key, tensor)
    if unmatched is not None:
        return evaluator.run("tensor", unmatched, label, key, context, reference.name, "target")
    return []
