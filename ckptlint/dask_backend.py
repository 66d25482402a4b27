"""``ckptlint check --dask ADDRESS`` and ``lint_many(client=...)``: the parts of a many-file run
made on a Dask cluster.

Only a path, its Options and the source root travel to a worker: the worker reads the file itself
(a local or shared path, a bucket URL), makes the file's partial report (``parts.lint_part``) and
sends back that plain data; no tensor byte goes through the client. The run itself is
``many.lint_parts`` (window of parts in flight, in-order merging, one retry of a part that did not
come back) on ``DaskExecutor``, a ``concurrent.futures.Executor`` over a ``distributed.Client``:
one task per part, under a key of its own, ``retries=1`` for an exception raised in the task.

A worker that dies (OOM killer, a crash) is the scheduler's to recover: it runs the worker's
tasks elsewhere until one of them has killed ``allowed-failures`` + 1 workers (its
``KilledWorker``). A part lost that way (or to a closed connection, a cancelled task) is a
``WorkerDied``; many.py submits it once more, and a file whose second run is lost too is reported
in ``errors[]`` with how many Dask workers died on it. An exception raised by ``lint_part`` itself
(after Dask's retry and many.py's) is a bug of ckptlint and stops the run, as a local run does.

``distributed`` is imported only here, only when asked for (``pip install 'ckptlint[dask]'``).
"""

from __future__ import annotations

import gc
import itertools
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import BrokenExecutor, CancelledError, Executor, Future
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from ckptlint.errors import ConfigError
from ckptlint.identity import find_source_root
from ckptlint.many import Task, lint_parts
from ckptlint.merge import Merger, enabled_rules
from ckptlint.part_cache import PartCache
from ckptlint.progress import NoProgress, Progress
from ckptlint.results import Report

MISSING_EXTRA = "--dask needs the dask extra: pip install 'ckptlint[dask]'"
TASK_RETRIES = 1  # an exception raised in the task is run once more by Dask (a worker's death is the scheduler's)
GC_THRESHOLDS = (50_000, 20, 100)  # as cli.GC_THRESHOLDS and many.py's workers: a check frees by refcounts


class WorkerDied(BrokenExecutor):
    """A part that did not come back because the Dask worker running it died (or the task was
    lost with its connection). A ``BrokenExecutor``: many.py runs such a part once more."""

    def __init__(self, deaths: int, detail: str) -> None:
        super().__init__(detail)
        self.deaths = deaths
        self.detail = detail


def _in_worker(fn: Callable[..., Any], *args: Any) -> Any:
    """A part on a Dask worker, with the cyclic collector run as rarely as in ``ckptlint check``
    (a check makes many acyclic objects and frees them by refcounts); the worker's own thresholds
    are back when the part is made."""
    previous = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        return fn(*args)
    finally:
        gc.set_threshold(*previous)


def require_distributed() -> ModuleType:
    """``distributed``, or the one-line usage error naming the extra to install."""
    try:
        import distributed
    except ImportError:
        raise ConfigError(MISSING_EXTRA) from None
    return distributed


