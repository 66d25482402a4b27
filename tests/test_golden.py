"""Golden outputs: the text report (plain and --verbose) and the GitHub annotations of fixture
scenarios, byte for byte, as tests/golden/<scenario>.<variant>.txt.

Each scenario runs its case.toml's command line through the CLI, in-process, from its case folder
(so the paths in the output are the relative ones a user typed). A change in what a report says
fails here with a diff; when the change is intended, regenerate the files and review the diff:

    CKPTLINT_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

from ckptlint._toml import tomllib
from ckptlint.cli import main
from conftest import CASES

GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE_ENV = "CKPTLINT_UPDATE_GOLDEN"
UPDATE_COMMAND = f"{UPDATE_ENV}=1 python -m pytest tests/test_golden.py"
SCENARIOS = ("transfer-selective", "transfer-naive-copy", "transfer-correct", "transfer-finetuned-auto",
             "transfer-architecture-drift", "pickle-os-system", "bn-stats-default", "non-finite", "model-code")
# variant -> the options that choose the report
VARIANTS = {"text": (), "verbose": ("--verbose",), "github": ("--format", "github")}


def _case_args(scenario: str) -> list[str]:
    """The command line of a fixture case, as its case.toml gives it (relative to the case folder)."""
    return tomllib.loads((CASES / scenario / "case.toml").read_text("utf-8"))["args"]


def _case_exit_code(scenario: str) -> int:
    return tomllib.loads((CASES / scenario / "case.toml").read_text("utf-8"))["exit_code"]


def _normalised(text: str, tmp_path: Path) -> str:
    """The output with the one run-dependent part replaced: this test's temporary folder."""
    return text.replace(str(tmp_path), "<tmp>")


def _report(scenario: str, options: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the scenario with ``options`` from its case folder; the report written with ``-o``."""
    monkeypatch.chdir(CASES / scenario)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)  # no step summary written from a CI run
    out = tmp_path / "report.txt"
    code = main([*_case_args(scenario), *options, "-o", str(out)])
    assert code == _case_exit_code(scenario), "exit code differs from the case's"
    return _normalised(out.read_text("utf-8"), tmp_path)


def _mismatch(golden: Path, expected: str, actual: str) -> str:
    """A unified diff from the golden file to this run's output, and how to accept the change."""
    diff = difflib.unified_diff(expected.splitlines(keepends=True), actual.splitlines(keepends=True),
                                fromfile=f"{golden} (golden)", tofile="this run")
    return (f"{golden.name} differs from this run's output:\n{''.join(diff)}\n"
            f"If the change is intended, regenerate and review the diff: {UPDATE_COMMAND}")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_golden_output(scenario: str, variant: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The report is byte-identical to its golden file (or rewrites it, with CKPTLINT_UPDATE_GOLDEN=1)."""
    actual = _report(scenario, VARIANTS[variant], tmp_path, monkeypatch)
    golden = GOLDEN / f"{scenario}.{variant}.txt"
    if os.environ.get(UPDATE_ENV):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(actual, "utf-8", newline="\n")
        return
    assert golden.is_file(), f"{golden.name} is missing: {UPDATE_COMMAND}"
    expected = golden.read_text("utf-8")
    if actual != expected:
        pytest.fail(_mismatch(golden, expected, actual), pytrace=False)


def test_every_golden_file_belongs_to_a_scenario() -> None:
    """No stale golden file is left behind when a scenario or a variant goes."""
    expected = {f"{scenario}.{variant}.txt" for scenario in SCENARIOS for variant in VARIANTS}
    assert {path.name for path in GOLDEN.glob("*.txt")} == expected
