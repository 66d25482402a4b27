"""Rule files: load one TOML declaration per rule, validate it, compile its Jinja2 in a sandbox."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, nodes
from jinja2.parser import Parser
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ckptlint._toml import tomllib
from ckptlint.engine import code_cache, fast_condition
from ckptlint.engine.fast_condition import Program
from ckptlint.engine.vocabulary_check import check_expression, compared_parameters
from ckptlint.errors import RuleError
from ckptlint.severity import SEVERITIES
from ckptlint.vocabulary import ONLY_IN, REFERENCES, SUBJECTS, names_in_scope, values_in_scope

# The references a rule of each subject may name (None: it runs whatever the reference, or
# without one). A tensor rule with a reference judges tensors on one side only (``only_in``).
REFERENCES_OF = {
    "file": (None, "pretrained"),  # "pretrained": the pretrained file itself
    "pickle-global": (None, "pretrained"),
    "tensor": (None, *REFERENCES),
    "module": (None,),
    "pair": (None, *REFERENCES),
    "transfer": (None, "pretrained"),  # once per target checked against a pretrained file
    "diff": (None,),  # `ckptlint diff OLD NEW` only: a tensor of either version
}
DOC_SECTIONS = ("what", "why", "example", "fix")
REQUIRED = ("code", "name", "severity", "subject", "condition", "message", "docs")
OPTIONAL = ("reference", "only_in", "params", "evidence", "tags", "severity_if", "security_severity")
CODE = re.compile(r"^[A-Z]{2,5}\d{3}$")
NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


def make_environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
    env.filters["fmt"] = lambda value, spec="": format(value, spec)
    return env


ENVIRONMENT = make_environment()


class _Compiled:
    """Jinja2 source as Python code: parsed at load (a syntax error names the rule file) and
    compiled when the rule file's code is stored in the cache — or, while the file is unchanged,
    given that code by the cache, unparsed. The template is made from the code on first use."""

    def __init__(self, tree: nodes.Template | None, code: CodeType | None) -> None:
        self.tree = tree  # None when the code came from the cache (the file was checked when stored)
        self._code = code
        self._template: Template | None = None

    def code(self) -> CodeType:
        if self._code is None:
            if self.tree is None:  # one of the two is always given
                raise RuleError("a rule expression has neither source nor cached code")
            self._code = ENVIRONMENT.compile(self.tree)
        return self._code

    def template(self) -> Template:
        if self._template is None:
            self._template = ENVIRONMENT.template_class.from_code(ENVIRONMENT, self.code(),
                                                                   ENVIRONMENT.make_globals(None))
        return self._template


class Expression(_Compiled):
    """A Jinja2 expression. Most run as a closure built from the parsed tree (see
    ckptlint/engine/fast_condition.py: only a whitelist of node types, with the sandbox's own
    attribute rules); the rest run in the sandbox with one reused context.

    ``Environment.compile_expression`` builds a fresh Context per call (about 10 us); the sandbox
    path does what it does — a ``{% set result = ... %}`` template — but keeps the context and
    swaps its variables. ``program``: the closure's plain-data form, kept in the code cache.
    """

    def __init__(self, source: str, code: CodeType | None = None, program: Program | None = None) -> None:
        tree = None
        if code is None:
            parser = Parser(ENVIRONMENT, source, state="variable")
            expression = parser.parse_expression()
            if not parser.stream.eos:
                raise TemplateSyntaxError("chunk after expression", parser.stream.current.lineno)
            program = fast_condition.program(expression, ENVIRONMENT)
            tree = nodes.Template([nodes.Assign(nodes.Name("result", "store"), expression, lineno=1)], lineno=1)
            tree.set_environment(ENVIRONMENT)
        super().__init__(tree, code)
        self._fast = None
        if program is not None:
            try:
                self._fast = fast_condition.build(program, ENVIRONMENT)
            except (ValueError, LookupError, TypeError):  # a program the cache kept in another form
                program = None
        self.program = program
        self._bound: tuple[Context, Callable[[Context], Any]] | None = None  # made on first call

    def __call__(self, **variables: Any) -> Any:
        fast = self._fast
        if fast is not None:
            return fast(variables)
        return self.in_sandbox(**variables)

    def in_sandbox(self, **variables: Any) -> Any:
        """The expression run by Jinja2 in the sandbox, whether or not it has a closure."""
        if self._bound is None:
            template = self.template()
            self._bound = template.new_context({}, shared=True), template.root_render_func
        context, render = self._bound
        context.parent = variables
        context.vars.clear()
        for _ in render(context):
            pass
        return context.vars["result"]


class MessageTemplate(_Compiled):
    """A finding's message template."""

    def __init__(self, source: str, code: CodeType | None = None) -> None:
        super().__init__(None if code else ENVIRONMENT.parse(source), code)

    def render(self, **variables: Any) -> str:
        return self.template().render(**variables)


