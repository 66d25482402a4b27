"""Configuration files: discovery, per-target pretrained files, overrides, unknown keys."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import CASES, FIXTURES


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A repository with models/ (DETR checkpoints) and weights/ (the pretrained ResNet)."""
    (tmp_path / "models").mkdir()
    (tmp_path / "weights").mkdir()
    shutil.copy(CASES / "transfer-selective" / "detr.pth", tmp_path / "models" / "detr_selective.pth")
    shutil.copy(CASES / "non-finite" / "model.pt", tmp_path / "models" / "other.pt")
    shutil.copy(FIXTURES / "models" / "resnet50_tiny.pth", tmp_path / "weights" / "resnet50.pth")
    return tmp_path


def _names(report: dict) -> set[str]:
    return {f["name"] for f in report["findings"]}


def test_pyproject_targets_give_each_glob_its_pretrained_file(project: Path, run) -> None:
    (project / "pyproject.toml").write_text('''
[project]
name = "demo"

[tool.ckptlint]
fail-on = "warning"

[[tool.ckptlint.targets]]
glob = "models/detr_*.pth"
pretrained = "weights/resnet50.pth"
preset = "detr"
''')
    sub = project / "models"
    result = run("check", "detr_selective.pth", "other.pt", "--format", "json", "--no-hash", cwd=sub)
    report = result.json
    assert "not-transferred" in _names(report) and "non-finite" in _names(report)
    roles = {f["path"]: f["role"] for f in report["files"]}
    assert roles[str(project / "weights" / "resnet50.pth")] == "pretrained"
    pairs_files = {p["file"] for p in report["pairs"]}
    assert pairs_files == {"detr_selective.pth"}  # other.pt matched no target glob: no transfer check
    assert report["transfer"]["by_stage"]["layer4"]["score"] == 0.0


def test_ckptlint_toml_settings_and_cli_override(project: Path, run) -> None:
    (project / "ckptlint.toml").write_text('''
ignore = ["default-bn-stats"]
pretrained = "weights/resnet50.pth"
fail-on = "warning"

[severity]
not-transferred = "warning"

[per-key-ignores]
"backbone.0.body.layer4.0.*" = ["not-transferred"]

[params.precision-loss]
warn_rel_error = 0.5
''')
    target = str(project / "models" / "detr_selective.pth")
    report = run("check", target, "--format", "json", "--no-hash", cwd=project)
    assert report.code == 1  # fail-on warning: the re-rated not-transferred still fails
    findings = report.json["findings"]
    assert "default-bn-stats" not in _names(report.json)
    assert {f["severity"] for f in findings if f["name"] == "not-transferred"} == {"warning"}
    assert not [f for f in findings if f["key"].startswith("backbone.0.body.layer4.0.")]
    overridden = run("check", target, "--fail-on", "warning", "--ignore", "unused-pretrained-key", "--no-hash",
                     cwd=project)
    assert overridden.code == 1
    assert "default-bn-stats" in overridden.out  # --ignore on the command line replaces the file's list


@pytest.mark.parametrize("text, problem", [
    ('[tool.ckptlint]\nselct = ["non-finite"]\n',
     "unknown setting 'selct' in [tool.ckptlint] (did you mean 'select'?)"),
    ('[tool.ckptlint]\nfail-on = "sometimes"\n', "fail-on must be one of"),
    ('[[tool.ckptlint.targets]]\npretrained = "x.pt"\n', "targets[0] needs a glob"),
    ('[[tool.ckptlint.targets]]\nglob = "*.pt"\npretrianed = "x.pt"\n', "did you mean 'pretrained'"),
    ('[tool.ckptlint.params.non-finite]\nthreshold = 3\n', "unknown parameter of non-finite 'threshold'"),
    ('[tool.ckptlint.severity]\nnon-finte = "info"\n', "did you mean 'non-finite'"),
    ('[tool.ckptlint\n', "cannot parse"),
])
def test_bad_configuration_is_one_line_exit_2(project: Path, run, text: str, problem: str) -> None:
    (project / "pyproject.toml").write_text(text)
    result = run("check", str(project / "models" / "other.pt"), cwd=project)
    assert result.code == 2
    assert problem in result.err and result.err.count("\n") == 1


