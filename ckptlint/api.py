"""The library entry point the CLI wraps: check checkpoint paths, get a Report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ckptlint.engine.registry import load_all_rules
from ckptlint.engine.runner import Evaluator, check_checkpoint, check_pickle_globals
from ckptlint.engine.selection import Selection
from ckptlint.errors import CheckpointError
from ckptlint.io.open import open_checkpoint
from ckptlint.model import FileSummary, ReadError, Report


@dataclass(frozen=True)
class Options:
    """Everything that shapes a run; the CLI and configuration fill it in."""

    selection: Selection = field(default_factory=Selection)
    fail_on: str = "error"
    key: str | None = None
    hash_files: bool = True
    rule_folders: tuple[Path, ...] = ()


def check_paths(paths: Sequence[str], options: Options = Options()) -> Report:
    """Read and lint each path; unreadable files become report errors, the rest still run."""
    evaluator = Evaluator(load_all_rules(options.rule_folders), options.selection)
    report = Report(fail_on=options.fail_on)
    for path in paths:
        try:
            checkpoint = open_checkpoint(path, options.key)
        except CheckpointError as exc:
            report.errors.append(ReadError(path, exc.message))
            report.findings += check_pickle_globals(evaluator, exc.pickle_globals, path, {"path": path})
            continue
        with checkpoint:
            report.files.append(FileSummary(
                path=path, format=checkpoint.format, layout=checkpoint.layout,
                tensors=len(checkpoint.tensors), parameters=checkpoint.parameter_count,
                bytes=checkpoint.total_bytes, sha256=checkpoint.sha256() if options.hash_files else None,
                stripped_prefix=checkpoint.stripped_prefix,
            ))
            try:
                report.findings += check_checkpoint(evaluator, checkpoint, path)
            except CheckpointError as exc:  # a tensor's bytes turned out unreadable
                report.errors.append(ReadError(path, exc.message))
    report.sort()
    return report
