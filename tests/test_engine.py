"""The rule engine: broken rule files, the sandbox, selection, deterministic JSON, the wheel."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import pytest

from ckptlint.engine.registry import load_all_rules, load_rules_from
from ckptlint.engine.rule_table import markdown_table
from ckptlint.errors import RuleError
from conftest import CASES, REPO

GOOD_RULE = '''
code = "XYZ001"
name = "always"
severity = "info"
subject = "file"
condition = "{condition}"
message = "fires"
[docs]
what = "w"
why = "w"
example = "e"
fix = "f"
'''
RULE_FOLDER = "XYZ001-always"


def write_rule(rules: Path, text: str, folder: str = RULE_FOLDER) -> Path:
    """A rule folder ``rules/<folder>/rule.toml`` holding ``text``; returns the rule file."""
    path = rules / folder / "rule.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _rule_dir(tmp_path: Path, condition: str) -> Path:
    folder = tmp_path / "rules"
    write_rule(folder, GOOD_RULE.format(condition=condition))
    return folder


@pytest.mark.parametrize("condition, problem", [
    ("file.format ==", "does not compile"),
    ("1 }}{{ 2", "does not compile"),
    ("", "non-empty"),
])
def test_broken_rule_files_name_the_file(tmp_path: Path, condition: str, problem: str) -> None:
    with pytest.raises(RuleError, match=problem) as caught:
        load_rules_from(_rule_dir(tmp_path, condition))
    assert str(caught.value).startswith(str(tmp_path / "rules" / RULE_FOLDER / "rule.toml"))


def test_unparsable_and_incomplete_rule_files(tmp_path: Path) -> None:
    folder = tmp_path / "rules"
    write_rule(folder, "code = [unclosed")
    with pytest.raises(RuleError, match="cannot parse"):
        load_rules_from(folder)
    write_rule(folder, 'code = "XYZ001"\nname = "x"\n')
    with pytest.raises(RuleError, match="missing"):
        load_rules_from(folder)


def test_a_flat_rule_file_is_an_error_saying_rules_are_folders(tmp_path: Path) -> None:
    """The layout before rules were folders: loading it must not silently drop the rule."""
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "always.toml").write_text(GOOD_RULE.format(condition="true"))
    with pytest.raises(RuleError, match=r"a rule is a folder now: move this file to always/rule.toml") as caught:
        load_rules_from(folder)
    assert caught.value.path == str(folder / "always.toml")



def test_a_rule_folder_without_rule_toml_is_an_error(tmp_path: Path) -> None:
    """A misspelt rule file must not load as zero rules."""
    folder = tmp_path / "rules"
    write_rule(folder, GOOD_RULE.format(condition="true"))
    misspelt = folder / "ACME001-x"
    misspelt.mkdir()
    (misspelt / "rules.toml").write_text(GOOD_RULE.format(condition="true"))
    with pytest.raises(RuleError, match=r"a rule folder must hold rule.toml \(found: rules.toml\)") as caught:
        load_rules_from(folder)
    assert caught.value.path == str(misspelt)


def test_a_rule_folder_must_be_named_code_dash_name(tmp_path: Path) -> None:
    folder = tmp_path / "rules"
    write_rule(folder, GOOD_RULE.format(condition="true"), folder="XYZ001-alwys")
    with pytest.raises(RuleError, match="must be named XYZ001-always, not XYZ001-alwys") as caught:
        load_rules_from(folder)
    assert caught.value.path == str(folder / "XYZ001-alwys")


def test_a_correct_rules_folder_loads_without_false_alarms(tmp_path: Path) -> None:
    """__pycache__ and dot-folders are not rule folders; a well-named folder with rule.toml loads."""
    folder = tmp_path / "rules"
    write_rule(folder, GOOD_RULE.format(condition="true"))
    (folder / "__pycache__").mkdir()
    (folder / ".git").mkdir()
    (folder / "README.md").write_text("not a rule")
    assert [rule.code for rule in load_rules_from(folder)] == ["XYZ001"]


CASE = '''
description = """A file in which the rule
fires."""
args = ["check", "model.pt"]
exit_code = 0
fires = [{ key = "", severity = "info" }]
'''


@pytest.mark.parametrize("cases, example, problem", [
    ({"fires.toml": CASE}, "An example in prose.", "must name one of the rule's cases"),
    ({"fires.toml": CASE}, "cases/other.toml", "cannot read the case"),
    ({"quiet.toml": CASE.replace('fires = [{ key = "", severity = "info" }]', "fires = []")}, "cases/quiet.toml",
     "stays silent in that case"),
    ({"bare.toml": 'args = ["check"]\nfires = [1]\n'}, "cases/bare.toml", "has no description"),
])
def test_the_example_must_be_a_case_where_the_rule_fires(tmp_path: Path, cases: dict[str, str], example: str,
                                                          problem: str) -> None:
    text = GOOD_RULE.format(condition="true").replace('example = "e"', f'example = "{example}"')
    rule_file = write_rule(tmp_path, text)
    (rule_file.parent / "cases").mkdir()
    for name, text in cases.items():
        (rule_file.parent / "cases" / name).write_text(text)
    with pytest.raises(RuleError, match=problem) as caught:
        load_rules_from(tmp_path)
    assert caught.value.path == str(rule_file)


def test_the_example_is_the_named_case_s_description(tmp_path: Path) -> None:
    rule_file = write_rule(tmp_path, GOOD_RULE.format(condition="true").replace('example = "e"',
                                                                                 'example = "cases/fires.toml"'))
    (rule_file.parent / "cases").mkdir()
    (rule_file.parent / "cases" / "fires.toml").write_text(CASE)
    (rule,) = load_rules_from(tmp_path)
    assert rule.docs["example"] == "A file in which the rule fires."


def test_a_rule_without_cases_writes_its_example(tmp_path: Path) -> None:
    """A pack's rule may have no cases: its [docs] example is the text itself."""
    write_rule(tmp_path, GOOD_RULE.format(condition="true"))
    (rule,) = load_rules_from(tmp_path)
    assert rule.docs["example"] == "e"


