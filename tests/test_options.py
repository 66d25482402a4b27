"""One typed, validated options object: every invalid value is a one-line ConfigError naming the
setting (and, from a configuration file, the file) before a run starts — the same message from the
command line, a configuration file and ``lint()`` — and every valid value still works."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ckptlint
from ckptlint.errors import ConfigError
from ckptlint.options import Options, TransferOptions
from ckptlint.presets import EXPECTATIONS
from ckptlint.selection import Selection
from ckptlint.severity import FAIL_ON, SEVERITIES
from ckptlint.testing import assert_transferred
from conftest import CASES, FIXTURES

PRETRAINED = str(FIXTURES / "models" / "resnet50_tiny.pth")
SELECTIVE = str(CASES / "transfer-selective" / "detr.pth")


def test_a_misspelt_fail_on_is_an_error_not_a_pass() -> None:
    """It used to return ok=True and exit code 0 with an error finding in the report."""
    with pytest.raises(ConfigError) as raised:
        ckptlint.lint({"w": np.array([np.nan, 1.0], np.float32)}, fail_on="eror")
    assert str(raised.value) == ("fail-on must be one of info, warning, error, never, not 'eror' "
                                 "(did you mean 'error'?)")


def test_assert_transferred_with_an_unknown_fail_on_raises_config_error() -> None:
    """An unknown severity ranked as "never": the guard could never fail."""
    target, pretrained = {"w": np.zeros((64, 64), np.float32)}, {"w": np.ones((64, 64), np.float32)}
    with pytest.raises(ConfigError, match=r"fail-on .* not 'warn' \(did you mean 'warning'\?\)"):
        assert_transferred(target, pretrained, fail_on="warn")
    with pytest.raises(AssertionError, match="not-transferred"):
        assert_transferred(target, pretrained, fail_on="warning")


@pytest.mark.parametrize(("build", "message"), [
    (lambda: Options(fail_on="eror"), "fail-on must be one of info, warning, error, never, not 'eror'"),
    (lambda: Options(key=3), "key must be a string, not 3"),
    (lambda: Options(pretrained=3), "pretrained must be a path, not 3"),
    (lambda: Options(model="module_without_factory"), "model must be package.module:factory"),
    (lambda: Options(allow_globals=("os.*",)), "allow-globals must be a list of exact module.name globals"),
    (lambda: Options(hash_files="yes"), "Options.hash_files must be a bool"),
    (lambda: Options(selection=Selection(select="non-finite")), "select must be a list of rule names"),
    (lambda: Options(selection=Selection(severity={"non-finite": "warn"})),
     "severity for non-finite must be one of info, warning, error, not 'warn' (did you mean 'warning'?)"),
    (lambda: Options(selection=Selection(params={"non-finite": 1})), "params for non-finite must be a table"),
    (lambda: Options(selection=Selection(per_key_ignores={"fc.*": "non-finite"})),
     "per-key-ignores for 'fc.*' must be a list of rule names"),
    (lambda: TransferOptions(expect="finetune"), "expect must be one of auto, copied, finetuned, not 'finetune' "
                                                 "(did you mean 'finetuned'?)"),
    (lambda: TransferOptions(preset="detrr"), "(did you mean 'detr'?)"),
    (lambda: TransferOptions(max_drift=-0.5), "max-drift must be a number at least 0, not -0.5"),
    (lambda: TransferOptions(max_drift=math.nan), "max-drift must be a number at least 0, not nan"),
    (lambda: TransferOptions(max_drift=True), "max-drift must be a number at least 0, not True"),
    (lambda: TransferOptions(maps={"": "backbone."}), "maps must be a table of OLD = NEW key prefixes (OLD not empty)"),
    (lambda: TransferOptions(maps="a.=b."), "maps must be a table of OLD = NEW key prefixes"),
    (lambda: Options(transfer=TransferOptions(expect="copied")),
     "expect only means something against a pretrained checkpoint"),
    (lambda: Options(pretrained_key="model"), "pretrained-key only means something against a pretrained"),
])
def test_an_invalid_options_object_cannot_be_built(build: Any, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        build()
    assert message in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize("settings, message", [
    ({"min-score": 101}, "min-score must be a number between 0 and 100, not 101"),
    ({"baseline": 3}, "baseline must be a path, not 3"),
    ({"min-score": 90, "scope": "backbone"}, "scope, min-score only mean something against a pretrained checkpoint"),
    ({"max-drift": 0.25}, "max-drift only means something against a pretrained checkpoint"),
])
def test_settings_name_the_setting_and_the_file(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Options.from_settings(settings, hash_files=False, source="ckptlint.toml")
    assert str(raised.value).startswith(f"ckptlint.toml: {message}")


@pytest.mark.parametrize("fail_on", FAIL_ON)
def test_every_fail_on_is_accepted(fail_on: str) -> None:
    report = ckptlint.lint({"w": np.array([np.nan, 1.0], np.float32)}, fail_on=fail_on)
    assert report.ok == (fail_on == "never")


@pytest.mark.parametrize("expect", EXPECTATIONS)
def test_every_expectation_is_accepted(expect: str) -> None:
    report = ckptlint.lint({"w": np.ones((64, 64), np.float32)}, {"w": np.ones((64, 64), np.float32)}, expect=expect)
    assert report.ok and json.loads(report.render("json"))["transfer"]["score"] == 1.0


def test_valid_values_are_kept_and_normalised() -> None:
    options = Options.from_settings({
        "select": ["non-finite"], "ignore": [], "severity": {level: level for level in SEVERITIES},
        "params": {"precision-loss": {"warn_rel_error": 0.5}}, "per-key-ignores": {"fc.*": ["non-finite"]},
        "fail-on": "never", "key": "model", "pretrained": PRETRAINED, "pretrained-key": "state_dict",
        "allow-globals": "mypackage.Config", "model": "pkg.mod:build", "expect": "finetuned", "preset": "detr",
        "scope": "backbone.0.body", "maps": {"backbone.": ""}, "max-drift": 0, "min-score": 100,
    }, hash_files=False)
    assert options.selection.select == ("non-finite",)
    assert options.selection.per_key_ignores == {"fc.*": ("non-finite",)}
    assert options.selection.params == {"precision-loss": {"warn_rel_error": 0.5},
                                        "low-transfer-score": {"min_score": 100.0}}
    assert options.allow_globals == ("mypackage.Config",) and options.fail_on == "never"
    assert options.transfer == TransferOptions(expect="finetuned", preset="detr", scope="backbone.0.body",
                                               maps=(("backbone.", ""),), max_drift=0.0)
    assert TransferOptions(max_drift=math.inf).max_drift == math.inf
    assert Options(pretrained=Path(PRETRAINED)).pretrained == PRETRAINED


def _toml(setting: str, value: Any) -> str:
    if isinstance(value, dict):
        return f"[{setting}]\n" + "".join(f'{key} = "{level}"\n' for key, level in value.items())
    return f'{setting} = {value!r}\n'.replace("'", '"')


# The same invalid value from the command line, a configuration file and lint(): one message.
SAME_MESSAGE = [
    ("fail-on", "eror", ["--fail-on", "eror"],
     "fail-on must be one of info, warning, error, never, not 'eror' (did you mean 'error'?)"),
    ("expect", "finetune", ["--expect", "finetune"],
     "expect must be one of auto, copied, finetuned, not 'finetune' (did you mean 'finetuned'?)"),
    ("max-drift", -0.5, ["--max-drift", "-0.5"], "max-drift must be a number at least 0, not -0.5"),
    ("min-score", 150.0, ["--min-score", "150"], "min-score must be a number between 0 and 100, not 150.0"),
    ("preset", "detrr", ["--preset", "detrr"],
     "preset must be one of detr, hf-detr, not 'detrr' (did you mean 'detr'?)"),
    ("severity", {"non-finite": "warn"}, None,  # no command-line option
     "severity for non-finite must be one of info, warning, error, not 'warn' (did you mean 'warning'?)"),
]


@pytest.mark.parametrize(("setting", "value", "args", "message"), SAME_MESSAGE, ids=[s[0] for s in SAME_MESSAGE])
def test_the_same_message_from_the_command_line_a_configuration_file_and_lint(
        run, tmp_path: Path, setting: str, value: Any, args: list[str] | None, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        ckptlint.lint(SELECTIVE, PRETRAINED, **{setting.replace("-", "_"): value})
    assert str(raised.value) == message
    config = tmp_path / "named.toml"  # not discovered by the command-line run below
    config.write_text(f'pretrained = "{PRETRAINED}"\n' + _toml(setting, value))
    from_file = run("check", SELECTIVE, "--config", str(config), cwd=tmp_path)
    assert (from_file.code, from_file.out, from_file.err) == (2, "", f"ckptlint: error: {config}: {message}\n")
    if args is not None:
        from_cli = run("check", SELECTIVE, "--pretrained", PRETRAINED, *args, cwd=tmp_path)
        assert (from_cli.code, from_cli.out, from_cli.err) == (2, "", f"ckptlint: error: {message}\n")


def test_a_targets_value_is_checked_when_the_file_is_read(run, tmp_path: Path) -> None:
    config = tmp_path / "ckptlint.toml"
    config.write_text(f'[[targets]]\nglob = "nothing-matches-*"\npretrained = "{PRETRAINED}"\nmax-drift = -1\n')
    result = run("check", SELECTIVE, "--config", str(config), cwd=tmp_path)
    assert result.err == f"ckptlint: error: {config}: max-drift must be a number at least 0, not -1\n"


def test_a_command_line_error_does_not_blame_the_configuration_file(run, tmp_path: Path) -> None:
    config = tmp_path / "ckptlint.toml"
    config.write_text(f'pretrained = "{PRETRAINED}"\nfail-on = "warning"\n')
    result = run("check", SELECTIVE, "--config", str(config), "--max-drift", "-0.5", cwd=tmp_path)
    assert result.err == "ckptlint: error: max-drift must be a number at least 0, not -0.5\n"
    with pytest.raises(ConfigError) as raised:
        ckptlint.lint(SELECTIVE, config=str(config), max_drift=-0.5)
    assert raised.value.path is None
