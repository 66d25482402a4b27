"""What a target should be, read from the evidence: a copy of the pretrained backbone or a
fine-tuned descendant of it, and which of its tensors training left frozen.

Judged once all pairs are compared, because the answer is a property of the whole backbone:
a copy has every tensor bit-identical; fine-tuning moves the trainable tensors a little (still
strongly correlated with the pretrained values) and leaves the frozen ones bit-identical.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Sequence

from ckptlint.facts.pair import PairFacts

# A drifted tensor looks fine-tuned when it is this correlated with its pretrained values.
FINETUNED_MIN_CORRELATION = 0.9
# Share of the compared tensors that must have drifted that way to call the target fine-tuned
# without training state in the file (a copy has none; one stray tensor is a bug, not training).
FINETUNED_MIN_SHARE = 0.1
# ... while copies and drifts together explain nearly all of them (a half re-initialised
# backbone is not "fine-tuned").
FINETUNED_EXPLAINED_SHARE = 0.9
# A group (ResNet stage) whose parameters stayed bit-identical to this share while others
# drifted was frozen; a preset whose frozen tensors mostly drifted does not describe the file.
FROZEN_GROUP_SHARE = 0.9
PRESET_MISMATCH_SHARE = 0.5


@dataclass(frozen=True)
class Expectation:
    """How the target was judged, and why (shown in every report)."""

    expect: str  # "copied" or "finetuned"
    reason: str
    frozen: dict[str, str]  # target key training must have left bit-identical -> why we think so
    frozen_reason: str


def _compared(pairs: Sequence[PairFacts]) -> list[PairFacts]:
    """Pairs that say something about training: equal shapes, not a step counter."""
    return [p for p in pairs if p["shape_equal"] and not p["is_counter"]]


def _drifted(pair: PairFacts) -> bool:
    correlation = pair["correlation"]
    return (pair["verdict"] == "modified" and pair["within_drift"]
            and (correlation is None or correlation >= FINETUNED_MIN_CORRELATION))


def _identical(pairs: list[PairFacts], every: bool = False) -> str:
    """``223 are bit-identical`` / ``is bit-identical or cast (265)``."""
    cast = sum(p["verdict"] == "cast" for p in pairs)
    kind = "bit-identical" if not cast else "cast" if cast == len(pairs) else "bit-identical or cast"
    return f"is {kind}" if every else f"{len(pairs)} are {kind}"


def _percent_range(values: list[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:.2%}" if low == high else f"{low:.2%}-{high:.2%}"


def infer_expectation(pairs: Sequence[PairFacts], training_state: Sequence[str], given: str,
                      preset_frozen: Sequence[str], preset_name: str | None) -> Expectation:
    """Decide copy or fine-tune (unless ``given`` says), then which tensors were frozen."""
    compared = _compared(pairs)
    drifted = [p for p in compared if _drifted(p)]
    identical = [p for p in compared if p["verdict"] in ("copied", "cast")]
    drift = (f"{len(drifted)} of {len(compared)} compared tensors drifted slightly "
             f"({_percent_range([p['rel_error'] for p in drifted])} relative L2, correlation >= "
             f"{FINETUNED_MIN_CORRELATION}) and {_identical(identical)}") if drifted else ""
    if given != "auto":
        expect, reason = given, f"--expect {given} was given"
    elif training_state:
        expect = "finetuned"
        reason = f"the file holds training state ({', '.join(training_state)})"
        reason += f"; {drift}" if drift else "; no compared tensor drifted"
    elif (compared and len(drifted) >= max(1.0, FINETUNED_MIN_SHARE * len(compared))
          and len(drifted) + len(identical) >= FINETUNED_EXPLAINED_SHARE * len(compared)):
        expect, reason = "finetuned", drift
    else:
        expect = "copied"
        differing = len(compared) - len(identical)
        reason = (f"no training state in the file, and every compared tensor {_identical(identical, every=True)}"
                  if not differing
                  else f"no training state in the file, and the {differing} differing tensors of {len(compared)} "
                       "do not look like fine-tuning drift")
    if expect != "finetuned":
        return Expectation(expect, reason, {}, "")
    frozen, frozen_reason = _frozen(compared, drifted, preset_frozen, preset_name)
    return Expectation(expect, reason, frozen, frozen_reason)


def _frozen(compared: list[PairFacts], drifted: list[PairFacts], preset_frozen: Sequence[str],
            preset_name: str | None) -> tuple[dict[str, str], str]:
    """Target keys that training left frozen: FrozenBatchNorm tensors (buffers, never trained),
    the preset's frozen tensors when the file bears the preset out, and whole groups (ResNet
    stages) that stayed bit-identical while others drifted."""
    frozen = {p["target"]: "a FrozenBatchNorm buffer" for p in compared if p["module_kind"] == "frozen_batchnorm"}
    reasons = [f"{len(frozen)} FrozenBatchNorm tensors (buffers)"] if frozen else []
    if preset_frozen:
        by_preset = [p for p in compared if any(fnmatchcase(p["canonical"], g) for g in preset_frozen)]
        moved = [p for p in by_preset if not p["bit_equal"] and p["module_kind"] != "frozen_batchnorm"]
        if by_preset and len(moved) <= PRESET_MISMATCH_SHARE * len(by_preset):
            frozen.update({p["target"]: f"the {preset_name} preset freezes it" for p in by_preset
                           if p["target"] not in frozen})
            reasons.append(f"{len(by_preset)} tensors the {preset_name} preset freezes")
        else:
            reasons.append(f"not the {preset_name} preset's frozen list: {len(moved)} of its "
                           f"{len(by_preset)} tensors drifted in this file")
    if drifted:
        groups: dict[str, list[PairFacts]] = defaultdict(list)
        for pair in compared:
            if pair["stage"] != "other":
                groups[pair["stage"]].append(pair)
        still = [stage for stage, members in groups.items() if _mostly_identical(members)]
        for stage in still:
            frozen.update({p["target"]: f"{stage} stayed bit-identical while training moved the rest"
                           for p in groups[stage] if p["target"] not in frozen})
        if still:
            reasons.append(f"{', '.join(still)}: bit-identical while the rest drifted")
    return frozen, "; ".join(reasons)


def _mostly_identical(members: list[PairFacts]) -> bool:
    """A stage whose parameters stayed bit-identical while training moved others was frozen;
    a few drifted tensors among them are the anomaly (frozen tensors that changed)."""
    total = sum(m["numel"] for m in members)
    return sum(m["numel"] for m in members if m["bit_equal"]) >= FROZEN_GROUP_SHARE * total
