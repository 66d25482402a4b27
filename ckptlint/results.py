"""The data that leaves the engine: findings, per-file summaries, read errors, the report."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from ckptlint.severity import severity_rank


@dataclass(frozen=True)
class Finding:
    """One defect found: which rule, how bad, where, and the numbers that decided it."""

    code: str
    name: str
    severity: str
    file: str
    key: str | None  # tensor or module path; None for a whole-file finding
    message: str
    evidence: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def sort_key(self) -> tuple[str, int, str, str, str]:
        """By file, then the most severe first, then key: the first lines are the ones that matter."""
        return (self.file, -severity_rank(self.severity), self.key or "", self.code, self.message)


@dataclass(frozen=True)
class FileSummary:
    """What a checked file turned out to be."""

    path: str
    format: str
    layout: str
    tensors: int
    parameters: int
    bytes: int
    sha256: str | None
    stripped_prefix: str = ""
    role: str = "target"  # or "pretrained"
    key_mapping: dict[str, Any] | None = None  # with --model: the library's load-time key renaming applied


@dataclass(frozen=True)
class ReadError:
    """A file that could not be read, with the one-line reason."""

    file: str
    message: str


@dataclass(frozen=True)
class PairRecord:
    """One target tensor and the pretrained tensor it was matched with, and the verdict."""

    file: str
    target: str
    pretrained: str
    how: str
    verdict: str
    evidence: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    numel: int = 0  # values of the pretrained tensor: what the score counts
    module_kind: str = ""  # conv, batchnorm, ... of the target tensor's module


@dataclass(frozen=True)
class Score:
    """A share of the parameters (and of the tensors) that should come from the pretrained
    file and did; scores are floored, None when there was nothing to score."""

    score: float | None
    parameters: int
    score_by_tensors: float | None
    tensors: int

    def only_score(self) -> dict[str, Any]:
        """The four numbers alone (of a summary or a target's transfer)."""
        return {f.name: getattr(self, f.name) for f in fields(Score)}


@dataclass(frozen=True)
class StageScore(Score):
    verdicts: dict[str, int]  # verdict (or missing/unmatched) -> tensors


@dataclass(frozen=True)
class ScoreSummary(Score):
    """The score overall, per ResNet stage (rows sum to the total) and per target module."""

    by_stage: dict[str, StageScore]
    by_module: dict[str, float | None]


@dataclass(frozen=True)
class OutsideScope:
    """The target's modules outside the transfer scope: expected to be new (a detector's
    transformer and heads), not judged as fresh initialisation."""

    modules: tuple[str, ...]
    tensors: int
    parameters: int


@dataclass(frozen=True)
class TargetTransfer(Score):
    """How one target was judged against its pretrained file, and its own score."""

    pretrained: str
    expect: str  # copied or finetuned, as settled
    expect_reason: str
    frozen: int  # tensors judged frozen under fine-tuning
    frozen_reason: str | None
    scope: str | None
    outside_scope: OutsideScope
    unmatched: tuple[str, ...]  # in-scope target tensors without a pretrained source


@dataclass(frozen=True)
class RunTransfer(ScoreSummary):
    """The run's transfer: the score over every target, how they were judged, each target's own."""

    expect: str  # copied, finetuned, or mixed
    expect_reason: str
    by_file: dict[str, TargetTransfer]


@dataclass(frozen=True)
class Diagnosis:
    """Findings that share one cause, said once: what went wrong, where, and how to fix it."""

    kind: str  # a kind of cause, declared in ckptlint/data/diagnoses.toml
    file: str  # the file the cause lies in
    title: str
    fix: str
    severity: str  # the worst of its findings
    modules: tuple[str, ...]  # the smallest set of modules covering its tensors
    tensors: tuple[str, ...]  # the tensor keys it is about
    parameters: int
    evidence: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    findings: tuple[Finding, ...] = field(default=(), hash=False, compare=False)

    @property
    def id(self) -> str:
        """Stable across runs and unique in a report: one diagnosis per kind and file."""
        return f"{self.kind}:{self.file}"

    @property
    def rules(self) -> list[str]:
        return sorted({f.name for f in self.findings})


@dataclass
class Report:
    """Everything one run found; reporters render it, the CLI picks the exit code from it."""

    files: list[FileSummary] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    errors: list[ReadError] = field(default_factory=list)
    pairs: list[PairRecord] = field(default_factory=list)
    transfer: RunTransfer | None = None  # None when nothing was scored
    suppressed: list[Finding] = field(default_factory=list)  # accepted in a baseline
    diagnoses: list[Diagnosis] = field(default_factory=list)  # active findings grouped by cause
    rules: list[dict[str, Any]] = field(default_factory=list)  # the enabled rules, described
    histograms: dict[tuple[str, str], dict[str, list[float]]] = field(default_factory=dict)  # (file, key)
    fail_on: str = "error"
    source_root: str = "."  # paths in SARIF and fingerprints are relative to it

    def sort(self) -> None:
        self.files.sort(key=lambda f: (f.role != "pretrained", f.path))
        self.findings.sort(key=Finding.sort_key)
        self.suppressed.sort(key=Finding.sort_key)
        self.pairs.sort(key=lambda p: (p.file, p.target))
        self.rules.sort(key=lambda r: r["code"])
        self.errors.sort(key=lambda e: (e.file, e.message))

    @property
    def failing(self) -> list[Finding]:
        """Findings at or above ``fail_on``."""
        threshold = severity_rank(self.fail_on)
        return [f for f in self.findings if severity_rank(f.severity) >= threshold]

    @property
    def ok(self) -> bool:
        return not self.failing and not self.errors

    @property
    def undiagnosed(self) -> list[Finding]:
        """Findings no diagnosis covers: reports show them one by one."""
        covered = {finding for diagnosis in self.diagnoses for finding in diagnosis.findings}
        return [f for f in self.findings if f not in covered]

    def why_failed(self) -> str | None:
        """One line saying why the check fails (None when it passes)."""
        parts = []
        if self.errors:
            parts.append(f"{len(self.errors)} file{'s' if len(self.errors) != 1 else ''} could not be read")
        failing = self.failing
        if failing:
            by_rule: dict[str, int] = {}
            for finding in failing:
                by_rule[finding.name] = by_rule.get(finding.name, 0) + 1
            counts = ", ".join(f"{name} x{n}" for name, n in sorted(by_rule.items(), key=lambda kv: (-kv[1], kv[0])))
            parts.append(f"{len(failing)} finding{'s' if len(failing) != 1 else ''} at or above {self.fail_on} "
                         f"({counts})")
        return "; ".join(parts) or None

    def exit_code(self) -> int:
        """1 when findings reach ``fail_on``, else 2 when a file could not be read, else 0.

        Findings decide first: the gate's answer is already "fail" (an ``unsafe-pickle`` in one
        file stays exit 1 however many other files were unreadable); 2 says only that the answer is
        unknown for some file.
        """
        if self.failing:
            return 1
        return 2 if self.errors else 0
