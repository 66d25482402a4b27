"""The library entry point the CLI wraps: check checkpoint paths, get a Report."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ckptlint.engine.registry import load_all_rules
from ckptlint.engine.runner import Evaluator, check_checkpoint, check_pickle_globals
from ckptlint.engine.selection import Selection
from ckptlint.errors import CheckpointError
from ckptlint.facts.transfer import TransferContext, TransferOptions, transfer_summary
from ckptlint.io.checkpoint import Checkpoint
from ckptlint.io.open import open_checkpoint
from ckptlint.model import FileSummary, PairRecord, ReadError, Report


@dataclass(frozen=True)
class Options:
    """Everything that shapes a run; the CLI and configuration fill it in."""

    selection: Selection = field(default_factory=Selection)
    fail_on: str = "error"
    key: str | None = None
    hash_files: bool = True
    rule_folders: tuple[Path, ...] = ()
    pretrained: str | None = None
    pretrained_key: str | None = None
    transfer: TransferOptions = field(default_factory=TransferOptions)


def _summary(path: str, checkpoint: Checkpoint, options: Options, role: str) -> FileSummary:
    return FileSummary(
        path=path, format=checkpoint.format, layout=checkpoint.layout, tensors=len(checkpoint.tensors),
        parameters=checkpoint.parameter_count, bytes=checkpoint.total_bytes,
        sha256=checkpoint.sha256() if options.hash_files else None,
        stripped_prefix=checkpoint.stripped_prefix, role=role,
    )


def _open(path: str, key: str | None, evaluator: Evaluator, report: Report) -> Checkpoint | None:
    """Open a checkpoint, or record why not (still judging any pickle globals it named)."""
    try:
        return open_checkpoint(path, key)
    except CheckpointError as exc:
        report.errors.append(ReadError(path, exc.message))
        report.findings += check_pickle_globals(evaluator, exc.pickle_globals, path, {"path": path})
        return None


def check_paths(paths: Sequence[str], options: Options = Options()) -> Report:
    """Read and lint each path (against ``options.pretrained`` when given); unreadable files
    become report errors and the rest still run."""
    evaluator = Evaluator(load_all_rules(options.rule_folders), options.selection)
    report = Report(fail_on=options.fail_on)
    entries: list = []
    with ExitStack() as stack:
        pretrained = None
        if options.pretrained:
            pretrained = _open(options.pretrained, options.pretrained_key, evaluator, report)
            if pretrained is None:
                report.sort()
                return report
            stack.enter_context(pretrained)
            report.files.append(_summary(options.pretrained, pretrained, options, "pretrained"))
            report.findings += check_pickle_globals(evaluator, pretrained.pickle_globals, options.pretrained,
                                                    {"path": options.pretrained})
        for path in paths:
            checkpoint = _open(path, options.key, evaluator, report)
            if checkpoint is None:
                continue
            with checkpoint:
                report.files.append(_summary(path, checkpoint, options, "target"))
                try:
                    transfer = (TransferContext(checkpoint, pretrained, options.transfer, evaluator.wanted)
                                if pretrained else None)
                    report.findings += check_checkpoint(evaluator, checkpoint, path, transfer)
                except CheckpointError as exc:  # a tensor's bytes turned out unreadable
                    report.errors.append(ReadError(exc.path or path, exc.message))
                    continue
                if transfer is not None:
                    report.pairs += [PairRecord(path, p["target"], p["pretrained"], p["how"], p["verdict"],
                                                p.summary()) for p in transfer.judged]
                    entries += transfer.score_entries()
    if pretrained is not None:
        report.transfer = transfer_summary(entries)
    report.sort()
    return report
