"""Many files at once: --jobs, --shard, `ckptlint merge`, --cache, lint_many (issue 15).

Every output of a many-file run must be byte-identical to the plain check of the same files, and
nothing may be lost or counted twice: each test also says what must not happen.
"""

from __future__ import annotations

import json
import os
import struct
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import ckptlint
from ckptlint import many, parts
from ckptlint.errors import ConfigError
from ckptlint.merge import Merger, PartError, merge_reports
from ckptlint.options import Options
from ckptlint.targets import expand_paths, parse_shard, select_shard, shard_of
from conftest import REPO

PRETRAINED = "fixtures/models/resnet50_tiny.pth"
TRANSFER_TARGETS = ["fixtures/cases/transfer-naive-copy/detr.pth", "fixtures/cases/transfer-selective/detr.pth",
                    "fixtures/cases/transfer-float16/detr.pth", "fixtures/cases/bn-stats-default/detr.pth"]
PLAIN_TARGETS = ["fixtures/cases/non-finite/model.pt", "fixtures/cases/pickle-os-system/model.pt",
                 "fixtures/cases/pickle-custom-class/model.pt", "fixtures/cases/init-weights/model.safetensors",
                 "fixtures/cases/conversion/converted.safetensors", "fixtures/models/resnet50_tiny_v2.pth",
                 "fixtures/cases/model-code", "no-such-file.pt"]
STABLE_SHARDS = [0, 2, 0]
FORMATS = [("text", ()), ("json", ("--no-hash",)), ("json", ()), ("sarif", ()), ("github", ()), ("html", ())]


def _check(run, *args: str):
    return run("check", *args, cwd=REPO)


def _write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """A safetensors file, written by hand (F32 only)."""
    header, data, offset = {}, b"", 0
    for name, value in tensors.items():
        raw = np.ascontiguousarray(value, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(value.shape), "data_offsets": [offset, offset + len(raw)]}
        data += raw
        offset += len(raw)
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)