@pytest.mark.parametrize("text, problem", [
    ('[tool.ckptlint]\nfail-on = "eror"\n',
     "fail-on must be one of info, warning, error, never, not 'eror' (did you mean 'error'?)"),
    ('[tool.ckptlint.severity]\nnon-finite = "warn"\n',
     "severity for non-finite must be one of info, warning, error, not 'warn' (did you mean 'warning'?)"),
    ('[tool.ckptlint]\nmax-drift = -1\n', "max-drift must be a number at least 0, not -1"),
    ('[tool.ckptlint]\nselect = "non-finite"\n', "select must be a list of rule names, not 'non-finite'"),
    ('[tool.ckptlint]\npretrained = "x.pt"\nmaps = ["backbone."]\n', "maps must be a table of OLD = NEW key prefixes"),
    ('[tool.ckptlint]\ntargets = 3\n', "targets must be an array of tables"),
    ('[tool.ckptlint]\nexpect = "copied"\n', "expect only means something against a pretrained checkpoint"),
    ('[[tool.ckptlint.targets]]\nglob = "*.pt"\npretrained = "x.pt"\nexpect = "copy"\n',
     "expect must be one of auto, copied, finetuned, not 'copy' (did you mean 'copied'?)"),
])
def test_an_invalid_value_names_the_setting_and_the_file(project: Path, run, text: str, problem: str) -> None:
    """Checked as the file is read, before any checkpoint is."""
    (project / "pyproject.toml").write_text(text)
    result = run("check", str(project / "models" / "other.pt"), cwd=project)
    assert (result.code, result.out) == (2, "")
    assert result.err.startswith(f"ckptlint: error: {project / 'pyproject.toml'}: {problem}")
    assert result.err.count("\n") == 1


def test_explicit_config_file(project: Path, run, tmp_path: Path) -> None:
    config = tmp_path / "elsewhere.toml"
    config.write_text('select = ["unsafe-pickle"]\n')
    result = run("check", str(project / "models" / "other.pt"), "--config", str(config), "--format", "json")
    assert result.code == 0 and result.json["findings"] == []


@pytest.mark.parametrize(("content", "problem"), [
    ('model = "pkg:factory"', "`model` imports code"),
    ('ignore = ["unsafe-pickle"]', "ignores or re-rates the pickle-safety rules"),
    ('[severity]\nunsafe-pickle = "info"', "ignores or re-rates the pickle-safety rules"),
    ('fail-on = "never"', '`fail-on = "never"` turns the gate off'),
    ('select = ["non-finite"]', "its `select` leaves out unsafe-pickle"),
])
def test_a_discovered_configuration_cannot_import_code_or_turn_the_gate_off(
        tmp_path: Path, run, content: str, problem: str) -> None:
    """A downloaded model folder may ship a ckptlint.toml: `cd folder && ckptlint check` must not
    import its code or let it silence the pickle checks; named with --config, it is trusted."""
    folder = tmp_path / "downloaded-model"
    folder.mkdir()
    (folder / "ckptlint.toml").write_text(content + "\n")
    (folder / "pkg.py").write_text("import pathlib\npathlib.Path('imported').write_text('x')\n"
                                   "def factory():\n    return {}\n")
    shutil.copy(CASES / "pickle-os-system" / "model.pt", folder / "pytorch_model.bin")
    result = run("check", "pytorch_model.bin", cwd=folder)
    assert result.code == 2 and problem in result.err and "--config" in result.err
    assert not (folder / "imported").exists()


def test_configuration_is_not_discovered_from_the_checked_files_folder(tmp_path: Path, run) -> None:
    folder = tmp_path / "downloaded-model"
    folder.mkdir()
    (folder / "ckptlint.toml").write_text('fail-on = "never"\nignore = ["unsafe-pickle"]\n')
    shutil.copy(CASES / "pickle-os-system" / "model.pt", folder / "pytorch_model.bin")
    elsewhere = tmp_path / "project"
    elsewhere.mkdir()
    result = run("check", str(folder / "pytorch_model.bin"), "--format", "json", "--no-hash", cwd=elsewhere)
    assert result.code == 1 and "unsafe-pickle" in {f["name"] for f in result.json["findings"]}
    trusted = run("check", str(folder / "pytorch_model.bin"), "--config", str(folder / "ckptlint.toml"), cwd=elsewhere)
    assert trusted.code == 0