def _death(exc: BaseException) -> WorkerDied | None:
    """``exc`` as a lost part (how many workers died on it, and where), or None for an exception
    the task itself raised."""
    from distributed import KilledWorker
    from distributed.comm.core import CommClosedError

    if isinstance(exc, KilledWorker):
        last = getattr(exc.last_worker, "address", exc.last_worker)
        return WorkerDied(exc.allowed_failures + 1, f"the last one was {last}")
    if isinstance(exc, CommClosedError):
        return WorkerDied(1, f"connection closed: {exc}")
    if isinstance(exc, CancelledError):  # distributed's FutureCancelledError: the task was lost
        return WorkerDied(1, f"task cancelled: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    return None


def died_message(deaths: Sequence[WorkerDied]) -> str:
    """The ``errors[]`` message of a file whose every run was lost."""
    count = sum(death.deaths for death in deaths)
    times = "twice" if count == 2 else f"{count} times"
    detail = deaths[-1].detail if deaths else "no detail"
    return f"the Dask worker checking this file died {times} (killed by the system, out of memory?); {detail}"


class DaskExecutor(Executor):
    """``concurrent.futures`` over a ``distributed.Client``: each ``submit`` is one Dask task under
    a key of its own (``ckptlint-part-<run>-<n>``: never one an earlier run or a retry holds),
    ``pure=False``, ``retries=1``. Its future fails with ``WorkerDied`` when the task was lost
    with its worker, and with the task's own exception otherwise; ``failures[path]`` keeps what
    the runs of a path that has not come back yet ended with."""

    def __init__(self, client: Any, retries: int = TASK_RETRIES) -> None:
        self.client = client
        self.retries = retries
        self.run = uuid.uuid4().hex[:12]
        self.failures: dict[str, list[BaseException]] = {}
        self._numbers = itertools.count()
        self._in_flight: set[Any] = set()  # a Dask future nothing holds is released (its task forgotten)
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        if kwargs:
            raise TypeError("DaskExecutor.submit takes positional arguments only")
        label = str(args[0]) if args else fn.__name__
        key = f"ckptlint-part-{self.run}-{next(self._numbers):06d}"
        task = self.client.submit(_in_worker, fn, *args, key=key, pure=False, retries=self.retries)
        result: Future[Any] = Future()
        result.set_running_or_notify_cancel()
        with self._lock:
            self._in_flight.add(task)

        def settle(done: Any) -> None:  # in distributed's callback thread
            try:
                value = done.result()
            except BaseException as exc:  # noqa: BLE001 - handed on whole to whoever waits for the part
                lost = _death(exc)
                with self._lock:
                    self.failures.setdefault(label, []).append(lost or exc)
                result.set_exception(lost or exc)
            else:
                with self._lock:
                    self.failures.pop(label, None)
                result.set_result(value)
            finally:
                with self._lock:
                    self._in_flight.discard(done)

        task.add_done_callback(settle)
        return result

    def lost(self, path: str, message: str) -> WorkerDied | BaseException:
        """Why no part of ``path`` came back: the deaths, or the exception the task raised last."""
        with self._lock:
            failures = self.failures.pop(path, [])
        raised = [exc for exc in failures if not isinstance(exc, WorkerDied)]
        if raised:
            return raised[-1]
        deaths = [exc for exc in failures if isinstance(exc, WorkerDied)]
        return WorkerDied(0, message) if not deaths else WorkerDied(sum(d.deaths for d in deaths),
                                                                    died_message(deaths))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            pending = list(self._in_flight)
        if pending and (cancel_futures or not wait):
            self.client.cancel(pending)


def _worker_version() -> str:
    """Run on every worker before a run: the ckptlint it would lint with."""
    import ckptlint

    return ckptlint.__version__


def check_workers(client: Any) -> int:
    """The cluster's workers must run this ckptlint (a part from another version cannot be
    merged): a ConfigError naming the first that does not. Returns the number of worker threads."""
    import ckptlint

    versions = client.run(_worker_version, on_error="return")
    for address, version in sorted(versions.items()):
        if isinstance(version, BaseException):
            raise ConfigError(f"Dask worker {address} cannot run ckptlint ({type(version).__name__}: "
                              f"{str(version).splitlines()[0] if str(version) else ''}): install it on every "
                              f"worker: pip install 'ckptlint[dask]=={ckptlint.__version__}'")
        if version != ckptlint.__version__:
            raise ConfigError(f"Dask worker {address} has ckptlint {version}, this client {ckptlint.__version__}: "
                              f"install the same version on every worker")
    return sum(client.nthreads().values())


@contextmanager
def connected(cluster: Any) -> Iterator[Any]:
    """A ``distributed.Client``: the one given, or one connected to the scheduler address given
    (closed afterwards). An unreachable scheduler is a one-line ConfigError (after
    ``distributed.comm.timeouts.connect``, 30 s unless configured)."""
    distributed = require_distributed()
    if isinstance(cluster, distributed.Client):
        yield cluster
        return
    if not isinstance(cluster, (str, os.PathLike)):
        raise ConfigError(f"--dask takes a scheduler address (tcp://host:8786) or a distributed.Client, "
                          f"not {type(cluster).__name__}")
    address = os.fspath(cluster)
    try:
        client = distributed.Client(address, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"cannot connect to the Dask scheduler at {address}: {detail}") from None
    try:
        yield client
    finally:
        client.close()


def merge_many_dask(tasks: Sequence[Task], cluster: Any, *, fail_on: str,
                    cache_dir: str | os.PathLike[str] | None = None, progress: Progress | None = None,
                    source_root: str | None = None, report_type: type[Report] = Report) -> tuple[Merger, Report]:
    """``many.merge_many`` with the parts made on a Dask cluster (``cluster``: a scheduler
    address or a ``distributed.Client``): the same report, byte for byte, as ``--jobs 1``. A file
    whose every run was lost with its worker is in ``errors[]``; an exception ``lint_part`` raised
    on a worker is raised here (an internal error, as in a local run)."""
    root = source_root or find_source_root()
    with connected(cluster) as client:
        threads = check_workers(client)
        cache = PartCache(cache_dir, root) if cache_dir is not None else None
        distinct = list({id(options): options for _, options in tasks}.values())
        merged = Merger(fail_on=fail_on, source_root=root, rules=enabled_rules(distinct), report_type=report_type)
        executor = DaskExecutor(client)

        def on_error(path: str, message: str) -> None:
            why = executor.lost(path, message)
            if not isinstance(why, WorkerDied):
                raise why
            merged.add_error(path, why.detail if why.deaths else message)

        progress = progress or NoProgress()
        progress.start("files", len(tasks))
        try:
            for part in lint_parts(tasks, root, jobs=max(threads, 1), executor=executor, cache=cache,
                                   on_error=on_error):
                merged.add(part)
                progress.advance()
        finally:
            executor.shutdown(wait=False, cancel_futures=True)
        progress.finish()
    return merged, merged.result()
