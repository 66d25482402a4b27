"""Rule code kept between runs: used while a rule file is unchanged, never when it cannot be
trusted, and never a reason for a wrong answer."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ckptlint.engine import rules as rules_module
from ckptlint.engine.evaluate import Evaluator
from ckptlint.engine.registry import load_rules_from
from ckptlint.errors import RuleError
from ckptlint.selection import Selection
from conftest import CASES
from test_engine import GOOD_RULE, write_rule


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("CKPTLINT_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every expression Jinja2 is asked to parse."""
    seen: list[str] = []
    real = rules_module.Parser

    def counting(environment, source, *args, **kwargs):
        seen.append(source)
        return real(environment, source, *args, **kwargs)

    monkeypatch.setattr(rules_module, "Parser", counting)
    return seen


def _rules(tmp_path: Path, condition: str, message: str = "fires") -> Path:
    folder = tmp_path / "rules"
    write_rule(folder, GOOD_RULE.format(condition=condition).replace('message = "fires"', f'message = "{message}"'))
    return folder


def _fires(folder: Path, file_facts: dict) -> str | None:
    rules = load_rules_from(folder)
    finding = Evaluator(rules, Selection()).evaluate(rules[0], file_facts, "f.pt", None, {})
    return finding.message if finding else None


def test_an_unchanged_rule_file_runs_from_its_cached_code(tmp_path: Path, cache: Path, parses: list[str]) -> None:
    folder = _rules(tmp_path, "file.format == 'zip'", "format {{ file.format }}")
    assert _fires(folder, {"format": "zip"}) == "format zip"
    assert parses == ["file.format == 'zip'"] and len(list(cache.glob("*.code"))) == 1
    parses.clear()
    assert _fires(folder, {"format": "zip"}) == "format zip"
    assert _fires(folder, {"format": "legacy"}) is None
    assert parses == []  # nothing parsed or compiled: the code came from the cache


def test_an_edited_rule_file_is_compiled_again(tmp_path: Path, cache: Path, parses: list[str]) -> None:
    folder = _rules(tmp_path, "file.format == 'zip'")
    assert _fires(folder, {"format": "zip"}) == "fires"
    _rules(tmp_path, "file.format != 'zip'")
    assert _fires(folder, {"format": "zip"}) is None
    assert parses == ["file.format == 'zip'", "file.format != 'zip'"]


def test_a_corrupt_entry_is_ignored_and_replaced(tmp_path: Path, cache: Path, parses: list[str]) -> None:
    folder = _rules(tmp_path, "file.format == 'zip'")
    _fires(folder, {"format": "zip"})
    (entry,) = cache.glob("*.code")
    blob = bytearray(entry.read_bytes())
    blob[-5] ^= 0xFF
    entry.write_bytes(bytes(blob))
    assert _fires(folder, {"format": "zip"}) == "fires"
    assert len(parses) == 2  # compiled again, not run from the damaged bytes
    parses.clear()
    assert _fires(folder, {"format": "zip"}) == "fires" and parses == []  # and stored again


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX permissions")
def test_a_folder_others_may_write_is_never_read(tmp_path: Path, cache: Path, parses: list[str]) -> None:
    folder = _rules(tmp_path, "file.format == 'zip'")
    _fires(folder, {"format": "zip"})
    cache.chmod(cache.stat().st_mode | stat.S_IWOTH)
    parses.clear()
    assert _fires(folder, {"format": "zip"}) == "fires"
    assert parses == ["file.format == 'zip'"]


def test_the_cache_can_be_turned_off(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKPTLINT_NO_CACHE", "1")
    assert _fires(_rules(tmp_path, "true"), {"format": "zip"}) == "fires"
    assert not cache.exists()


def test_an_unwritable_cache_folder_only_costs_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("CKPTLINT_CACHE_DIR", str(blocker / "cache"))
    assert _fires(_rules(tmp_path, "true"), {"format": "zip"}) == "fires"


def test_an_error_found_only_by_code_generation_fails_the_load(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(RuleError, match=r"condition does not compile.*nosuchfilter"):
        load_rules_from(_rules(tmp_path, "file.format | nosuchfilter"))


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ckptlint.engine import code_cache

    def no_room(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(code_cache.os, "replace", no_room)
    assert _fires(_rules(tmp_path, "true"), {"format": "zip"}) == "fires"
    assert list(cache.iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX permissions")
def test_cache_entries_are_private_and_reports_follow_the_umask(tmp_path: Path, cache: Path, run) -> None:
    """The same atomic writer makes both: code that will be run stays the user's own; a report
    is an ordinary file others may read."""
    _fires(_rules(tmp_path, "true"), {"format": "zip"})
    (entry,) = cache.glob("*.code")
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    previous = os.umask(0o022)
    try:
        report = tmp_path / "report.json"
        run("check", str(CASES / "non-finite" / "model.pt"), "--format", "json", "-o", str(report))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(report.stat().st_mode) == 0o644


def test_what_the_checks_derived_is_kept_with_the_code(tmp_path: Path, cache: Path, parses: list[str]) -> None:
    """A rule taken from the cache knows which values its parameters may hold, as a parsed one does."""
    folder = tmp_path / "rules"
    rule_text = GOOD_RULE.format(condition="tensor.module_kind in params.kinds").replace(
        'subject = "file"', 'subject = "tensor"') + '\n[params]\nkinds = ["conv"]\n'
    write_rule(folder, rule_text)
    parsed = load_rules_from(folder)[0]
    parses.clear()
    cached = load_rules_from(folder)[0]
    assert parses == [] and len(list(cache.glob("*.code"))) == 1  # really from the cache
    assert parsed.param_values["kinds"] == cached.param_values["kinds"] and "linear" in cached.param_values["kinds"]


def test_a_cached_rule_runs_its_condition_as_the_same_closure(tmp_path: Path, cache: Path, parses: list[str]) -> None:
    """The closures' plain-data form is kept beside the code: a rule from the cache is not parsed
    again, yet runs as fast, with the same answers; an expression without one stays in the sandbox."""
    folder = tmp_path / "rules"
    condition = "file.format == 'zip' and file.bytes > params.limit"
    evidence = '[evidence]\nupper = "file.format.upper()"\n'
    rule_text = GOOD_RULE.format(condition=condition) + f"\n[params]\nlimit = 3\n{evidence}"
    write_rule(folder, rule_text)
    parsed = load_rules_from(folder)[0]
    parses.clear()
    cached = load_rules_from(folder)[0]
    assert parses == [] and len(list(cache.glob("*.code"))) == 1
    assert cached.condition.program == parsed.condition.program is not None and cached.condition._fast is not None
    assert cached.evidence["upper"].program is None
    for facts in ({"format": "zip", "bytes": 4}, {"format": "zip", "bytes": 3}, {"format": "legacy", "bytes": 9}):
        found = [Evaluator([rule], Selection()).evaluate(rule, facts, "f.pt", None, {}) for rule in (parsed, cached)]
        assert found[0] == found[1]
    with pytest.raises(RuleError, match="has no attribute 'bytes'"):
        Evaluator([cached], Selection()).evaluate(cached, {"format": "zip"}, "f.pt", None, {})
