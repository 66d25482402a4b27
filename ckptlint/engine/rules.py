"""Rule files: load one TOML declaration per rule, validate it, compile its Jinja2 in a sandbox."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType
from typing import Any, Callable

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, nodes
from jinja2.runtime import Context
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ckptlint._toml import tomllib
from ckptlint.engine import code_cache
from ckptlint.errors import RuleError
from ckptlint.severity import SEVERITIES

# Scope -> the name under which a rule sees its subject.
SCOPES = {
    "file": "file",
    "pickle-global": "pickle_global",
    "tensor": "tensor",
    "module": "module",
    "pair": "pair",
    "unmatched-target": "tensor",
    "unused-pretrained": "tensor",
    "transfer": "transfer",  # once per target checked against a pretrained file: its score, expectation
}
DOC_SECTIONS = ("what", "why", "example", "fix")
REQUIRED = ("code", "name", "severity", "scope", "condition", "message", "docs")
OPTIONAL = ("params", "evidence", "tags", "severity_if", "security_severity")
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
        self._tree = tree
        self._code = code
        self._template: Template | None = None

    def code(self) -> CodeType:
        if self._code is None:
            self._code = ENVIRONMENT.compile(self._tree)
        return self._code

    def template(self) -> Template:
        if self._template is None:
            self._template = ENVIRONMENT.template_class.from_code(ENVIRONMENT, self.code(),
                                                                   ENVIRONMENT.make_globals(None))
        return self._template


class Expression(_Compiled):
    """A Jinja2 expression, run in the sandbox with one reused context.

    ``Environment.compile_expression`` builds a fresh Context per call (about 10 us); with a
    million tensors and several rules that was most of a run. This does what it does — a
    ``{% set result = ... %}`` template — but keeps the context and swaps its variables.
    """

    def __init__(self, source: str, code: CodeType | None = None) -> None:
        tree = None
        if code is None:
            parser = Parser(ENVIRONMENT, source, state="variable")
            expression = parser.parse_expression()
            if not parser.stream.eos:
                raise TemplateSyntaxError("chunk after expression", parser.stream.current.lineno)
            tree = nodes.Template([nodes.Assign(nodes.Name("result", "store"), expression, lineno=1)], lineno=1)
        super().__init__(tree, code)
        self._context: Context | None = None
        self._render: Callable[[Context], Any] | None = None

    def __call__(self, **variables: Any) -> Any:
        if self._context is None:
            template = self.template()
            self._context = template.new_context({}, shared=True)
            self._render = template.root_render_func
        context = self._context
        context.parent = variables
        context.vars.clear()
        for _ in self._render(context):
            pass
        return context.vars["result"]


class MessageTemplate(_Compiled):
    """A finding's message template."""

    def __init__(self, source: str, code: CodeType | None = None) -> None:
        super().__init__(None if code else ENVIRONMENT.parse(source), code)

    def render(self, **variables: Any) -> str:
        return self.template().render(**variables)


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
    scope: str
    docs: dict[str, str]
    params: dict[str, Any]
    tags: tuple[str, ...]
    security_severity: str | None
    source: str
    condition: Callable[..., Any] = field(repr=False, compare=False)
    message: Any = field(repr=False, compare=False)
    evidence: dict[str, Callable[..., Any]] = field(repr=False, compare=False)
    severity_if: tuple[SeverityOverride, ...] = field(repr=False, compare=False)

    @property
    def subject(self) -> str:
        return SCOPES[self.scope]

    def describe(self) -> dict[str, Any]:
        """The rule as reports show it (plain data)."""
        return {"code": self.code, "name": self.name, "severity": self.severity, "scope": self.scope,
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
    unknown = set(data) - set(REQUIRED) - set(OPTIONAL)
    missing = [k for k in REQUIRED if k not in data]
    if unknown or missing:
        problem = f"missing {', '.join(missing)}" if missing else f"unknown field(s) {', '.join(sorted(unknown))}"
        raise RuleError(problem, where)
    _check(isinstance(data["code"], str) and CODE.match(data["code"]), "code must look like CKP101", where)
    _check(isinstance(data["name"], str) and NAME.match(data["name"]), "name must be kebab-case", where)
    _check(data["severity"] in SEVERITIES, f"severity must be one of {', '.join(SEVERITIES)}", where)
    _check(data["scope"] in SCOPES, f"scope must be one of {', '.join(SCOPES)}", where)
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
    compiler = Compiler(where, cached or {})
    rule = Rule(
        code=data["code"], name=data["name"], severity=data["severity"], scope=data["scope"],
        docs={s: docs[s].strip() for s in DOC_SECTIONS}, params=params,
        tags=tuple(data.get("tags", ())), security_severity=data.get("security_severity"),
        source=where, condition=compiler.expression(data["condition"], "condition"),
        message=compiler.message(data["message"]),
        evidence={k: compiler.expression(v, f"evidence.{k}") for k, v in evidence.items()},
        severity_if=tuple(SeverityOverride(o["severity"], compiler.expression(o["when"], "severity_if"))
                          for o in overrides),
    )
    if cached is None:
        code_cache.store(text, compiler.codes())
    return rule


def _check(ok: Any, problem: str, where: str) -> None:
    if not ok:
        raise RuleError(problem, where)


class Compiler:
    """Makes one file's expressions and templates (a rule's, the diagnoses'), from cached code
    where there is some."""

    def __init__(self, where: str, cached: dict[str, CodeType]) -> None:
        self.where = where
        self.cached = cached
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
            made = kind(source, self.cached.get(key))
        except TemplateSyntaxError as exc:
            raise RuleError(f"{what} does not compile: {exc.message}", self.where) from None
        self.made[key] = made, what
        return made

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
