"""``--dask ADDRESS`` / ``lint_many(client=...)``: the parts of a many-file run made on a Dask cluster
(issue 15). A real ``distributed.LocalCluster`` of 2 worker processes, started here.

What must hold: the report is the one ``--jobs 1`` writes, byte for byte; a worker killed in the
middle of a run loses nothing and doubles nothing; a file that kills every worker it runs on is
retried, then reported in ``errors[]``, and every other file is reported once; an exception of
ckptlint's own on a worker stops the run; without the extra, one line names it.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from safetensors.numpy import save_file

distributed = pytest.importorskip(
    "distributed", reason="the Dask tests need distributed: pip install 'ckptlint[dask]' (or '.[test]')")

import dask  # noqa: E402 - after the skip: without the extra the module is skipped, not an error

import ckptlint  # noqa: E402
from ckptlint import dask_backend, parts  # noqa: E402
from ckptlint.config import resolve_jobs  # noqa: E402
from ckptlint.errors import ConfigError  # noqa: E402
from ckptlint.many import merge_many  # noqa: E402
from ckptlint.progress import NoProgress  # noqa: E402
from ckptlint.report import renderer  # noqa: E402
from ckptlint.targets import expand_paths  # noqa: E402
from conftest import REPO  # noqa: E402

PRETRAINED = "fixtures/models/resnet50_tiny.pth"
SHIPPED = ["fixtures/cases/*/*.pt", "fixtures/cases/*/*.pth", "fixtures/cases/*/*.safetensors", "fixtures/models/*",
           "no-such-file.pt"]
ALLOWED_FAILURES = 1  # the scheduler reruns a task whose worker died once; the second death is a KilledWorker


def _zoo(folder: Path, count: int) -> list[str]:
    """``count`` files of a few trained-looking layers; every fifth holds a NaN (a finding)."""
    rng = np.random.default_rng(15)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        tensors = {}
        for layer in range(3):
            weight = rng.normal(0, 0.05, (192, 192)).astype(np.float32) + np.linspace(0, 0.1, 192, dtype=np.float32)
            if i % 5 == 0 and layer == 1:
                weight[3, 4] = np.nan
            tensors[f"blocks.{layer}.fc.weight"] = weight
            tensors[f"blocks.{layer}.fc.bias"] = rng.normal(0, 0.01, 192).astype(np.float32)
        path = folder / f"model_{i:03d}.safetensors"
        save_file({k: np.ascontiguousarray(v, dtype='<f4') for k, v in tensors.items()}, str(path))
        paths.append(str(path))
    return paths


def _tasks(paths: list[str], settings: dict | None = None, *, hash_files: bool = True) -> list:
    """(path, Options) as ``ckptlint check`` makes them."""
    expanded = expand_paths(paths)
    groups = resolve_jobs(expanded, dict(settings or {}), None, hash_files=hash_files, histograms=False)
    options_of = {path: options for group, options in groups for path in group}
    return [(path, options_of[path]) for path in expanded]


def _renders(report) -> tuple[str, str]:
    return renderer("json", False)(report), renderer("text", False)(report)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """2 worker processes of one thread; in a worker, ``lint_part`` of the poison path kills the
    process (``parts.TEST_CRASH_ENV``, a test-only hook: never in the client)."""
    folder = tmp_path_factory.mktemp("dask")
    poison = str(folder / "poison.safetensors")
    previous = Path.cwd()
    os.chdir(REPO)  # the workers start here: the shipped fixtures' relative paths are theirs too
    try:
        local = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                         scheduler_kwargs={"allowed_failures": ALLOWED_FAILURES},
                                         env={parts.TEST_CRASH_ENV: poison})
        client = distributed.Client(local, set_as_default=False)
    finally:
        os.chdir(previous)
    try:
        yield {"cluster": local, "client": client, "folder": folder, "poison": poison}
    finally:
        client.close()
        local.close()


@pytest.fixture
def client(cluster, monkeypatch):
    monkeypatch.chdir(REPO)
    cluster["client"].wait_for_workers(2, timeout=60)
    return cluster["client"]


# --- the same report as --jobs 1 --------------------------------------------------------------

# facts/compare.py sums products with BLAS (`t @ p`): with more than one BLAS thread the last bits of a
# cosine depend on how many, and Dask starts its workers with OMP_NUM_THREADS=1 (`OPENBLAS_NUM_THREADS=1
# ckptlint check --jobs 1` differs from `ckptlint check --jobs 1` the same way). Two of the shipped targets
# hit it against the pretrained file; strict, so the mark must go when the sums are made deterministic.
BLAS_THREADS = pytest.mark.xfail(strict=True, reason="the last bits of compare.py's BLAS sums depend on the "
                                 "BLAS thread count (Dask workers: 1)")
CASES = [pattern for pattern in SHIPPED if not pattern.startswith("fixtures/models/")]


@pytest.mark.parametrize(("files", "settings"), [
    (SHIPPED, {}),
    (CASES, {"pretrained": PRETRAINED}),
    pytest.param(SHIPPED, {"pretrained": PRETRAINED}, marks=BLAS_THREADS),
], ids=["shipped", "cases-pretrained", "shipped-pretrained"])
def test_the_report_is_the_jobs_1_report_byte_for_byte(client, files, settings) -> None:
    tasks = _tasks(files, settings)
    assert len(tasks) > 20
    merged, report = dask_backend.merge_many_dask(tasks, client, fail_on="error")
    _, local = merge_many(tasks, fail_on="error", jobs=1)
    assert _renders(report) == _renders(local)
    assert merged.parts == len(tasks)  # every file once (no-such-file.pt: a part with its read error)
    data = json.loads(_renders(report)[0])
    assert [e["file"] for e in data["errors"]].count("no-such-file.pt") == 1
    assert not any("Dask" in e["message"] for e in data["errors"])


def test_a_scheduler_address_gives_the_same_report_and_the_client_is_closed(cluster, client) -> None:
    tasks = _tasks(["fixtures/cases/transfer-selective/detr.pth", "fixtures/cases/non-finite/model.pt"],
                   {"pretrained": PRETRAINED})
    def clients() -> int:
        return client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.clients))

    before = clients()
    _, report = dask_backend.merge_many_dask(tasks, cluster["cluster"].scheduler_address, fail_on="error")
    _, local = merge_many(tasks, fail_on="error", jobs=1)
    assert _renders(report) == _renders(local)
    deadline = time.monotonic() + 10
    while clients() != before and time.monotonic() < deadline:  # the scheduler hears of the close soon after
        time.sleep(0.05)
    assert clients() == before, "the client made for an address must be closed after the run"


# --- workers that die ---------------------------------------------------------------------------

class _KillAfter(NoProgress):
    """Kills the process of a Dask worker that is running a part, after ``after`` parts merged."""

    def __init__(self, client, after: int) -> None:
        super().__init__()
        self.client, self.after, self.merged, self.killed = client, after, 0, threading.Event()
        self.victim: tuple[str, int, list] | None = None  # address, pid, keys of the parts it was processing

    def advance(self, units: int = 1) -> None:
        self.merged += units
        if self.merged == self.after:
            threading.Thread(target=self._kill, daemon=True).start()

    def _kill(self) -> None:
        pids = self.client.run(os.getpid)
        for _ in range(200):
            busy = {address: keys for address, keys in self.client.processing().items() if keys}
            if busy:
                address = sorted(busy)[0]
                self.victim = (address, pids[address], list(busy[address]))
                os.kill(pids[address], signal.SIGKILL)
                break
            time.sleep(0.01)
        self.killed.set()


def test_a_worker_killed_in_the_middle_of_a_run_loses_nothing_and_doubles_nothing(cluster, client,
                                                                                   monkeypatch) -> None:
    monkeypatch.delenv("CKPTLINT_DEBUG")  # as users run it: a lost part is retried, not raised
    zoo = _zoo(cluster["folder"] / "killed", 40)
    tasks = _tasks(zoo)
    _, local = merge_many(tasks, fail_on="error", jobs=1)
    killer = _KillAfter(client, after=4)
    started = time.monotonic()
    merged, report = dask_backend.merge_many_dask(tasks, client, fail_on="error", progress=killer)
    assert killer.killed.wait(30) and killer.victim is not None, "no worker was busy to be killed"
    address, pid, lost = killer.victim
    assert lost and all(key.startswith("ckptlint-part-") for key in lost)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    # the scheduler ran the parts the killed worker held again, on a worker that lived (one of them may
    # have finished between the look at the worker and the kill)
    story = client.run_on_scheduler(lambda dask_scheduler, keys: dask_scheduler.story(*keys), keys=lost)
    runs = [len([record for record in story if record[0] == key and record[2] == "processing"]) for key in lost]
    assert 2 in runs and set(runs) <= {1, 2}, (runs, story)
    assert merged.parts == len(zoo) == killer.merged  # every file merged exactly once
    data = json.loads(_renders(report)[0])
    assert [f["path"] for f in data["files"]] == sorted(zoo) == [f["path"] for f in json.loads(
        _renders(local)[0])["files"]]
    assert not data["errors"]
    assert len([f for f in data["findings"] if f["name"] == "non-finite"]) == len(zoo[::5])
    assert _renders(report) == _renders(local)  # no finding lost or doubled
    client.wait_for_workers(2, timeout=60)  # the nanny restarted the killed worker
    assert address not in client.scheduler_info()["workers"] or pid not in client.run(os.getpid).values()
    assert time.monotonic() - started < 300


def test_a_file_that_always_kills_its_worker_is_retried_then_reported_and_the_rest_is_not_lost(cluster, client,
                                                                                              monkeypatch) -> None:
    monkeypatch.delenv("CKPTLINT_DEBUG")
    zoo = _zoo(cluster["folder"] / "poisoned", 10)
    poison = cluster["poison"]
    Path(poison).write_bytes(Path(zoo[3]).read_bytes())  # a good file: only the hook makes it fatal
    tasks = _tasks(zoo[:6] + [poison] + zoo[6:])
    assert [path for path, _ in tasks].count(poison) == 1
    merged, report = dask_backend.merge_many_dask(tasks, client, fail_on="error")
    data = json.loads(_renders(report)[0])
    deaths = 2 * (ALLOWED_FAILURES + 1)  # the scheduler's reruns, then ours, each ending in a KilledWorker
    assert [e["file"] for e in data["errors"]] == [poison]
    message = data["errors"][0]["message"]
    assert message.startswith(f"the Dask worker checking this file died {deaths} times (killed by the system, "
                              "out of memory?); the last one was tcp://"), message
    assert "\n" not in message
    assert merged.parts == len(zoo)
    assert [f["path"] for f in data["files"]] == sorted(zoo)  # every other file, exactly once
    _, others = merge_many(_tasks(zoo), fail_on="error", jobs=1)
    assert data["findings"] == json.loads(_renders(others)[0])["findings"]
    client.wait_for_workers(2, timeout=60)


def test_the_message_counts_the_deaths() -> None:
    one = dask_backend.WorkerDied(1, "the last one was tcp://10.0.0.7:4001")
    assert dask_backend.died_message([one, one]) == ("the Dask worker checking this file died twice (killed by "
                                                     "the system, out of memory?); the last one was "
                                                     "tcp://10.0.0.7:4001")
    assert " died 8 times " in dask_backend.died_message([dask_backend.WorkerDied(4, "x")] * 2)


def test_an_exception_of_ckptlint_on_a_worker_stops_the_run(client, cluster, monkeypatch) -> None:
    monkeypatch.delenv("CKPTLINT_DEBUG")
    tasks = _tasks(_zoo(cluster["folder"] / "bug", 3))

    def break_parts() -> None:  # a bug outside the runner's per-file guard
        import ckptlint.parts

        def broken(report):
            raise RuntimeError("a bug in the part's JSON")

        ckptlint.parts.report_data = broken

    def mend_parts() -> None:
        import ckptlint.parts
        from ckptlint.report.json_report import report_data

        ckptlint.parts.report_data = report_data

    client.run(break_parts)
    try:
        with pytest.raises(RuntimeError, match="a bug in the part's JSON"):
            dask_backend.merge_many_dask(tasks, client, fail_on="error")
    finally:
        client.run(mend_parts)
    _, report = dask_backend.merge_many_dask(tasks, client, fail_on="error")
    assert not report.errors and len(report.files) == 3


# --- the cluster must be usable ---------------------------------------------------------------------

def test_workers_with_another_ckptlint_are_refused_before_anything_runs(client) -> None:
    def pretend_other() -> None:
        import ckptlint

        ckptlint.__version__ = "0.0.0-other"

    version = ckptlint.__version__

    def mend() -> None:
        import ckptlint

        ckptlint.__version__ = version

    client.run(pretend_other)
    try:
        with pytest.raises(ConfigError, match=r"^Dask worker tcp://\S+ has ckptlint 0\.0\.0-other, this client "
                                              rf"{ckptlint.__version__}: install the same version on every worker$"):
            dask_backend.merge_many_dask(_tasks(["fixtures/cases/non-finite/model.pt"]), client, fail_on="error")
    finally:
        client.run(mend)
    assert set(client.run(dask_backend._worker_version).values()) == {ckptlint.__version__}


def test_an_unreachable_scheduler_is_one_line(monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}), pytest.raises(ConfigError) as raised:
        dask_backend.merge_many_dask(_tasks(["fixtures/cases/non-finite/model.pt"]), "tcp://127.0.0.1:9",
                                     fail_on="error")
    assert str(raised.value).startswith("cannot connect to the Dask scheduler at tcp://127.0.0.1:9: ")
    assert "\n" not in str(raised.value)


def test_without_the_extra_dask_is_a_one_line_error_naming_it(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` fails as if not installed
    with pytest.raises(ConfigError) as raised:
        dask_backend.merge_many_dask([], "tcp://scheduler:8786", fail_on="error")
    # the CLI prints a CkptlintError as `ckptlint: error: ...` and exits 2
    assert f"ckptlint: error: {raised.value}" == ("ckptlint: error: --dask needs the dask extra: "
                                                  "pip install 'ckptlint[dask]'")


# --- once wired into cli.py and python_api.py (skipped until then) -------------------------------

def _cli_has_dask() -> bool:
    from ckptlint.cli import check

    return any("--dask" in getattr(param, "opts", ()) for param in check.params)


@pytest.mark.skipif(not _cli_has_dask(), reason="`check --dask` is not wired into cli.py yet")
def test_cli_check_dask_equals_jobs_1(cluster, client, run) -> None:
    files = ["fixtures/cases/transfer-selective/detr.pth", "fixtures/cases/non-finite/model.pt"]
    address = cluster["cluster"].scheduler_address
    for fmt in ("json", "text"):
        local = run("check", *files, "--pretrained", PRETRAINED, "--format", fmt, "--jobs", "1")
        spread = run("check", *files, "--pretrained", PRETRAINED, "--format", fmt, "--dask", address)
        assert (spread.code, spread.out) == (local.code, local.out), spread.err


@pytest.mark.skipif(not _cli_has_dask(), reason="`check --dask` is not wired into cli.py yet")
def test_cli_dask_without_the_extra_exits_2_with_one_line(run, monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.setitem(sys.modules, "distributed", None)
    result = run("check", "fixtures/cases/non-finite/model.pt", "--dask", "tcp://scheduler:8786")
    assert result.code == 2
    assert result.err == "ckptlint: error: --dask needs the dask extra: pip install 'ckptlint[dask]'\n"


@pytest.mark.skipif("client" not in inspect.signature(ckptlint.lint_many).parameters,
                    reason="lint_many(client=...) is not wired into python_api.py yet")
def test_lint_many_with_a_client_equals_lint_many(client) -> None:
    files = ["fixtures/cases/transfer-selective/detr.pth", "fixtures/cases/non-finite/model.pt"]
    assert (ckptlint.lint_many(files, PRETRAINED, client=client).render("json")
            == ckptlint.lint_many(files, PRETRAINED).render("json"))
