"""A one-line progress bar on stderr, for a terminal only, and only once work lasts a moment."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

DELAY = 0.5  # seconds of work before the bar appears
REFRESH = 0.1
WIDTH = 30


class Progress:
    """Counts units of work (tensors) for one label (a file) at a time."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.clock = clock
        self.label, self.total, self.done = "", 0, 0
        self.started = self.drawn_at = 0.0
        self.visible = False

    def start(self, label: str, total: int) -> None:
        self.label, self.total, self.done = label, max(total, 1), 0
        self.started = self.clock()

    def advance(self, units: int = 1) -> None:
        self.done += units
        if not self.enabled:
            return
        now = self.clock()
        if now - self.started >= DELAY and (now - self.drawn_at >= REFRESH or self.done >= self.total):
            filled = int(WIDTH * min(self.done / self.total, 1.0))
            self.stream.write(f"\r{self.label[-40:]:<40} [{'#' * filled}{'.' * (WIDTH - filled)}] "
                              f"{self.done}/{self.total}")
            self.stream.flush()
            self.drawn_at, self.visible = now, True

    def finish(self) -> None:
        """Clear the line so the report starts clean."""
        if self.visible:
            self.stream.write("\r" + " " * (WIDTH + 60) + "\r")
            self.stream.flush()
            self.visible = False


class NoProgress(Progress):
    """For library calls: counts nothing, draws nothing."""

    def __init__(self) -> None:
        self.enabled = False
        self.visible = False
        self.label, self.total, self.done = "", 1, 0

    def start(self, label: str, total: int) -> None:
        pass

    def advance(self, units: int = 1) -> None:
        pass
