"""The library entry point the CLI wraps: check checkpoint paths, get a Report."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, TypeVar

from ckptlint.diagnose import diagnose
from ckptlint.engine.evaluate import Evaluator, check_checkpoint, check_pickle_globals
from ckptlint.engine.registry import load_all_rules
from ckptlint.errors import CheckpointError, ConfigError, RuleError
from ckptlint.facts.score import ScoreEntry, score_summary
from ckptlint.identity import find_source_root
from ckptlint.io.checkpoint import Checkpoint
from ckptlint.io.folder import is_folder, pickle_files
from ckptlint.io.open import open_checkpoint, scanned_globals
from ckptlint.io.unpickler import PickleGlobal
from ckptlint.options import Options
from ckptlint.progress import NoProgress, Progress
from ckptlint.results import (
    Candidate,
    FileSummary,
    Finding,
    PairRecord,
    ReadError,
    Report,
    RunTransfer,
    ScoreSummary,
    TargetTransfer,
)
from ckptlint.vocabulary import SUBJECTS

# The align and facts stages (module graphs on networkx, tensor values on numpy) and a user's model
# are imported where a file's check first needs them, not here: a run whose rules judge only pickle
# globals needs none of them, and a pre-commit hook running it over many files would pay more for
# the imports than for reading the pickles (see _Job.pickles_only).
if TYPE_CHECKING:
    from ckptlint.facts.checkpoint import CheckpointFacts
    from ckptlint.facts.transfer import TransferAnalysis

MAX_HISTOGRAMS = 200  # the HTML report draws at most this many value histograms
ReportT = TypeVar("ReportT", bound=Report)
DEBUG_ENV = "CKPTLINT_DEBUG"  # set: an unexpected exception while checking a file is raised, not recorded


def _summary(path: str, checkpoint: Checkpoint, role: str) -> FileSummary:
    return FileSummary(
        path=path, format=checkpoint.format, layout=checkpoint.layout, tensors=len(checkpoint.tensors),
        parameters=checkpoint.parameter_count, bytes=checkpoint.total_bytes, sha256=None,
        stripped_prefix=checkpoint.stripped_prefix, role=role,
    )


class _Hashes:
    """Each file's SHA-256 (JSON reports give it), computed in a worker thread while the file is
    checked: reading and hashlib release the GIL on large buffers, so hashing every byte costs the
    check next to nothing, where hashing first once added ~30% to a DETR check."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[tuple[str, str], Future[str | None]] = {}  # (path, role) -> its digest

    def start(self, summary: FileSummary, checkpoint: Checkpoint) -> None:
        if checkpoint.format == "memory":
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckptlint-sha256")
        self._pending[(summary.path, summary.role)] = self._pool.submit(checkpoint.sha256)

    def fill(self, files: list[FileSummary]) -> None:
        """Put each digest into its file's summary (waiting for the last ones)."""
        digests = {key: future.result() for key, future in self._pending.items()}
        files[:] = [replace(f, sha256=digests.get((f.path, f.role))) for f in files]

    def close(self) -> None:
        """Stop hashing (a run that failed does not wait for digests nobody will read)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


class _Job:
    """One group of paths checked with the same options, adding to a shared report."""

    def __init__(self, options: Options, report: Report, progress: Progress, hashes: _Hashes) -> None:
        self.options = options
        self.report = report
        self.progress = progress
        self.hashes = hashes
        self.evaluator = Evaluator(load_all_rules(), options.selection, options.allow_globals)
        # No reference, and the enabled rules judge nothing but pickle globals: a file's pickles
        # are all its check needs (no module graph, no file or tensor facts).
        self.pickles_only = (options.pretrained is None and not options.model
                             and not any(self.evaluator.judging(s) for s in SUBJECTS if s != "pickle-global"))
        self.findings: list[Finding] = []
        self.score_entries: list[ScoreEntry] = []
        self.by_file: dict[str, TargetTransfer] = {}  # how each target's transfer was judged

    @contextmanager
    def _guard(self, path: str, pickle_globals: Sequence[PickleGlobal] = ()) -> Iterator[None]:
        """One file's failure is one error entry and the run goes on; the security rules still
        judge what its pickles named (``pickle_globals``, or those a CheckpointError carries). An
        exception ckptlint did not expect is that file's internal error — raised instead when
        CKPTLINT_DEBUG is set, so that the tests fail on it. A usage error or a broken rule stops
        the whole run: neither is about the file."""
        try:
            yield
        except (ConfigError, RuleError):
            raise
        except CheckpointError as exc:
            self.report.errors.append(ReadError(exc.path or path, exc.message))
            self.findings += check_pickle_globals(self.evaluator, [*pickle_globals, *exc.pickle_globals], path,
                                                  {"path": path})
        except Exception as exc:
            if os.environ.get(DEBUG_ENV):
                raise
            detail = str(exc).splitlines()[0][:200] if str(exc) else ""
            self.report.errors.append(ReadError(path, f"internal error while reading: {type(exc).__name__}: {detail}"))
            self.findings += check_pickle_globals(self.evaluator, list(pickle_globals), path, {"path": path})

    def open(self, source: str | Checkpoint, key: str | None) -> Checkpoint | None:
        """Open a checkpoint (or take an in-memory one), or record why not. A folder's other
        pickles are scanned either way."""
        if isinstance(source, Checkpoint):
            return source
        checkpoint = None
        with self._guard(source):
            checkpoint = open_checkpoint(source, key)
        if is_folder(source):  # a local folder, or a remote one (io/folder.py)
            self._scan_folder(source, checkpoint)
        return checkpoint

    def _scan_folder(self, folder: str, checkpoint: Checkpoint | None) -> None:
        """Every file of a checked folder a loader could unpickle, besides the weights read, is
        judged by the security rules under its own path."""
        read = {info.path for info in checkpoint.files} if checkpoint else set()
        for path in pickle_files(folder, read):
            with self._guard(path):
                self.findings += check_pickle_globals(self.evaluator, scanned_globals(path), path, {"path": path})

    def run(self, sources: Sequence[str | Checkpoint]) -> None:
        options = self.options
        with ExitStack() as stack:
            pretrained = None
            if options.pretrained is not None:
                # An unreadable pretrained file is an error of its own; the targets are still
                # checked on everything that does not need it.
                pretrained = self.open(options.pretrained, options.pretrained_key)
                if pretrained is not None:
                    stack.enter_context(pretrained)
            # Other candidates: each described (and its pickle judged) like the pretrained file; an
            # unreadable one is an error of its own, and the others are still ranked.
            candidates = []
            for candidate in options.candidates:
                opened = self.open(candidate, options.pretrained_key)
                if opened is not None:
                    stack.enter_context(opened)
                    if self._describe_pretrained(opened) is not None:
                        candidates.append(opened)
            model_facts = None
            if options.model:
                from ckptlint.facts.checkpoint import CheckpointFacts
                from ckptlint.user_model import load_model

                model_facts = CheckpointFacts(stack.enter_context(load_model(options.model)))
            pretrained_facts = self._describe_pretrained(pretrained) if pretrained else None
            for source in sources:
                checkpoint = self.open(source, options.key)
                if checkpoint is not None:
                    with checkpoint:
                        if self.pickles_only:
                            self._check_pickles(checkpoint.path, checkpoint)
                        else:
                            self._check(checkpoint.path, checkpoint, pretrained_facts, model_facts, candidates)

    def _describe_pretrained(self, pretrained: Checkpoint) -> CheckpointFacts | None:
        """The pretrained file's facts and its own block: its summary, its pickle's safety, its
        file rules (does it look trained at all?); once per run. None when it fails."""
        from ckptlint.facts.checkpoint import CheckpointFacts

        with self._guard(pretrained.path):
            facts = CheckpointFacts(pretrained)
            if pretrained.path in {f.path for f in self.report.files if f.role == "pretrained"}:
                return facts
            self._add_summary(_summary(pretrained.path, pretrained, "pretrained"), pretrained)
            file_facts = facts.file_facts("pretrained")
            self.findings += check_pickle_globals(self.evaluator, pretrained.pickle_globals, pretrained.path,
                                                  file_facts, "pretrained")
            self.findings += self.evaluator.run("file", file_facts, pretrained.path, None, {"file": file_facts},
                                               "pretrained")
            return facts
        return None

    def _add_summary(self, summary: FileSummary, checkpoint: Checkpoint) -> None:
        self.report.files.append(summary)
        if self.options.hash_files:
            self.hashes.start(summary, checkpoint)

    def _check_pickles(self, path: str, checkpoint: Checkpoint) -> None:
        """A file checked by pickle rules alone (``pickles_only``): its pickle globals are judged
        as those of a file unreadable past its pickle are, seeing of the file only its path."""
        with self._guard(path, checkpoint.pickle_globals):
            self._add_summary(_summary(path, checkpoint, "target"), checkpoint)
            self.findings += check_pickle_globals(self.evaluator, checkpoint.pickle_globals, path, {"path": path})

    def _check(self, path: str, checkpoint: Checkpoint, pretrained: CheckpointFacts | None,
               model: CheckpointFacts | None, candidates: Sequence[Checkpoint] = ()) -> None:
        from ckptlint.facts.checkpoint import CheckpointFacts
        from ckptlint.facts.model_reference import ModelReference
        from ckptlint.facts.provenance import rank_candidates

        judged = None
        ranked: tuple[Candidate, ...] = ()
        # until its findings are in, a failure (a tensor's bytes turn out unreadable) loses them:
        # the guard judges the file's pickle globals then
        with self._guard(path, checkpoint.pickle_globals):
            self._add_summary(_summary(path, checkpoint, "target"), checkpoint)
            facts = CheckpointFacts(checkpoint)
            transfer = self._analyse_transfer(facts, pretrained) if pretrained else None
            model_reference = ModelReference(checkpoint, model) if model else None
            if model_reference is not None and model_reference.mapping is not None:
                self.report.files[-1] = replace(self.report.files[-1], key_mapping=model_reference.mapping.summary())
            references = [r for r in (transfer, model_reference) if r]
            self.findings += check_checkpoint(self.evaluator, facts, path, references, self.progress)
            if transfer is not None:  # which of several pretrained files explains the target best
                ranked = rank_candidates(checkpoint, transfer, candidates, self.options.transfer)
            judged = transfer
        if judged is not None:
            self._record_transfer(path, judged, ranked)

    def _analyse_transfer(self, facts: CheckpointFacts, pretrained: CheckpointFacts) -> TransferAnalysis:
        """Align the target with the pretrained file, then judge every pair before any rule runs."""
        from ckptlint.align.transfer import align_transfer
        from ckptlint.facts.transfer import TransferAnalysis

        aligned = align_transfer(facts.checkpoint, pretrained.checkpoint, self.options.transfer)
        return TransferAnalysis(facts, pretrained, aligned, self.options.transfer, self.options.histograms)

    def _record_transfer(self, path: str, analysis: TransferAnalysis, candidates: tuple[Candidate, ...] = ()) -> None:
        """The pairs, the score and how the target was judged go into the report; the transfer
        rules judge the result."""
        from ckptlint.facts.transfer import transfer_facts

        self.report.pairs += [PairRecord(path, p["target"], p["source"], p["how"], p["verdict"],
                                         p.summary(), p["numel"], p["module_kind"]) for p in analysis.pairs.values()]
        for pair in analysis.pairs.values():
            if pair.histogram and len(self.report.histograms) < MAX_HISTOGRAMS:
                self.report.histograms[(path, pair["target"])] = pair.histogram
        entries = analysis.score_entries()
        self.score_entries += entries
        target = replace(analysis.result(score_summary(entries)), candidates=candidates)
        self.by_file[path] = target
        self.findings += self.evaluator.run("transfer", transfer_facts(target), path, None, {}, "pretrained")


def run_jobs(jobs: Sequence[tuple[Sequence[str | Checkpoint], Options]], source_root: str | None = None,
             progress: Progress | None = None, report_type: type[ReportT] = Report,  # type: ignore[assignment]  # mypy cannot default a TypeVar
             score_entries: list[ScoreEntry] | None = None) -> ReportT:
    """Check each group of paths with its options; one report (a ``report_type``) for all of them.
    ``score_entries``: a list that receives every target tensor's part in the transfer score (a
    partial report carries them, so that merged parts score as one run: ``parts.py``)."""
    progress = progress or NoProgress()
    report = report_type(fail_on=jobs[0][1].fail_on if jobs else "error",
                         source_root=source_root or find_source_root())
    entries: list[ScoreEntry] = []
    by_file: dict[str, TargetTransfer] = {}
    hashes = _Hashes()
    try:
        for paths, options in jobs:
            job = _Job(options, report, progress, hashes)
            job.run(paths)
            active, suppressed = options.selection.split_baseline(job.findings, report.source_root)
            report.findings += active
            report.suppressed += suppressed
            entries += job.score_entries
            by_file.update(job.by_file)
            known = {rule["code"] for rule in report.rules}
            report.rules += [rule.describe() for rule in job.evaluator.rules if rule.code not in known]
        progress.finish()
        hashes.fill(report.files)
    finally:
        hashes.close()
    if score_entries is not None:
        score_entries += entries
    report.transfer = run_transfer(score_summary(entries), by_file)
    report.sort()
    report.diagnoses = diagnose(report)  # after the baseline: a cause whose findings are all accepted is gone
    return report


def run_transfer(summary: ScoreSummary | None, by_file: dict[str, TargetTransfer]) -> RunTransfer | None:
    """The run's transfer block: the score over every target (``summary``: None when there is
    nothing to score, never "100% of 0 parameters"), how each target was judged, and each one's
    own score."""
    if summary is None or not summary.parameters:
        return None
    expectations = {target.expect for target in by_file.values()}
    single = next(iter(by_file.values())) if len(by_file) == 1 else None
    return RunTransfer(
        **vars(summary),
        expect=expectations.pop() if len(expectations) == 1 else "mixed",
        expect_reason=single.expect_reason if single else "per file: see by_file",
        by_file=dict(sorted(by_file.items())),
    )


def check_paths(paths: Sequence[str], options: Options = Options(), source_root: str | None = None) -> Report:
    """Read and lint each path (against ``options.pretrained`` when given); unreadable files
    become report errors and the rest still run."""
    return run_jobs([(paths, options)], source_root)
