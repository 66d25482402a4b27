"""The key prefixes a loader missed, read off the alignment, and the code that maps them.

When nothing was loaded, the alignment had to find each pair itself: the prefix it inferred
(``backbone.0.body.`` on the target, nothing on the pretrained side) is the one the user's
``load_state_dict`` did not add, and a prefix the reader stripped from the pretrained file
(``module.``, Lightning's ``model.``) is one it did not remove.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence

from ckptlint.results import PairRecord


def split_prefixes(new: str, old: str) -> tuple[str, str] | None:
    """The prefixes before the longest common dotted suffix:
    (``backbone.0.body.conv1.weight``, ``conv1.weight``) -> (``backbone.0.body.``, ``""``)."""
    # the common suffix, in characters (then cut back to a whole name below)
    size = len(os.path.commonprefix([new[::-1], old[::-1]]))  # noqa: RUF071
    while size and not all(len(key) == size or key[-size - 1] == "." for key in (new, old)):
        dot = new.find(".", len(new) - size)  # the suffix starts mid-name: keep only the names after it
        size = len(new) - dot - 1 if dot >= 0 else 0
    return (new[:len(new) - size], old[:len(old) - size]) if size else None


def _agreed(candidates: Iterable[tuple[str, str]], out_of: int) -> tuple[str, str] | None:
    """The prefix pair most candidates share, if more than half of ``out_of`` keys do."""
    votes = Counter(split for new, old in candidates if (split := split_prefixes(new, old)) is not None)
    if not votes:
        return None
    best, count = votes.most_common(1)[0]
    return best if count * 2 > out_of else None


def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def missed_prefix(pairs: Sequence[PairRecord], stripped: str) -> dict[str, str] | None:
    """{target, pretrained, code}: the prefix the target's keys have and the pretrained file's
    lack, the one the pretrained file's have and the target's lack, and a state-dict comprehension
    that loads it; None when no single prefix explains most pairs (another naming scheme)."""
    agreed = _agreed(((p.target, p.pretrained) for p in pairs), len(pairs)) if pairs else None
    if agreed is None:
        return None
    add, remove = agreed[0], stripped + agreed[1]
    if not (add or remove):
        return None
    key = f"k.removeprefix({_quoted(remove)})" if remove else "k"
    return {"target": add, "pretrained": remove,
            "code": f"{{{_quoted(add) + ' + ' if add else ''}{key}: v for k, v in sd.items()}}"}


def renamed_prefix(missing: Sequence[tuple[str, int]], unexpected: Sequence[tuple[str, int]]) -> dict[str, str] | None:
    """{new, old, code}: a renamed module that explains the model's missing keys by the
    checkpoint's unexpected ones (same last name, same size), or None."""
    candidates = [(new, old) for new, size in missing for old, other in unexpected
                  if size == other and new.rpartition(".")[2] == old.rpartition(".")[2]]
    agreed = _agreed(candidates, min(len(missing), len(unexpected)))
    if agreed is None or not all(agreed):
        return None
    new, old = agreed
    return {"new": new, "old": old,
            "code": f"{{({_quoted(new)} + k.removeprefix({_quoted(old)}) if k.startswith({_quoted(old)}) else k): v "
                    f"for k, v in sd.items()}}"}
