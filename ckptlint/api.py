"""The library entry point the CLI wraps: check checkpoint paths, get a Report."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Sequence

from ckptlint.engine.registry import load_all_rules
from ckptlint.engine.rules import Rule
from ckptlint.engine.runner import Evaluator, check_checkpoint, check_pickle_globals
from ckptlint.engine.selection import Selection
from ckptlint.errors import CheckpointError
from ckptlint.facts.checkpoint import CheckpointFacts
from ckptlint.facts.model_check import ModelContext
from ckptlint.facts.transfer import TransferContext, TransferOptions, transfer_summary
from ckptlint.fingerprint import find_source_root
from ckptlint.io.checkpoint import Checkpoint
from ckptlint.io.open import open_checkpoint
from ckptlint.model_factory import load_model
from ckptlint.model import Finding, FileSummary, PairRecord, ReadError, Report
from ckptlint.progress import NoProgress, Progress


MAX_HISTOGRAMS = 200  # the HTML report draws at most this many value histograms


@dataclass(frozen=True)
class Options:
    """Everything that shapes a run; the CLI and configuration fill it in."""

    selection: Selection = field(default_factory=Selection)
    fail_on: str = "error"
    key: str | None = None
    hash_files: bool = True
    rule_folders: tuple[Path, ...] = ()
    pretrained: str | Checkpoint | None = None  # a path, or an in-memory checkpoint
    pretrained_key: str | None = None
    transfer: TransferOptions = field(default_factory=TransferOptions)
    model: str | None = None  # package.module:factory building the model to load into


@cache
def _rules(folders: tuple[Path, ...]) -> list[Rule]:
    return load_all_rules(folders)


def _summary(path: str, checkpoint: Checkpoint, options: Options, role: str, progress: Progress) -> FileSummary:
    digest = None
    if options.hash_files and checkpoint.format != "memory":
        progress.start(f"{path} (hashing)", checkpoint.total_bytes)
        digest = checkpoint.sha256(progress.advance)
    return FileSummary(
        path=path, format=checkpoint.format, layout=checkpoint.layout, tensors=len(checkpoint.tensors),
        parameters=checkpoint.parameter_count, bytes=checkpoint.total_bytes, sha256=digest,
        stripped_prefix=checkpoint.stripped_prefix, role=role,
    )


class _Job:
    """One group of paths checked with the same options, adding to a shared report."""

    def __init__(self, options: Options, report: Report, progress: Progress) -> None:
        self.options = options
        self.report = report
        self.progress = progress
        self.evaluator = Evaluator(_rules(options.rule_folders), options.selection)
        self.findings: list[Finding] = []
        self.score_entries: list[Any] = []

    def open(self, source: str | Checkpoint, key: str | None) -> Checkpoint | None:
        """Open a checkpoint (or take an in-memory one), or record why not (still judging any
        pickle globals it named)."""
        if isinstance(source, Checkpoint):
            return source
        path = source
        try:
            return open_checkpoint(path, key)
        except CheckpointError as exc:
            self.report.errors.append(ReadError(path, exc.message))
            self.findings += check_pickle_globals(self.evaluator, exc.pickle_globals, path, {"path": path})
            return None

    def run(self, sources: Sequence[str | Checkpoint]) -> None:
        options = self.options
        with ExitStack() as stack:
            pretrained = None
            if options.pretrained is not None:
                pretrained = self.open(options.pretrained, options.pretrained_key)
                if pretrained is None:
                    return
                stack.enter_context(pretrained)
                if pretrained.path not in {f.path for f in self.report.files if f.role == "pretrained"}:
                    self.report.files.append(_summary(pretrained.path, pretrained, options, "pretrained",
                                                      self.progress))
                    self.findings += check_pickle_globals(self.evaluator, pretrained.pickle_globals,
                                                          pretrained.path, {"path": pretrained.path})
            model = stack.enter_context(load_model(options.model)) if options.model else None
            pretrained_facts = CheckpointFacts(pretrained) if pretrained else None
            model_facts = CheckpointFacts(model) if model else None
            for source in sources:
                checkpoint = self.open(source, options.key)
                if checkpoint is not None:
                    with checkpoint:
                        self._check(checkpoint.path, checkpoint, pretrained_facts, model_facts)

    def _check(self, path: str, checkpoint: Checkpoint, pretrained: CheckpointFacts | None,
               model: CheckpointFacts | None) -> None:
        self.report.files.append(_summary(path, checkpoint, self.options, "target", self.progress))
        try:
            transfer = TransferContext(checkpoint, pretrained, self.options.transfer) if pretrained else None
            references = [r for r in (transfer, model and ModelContext(checkpoint, model)) if r]
            self.findings += check_checkpoint(self.evaluator, checkpoint, path, references, self.progress)
        except CheckpointError as exc:  # a tensor's bytes turned out unreadable
            self.report.errors.append(ReadError(exc.path or path, exc.message))
            return
        if transfer is not None:
            self.report.pairs += [PairRecord(path, p["target"], p["pretrained"], p["how"], p["verdict"],
                                             p.summary()) for p in transfer.judged]
            for pair in transfer.judged:
                if pair["histogram"] and len(self.report.histograms) < MAX_HISTOGRAMS:
                    self.report.histograms[(path, pair["target"])] = pair["histogram"]
            self.score_entries += transfer.score_entries()


def run_jobs(jobs: Sequence[tuple[Sequence[str | Checkpoint], Options]], source_root: str | None = None,
             progress: Progress | None = None) -> Report:
    """Check each group of paths with its options; one report for all of them."""
    progress = progress or NoProgress()
    report = Report(fail_on=jobs[0][1].fail_on if jobs else "error",
                    source_root=source_root or find_source_root())
    entries: list[Any] = []
    with_pretrained = False
    for paths, options in jobs:
        job = _Job(options, report, progress)
        job.run(paths)
        active, suppressed = options.selection.split_baseline(job.findings, report.source_root)
        report.findings += active
        report.suppressed += suppressed
        entries += job.score_entries
        known = {rule["code"] for rule in report.rules}
        report.rules += [rule.describe() for rule in job.evaluator.rules if rule.code not in known]
        with_pretrained = with_pretrained or options.pretrained is not None
    progress.finish()
    if with_pretrained:
        report.transfer = transfer_summary(entries)
    report.sort()
    return report


def check_paths(paths: Sequence[str], options: Options = Options(), source_root: str | None = None) -> Report:
    """Read and lint each path (against ``options.pretrained`` when given); unreadable files
    become report errors and the rest still run."""
    return run_jobs([(paths, options)], source_root)
