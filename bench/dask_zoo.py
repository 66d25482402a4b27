"""Time a 200-file zoo on a 2-worker Dask LocalCluster against `--jobs 1` (issue 15).

    python bench/dask_zoo.py [--files 200] [--repeat 3] [--workdir DIR] [--with-jobs N] [--s3]

Builds ``--files`` safetensors checkpoints of 2 to 10 MB (60 to 284 blocks of small linear layers
and norms: 480 to 2,272 tensors, trained-looking values, every seventh file with a NaN), so that
linting (the value rules on every tensor: finiteness, moments, init fingerprints with their i.i.d.
checks, plus the module walk) dominates scheduling: a few tenths of a second per file. (Files of a
few large tensors are no test of a cluster here: their check is one BLAS pass that ``--jobs 1``
already spreads over both cores.) Then,
taking turns ``--repeat`` times, runs the many-file check of them all

- ``--jobs 1``: ``many.merge_many(jobs=1)`` in this process, file after file;
- Dask: ``dask_backend.merge_many_dask`` on a ``distributed.LocalCluster`` of 2 worker processes
  of one thread, started once before the runs (as an existing cluster is; its start-up time is
  printed apart),

and prints both medians, their ratio, and whether the two JSON reports are the same bytes.
``--s3`` puts the zoo in a bucket of a local S3 (moto's server on 127.0.0.1, as the tests do) and
lints ``s3://zoo/...``: every worker reads its files from the endpoint by byte range.
Needs ``pip install 'ckptlint[dask]'`` (and ``'ckptlint[remote]'`` and moto for ``--s3``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ckptlint.config import resolve_jobs  # noqa: E402
from ckptlint.dask_backend import GC_THRESHOLDS, merge_many_dask  # noqa: E402
from ckptlint.many import merge_many  # noqa: E402
from ckptlint.report import renderer  # noqa: E402
from ckptlint.targets import expand_paths  # noqa: E402


def trained(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Values a trained layer could have: a low-rank part over noise (no init fingerprint fits)."""
    low = rng.normal(0, 1, (rows, 8)) @ rng.normal(0, 1, (8, cols)) * 0.02
    return (rng.normal(0, 0.03, (rows, cols)) + low).astype(np.float32)


def build(folder: Path, count: int) -> list[str]:
    rng = np.random.default_rng(2026)
    paths = []
    for i in range(count):
        depth = 60 + 56 * (i % 5)                       # 60 .. 284 blocks of small layers: 2.1 .. 10 MB
        tensors: dict[str, np.ndarray] = {}
        for block in range(depth):
            for name, (rows, cols) in (("mlp.fc1", (64, 48)), ("mlp.fc2", (48, 64)), ("attn.proj", (48, 48))):
                tensors[f"blocks.{block}.{name}.weight"] = trained(rng, rows, cols)
                tensors[f"blocks.{block}.{name}.bias"] = rng.normal(0, 0.01, rows).astype(np.float32)
            tensors[f"blocks.{block}.norm.weight"] = (1 + rng.normal(0, 0.05, 48)).astype(np.float32)
            tensors[f"blocks.{block}.norm.bias"] = rng.normal(0, 0.02, 48).astype(np.float32)
        if i % 7 == 0:
            tensors["blocks.0.mlp.fc1.weight"][1, 2] = np.nan
        path = folder / f"zoo_{i:03d}.safetensors"
        save_file({k: np.ascontiguousarray(v, dtype='<f4') for k, v in tensors.items()}, str(path))
        paths.append(str(path))
    return paths


def _serve_s3(paths: list[str]) -> object:
    """A local S3 (moto's server) holding the zoo in bucket ``zoo``; the environment points every
    process started from here (workers included) at it."""
    import socket

    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",  # moto's dummies
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                       "AWS_EC2_METADATA_DISABLED": "true"})
    client = boto3.client("s3")
    client.create_bucket(Bucket="zoo")
    for path in paths:
        client.upload_file(path, "zoo", Path(path).name)
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir")
    parser.add_argument("--with-jobs", type=int, metavar="N", help="also time the local pool, --jobs N")
    parser.add_argument("--s3", action="store_true", help="serve the zoo from a local S3 endpoint (moto)")
    args = parser.parse_args()
    import distributed

    gc.set_threshold(*GC_THRESHOLDS)  # as `ckptlint check` runs (--jobs 1 in this process)
    with tempfile.TemporaryDirectory(dir=args.workdir) as folder:
        paths = build(Path(folder), args.files)
        sizes = [os.path.getsize(path) for path in paths]
        server = _serve_s3(paths) if args.s3 else None
        if server is not None:
            paths = [f"s3://zoo/{Path(path).name}" for path in paths]
        expanded = expand_paths(paths)
        groups = resolve_jobs(expanded, {}, None, hash_files=False, histograms=False)
        options_of = {path: options for group, options in groups for path in group}
        tasks = [(path, options_of[path]) for path in expanded]
        started = time.perf_counter()
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=None)
        client = distributed.Client(cluster, set_as_default=False)
        client.wait_for_workers(2)
        start_up = time.perf_counter() - started
        merge_many_dask(tasks[:4], client, fail_on="error")  # the workers import ckptlint and load the rules once
        times: dict[str, list[float]] = {"jobs 1": [], "dask 2 workers": []}
        if args.with_jobs:
            times[f"jobs {args.with_jobs}"] = []
        reports: dict[str, str] = {}
        try:
            for _ in range(args.repeat):
                for name in times:
                    began = time.perf_counter()
                    if name.startswith("jobs"):
                        _, report = merge_many(tasks, fail_on="error", jobs=int(name.split()[1]))
                    else:
                        _, report = merge_many_dask(tasks, client, fail_on="error")
                    times[name].append(time.perf_counter() - began)
                    reports[name] = renderer("json", False)(report)
        finally:
            client.close()
            cluster.close()
            if server is not None:
                server.stop()
    local, spread = (statistics.median(times[name]) for name in ("jobs 1", "dask 2 workers"))
    where = " on a local S3 endpoint" if args.s3 else ""
    print(f"{len(paths)} files{where}, {sum(sizes) / 1e6:.0f} MB ({min(sizes) / 1e6:.1f} to "
          f"{max(sizes) / 1e6:.1f} MB each); {os.cpu_count()} cores; median of {args.repeat}")
    print(f"| --jobs 1 (this process) | {local:.1f} s | runs {', '.join(f'{t:.1f}' for t in times['jobs 1'])} |")
    print(f"| Dask LocalCluster, 2 workers | {spread:.1f} s | runs "
          f"{', '.join(f'{t:.1f}' for t in times['dask 2 workers'])} |")
    print(f"| ratio (--jobs 1 / Dask) | {local / spread:.2f}x | target >= 1.6x |")
    if args.with_jobs:
        pool = statistics.median(times[f"jobs {args.with_jobs}"])
        print(f"| --jobs {args.with_jobs} (local pool) | {pool:.1f} s | runs "
              f"{', '.join(f'{t:.1f}' for t in times[f'jobs {args.with_jobs}'])} | ratio {local / pool:.2f}x |")
    print(f"cluster start-up (not in the runs): {start_up:.1f} s")
    same = len(set(reports.values())) == 1
    print(f"JSON reports identical: {same}")
    if not same:
        print("  findings:", {name: len(json.loads(report)["findings"]) for name, report in reports.items()})


if __name__ == "__main__":
    main()
