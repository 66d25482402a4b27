"""Third-party rule packs, installed for real, load through the entry-point group."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import CASES

PACK_RULE = '''
code = "ACME001"
name = "acme-huge-tensor"
severity = "warning"
subject = "tensor"
condition = "tensor.numel > params.max_numel"
message = "{{ tensor.numel }} elements, more than the {{ params.max_numel }} the ACME runtime takes."
[params]
max_numel = 1000
[evidence]
numel = "tensor.numel"
[docs]
what = "Finds tensors larger than the ACME inference runtime supports."
why = "The ACME runtime allocates fixed-size buffers; bigger tensors fail at deployment."
example = "A 2048x1000 classifier weight in a model meant for ACME."
fix = "Prune or factorise the layer before export."
'''


PACK_RULE_FILE = "ACME001-acme-huge-tensor/rule.toml"  # a rule is a folder, in a pack too


def _install_pack(tmp_path: Path, name: str, entry_point: str, rule_file: str | None = PACK_RULE_FILE) -> Path:
    """Build and install a pack whose package holds PACK_RULE at ``rule_file`` (None: no rule)."""
    source = tmp_path / f"src-{name}"
    package = source / name.replace("-", "_")
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    if rule_file:
        (package / rule_file).parent.mkdir(parents=True, exist_ok=True)
        (package / rule_file).write_text(PACK_RULE)
    (source / "pyproject.toml").write_text(f'''
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"
[project]
name = "{name}"
version = "1.0"
[project.entry-points."ckptlint.rules"]
acme = "{entry_point}"
[tool.setuptools.package-data]
"*" = ["*.toml", "*/*.toml"]
''')
    site = tmp_path / f"site-{name}"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(source)], check=True, capture_output=True)
    return site


def _ckptlint(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "ckptlint", *args], capture_output=True, text=True, env=env)


def test_installed_pack_rules_load_and_fire(tmp_path: Path) -> None:
    site = _install_pack(tmp_path, "acme-ckptlint-rules", "acme_ckptlint_rules")
    assert "ACME001  acme-huge-tensor" in _ckptlint(site, "rules").stdout
    torch.save({"big": torch.ones(2000), "small": torch.ones(10)}, tmp_path / "m.pt")
    result = _ckptlint(site, "check", str(tmp_path / "m.pt"), "--select", "acme-huge-tensor")
    assert result.returncode == 0 and "big: 2000 elements" in result.stdout and "small" not in result.stdout
    assert "acme-huge-tensor" in _ckptlint(site, "explain", "ACME001").stdout


def test_broken_pack_is_reported_with_its_package_name(tmp_path: Path) -> None:
    site = _install_pack(tmp_path, "broken-pack", "no_such_module_anywhere", rule_file=None)
    result = _ckptlint(site, "check", str(CASES / "non-finite" / "model.pt"))
    assert result.returncode == 2
    assert "rule pack 'broken-pack'" in result.stderr and "failed to load" in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize(("pack", "rule_file", "said"), [
    # a pack written for the old layout fails loudly, naming its package and what to move where
    ("flat-pack", "acme.toml", ["rule pack 'flat-pack': a rule is a folder now: move this file to acme/rule.toml",
                                "acme.toml"]),
    # ``ACME001-acme-huge-tensor/rules.toml`` is not zero rules: the folder lacks rule.toml
    ("typo-pack", "ACME001-acme-huge-tensor/rules.toml",
     ["rule pack 'typo-pack': a rule folder must hold rule.toml (found: rules.toml)", "ACME001-acme-huge-tensor"]),
    ("misnamed-pack", "ACME001-x/rule.toml",
     ["rule pack 'misnamed-pack': the folder of rule ACME001 (acme-huge-tensor) must be named "
      "ACME001-acme-huge-tensor, not ACME001-x"]),
])
def test_pack_with_misplaced_rule_files_is_an_error(tmp_path: Path, pack: str, rule_file: str,
                                                    said: list[str]) -> None:
    site = _install_pack(tmp_path, pack, pack.replace("-", "_"), rule_file=rule_file)
    result = _ckptlint(site, "rules")
    assert result.returncode == 2
    for text in said:
        assert text in result.stderr
