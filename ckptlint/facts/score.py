"""The transfer score: how much of what should come from the pretrained model really did.

Counted by parameters and by tensors, overall, per ResNet stage and per target module. The
denominator is every pretrained tensor the target should carry (classifier head and step
counters excepted) plus every target tensor inside the scope that has no pretrained source, so a
backbone with layers nobody loaded cannot score 100%. Scores are rounded down: 99.95% is 99.9%,
never 100%.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from ckptlint.results import Score, ScoreSummary, StageScore

SCORE_DIGITS = 6


class ScoreEntry(NamedTuple):
    """One tensor's part in the score."""

    stage: str  # stem, layer1..layer4, other
    module: str | None  # the target module, None for a pretrained tensor nothing took
    parameters: int
    carried: bool  # the pretrained values are there (copied, cast, or fine-tuned as expected)
    verdict: str  # the pair's verdict, "missing" (pretrained unused) or "unmatched" (no source)


def floor_score(carried: int, total: int) -> float | None:
    """carried / total rounded down to SCORE_DIGITS decimals; None when there is nothing to score."""
    if not total:
        return None
    scale = 10 ** SCORE_DIGITS
    return math.floor(carried * scale / total) / scale


def _stage_order(stage: str) -> tuple[int, str]:
    """stem, layer1, layer2, ..., then anything else."""
    if stage == "stem":
        return 0, ""
    if stage.startswith("layer") and stage[5:].isdigit():
        return 1, f"{int(stage[5:]):04d}"
    return 2, stage


class _Tally:
    def __init__(self) -> None:
        self.parameters = self.carried = self.tensors = self.tensors_carried = 0
        self.verdicts: dict[str, int] = defaultdict(int)

    def add(self, entry: ScoreEntry, tensors: int = 1) -> None:
        """One tensor's entry, or ``tensors`` tensors' whose parameters ``entry`` sums."""
        self.parameters += entry.parameters
        self.tensors += tensors
        self.verdicts[entry.verdict] += tensors
        if entry.carried:
            self.carried += entry.parameters
            self.tensors_carried += tensors

    def score(self) -> Score:
        return Score(floor_score(self.carried, self.parameters), self.parameters,
                     floor_score(self.tensors_carried, self.tensors), self.tensors)


def score_summary(entries: Sequence[ScoreEntry]) -> ScoreSummary | None:
    """Scores overall, per stage (rows sum to the total) and per module; None without entries."""
    return grouped_score_summary((entry, 1) for entry in entries)


def grouped_score_summary(groups: Iterable[tuple[ScoreEntry, int]]) -> ScoreSummary | None:
    """``score_summary`` of entries given as (entry, tensors): ``entry.parameters`` is the sum of
    ``tensors`` tensors' parameters sharing its stage, module, verdict and carried flag (how a
    merge of partial reports adds up their scores); None without entries."""
    total = _Tally()
    stages: dict[str, _Tally] = defaultdict(_Tally)
    modules: dict[str, _Tally] = defaultdict(_Tally)
    for entry, tensors in groups:
        total.add(entry, tensors)
        stages[entry.stage].add(entry, tensors)
        if entry.module is not None:
            modules[entry.module].add(entry, tensors)
    if not total.tensors:
        return None
    return ScoreSummary(
        **total.score().only_score(),
        by_stage={name: StageScore(**row.score().only_score(), verdicts=dict(sorted(row.verdicts.items())))
                  for name, row in sorted(stages.items(), key=lambda item: _stage_order(item[0]))},
        by_module={name: row.score().score for name, row in sorted(modules.items())},
    )