def test_conditions_run_sandboxed(tmp_path: Path) -> None:
    """Two walls: loading refuses a name no fact offers, and should such an expression reach the
    evaluator anyway, the sandbox stops its walk to Python's classes."""
    from ckptlint.engine.evaluate import Evaluator
    from ckptlint.engine.rules import Expression
    from ckptlint.selection import Selection

    escape = "file.__class__.__mro__[1].__subclasses__()"
    with pytest.raises(RuleError, match="not a fact"):
        load_rules_from(_rule_dir(tmp_path, escape))
    (rule,) = load_rules_from(_rule_dir(tmp_path, "true"))
    escaping = replace(rule, condition=Expression(escape))
    with pytest.raises(RuleError, match=r"unsafe|SecurityError|access"):
        Evaluator([escaping], Selection()).evaluate(escaping, {"format": "x"}, "f.pt", None, {})



# A condition from a rule pack or a repository is untrusted: whether it runs as a closure
# (ckptlint/engine/fast_condition.py) or in the Jinja2 sandbox, an attempt to reach Python's
# objects is refused exactly as the sandbox alone refused it. (condition, what loading says, or
# None if it loads; what evaluating it on a file's facts says)
ESCAPES = [
    ("tensor.__class__", "unknown name 'tensor'", "SecurityError: access to attribute '__class__' of 'StrictUndef"),
    ("file.__class__", "file.__class__ is not a fact", "SecurityError: access to attribute '__class__'"),
    ("file.__class__.__mro__", "file.__class__ is not a fact", "SecurityError: access to attribute '__class__'"),
    ("file['__class__'].__mro__[1]", "file.__class__ is not a fact", "SecurityError: access to attribute '__class__'"),
    ("file.mro", "file.mro is not a fact", "UndefinedError: .* has no attribute 'mro'"),
    ("params.__globals__", "params.__globals__ is not a parameter", "UndefinedError: 'dict object' has no attribute"),
    ("file.format.__class__", None, "SecurityError: access to attribute '__class__' of 'str' object is unsafe"),
    ("().__class__.__subclasses__()", None, "SecurityError: access to attribute '__class__' of 'tuple'"),
    ("range.__globals__", None, "UndefinedError: 'range' is undefined"),
    ("range(3)", None, "UndefinedError: 'range' is undefined"),
    ("cycler.__init__.__globals__", None, "SecurityError: access to attribute '__init__' of 'StrictUndefined'"),
    ("lipsum.__globals__", None, "UndefinedError: 'lipsum' is undefined"),
    ("dict(a=1)", None, "UndefinedError: 'dict' is undefined"),
    ("joiner()", None, "UndefinedError: 'joiner' is undefined"),
    ("file | attr('__class__')", None, "SecurityError: access to attribute '__class__'"),
    ("'{0.__class__}'.format(file)", None, "SecurityError: access to attribute '__class__'"),
    ("file.keys()", "file.keys is not a fact", None),  # loading refuses it; the sandbox would allow it
    ("file.items", "file.items is not a fact", None),
]


def _file_facts() -> Any:
    from ckptlint.facts.lazy import LazyFacts

    class Facts(LazyFacts):
        providers: ClassVar[dict[str, Any]] = {}

    return Facts({"format": "zip"})


