"""The progress bar: drawn on a terminal once work lasts a moment, never into a pipe."""

from __future__ import annotations

import io

from ckptlint.progress import DELAY, Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_bar_appears_after_the_delay_and_is_cleared() -> None:
    stream, clock = Terminal(), Clock()
    progress = Progress(stream, clock)
    progress.start("big.pt", 100)
    progress.advance(10)
    assert stream.getvalue() == ""  # quick work shows nothing
    clock.now = DELAY + 0.01
    progress.advance(40)
    assert "big.pt" in stream.getvalue() and "50/100" in stream.getvalue()
    progress.finish()
    assert stream.getvalue().endswith("\r")


def test_nothing_is_drawn_when_stderr_is_not_a_terminal() -> None:
    stream, clock = io.StringIO(), Clock()
    progress = Progress(stream, clock)
    progress.start("big.pt", 100)
    clock.now = 10.0
    progress.advance(100)
    progress.finish()
    assert stream.getvalue() == ""