def _zoo(folder: Path, count: int) -> list[str]:
    """``count`` small files; every seventh holds a NaN (a finding), the rest are clean."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        weight = rng.normal(0, 0.05, (8, 8)).astype(np.float32)
        if i % 7 == 0:
            weight[0, 0] = np.nan
        path = folder / f"sub{i % 3}" / f"model_{i:05d}.safetensors"
        path.parent.mkdir(exist_ok=True)
        _write_safetensors(path, {"layer.weight": weight, "layer.bias": np.zeros(8, np.float32)})
        paths.append(str(path))
    return paths


# --- --jobs: the same bytes whatever N -------------------------------------------------------

@pytest.mark.parametrize(("targets", "extra"), [(TRANSFER_TARGETS, ("--pretrained", PRETRAINED)), (PLAIN_TARGETS, ())],
                         ids=["pretrained", "plain"])
def test_jobs_give_byte_identical_reports_in_every_format(run, targets, extra) -> None:
    for fmt, flags in FORMATS:
        plain = _check(run, *targets, *extra, "--format", fmt, *flags)
        assert plain.code in (1, 2), plain.err
        for jobs in ("1", "2", "4") if fmt == "json" and not flags else ("1", "2"):
            spread = _check(run, *targets, *extra, "--format", fmt, *flags, "--jobs", jobs)
            assert spread.code == plain.code, (fmt, jobs, spread.err)
            assert spread.out == plain.out, f"--format {fmt} {' '.join(flags)} --jobs {jobs} differs from check"
    # ... and what must not happen: a file twice, the pretrained file once per target, a lost finding
    data = _check(run, *targets, *extra, "--format", "json", "--jobs", "2").json
    paths = [(f["path"], f["role"]) for f in data["files"]]
    assert len(paths) == len(set(paths))
    if extra:
        assert paths.count((PRETRAINED, "pretrained")) == 1
        assert {f["file"] for f in data["findings"]} == set(TRANSFER_TARGETS)
        assert set(data["transfer"]["by_file"]) == set(TRANSFER_TARGETS)
        assert len(data["diagnoses"]) >= len(TRANSFER_TARGETS)
    else:
        assert [e["file"] for e in data["errors"]].count("no-such-file.pt") == 1


def test_a_path_given_twice_or_matched_twice_is_checked_once(run) -> None:
    once = _check(run, "fixtures/cases/non-finite/model.pt", "--format", "json", "--no-hash").json
    twice = _check(run, "fixtures/cases/non-finite/model.pt", "fixtures/cases/non-finite/*.pt", "--format", "json",
                   "--no-hash", "--jobs", "2").json
    assert twice == once
    assert len(twice["files"]) == 1


def test_glob_patterns_are_expanded_and_one_matching_nothing_is_a_usage_error(run) -> None:
    matched = _check(run, "fixtures/cases/**/*.safetensors", "--format", "json", "--no-hash").json
    assert [f["path"] for f in matched["files"]] == sorted(str(p.relative_to(REPO))
                                                           for p in (REPO / "fixtures/cases").rglob("*.safetensors"))
    nothing = _check(run, "fixtures/**/*.nothing", "--jobs", "2")
    assert nothing.code == 2 and nothing.out == ""
    assert nothing.err.strip().count("\n") == 0 and "no file or folder matches" in nothing.err


# --- --shard and merge ------------------------------------------------------------------------

def test_shards_are_disjoint_stable_and_cover_the_set() -> None:
    paths = [f"zoo/{i // 100}/model_{i}.safetensors" for i in range(1000)]
    for n in (1, 2, 3, 8):
        shards = [select_shard(paths, k, n) for k in range(1, n + 1)]
        assert sorted(p for shard in shards for p in shard) == sorted(paths)  # union is the set
        assert sum(len(s) for s in shards) == len(paths)  # disjoint: nothing twice
        if n > 1:
            assert all(shards), "a shard of 1000 paths is empty: the split is not spread"
    assert shard_of("./zoo//a.pt", 8) == shard_of("zoo/a.pt", 8)  # the same path however it is spelt
    # stable across processes and machines (no hash seed): a fixed path has a fixed shard
    assert [shard_of("zoo/model_7.safetensors", n) for n in (2, 3, 8)] == STABLE_SHARDS
    for bad in ("0/2", "3/2", "2", "a/b", "1/0", "-1/2"):
        with pytest.raises(ConfigError):
            parse_shard(bad)


@pytest.mark.parametrize("bad", ["0/4", "5/4", "x"])
def test_an_invalid_shard_is_a_one_line_usage_error(run, bad) -> None:
    result = _check(run, "fixtures/cases/non-finite/model.pt", "--shard", bad)
    assert result.code == 2 and result.out == "" and result.err.count("\n") == 1 and "--shard" in result.err


def test_merged_shards_equal_the_whole_check_in_every_format(run, tmp_path: Path) -> None:
    targets, extra = TRANSFER_TARGETS, ("--pretrained", PRETRAINED)
    counts = []
    for k in (1, 2, 3):
        part = _check(run, *targets, *extra, "--format", "json", "--shard", f"{k}/3",
                      "-o", str(tmp_path / f"p{k}.json"), *(("--jobs", "2") if k == 2 else ()))
        assert part.code in (0, 1), part.err
        counts.append(len([f for f in json.loads((tmp_path / f"p{k}.json").read_text())["files"]
                           if f["role"] == "target"]))
    assert sum(counts) == len(targets)
    part_files = [str(tmp_path / f"p{k}.json") for k in (1, 2, 3)]
    for fmt, flags in FORMATS:
        if "--no-hash" in flags or fmt == "html":  # JSON parts carry no value histograms for HTML
            continue
        whole = _check(run, *targets, *extra, "--format", fmt)
        merged = run("merge", *part_files, "--format", fmt, cwd=REPO)
        assert merged.code == whole.code, merged.err
        assert merged.out == whole.out, f"merge --format {fmt} differs from the whole check"
        reversed_order = run("merge", *reversed(part_files), "--format", fmt, cwd=REPO)
        assert reversed_order.out == whole.out
    # the pretrained file is in every part, once in the merge; no finding is lost or doubled
    data = run("merge", *part_files, "--format", "json", cwd=REPO).json
    whole_data = _check(run, *targets, *extra, "--format", "json").json
    assert Counter((f["file"], f["key"], f["code"]) for f in data["findings"]) == \
        Counter((f["file"], f["key"], f["code"]) for f in whole_data["findings"])
    assert [f["role"] for f in data["files"]].count("pretrained") == 1
    assert "partial" not in data


def test_plain_json_reports_merge_too(run, tmp_path: Path) -> None:
    """Parts written without --shard (no `partial`): the rules come from merge's own options."""
    first, second = PLAIN_TARGETS[:4], PLAIN_TARGETS[4:]
    for name, group in (("a", first), ("b", second)):
        _check(run, *group, "--format", "json", "-o", str(tmp_path / f"{name}.json"))
    for fmt in ("json", "sarif", "text"):
        whole = _check(run, *PLAIN_TARGETS, "--format", fmt)
        merged = run("merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--format", fmt, cwd=REPO)
        assert (merged.code, merged.out) == (whole.code, whole.out), fmt