@pytest.mark.parametrize("condition, at_load, at_evaluation", ESCAPES, ids=[e[0] for e in ESCAPES])
def test_conditions_cannot_reach_python_objects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, condition: str,
                                                at_load: str | None, at_evaluation: str | None) -> None:
    from ckptlint.engine.evaluate import Evaluator
    from ckptlint.engine.rules import Expression
    from ckptlint.selection import Selection

    folder = _rule_dir(tmp_path, condition.replace('"', '\\"'))
    if at_load is None:
        (rule,) = load_rules_from(folder)
    else:
        with pytest.raises(RuleError, match=re.escape(at_load)) as caught:
            load_rules_from(folder)
        assert caught.value.path == str(folder / RULE_FOLDER / "rule.toml")
        (rule,) = load_rules_from(_rule_dir(tmp_path / "true", "true"))
        rule = replace(rule, condition=Expression(condition))  # as if it got past loading
    assert isinstance(rule.condition, Expression)
    # attribute walks run as closures; a call has none and runs in the sandbox
    assert (rule.condition.program is None) == ("(" in condition)
    outcomes = []
    for way in ("closure", "sandbox"):
        if way == "sandbox":
            monkeypatch.setattr(Expression, "__call__", Expression.in_sandbox)
        evaluator = Evaluator([rule], Selection())
        if at_evaluation is None:
            outcomes.append(evaluator.evaluate(rule, _file_facts(), "f.pt", None, {}))
            continue
        with pytest.raises(RuleError, match=at_evaluation) as caught:
            evaluator.evaluate(rule, _file_facts(), "f.pt", None, {})
        assert str(caught.value).startswith(f"{rule.source}: rule always failed on f.pt: ")
        outcomes.append(str(caught.value))
    assert outcomes[0] == outcomes[1]


class _Facts(Mapping[str, Any]):
    """Facts as rules see them: a mapping, with an instance attribute and a method of its own."""

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values
        self.note = "an attribute"  # the sandbox gives attributes before keys

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def release(self) -> None:
        pass


def _variables() -> dict[str, Any]:
    tensor = _Facts({"std": 0.75, "kind": "conv", "count": 7, "flag": False, "missing": None, "shape": [3, 4],
                     "init": {"ks": 0.01, "crit": 0.02, "name": "kaiming"}, "note": "a fact", "release": "a fact"})
    return {"tensor": tensor, "params": {"factor": 1.5, "names": ["conv", "linear"], "limit": 3}}


SAME_BOTH_WAYS = [
    "tensor.std > 0.5", "tensor.std >= 1 and tensor.kind == 'conv'", "tensor.std >= 1 or tensor.kind != 'conv'",
    "tensor.kind in ('conv', 'linear')", "tensor.kind not in ['conv']", "'on' in tensor.kind",
    "tensor.kind in params.names", "tensor.missing is none", "tensor.init is not none", "not tensor.flag",
    "tensor.init.ks <= tensor.init.crit * params.factor", "tensor.init['name']", "tensor['kind']",
    "tensor.shape[0]", "-tensor.std + 3 * 2 - 1 / 4", "+tensor.count // 3", "tensor.count % 4", "7 // 2 / 3",
    "tensor.kind ~ '-' ~ tensor.count ~ tensor.missing", "(tensor.std * 100) | round(2)", "(tensor.std - 1) | abs",
    "tensor.std | fmt('.3f')", "tensor.shape | length", "tensor.kind | upper", "tensor.count | string",
    "tensor.kind if tensor.flag else tensor.init.name", "1 < tensor.count < 10", "1 < tensor.count > 100",
    "tensor.nothing is defined", "tensor.nothing is undefined", "tensor.count is divisibleby(params.limit)",
    "tensor.count is number", "tensor.kind is string", "[1, tensor.count] == [1, 7]", "(1, 2)", "none", "true",
    "tensor.note", "tensor.release", "tensor.nothing is none", "params.names[1]", "tensor.flag and tensor.nothing",
    # undefined: an error where it is used, with the sandbox's own message
    "tensor.nothing > 0", "not tensor.nothing", "tensor.nothing", "tensor.nothing.deeper", "tensor.shape[5] + 1",
    "tensor.kind.nope == 1", "params.absent == 1", "unknown_name", "unknown_name.x", "tensor.nothing ~ 'x'",
    "tensor.nothing | round", "tensor.std / 0", "tensor.kind + 1", "tensor.init.__class__", "tensor._values",
    "tensor['__class__']", "params.items", "tensor.std if tensor.nothing else 1",
]


def _outcome(run: Callable[[], Any]) -> tuple[Any, ...]:
    from jinja2 import Undefined

    try:
        value = run()
        if isinstance(value, Undefined):
            value.__str__()  # what using it raises, in the except below
        return ("value", type(value).__name__, repr(value))
    except Exception as exc:  # noqa: BLE001 - the outcome, whatever it is, must match
        return ("error", type(exc).__name__, str(exc))


