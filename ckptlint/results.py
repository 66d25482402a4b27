"""The data that leaves the engine: findings, per-file summaries, read errors, the report."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from ckptlint.severity import severity_rank
from ckptlint.vocabulary import DIFF_CATEGORIES


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
class Candidate:
    """One of several pretrained files given (``--pretrained a --pretrained b``): the share of the
    target's in-scope parameters it explains, and how (parameters copied, cast, or within
    ``--max-drift`` of it), ranked among the others. The first file given is the expected one."""

    path: str
    rank: int  # 1 explains the most; ties keep the order given
    expected: bool  # the first file given: the transfer is judged against it
    share: float | None  # explained / parameters, rounded down; None with nothing to count
    parameters: int  # the target's in-scope parameters as the score counts them against this file
    copied: int  # parameters bit-identical to this file's
    cast: int  # parameters equal to this file's after a cast
    finetuned: int  # parameters within --max-drift of this file's (related values)
    tensors: int  # target tensors paired with this file

    @property
    def how(self) -> str:
        """``copied``, ``copied and fine-tuned``: what explains its share ("" when nothing does)."""
        names = [name for name, n in (("copied", self.copied), ("cast", self.cast), ("fine-tuned", self.finetuned))
                 if n]
        return " and ".join(names) if len(names) < 3 else f"{names[0]}, {names[1]} and {names[2]}"


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
    # with several pretrained files: each ranked by the share it explains (empty with one)
    candidates: tuple[Candidate, ...] = ()

    @property
    def best_candidate(self) -> Candidate | None:
        """The candidate other than the expected one that explains the most (None with one file)."""
        return next((c for c in sorted(self.candidates, key=lambda c: c.rank) if not c.expected), None)

    @property
    def expected_candidate(self) -> Candidate | None:
        return next((c for c in self.candidates if c.expected), None)


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


@dataclass(frozen=True)
class DiffPair:
    """One tensor of ``ckptlint diff OLD NEW``: a key both versions hold, or one side's alone
    (``added``: only NEW; ``removed``: only OLD), and what became of it."""

    old: str | None  # the key in OLD (None: added)
    new: str | None  # the key in NEW (None: removed)
    category: str  # one of vocabulary.DIFF_CATEGORIES
    module: str
    stage: str  # ResNet stage of the key's torchvision name, or other
    old_dtype: str | None
    new_dtype: str | None
    old_shape: tuple[int, ...] | None
    new_shape: tuple[int, ...] | None
    numel: int  # values of the NEW tensor (of the OLD one when removed)
    rel_l2: float | None = None  # ||new - old|| / ||old|| over finite values (equal shapes only)
    cosine: float | None = None
    max_abs_error: float | None = None
    old_nonfinite: int | None = None  # NaN and Inf values
    new_nonfinite: int | None = None
    bn_reset: bool = False  # a BatchNorm's statistics at their defaults in NEW only (on its running_mean)
    frozen: bool = False  # the preset says training leaves it frozen
    frozen_by: str | None = None

    @property
    def key(self) -> str:
        """The key findings name: NEW's, or OLD's for a removed tensor."""
        return self.new if self.new is not None else self.old or ""


@dataclass(frozen=True)
class DiffCounts:
    """Tensors per category (and parameters: the NEW tensors' values, OLD's for removed ones)."""

    tensors: int
    parameters: int
    unchanged: int
    cast: int
    changed: int
    resized: int
    added: int
    removed: int


@dataclass(frozen=True)
class DiffResult:
    """What NEW changed against OLD: every tensor's pair and category, counted overall, per
    module (the modules holding a tensor that is not unchanged) and per ResNet stage."""

    old: str  # the labels the report names: a path, or BASE:PATH read from git
    new: str
    preset: str | None
    summary: DiffCounts
    pairs: tuple[DiffPair, ...]
    by_module: dict[str, DiffCounts]
    by_stage: dict[str, DiffCounts]
    new_non_finite: tuple[str, ...]  # keys whose NaN/Inf count rose
    dtype_changes: dict[str, int]  # "float32 -> float16" -> tensors
    bn_reset: tuple[str, ...]  # BatchNorm modules whose statistics were reset
    frozen_changed: tuple[str, ...]  # keys the preset freezes that changed

    def summary_line(self) -> str:
        """``NEW vs OLD: 458 tensors — 440 unchanged, 2 cast, 12 changed, 1 resized, 2 added, 1 removed``."""
        counts = self.summary
        parts = ", ".join(f"{getattr(counts, c)} {c}" for c in DIFF_CATEGORIES
                          if getattr(counts, c) or c == "unchanged")
        return f"{self.new} vs {self.old}: {counts.tensors} tensor{'s' if counts.tensors != 1 else ''} — {parts}"


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
    diff: DiffResult | None = None  # `ckptlint diff OLD NEW`: what NEW changed
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