@dataclass(frozen=True)
class RuleVocabulary:
    """What one rule's expressions may say, given its header (see ckptlint/vocabulary.py)."""

    names: dict[str, frozenset[str]]  # name -> the facts it offers
    values: dict[tuple[str, str], tuple[str, ...]]  # (name, fact) -> the values it takes
    params: dict[str, Any]  # the rule's declared parameters
    evidence: frozenset[str]  # what a message may read from ``evidence``


@dataclass(frozen=True)
class SeverityOverride:
    severity: str
    when: Callable[..., Any]


@dataclass(frozen=True)
class Rule:
    """A rule as declared, with its Jinja2 compiled once at load time."""

    code: str
    name: str
    severity: str
    subject: str  # file, pickle-global, tensor, module, pair, transfer
    reference: str | None  # pretrained, model, or None: any (or none)
    only_in: str | None  # a tensor subject with a reference: "target" or "reference" side only
    docs: dict[str, str]
    params: dict[str, Any]
    param_values: dict[str, tuple[str, ...]]  # a parameter compared with a fact -> the values it may hold
    tags: tuple[str, ...]
    security_severity: str | None
    source: str
    condition: Callable[..., Any] = field(repr=False, compare=False)
    message: Any = field(repr=False, compare=False)
    evidence: dict[str, Callable[..., Any]] = field(repr=False, compare=False)
    severity_if: tuple[SeverityOverride, ...] = field(repr=False, compare=False)

    @property
    def subject_name(self) -> str:
        """What the rule's expressions call its subject (``pickle_global`` for ``pickle-global``)."""
        return SUBJECTS[self.subject]

    def applies(self, reference: str | None, only_in: str | None) -> bool:
        """Whether the rule judges a subject met in this relation to a reference."""
        return self.only_in == only_in and self.reference in (None, reference)

    @property
    def header(self) -> str:
        """``pair (pretrained)``, ``tensor (model, only in reference)``: what the rule judges."""
        relation = ", ".join(filter(None, (self.reference, self.only_in and f"only in {self.only_in}")))
        return f"{self.subject} ({relation})" if relation else self.subject

    def describe(self) -> dict[str, Any]:
        """The rule as reports show it (plain data)."""
        return {"code": self.code, "name": self.name, "severity": self.severity, "subject": self.subject,
                "reference": self.reference, "only_in": self.only_in,
                "docs": dict(self.docs), "tags": list(self.tags), "params": dict(self.params),
                "security_severity": self.security_severity}


def load_rule_file(path: Path) -> Rule:
    """Parse, validate and compile one rule file; any problem is a RuleError naming the file."""
    where = str(path)
    try:
        text = path.read_text("utf-8")
        data = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RuleError(f"cannot parse rule file ({exc})", where) from None
    if "scope" in data:
        raise RuleError("`scope` is now `subject` (file, pickle-global, tensor, module, pair, transfer) with "
                        "an optional `reference` (pretrained, model) and, for tensors, `only_in`", where)
    unknown = set(data) - set(REQUIRED) - set(OPTIONAL)
    missing = [k for k in REQUIRED if k not in data]
    if unknown or missing:
        problem = f"missing {', '.join(missing)}" if missing else f"unknown field(s) {', '.join(sorted(unknown))}"
        raise RuleError(problem, where)
    _check(isinstance(data["code"], str) and CODE.match(data["code"]), "code must look like CKP101", where)
    _check(isinstance(data["name"], str) and NAME.match(data["name"]), "name must be kebab-case", where)
    _check(data["severity"] in SEVERITIES, f"severity must be one of {', '.join(SEVERITIES)}", where)
    subject, reference, only_in = _header(data, where)
    docs = data["docs"]
    _check(isinstance(docs, dict) and all(isinstance(docs.get(s), str) and docs[s].strip() for s in DOC_SECTIONS),
           f"docs must have non-empty {', '.join(DOC_SECTIONS)}", where)
    params = data.get("params", {})
    evidence = data.get("evidence", {})
    _check(isinstance(params, dict) and isinstance(evidence, dict), "params and evidence must be tables", where)
    overrides = data.get("severity_if", [])
    _check(isinstance(overrides, list) and all(isinstance(o, dict) and o.get("severity") in SEVERITIES
                                               and isinstance(o.get("when"), str) for o in overrides),
           "severity_if entries need a severity and a `when` condition", where)
    cached = code_cache.load(text)
    names = {**names_in_scope(subject, reference, only_in), "params": frozenset(params)}
    stored = cached.get(code_cache.DERIVED, {}) if cached is not None else {}
    compiler = Compiler(where, cached or {}, RuleVocabulary(names, values_in_scope(subject, reference), params,
                                                            frozenset(evidence)), stored.get("programs", {}))
    condition = compiler.expression(data["condition"], "condition")
    # filled as the expressions are parsed (the same dict), or what was derived when it was cached
    param_values = compiler.param_values if cached is None else stored.get("param_values", {})
    rule = Rule(
        code=data["code"], name=data["name"], severity=data["severity"], subject=subject, reference=reference,
        only_in=only_in,
        docs={s: docs[s].strip() for s in DOC_SECTIONS}, params=params, param_values=param_values,
        tags=tuple(data.get("tags", ())), security_severity=data.get("security_severity"),
        source=where, condition=condition,
        message=compiler.message(data["message"]),
        evidence={k: compiler.expression(v, f"evidence.{k}") for k, v in evidence.items()},
        severity_if=tuple(SeverityOverride(o["severity"], compiler.expression(o["when"], "severity_if"))
                          for o in overrides),
    )
    if cached is None:
        code_cache.store(text, {**compiler.codes(), code_cache.DERIVED: {"param_values": compiler.param_values,
                                                                         "programs": compiler.programs()}})
    return rule


