"""The rule engine: broken rule files, the sandbox, selection, deterministic JSON, the wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ckptlint.engine.registry import load_all_rules, load_rules_from
from ckptlint.errors import RuleError
from conftest import CASES, REPO

GOOD_RULE = '''
code = "XYZ001"
name = "always"
severity = "info"
scope = "file"
condition = "{condition}"
message = "fires"
[docs]
what = "w"
why = "w"
example = "e"
fix = "f"
'''


def _rule_dir(tmp_path: Path, condition: str) -> Path:
    folder = tmp_path / "rules"
    folder.mkdir(exist_ok=True)
    (folder / "r.toml").write_text(GOOD_RULE.format(condition=condition))
    return folder


@pytest.mark.parametrize("condition, problem", [
    ("file.format ==", "does not compile"),
    ("1 }}{{ 2", "does not compile"),
    ("", "non-empty"),
])
def test_broken_rule_files_name_the_file(tmp_path: Path, condition: str, problem: str) -> None:
    with pytest.raises(RuleError, match=problem) as caught:
        load_rules_from(_rule_dir(tmp_path, condition))
    assert str(caught.value).startswith(str(tmp_path / "rules" / "r.toml"))


def test_unparsable_and_incomplete_rule_files(tmp_path: Path) -> None:
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "bad.toml").write_text("code = [unclosed")
    with pytest.raises(RuleError, match="cannot parse"):
        load_rules_from(folder)
    (folder / "bad.toml").write_text('code = "XYZ001"\nname = "x"\n')
    with pytest.raises(RuleError, match="missing"):
        load_rules_from(folder)


def test_conditions_run_sandboxed(tmp_path: Path) -> None:
    from ckptlint.engine.evaluate import Evaluator
    from ckptlint.engine.selection import Selection

    rules = load_rules_from(_rule_dir(tmp_path, "file.__class__.__mro__[1].__subclasses__()"))
    evaluator = Evaluator(rules, Selection())
    with pytest.raises(RuleError, match="unsafe|SecurityError|access"):
        evaluator.evaluate(rules[0], {"format": "x"}, "f.pt", None, {})


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


def test_installed_wheel_ships_the_rules(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(REPO)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("ckptlint-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"ckptlint/rules/{p.name}" for p in (REPO / "rules").glob("*.toml")} <= set(names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-m", "ckptlint", "rules"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == len(list((REPO / "rules").glob("*.toml")))
    probe = subprocess.run([sys.executable, "-c", "import ckptlint; print(ckptlint.__file__)"], cwd=tmp_path,
                           env=env, capture_output=True, text=True)
    assert probe.stdout.startswith(str(site))