def test_merge_fail_on_decides_the_exit_code(run, tmp_path: Path) -> None:
    _check(run, "fixtures/cases/non-finite/model.pt", "--format", "json", "-o", str(tmp_path / "a.json"))
    assert run("merge", str(tmp_path / "a.json"), cwd=REPO).code == 1
    assert run("merge", str(tmp_path / "a.json"), "--fail-on", "never", cwd=REPO).code == 0


def test_merge_refuses_what_it_cannot_merge_with_one_line_naming_the_file(run, tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    _check(run, "fixtures/cases/non-finite/model.pt", "--format", "json", "-o", str(good))
    data = json.loads(good.read_text())
    cases = {
        "broken.json": "{not json",
        "list.json": "[]",
        "version.json": json.dumps({**data, "tool": {"name": "ckptlint", "version": "0.0.1"}}),
        "schema.json": json.dumps({**data, "schema_version": 99}),
        "shape.json": json.dumps({**data, "findings": [{"code": "CKP101"}]}),
        "diff.json": json.dumps({**data, "diff": {"old": "a"}}),
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        result = run("merge", str(good), str(tmp_path / name), cwd=REPO)
        assert result.code == 2, name
        assert result.out == "" and result.err.count("\n") == 1 and name in result.err, (name, result.err)
    missing = run("merge", str(tmp_path / "absent.json"), cwd=REPO)
    assert missing.code == 2 and "absent.json" in missing.err


def test_two_plain_reports_with_transfer_scores_do_not_merge_into_a_wrong_score(run, tmp_path: Path) -> None:
    """A plain JSON report has the floored score, not its parts: adding two would be a guess."""
    for name, target in (("a", TRANSFER_TARGETS[0]), ("b", TRANSFER_TARGETS[1])):
        _check(run, target, "--pretrained", PRETRAINED, "--format", "json", "-o", str(tmp_path / f"{name}.json"))
    result = run("merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"), cwd=REPO)
    assert result.code == 2 and "--shard" in result.err
    alone = run("merge", str(tmp_path / "a.json"), "--format", "json", cwd=REPO)
    assert alone.out == _check(run, TRANSFER_TARGETS[0], "--pretrained", PRETRAINED, "--format", "json").out


def test_diagnoses_rerun_on_the_merged_report_equal_the_parts_diagnoses(monkeypatch) -> None:
    """Diagnoses are made again on the merged report; per file they are what each part said."""
    monkeypatch.chdir(REPO)
    options = Options(pretrained=PRETRAINED, hash_files=False)
    partials = [parts.lint_part(path, options) for path in TRANSFER_TARGETS]
    merged = merge_reports(partials, source_root=str(REPO))
    from ckptlint.report.json_report import report_data

    merged_data = report_data(merged)
    by_part = sorted((d["kind"], d["file"], d["title"], d["tensors"], len(d["findings"]))
                     for part in partials for d in part["diagnoses"])
    assert sorted((d["kind"], d["file"], d["title"], d["tensors"], len(d["findings"]))
                  for d in merged_data["diagnoses"]) == by_part
    assert len(merged.diagnoses) == len(by_part)


# --- workers that die -------------------------------------------------------------------------

def test_a_worker_that_dies_is_retried_then_reported_and_nothing_else_is_lost(run, monkeypatch) -> None:
    victim = TRANSFER_TARGETS[1]
    monkeypatch.setenv(parts.TEST_CRASH_ENV, victim)
    result = _check(run, *TRANSFER_TARGETS, "--pretrained", PRETRAINED, "--format", "json", "--no-hash",
                    "--jobs", "2")
    data = result.json
    assert [e for e in data["errors"]] == [{"file": victim, "message": many.WORKER_DIED}]
    targets = [f["path"] for f in data["files"] if f["role"] == "target"]
    assert sorted(targets) == sorted(set(TRANSFER_TARGETS) - {victim})  # every other file, exactly once
    assert victim not in {f["file"] for f in data["findings"]}
    monkeypatch.delenv(parts.TEST_CRASH_ENV)
    others = _check(run, *(t for t in TRANSFER_TARGETS if t != victim), "--pretrained", PRETRAINED, "--format",
                    "json", "--no-hash").json
    assert data["findings"] == others["findings"]  # nothing lost, nothing doubled by the retries
    assert result.code == 1  # findings decide; the unreadable file is still named on stderr
    assert f"{victim}: {many.WORKER_DIED}" in result.err


def test_the_crash_hook_never_fires_in_the_client(run, monkeypatch) -> None:
    monkeypatch.setenv(parts.TEST_CRASH_ENV, TRANSFER_TARGETS[0])
    result = _check(run, TRANSFER_TARGETS[0], "--pretrained", PRETRAINED, "--format", "json", "--jobs", "1")
    assert result.code == 1 and not result.json["errors"]


class _FlakyExecutor(ThreadPoolExecutor):
    """Fails the first ``fails`` submissions of one path, as a cluster whose worker died would."""

    def __init__(self, path: str, fails: int) -> None:
        super().__init__(max_workers=2)
        self.path, self.fails, self.submitted = path, fails, Counter()

    def submit(self, fn, /, *args, **kwargs):
        self.submitted[args[0]] += 1
        if args[0] == self.path and self.submitted[args[0]] <= self.fails:
            future: Future = Future()
            future.set_exception(RuntimeError("worker lost"))
            return future
        return super().submit(fn, *args, **kwargs)


def test_lint_many_on_an_executor_retries_once_then_reports(monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("CKPTLINT_DEBUG")  # a failure that is no worker's death would be raised
    files = PLAIN_TARGETS[:5]
    expected = ckptlint.lint_many(files).render("json")
    with _FlakyExecutor(files[2], fails=1) as flaky:
        assert ckptlint.lint_many(files, executor=flaky).render("json") == expected
        assert flaky.submitted[files[2]] == 2 and flaky.submitted[files[0]] == 1
    with _FlakyExecutor(files[2], fails=2) as dead:
        report = ckptlint.lint_many(files, executor=dead)
    assert [(e.file, e.message) for e in report.errors] == [(files[2], many.WORKER_DIED)]
    others = ckptlint.lint_many([f for f in files if f != files[2]])
    assert report.files == others.files and report.findings == others.findings


# --- the Python API ---------------------------------------------------------------------------

def test_lint_many_equals_the_cli_and_lint(run, monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    cli = _check(run, *TRANSFER_TARGETS[:2], "--pretrained", PRETRAINED, "--format", "json", "--no-hash").out
    for kwargs in ({}, {"jobs": 2}):
        report = ckptlint.lint_many(TRANSFER_TARGETS[:2], PRETRAINED, **kwargs)
        assert isinstance(report, ckptlint.Report) and report.render("json") == cli
    with ThreadPoolExecutor(2) as pool:
        assert ckptlint.lint_many(TRANSFER_TARGETS[:2], PRETRAINED, executor=pool).render("json") == cli
    one = ckptlint.lint(TRANSFER_TARGETS[0], PRETRAINED)
    assert ckptlint.lint_many([TRANSFER_TARGETS[0]], PRETRAINED).render("json") == one.render("json")
    with pytest.raises(ConfigError):
        ckptlint.lint_many(TRANSFER_TARGETS, PRETRAINED, max_drfit=0.1)
    with pytest.raises(ConfigError):
        ckptlint.lint_many(TRANSFER_TARGETS, jobs=0)


class _CountingExecutor(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(max_workers=2)
        self.submitted = 0

    def submit(self, fn, /, *args, **kwargs):
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


def test_parts_arrive_in_order_and_only_a_window_is_in_flight(tmp_path: Path) -> None:
    """Flat client memory: parts are merged as they come, never all held at once."""
    files = _zoo(tmp_path / "zoo", 120)
    tasks = [(path, Options(hash_files=False)) for path in files]
    with _CountingExecutor() as counting:
        seen, most_ahead = [], 0
        for part in many.lint_parts(tasks, str(tmp_path), executor=counting):
            seen.append(part["files"][0]["path"])
            most_ahead = max(most_ahead, counting.submitted - len(seen))
    assert seen == files  # in path order, whatever order they finished in; none twice, none lost
    assert most_ahead <= many.WINDOW_PER_WORKER * 8
    assert counting.submitted == len(files)


# --- --cache ----------------------------------------------------------------------------------

def test_the_cache_returns_the_same_report_and_lints_only_what_changed(run, tmp_path: Path, monkeypatch) -> None:
    files = _zoo(tmp_path / "zoo", 30)
    cache = tmp_path / "cache"
    linted: list[str] = []
    real = many.lint_part

    def counting(path, options, source_root=None):
        linted.append(path)
        return real(path, options, source_root)

    monkeypatch.setattr(many, "lint_part", counting)
    args = (*files, "--format", "json", "--cache", str(cache))
    first = run("check", *args, cwd=tmp_path)
    assert sorted(linted) == sorted(files)
    linted.clear()
    second = run("check", *args, cwd=tmp_path)
    assert linted == [] and second.out == first.out and second.code == first.code == 1
    plain = run("check", *files, "--format", "json", cwd=tmp_path)
    assert plain.out == first.out  # a cached run reports what a plain one does

    # a changed file (same size: other values) is linted again, the others are not
    changed = Path(files[3])
    _write_safetensors(changed, {"layer.weight": np.full((8, 8), np.nan, np.float32),
                                 "layer.bias": np.zeros(8, np.float32)})
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10_000_000))
    third = run("check", *args, cwd=tmp_path)
    assert linted == [files[3]]
    assert third.out == run("check", *files, "--format", "json", cwd=tmp_path).out != first.out

    # other options are another entry; a corrupt entry is ignored and rewritten, never trusted
    linted.clear()
    run("check", *files, "--format", "json", "--no-hash", "--cache", str(cache), cwd=tmp_path)
    assert sorted(linted) == sorted(files)
    for entry in (cache / "parts").rglob("*.json"):
        entry.write_text('{"key": "x", "part": ')
    linted.clear()
    again = run("check", *args, cwd=tmp_path)
    assert again.out == third.out and sorted(linted) == sorted(files)
    linted.clear()
    run("check", *args, cwd=tmp_path)
    assert linted == []  # rewritten


def test_the_cache_stores_no_errors_and_refuses_a_shared_folder(run, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert run("check", "missing.pt", "--cache", str(cache), cwd=tmp_path).code == 2
    assert not list(cache.rglob("*.json"))
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    result = run("check", str(REPO / "fixtures/cases/non-finite/model.pt"), "--cache", str(shared), cwd=tmp_path)
    assert result.code == 2 and "only you can write" in result.err


def test_a_second_scan_with_the_cache_is_much_faster(run, tmp_path: Path) -> None:
    """Sanity bound only (the measurement is bench/many_files.py): 200 files, cold then warm."""
    files = _zoo(tmp_path / "zoo", 200)
    args = (*files, "--format", "json", "--cache", str(tmp_path / "cache"))
    started = time.perf_counter()
    first = run("check", *args, cwd=tmp_path)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    second = run("check", *args, cwd=tmp_path)
    warm = time.perf_counter() - started
    assert second.out == first.out
    assert len(second.json["files"]) == 200 and len(second.json["errors"]) == 0
    assert warm < 0.6 * cold, (cold, warm)


def test_merger_keeps_only_the_merged_report(tmp_path: Path, monkeypatch) -> None:
    """Adding parts keeps no reference to them: 300 parts, one Merger, nothing else retained."""
    import gc
    import weakref

    monkeypatch.chdir(tmp_path)
    files = _zoo(tmp_path / "zoo", 20)
    merger = Merger(source_root=str(tmp_path))
    refs = []
    for path in files:
        part = parts.lint_part(path, Options(hash_files=False))
        holder = type("Holder", (dict,), {})(part)
        refs.append(weakref.ref(holder))
        merger.add(holder)
        del holder, part
    gc.collect()
    assert all(ref() is None for ref in refs)
    report = merger.result()
    assert len(report.files) == 20 and len({f.path for f in report.files}) == 20


def test_expand_paths_keeps_remote_urls_and_literal_names(tmp_path: Path) -> None:
    literal = tmp_path / "a[1].pt"
    literal.write_bytes(b"")
    assert expand_paths([str(literal), "s3://zoo/model.safetensors"]) == [str(literal), "s3://zoo/model.safetensors"]
    with pytest.raises(PartError):
        Merger().add({"schema_version": 1})