def _header(data: dict[str, Any], where: str) -> tuple[str, str | None, str | None]:
    """The subject a rule judges and its relation to a reference, checked together."""
    subject, reference, only_in = data["subject"], data.get("reference"), data.get("only_in")
    _check(isinstance(subject, str) and subject in REFERENCES_OF,
           f"subject must be one of {', '.join(REFERENCES_OF)}{_hint(subject, REFERENCES_OF)}", where)
    allowed = REFERENCES_OF[subject]
    named = [r for r in allowed if r]
    _check((reference is None or isinstance(reference, str)) and reference in allowed,
           f"a {subject} rule's reference must be {' or '.join(named) or 'absent'}, not {reference!r}"
           f"{_hint(reference, named)}", where)
    if subject == "tensor" and reference is not None:
        _check(isinstance(only_in, str) and only_in in ONLY_IN,
               f"a tensor rule with a reference needs only_in = {' or '.join(ONLY_IN)} "
               "(tensors only the target has, or only the reference has)", where)
    else:
        _check(only_in is None, "only_in is for tensor rules with a reference", where)
    return subject, reference, only_in


def _hint(word: Any, choices: Any) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check(ok: Any, problem: str, where: str) -> None:
    if not ok:
        raise RuleError(problem, where)


class Compiler:
    """Makes one file's expressions and templates (a rule's, the diagnoses'), from cached code
    where there is some."""

    def __init__(self, where: str, cached: dict[str, CodeType], vocabulary: RuleVocabulary | None = None,
                 programs: dict[str, Program] | None = None) -> None:
        """``vocabulary``: what a rule's expressions may say; every parsed expression and message
        is checked against it (None: not checked, as for the diagnoses). ``programs``: the
        expressions' closures as cached (see ``programs``)."""
        self.where = where
        self.cached = cached
        self.cached_programs = programs or {}
        self.vocabulary = vocabulary
        self.param_values: dict[str, tuple[str, ...]] = {}  # see compared_parameters
        self.made: dict[str, tuple[_Compiled, str]] = {}

    def expression(self, source: Any, what: str) -> Expression:
        if not isinstance(source, str) or not source.strip():
            raise RuleError(f"{what} must be a non-empty Jinja2 expression", self.where)
        return self._make(Expression, f"expression:{source}", source, what)

    def message(self, source: Any, what: str = "message") -> MessageTemplate:
        if not isinstance(source, str) or not source.strip():
            raise RuleError(f"{what} must be a non-empty Jinja2 template", self.where)
        return self._make(MessageTemplate, f"message:{source}", source, what)

    def _make(self, kind: type, key: str, source: str, what: str) -> Any:
        try:
            code = self.cached.get(key)
            made = (kind(source, code, self.cached_programs.get(key)) if kind is Expression and code is not None
                    else kind(source, code))
            problem = self._vocabulary_problem(made, kind)
        except TemplateSyntaxError as exc:  # finding the names generates code: an unknown filter shows
            raise RuleError(f"{what} does not compile: {exc.message}", self.where) from None
        if problem:
            raise RuleError(f"{what}: {problem}", self.where)
        self.made[key] = made, what
        return made

    def _vocabulary_problem(self, made: _Compiled, kind: type) -> str | None:
        vocabulary = self.vocabulary
        if vocabulary is None or made.tree is None:
            return None
        names = {**vocabulary.names, "evidence": vocabulary.evidence} if kind is MessageTemplate else vocabulary.names
        self.param_values.update(compared_parameters(made.tree, vocabulary.values))
        return check_expression(made.tree, names, vocabulary.values, vocabulary.params)

    def programs(self) -> dict[str, Program]:
        """Each expression's closure as plain data, to cache beside the code (an expression
        without one runs in the sandbox)."""
        return {key: made.program for key, (made, _) in self.made.items()
                if isinstance(made, Expression) and made.program is not None}

    def codes(self) -> dict[str, CodeType]:
        """Every expression's and the message's code, to cache; compiling them all now also
        makes an error that only code generation finds (an unknown filter) fail the load."""
        codes = {}
        for key, (made, what) in self.made.items():
            try:
                codes[key] = made.code()
            except TemplateSyntaxError as exc:
                raise RuleError(f"{what} does not compile: {exc.message}", self.where) from None
        return codes
