"""The pre-commit hook, for real: ``pre-commit try-repo`` this repository in a scratch git repo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CASES, REPO

PRE_COMMIT = [sys.executable, "-m", "pre_commit"]


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    pytest.importorskip("pre_commit")
    repo = tmp_path_factory.mktemp("scratch")
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "dev@example.com")
    _git(repo, "config", "user.name", "dev")
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path_factory.mktemp("pre-commit-home"))}
    return repo, env


def _try(repo: Path, env: dict, path: str) -> subprocess.CompletedProcess:
    _git(repo, "add", path)
    done = subprocess.run([*PRE_COMMIT, "try-repo", str(REPO), "ckptlint", "--files", path], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=900)
    _git(repo, "reset", "-q")
    return done


def test_good_checkpoint_passes_and_bad_one_blocks(scratch) -> None:
    repo, env = scratch
    shutil.copy(CASES / "detr-training-checkpoint" / "checkpoint.pth", repo / "good.pth")
    shutil.copy(CASES / "pickle-os-system" / "model.pt", repo / "evil.pt")
    (repo / "weights.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 1234\n")
    good = _try(repo, env, "good.pth")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "ckptlint" in good.stdout and "Passed" in good.stdout
    bad = _try(repo, env, "evil.pt")
    assert bad.returncode == 1
    assert "Failed" in bad.stdout and "unsafe-pickle" in bad.stdout and "posix.system" in bad.stdout
    pointer = _try(repo, env, "weights.safetensors")
    assert pointer.returncode == 1 and "git lfs pull" in pointer.stdout
    assert "Traceback" not in good.stdout + bad.stdout + pointer.stdout
