"""Shared test helpers: run the CLI in-process or as a user would, in a subprocess."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ckptlint.cli import main

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"
CASES = FIXTURES / "cases"


def fixture_generator():
    """fixtures/make_fixtures.py as a module: its builders make variants of the shipped fixtures."""
    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session", autouse=True)
def _private_code_cache(tmp_path_factory: pytest.TempPathFactory):
    """Rule code compiled by the tests (and the processes they start) goes to a folder of the
    test run's own, not the user's ~/.cache."""
    previous = os.environ.get("CKPTLINT_CACHE_DIR")
    os.environ["CKPTLINT_CACHE_DIR"] = str(tmp_path_factory.mktemp("code-cache"))
    yield
    if previous is None:
        del os.environ["CKPTLINT_CACHE_DIR"]
    else:
        os.environ["CKPTLINT_CACHE_DIR"] = previous


@pytest.fixture(scope="session", autouse=True)
def _raise_internal_errors():
    """A run records an exception it did not expect as that file's "internal error" and goes on;
    in the tests (and the processes they start) it is raised, so that a bug fails the test that
    found it instead of passing as one more unreadable file. test_hostile_structure.py checks
    the recording with this unset."""
    previous = os.environ.get("CKPTLINT_DEBUG")
    os.environ["CKPTLINT_DEBUG"] = "1"
    yield
    if previous is None:
        del os.environ["CKPTLINT_DEBUG"]
    else:
        os.environ["CKPTLINT_DEBUG"] = previous


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def json(self) -> dict:
        return json.loads(self.out)


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """Run ``ckptlint ARGS`` in-process from ``cwd``; returns exit code, stdout and stderr."""

    def _run(*args: str, cwd: Path | None = None) -> Result:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        code = main(list(args))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return _run


def run_subprocess(*args: str, cwd: Path | None = None, timeout: float = 120) -> Result:
    """Run ckptlint as a separate process, as a user or CI would."""
    done = subprocess.run([sys.executable, "-m", "ckptlint", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)
    return Result(done.returncode, done.stdout, done.stderr)
