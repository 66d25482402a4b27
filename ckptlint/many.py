"""Many files at once: each target's partial report made in this process, in local worker
processes (``--jobs N``) or on any ``concurrent.futures.Executor``, taken from the cache when
its content is unchanged, and handed on in the order of the paths, whatever order they finish in.

At most a window of parts is in flight (four per worker), so a run of 10,000 files holds a
handful of partial reports at a time. Workers are started with ``spawn`` (torch, numpy and fork
do not mix). A worker that dies (``BrokenProcessPool``: the OOM killer, a crash) takes with it
every part in flight; each of those is run again alone, in a fresh process, and a file whose
second run dies too is reported in ``errors[]``; the other files are not affected.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import BrokenExecutor, Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from ckptlint.errors import CkptlintError
from ckptlint.identity import find_source_root
from ckptlint.merge import Merger, enabled_rules
from ckptlint.options import Options
from ckptlint.part_cache import PartCache
from ckptlint.parts import lint_part
from ckptlint.progress import NoProgress, Progress
from ckptlint.results import Report
from ckptlint.runner import DEBUG_ENV

WINDOW_PER_WORKER = 4
WORKER_DIED = "the worker process checking this file died twice (killed by the system, out of memory?)"
Task = tuple[str, Options]


def _start_worker() -> None:
    """As in the CLI: the collector runs every 50,000 allocations (a check frees by refcounts)."""
    gc.set_threshold(50_000, 20, 100)


@dataclass
class _Slot:
    path: str
    options: Options
    key: str | None
    part: dict[str, Any] | None = None
    future: Future[dict[str, Any]] | None = None
    generation: int = 0


class _LocalPool:
    """``jobs`` spawned worker processes; a broken pool is replaced by a fresh one."""

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs
        self.generation = 0
        self._pool = self._new(jobs)
        self._alone: ProcessPoolExecutor | None = None

    @staticmethod
    def _new(workers: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_worker)

    def submit(self, path: str, options: Options, source_root: str) -> tuple[Future[dict[str, Any]], int]:
        try:
            return self._pool.submit(lint_part, path, options, source_root), self.generation
        except BrokenExecutor:
            self.broken(self.generation)
            return self._pool.submit(lint_part, path, options, source_root), self.generation

    def broken(self, generation: int) -> None:
        """The pool of this generation died: later parts go to a fresh one."""
        if generation == self.generation:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new(self.jobs)
            self.generation += 1

    def retry(self, path: str, options: Options, source_root: str) -> dict[str, Any] | None:
        """Run one part alone in its own process (reused while it lives): None if it dies too."""
        if self._alone is None:
            self._alone = self._new(1)
        try:
            return self._alone.submit(lint_part, path, options, source_root).result()
        except BrokenExecutor:
            self._alone.shutdown(wait=False)
            self._alone = None
            return None

    def close(self) -> None:
        for pool in (self._pool, self._alone):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


class _GivenExecutor:
    """A caller's executor (a Dask client's, a thread pool): a failed part is submitted once more."""

    generation = 0

    def __init__(self, executor: Executor) -> None:
        self.executor = executor

    def submit(self, path: str, options: Options, source_root: str) -> tuple[Future[dict[str, Any]], int]:
        return self.executor.submit(lint_part, path, options, source_root), 0

    def broken(self, generation: int) -> None:
        """The executor recovers by itself (or not at all): nothing to replace."""

    def retry(self, path: str, options: Options, source_root: str) -> dict[str, Any] | None:
        try:
            return self.executor.submit(lint_part, path, options, source_root).result()
        except CkptlintError:
            raise
        except Exception:  # a second failure of any kind: the file is reported, the run goes on
            if os.environ.get(DEBUG_ENV):
                raise
            return None


def _died(exc: BaseException) -> bool:
    """A part that did not come back because its worker went away (not an error of ckptlint's)."""
    if isinstance(exc, BrokenExecutor):
        return True
    return isinstance(exc, Exception) and not isinstance(exc, CkptlintError) and not os.environ.get(DEBUG_ENV)


def lint_parts(tasks: Iterable[Task], source_root: str, *, jobs: int = 1, executor: Executor | None = None,
               cache: PartCache | None = None,
               on_error: Callable[[str, str], None] | None = None) -> Iterator[dict[str, Any]]:
    """Each task's partial report, in the order of ``tasks``. A file whose part could not be
    made (its worker died twice) yields nothing: ``on_error(path, message)`` is called instead.
    A usage error (a ``CkptlintError`` raised by a part) stops the run, as in a check."""
    if executor is None and jobs <= 1:
        for path, options in tasks:
            key = cache.key(path, options) if cache else None
            part = cache.get(key) if cache else None
            if part is None:
                part = lint_part(path, options, source_root)
                if cache:
                    cache.put(key, part)
            yield part
        return
    pool: _LocalPool | _GivenExecutor = _GivenExecutor(executor) if executor is not None else _LocalPool(jobs)
    window = WINDOW_PER_WORKER * max(jobs, 1) if executor is None else WINDOW_PER_WORKER * 8
    pending: deque[_Slot] = deque()

    def finish(slot: _Slot) -> dict[str, Any] | None:
        if slot.future is None:  # taken from the cache
            return slot.part
        try:
            part = slot.future.result()
        except BaseException as exc:
            if not _died(exc):
                raise
            pool.broken(slot.generation)
            retried = pool.retry(slot.path, slot.options, source_root)
            if retried is None:
                if on_error is not None:
                    on_error(slot.path, WORKER_DIED)
                return None
            part = retried
        if cache:
            cache.put(slot.key, part)
        return part

    try:
        for path, options in tasks:
            key = cache.key(path, options) if cache else None
            slot = _Slot(path, options, key, cache.get(key) if cache else None)
            if slot.part is None:
                slot.future, slot.generation = pool.submit(path, options, source_root)
            pending.append(slot)
            while len(pending) >= window:
                done = finish(pending.popleft())
                if done is not None:
                    yield done
        while pending:
            done = finish(pending.popleft())
            if done is not None:
                yield done
    finally:
        if isinstance(pool, _LocalPool):
            pool.close()


def merge_many(tasks: Sequence[Task], *, fail_on: str, jobs: int = 1, executor: Executor | None = None,
               cache_dir: str | os.PathLike[str] | None = None, progress: Progress | None = None,
               source_root: str | None = None, report_type: type[Report] = Report) -> tuple[Merger, Report]:
    """Lint every (path, options) task as a part and merge the parts as they arrive, in order."""
    root = source_root or find_source_root()
    cache = PartCache(cache_dir, root) if cache_dir is not None else None
    distinct = list({id(options): options for _, options in tasks}.values())
    merged = Merger(fail_on=fail_on, source_root=root, rules=enabled_rules(distinct), report_type=report_type)
    progress = progress or NoProgress()
    progress.start("files", len(tasks))
    for part in lint_parts(tasks, root, jobs=jobs, executor=executor, cache=cache, on_error=merged.add_error):
        merged.add(part)
        progress.advance()
    progress.finish()
    return merged, merged.result()
