"""What a target should be, read from the evidence: a copy of the pretrained backbone or a
fine-tuned descendant of it, and which of its tensors training left frozen.

Judged once all pairs are compared, because the answer is a property of the whole backbone:
a copy has every tensor bit-identical; fine-tuning moves the trainable tensors a little (still
strongly correlated with the pretrained values) and leaves the frozen ones bit-identical.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from ckptlint.facts.pair import PairFacts

# A drifted tensor looks fine-tuned when it is this correlated with its pretrained values.
FINETUNED_MIN_CORRELATION = 0.9
# Share of the compared tensors that must have drifted that way to call the target fine-tuned
# without training state in the file (a copy has none; one stray tensor is a bug, not training).
FINETUNED_MIN_SHARE = 0.1
# ... while copies and drifts together explain nearly all of them (a half re-initialised
# backbone is not "fine-tuned").
FINETUNED_EXPLAINED_SHARE = 0.9
# A group (ResNet stage) whose parameters stayed unchanged to this share while others drifted
# was frozen. BatchNorms without step counters are FrozenBatchNorms only if (nearly) all stayed.
FROZEN_GROUP_SHARE = 0.9
FROZEN_BUFFERS_MOVED_SHARE = 0.1
# Fine-tuning moves weights a few percent (DETR's released checkpoints: ~3%): drift beyond this
# is accepted under --max-drift once the target is known to be fine-tuned, but never used to
# infer that it is (20% noise correlates 0.98 with the values it was added to).
FINETUNED_INFER_MAX_DRIFT = 0.1
RUNNING_STATS = ("running_mean", "running_var")


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
    return (pair["verdict"] == "modified" and pair["rel_error"] <= FINETUNED_INFER_MAX_DRIFT
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
    identical = [p for p in compared if _unchanged(p)]
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
        reason = ("no training state in the file, and no tensor of equal shape to compare" if not compared
                  else f"no training state in the file, and every compared tensor {_identical(identical, every=True)}"
                  if not differing
                  else f"no training state in the file, and the {differing} differing tensors of {len(compared)} "
                       "do not look like fine-tuning drift")
    if expect != "finetuned":
        return Expectation(expect, reason, {}, "")
    frozen, frozen_reason = _frozen(compared, drifted, preset_frozen, preset_name)
    return Expectation(expect, reason, frozen, frozen_reason)


def _unchanged(pair: PairFacts) -> bool:
    """The pretrained values, to the bit or rounded to the target's (or a round-trip) dtype."""
    return pair["verdict"] in ("copied", "cast")


def _frozen(compared: list[PairFacts], drifted: list[PairFacts], preset_frozen: Sequence[str],
            preset_name: str | None) -> tuple[dict[str, str], str]:
    """Target keys that training left frozen: FrozenBatchNorm tensors (buffers, never trained)
    unless most of them moved (then they were ordinary BatchNorms saved without counters), the
    preset's frozen tensors (an explicit preset is trusted), and whole groups (ResNet stages)
    that stayed unchanged while others drifted."""
    frozen: dict[str, str] = {}
    reasons = []
    buffers = [p for p in compared if p["module_kind"] == "frozen_batchnorm"]
    if buffers and sum(not _unchanged(p) for p in buffers) <= FROZEN_BUFFERS_MOVED_SHARE * len(buffers):
        frozen.update({p["target"]: "a FrozenBatchNorm buffer" for p in buffers})
        reasons.append(f"{len(buffers)} FrozenBatchNorm tensors (buffers)")
    elif buffers:
        reasons.append(f"not the {len(buffers)} BatchNorm tensors without step counters: most of them moved, so "
                       "they were trained")
    if preset_frozen:
        by_preset = [p for p in compared if any(fnmatchcase(p["canonical"], g) for g in preset_frozen)
                     and p["target"] not in frozen]
        frozen.update({p["target"]: f"the {preset_name} preset freezes it" for p in by_preset})
        if by_preset:
            reasons.append(f"{len(by_preset)} more tensors the {preset_name} preset freezes")
    if drifted:
        groups: dict[str, list[PairFacts]] = defaultdict(list)
        for pair in compared:
            if pair["stage"] != "other":
                groups[pair["stage"]].append(pair)
        still = [stage for stage, members in groups.items() if _mostly_identical(members)]
        for stage in still:
            # Running statistics are buffers that forward passes update even where the optimizer
            # froze the parameters: only a FrozenBatchNorm keeps them.
            frozen.update({p["target"]: f"{stage} stayed unchanged while training moved the rest"
                           for p in groups[stage] if p["target"] not in frozen and p["leaf"] not in RUNNING_STATS})
        if still:
            reasons.append(f"{', '.join(still)}: unchanged while the rest drifted")
    return frozen, "; ".join(reasons)


def _mostly_identical(members: list[PairFacts]) -> bool:
    """A stage whose parameters stayed unchanged while training moved others was frozen; a few
    drifted tensors among them are the anomaly (frozen tensors that changed)."""
    total = sum(m["numel"] for m in members)
    return sum(m["numel"] for m in members if _unchanged(m)) >= FROZEN_GROUP_SHARE * total
