"""The README's console examples of fixture checks print exactly what ckptlint prints (an example
ending in ``...`` is the start of the output)."""

from __future__ import annotations

import re
import shlex

import pytest

from conftest import REPO

EXAMPLES = [block for block in re.findall(r"```console\n(.*?)```", (REPO / "README.md").read_text("utf-8"), re.S)
            if block.startswith("$ ckptlint check fixtures/")]


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.partition("\n")[0][2:] for e in EXAMPLES])
def test_readme_example_is_the_real_output(example: str, run) -> None:
    command, _, shown = example.partition("\n")
    out = run(*shlex.split(command)[2:], cwd=REPO).out  # after "$ ckptlint"
    if shown.endswith("...\n"):
        assert out.startswith(shown[:-len("...\n")])
    else:
        assert out == shown
