"""``ckptlint diff OLD NEW``: what a new version of a checkpoint changed, judged by the diff rules.

The stages run as for ``check``: both files are read by the same readers (never unpickled) and
their pickles judged by the security rules (a malicious NEW is reported as ``check`` reports it);
then every tensor is paired and compared (``facts/diff.py``), the rules of subject ``diff`` judge
each one, and the report carries the typed ``DiffResult`` beside the findings. The exit code is
``Report.exit_code()``: findings at ``--fail-on`` give 1, a file that cannot be read 2.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from ckptlint.config import Config, job_settings, load_config
from ckptlint.diagnose import diagnose
from ckptlint.engine.evaluate import Evaluator, check_pickle_globals
from ckptlint.engine.registry import load_all_rules
from ckptlint.errors import CheckpointError, ConfigError, RuleError
from ckptlint.identity import find_source_root
from ckptlint.io.checkpoint import Checkpoint
from ckptlint.io.folder import pickle_files
from ckptlint.io.open import open_checkpoint, scanned_globals
from ckptlint.options import Options, check_settings
from ckptlint.results import FileSummary, Finding, ReadError, Report

ReportT = TypeVar("ReportT", bound=Report)
DEBUG_ENV = "CKPTLINT_DEBUG"  # as runner.py: an unexpected exception is raised, not recorded
DIFF_SUBJECTS = ("pickle-global", "diff")  # what a diff run judges (the report lists these rules)


class _Diff:
    """One diff run adding to a report: opening both sides, their pickles' safety, the pairs."""

    def __init__(self, options: Options, report: Report) -> None:
        self.options = options
        self.report = report
        self.evaluator = Evaluator(load_all_rules(), options.selection, options.allow_globals)
        self.findings: list[Finding] = []
        self._labels: dict[str, str] = {}  # each file read -> the label of its side (a git blob's copy too)

    @contextmanager
    def _guard(self, label: str, exact: bool = True) -> Iterator[None]:
        """A file that cannot be read is one error entry; the security rules still judge what its
        pickles named (as ``check`` does). ``exact``: the label is the path read, so an error may
        name a file inside it (a shard); otherwise (a temporary copy of a git blob) the label."""
        try:
            yield
        except (ConfigError, RuleError):
            raise
        except CheckpointError as exc:
            where = self._labels.get(exc.path or "", exc.path if exact and exc.path else label)
            self.report.errors.append(ReadError(where, exc.message))
            self.findings += check_pickle_globals(self.evaluator, exc.pickle_globals,
                                                  label, {"path": label})
        except Exception as exc:
            if os.environ.get(DEBUG_ENV):
                raise
            detail = str(exc).splitlines()[0][:200] if str(exc) else ""
            self.report.errors.append(ReadError(label, f"internal error while reading: {type(exc).__name__}: {detail}"))

    def open(self, source: str | Checkpoint, label: str, role: str) -> Checkpoint | None:
        """Read one side (``role`` old or new; or take it from memory) and judge its pickles;
        None when unreadable."""
        if isinstance(source, Checkpoint):
            checkpoint: Checkpoint | None = source
        else:
            checkpoint = None
            with self._guard(label, exact=label == source):
                checkpoint = open_checkpoint(source, self.options.key)
            if os.path.isdir(source):  # a model folder's other pickles, as check scans them
                read = {info.path for info in checkpoint.files} if checkpoint else set()
                for path in pickle_files(source, read):
                    with self._guard(path):
                        self.findings += check_pickle_globals(self.evaluator, scanned_globals(path), path,
                                                              {"path": path})
        if checkpoint is not None:
            if label != source:  # a git blob's temporary copy: errors name the label
                self._labels.update({info.path: label for info in checkpoint.files} | {checkpoint.path: label})
            self.findings += check_pickle_globals(self.evaluator, checkpoint.pickle_globals, label, {"path": label})
            self.report.files.append(FileSummary(
                path=label, format=checkpoint.format, layout=checkpoint.layout, tensors=len(checkpoint.tensors),
                parameters=checkpoint.parameter_count, bytes=checkpoint.total_bytes,
                sha256=checkpoint.sha256() if self.options.hash_files and checkpoint.format != "memory" else None,
                stripped_prefix=checkpoint.stripped_prefix, role=role))
        return checkpoint

    def compare(self, old: Checkpoint, new: Checkpoint, old_label: str, new_label: str,
                preset_name: str | None) -> None:
        """Pair and compare every tensor, then run the diff rules on each; findings name NEW."""
        from ckptlint.facts.checkpoint import CheckpointFacts
        from ckptlint.facts.diff import diff_facts, diff_result

        with self._guard(new_label):
            facts = diff_facts(CheckpointFacts(old), CheckpointFacts(new), preset_name)
            findings = []
            for tensor in facts:
                findings += self.evaluator.run("diff", tensor, new_label, tensor["key"], {})
            self.findings += findings
            self.report.diff = diff_result(facts, old_label, new_label, preset_name)