@pytest.mark.parametrize("condition", SAME_BOTH_WAYS)
def test_a_closure_means_what_the_sandbox_means(condition: str) -> None:
    from ckptlint.engine.rules import Expression

    expression = Expression(condition)
    assert expression.program is not None, "runs as a closure"
    variables = _variables()
    assert _outcome(lambda: expression(**variables)) == _outcome(lambda: expression.in_sandbox(**variables))


@pytest.mark.parametrize("condition", ["tensor.count ** 2", "tensor.kind.upper()", "tensor.shape[0:1]",
                                       "{'a': 1}", "tensor.kind | replace('c', 'k')", "tensor | attr('note')",
                                       "tensor.shape | join(',')", "tensor.shape | list"])
def test_what_the_closures_do_not_cover_runs_in_the_sandbox(condition: str) -> None:
    from ckptlint.engine.rules import Expression

    expression = Expression(condition)
    variables = _variables()
    assert expression.program is None and expression(**variables) == expression.in_sandbox(**variables)


def test_every_shipped_condition_runs_as_a_closure() -> None:
    for rule in load_all_rules():
        assert rule.condition.program is not None, rule.code
        assert all(o.when.program is not None for o in rule.severity_if), rule.code


CASE_DIRS = sorted(p.parent for p in CASES.glob("*/case.toml"))


@pytest.mark.parametrize("folder", CASE_DIRS, ids=[p.name for p in CASE_DIRS])
def test_closures_find_what_the_sandbox_finds(folder: Path, run, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every fixture scenario, every rule and diagnosis: the same report both ways, byte for byte."""
    from ckptlint._toml import tomllib
    from ckptlint.engine.rules import Expression

    args = tomllib.loads((folder / "case.toml").read_text("utf-8"))["args"]
    fast = run(*args, "--format", "json", "--no-hash", cwd=folder)
    monkeypatch.setattr(Expression, "__call__", Expression.in_sandbox)
    sandboxed = run(*args, "--format", "json", "--no-hash", cwd=folder)
    assert (fast.code, fast.out, fast.err) == (sandboxed.code, sandboxed.out, sandboxed.err)
    assert fast.json["findings"] or folder.name == "transfer-correct" or fast.code == 0

def test_select_ignore_and_codes(run) -> None:
    case = CASES / "non-finite" / "model.pt"
    assert run("check", str(case), "--ignore", "non-finite").code == 0
    assert run("check", str(case), "--select", "CKP101").code == 1
    assert run("check", str(case), "--fail-on", "never").code == 0
    assert run("check", str(case), "--select", "unsafe-pickle,missing-bn-stats").code == 0


def test_json_is_byte_identical_across_runs_and_hash_seeds() -> None:
    paths = [str(CASES / "non-finite" / "model.pt"), str(CASES / "init-weights" / "model.safetensors")]
    outputs = set()
    for seed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-m", "ckptlint", "check", *paths, "--format", "json"],
                              capture_output=True, env=env)
        outputs.add(done.stdout)
    assert len(outputs) == 1


def test_rules_and_explain_commands(run) -> None:
    listing = run("rules").out
    for rule in load_all_rules():
        assert rule.code in listing and rule.name in listing
    explained = run("explain", "missing-bn-stats").out
    assert "## Why it matters" in explained and "running_mean" in explained
    assert run("explain", "CKP104").out.startswith("CKP104 suspicious-init-scale")
    assert run("rules", "--format", "markdown").out == markdown_table(load_all_rules())


def _wheel_sources(folder: Path) -> Path:
    """What the wheel is built from, copied: setuptools reuses a checkout's build/ folder, and a
    stale one (rule files from an older layout) would end up in the wheel."""
    folder.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, folder / name)
    for name in ("ckptlint", "rules"):
        shutil.copytree(REPO / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
    return folder


def test_installed_wheel_ships_the_rules(tmp_path: Path) -> None:
    sources = _wheel_sources(tmp_path / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(sources)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("ckptlint-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    shipped = [*(REPO / "rules").glob("*/rule.toml"), *(REPO / "rules").glob("*/cases/*.toml")]
    assert {f"ckptlint/rules/{p.relative_to(REPO / 'rules').as_posix()}" for p in shipped} <= set(names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-m", "ckptlint", "rules"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == len(list((REPO / "rules").glob("*/rule.toml")))
    explained = subprocess.run([sys.executable, "-m", "ckptlint", "explain", "default-bn-stats"], cwd=tmp_path,
                               env=env, capture_output=True, text=True)
    assert "53 BatchNorms" in explained.stdout, explained.stderr  # the example, read from a case in the wheel
    probe = subprocess.run([sys.executable, "-c", "import ckptlint; print(ckptlint.__file__)"], cwd=tmp_path,
                           env=env, capture_output=True, text=True)
    assert probe.stdout.startswith(str(site))