def run_diff(old: str | Checkpoint, new: str | Checkpoint, options: Options, *, old_label: str | None = None,
             new_label: str | None = None, preset_name: str | None = None, source_root: str | None = None,
             report_type: type[ReportT] = Report) -> ReportT:  # type: ignore[assignment]  # mypy cannot default a TypeVar
    """Diff OLD against NEW with ``options`` (selection, fail-on, key, allow-globals); ``preset_name``
    says which tensors training leaves frozen. The labels name the files in the report (``BASE:PATH``
    for a file read from git)."""
    report = report_type(fail_on=options.fail_on, source_root=source_root or find_source_root())
    labels = [label or (source.path if isinstance(source, Checkpoint) else os.fspath(source))
              for source, label in ((old, old_label), (new, new_label))]
    run = _Diff(options, report)
    opened = [run.open(source, label, role) for source, label, role in zip((old, new), labels, ("old", "new"),
                                                                        strict=True)]
    try:
        if opened[0] is not None and opened[1] is not None:
            run.compare(opened[0], opened[1], labels[0], labels[1], preset_name)
    finally:
        for checkpoint, source in zip(opened, (old, new), strict=True):
            if checkpoint is not None and not isinstance(source, Checkpoint):
                checkpoint.close()
    active, suppressed = options.selection.split_baseline(run.findings, report.source_root)
    report.findings += active
    report.suppressed += suppressed
    report.rules += [rule.describe() for rule in run.evaluator.rules if rule.subject in DIFF_SUBJECTS]
    report.sort()
    report.files.sort(key=lambda f: f.role != "old")  # OLD first, then NEW (sort() orders by path)
    report.diagnoses = diagnose(report)
    return report


# What shapes a diff, named as in the configuration file (transfer settings mean nothing here).
DIFF_SETTINGS = ("select", "ignore", "severity", "params", "per-key-ignores", "baseline", "fail-on", "key",
                 "allow-globals")


def diff_options(given: Mapping[str, Any], config: Config | None, path: str | None,
                 hash_files: bool) -> tuple[Options, str | None]:
    """The Options and the preset of a diff: the configuration file's settings (those of the
    first ``[[targets]]`` glob NEW matches too), then ``given``, which win; checked as for check."""
    settings = job_settings(path, given, config)
    preset_name = check_settings({"preset": settings.get("preset")})["preset"]
    kept = {name: value for name, value in settings.items() if name in DIFF_SETTINGS}
    return Options.from_settings(kept, hash_files=hash_files), preset_name


def diff_paths(files: Sequence[str], given: Mapping[str, Any], config_path: str | None = None, *,
               git_base: str | None = None, hash_files: bool = False) -> Report:
    """The CLI's diff: OLD and NEW paths, or one PATH compared with its version at ``git_base``."""
    config = load_config(config_path)
    new = files[-1]
    options, preset_name = diff_options(given, config, new, hash_files)
    if git_base is None:
        return run_diff(files[0], new, options, preset_name=preset_name)
    from ckptlint.git_blob import git_file

    with git_file(git_base, new) as old:
        return run_diff(old.path, new, options, old_label=old.label, preset_name=preset_name)
