"""Remote checkpoints (issue 15): read by byte range through fsspec, from real components the tests
start themselves on 127.0.0.1 — moto's S3 server (the S3 protocol over HTTP, through s3fs) and a
range-capable HTTP server written here (with switches to lie, truncate and stall). No traffic
leaves the machine. The bytes fetched are counted by the server (HTTP) and by ckptlint's sources."""

from __future__ import annotations

import http.server
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import CASES, FIXTURES, REPO


def _need_remote_extra() -> None:
    pytest.importorskip("fsspec", reason="the remote extra (pip install 'ckptlint[remote]') is not installed")
    pytest.importorskip("aiohttp", reason="fsspec's HTTP filesystem needs aiohttp (the remote extra)")


GB = 1 << 30
PICKLE_ONLY = ("--select", "unsafe-pickle,unknown-pickle-global")  # opens the whole checkpoint, reads no values


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET and HEAD with ``Range: bytes=a-b``, from files under the server's root."""

    protocol_version = "HTTP/1.1"
    server: RangeServer

    def log_message(self, *args: object) -> None:
        pass

    def _target(self) -> Path | None:
        path = (self.server.root / self.path.split("?")[0].lstrip("/")).resolve()
        return path if path.is_file() and self.server.root in path.parents else None

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    def _answer(self, head: bool) -> None:
        server = self.server
        server.requests += 1
        if server.mode == "stall":
            server.release.wait(60)
            return
        path = self._target()
        if path is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        size = path.stat().st_size
        claimed = size * 2 if server.mode == "lie-size" else size
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        start, end = 0, claimed
        if match and server.mode != "ignore-range":
            start = int(match[1])
            end = min(int(match[2]) + 1 if match[2] else claimed, claimed)
        body_length = end - start
        self.send_response(206 if match and server.mode != "ignore-range" else 200)
        if match and server.mode != "ignore-range":
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{claimed}")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{size:x}-{int(path.stat().st_mtime)}"')
        if server.mode == "short-range" and not head and match:
            body_length = max(0, body_length - 7)  # a consistent response, shorter than asked
        if server.mode == "lie-size" and not head:
            body_length = max(0, min(end, size) - start)  # what there is: less than the size promised
        self.send_header("Content-Length", str(body_length))
        self.end_headers()
        if head:
            return
        with open(path, "rb") as handle:
            handle.seek(start)
            left = min(body_length, max(0, size - start))
            if server.mode == "truncate":
                left //= 2  # promise body_length bytes, send half and hang up
            while left > 0:
                chunk = handle.read(min(left, 1 << 20))
                if not chunk:
                    break
                self.wfile.write(chunk)
                server.bytes_sent += len(chunk)
                left -= len(chunk)
        if server.mode == "truncate":
            self.close_connection = True


class RangeServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # ckptlint sends a batch of range requests at once

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root.resolve()
        self.mode = "honest"
        self.bytes_sent = 0
        self.requests = 0
        self.release = threading.Event()

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client hanging up is no error here
            super().handle_error(request, client_address)

    def url(self, path: Path) -> str:
        return f"http://127.0.0.1:{self.server_port}/{path.resolve().relative_to(self.root).as_posix()}"

    def reset(self) -> None:
        self.bytes_sent = self.requests = 0


def _serve(root: Path) -> tuple[RangeServer, threading.Thread]:
    _need_remote_extra()
    server = RangeServer(root)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture(scope="module")
def http_server() -> RangeServer:
    server, thread = _serve(REPO)
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def hostile(tmp_path: Path) -> RangeServer:
    server, thread = _serve(tmp_path)
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_"))}
    env.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true", "NO_PROXY": "127.0.0.1",
                "no_proxy": "127.0.0.1"})
    env.pop("CKPTLINT_DEBUG", None)
    env.update(extra)
    return env


def ckptlint(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
             cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ckptlint", *args], capture_output=True, text=True,
                          timeout=timeout, env=env or _env(), cwd=cwd or REPO)


def _findings(result: subprocess.CompletedProcess) -> list[tuple]:
    report = json.loads(result.stdout)
    return sorted((f["name"], f.get("key") or "", f["severity"], json.dumps(f.get("evidence"), sort_keys=True))
                  for f in report["findings"])


# --- the 1 GB files ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 1 GiB safetensors file (header, then a sparse data section) and a 1 GiB torch zip written
    by torch.save (valid for torch.load: checked)."""
    folder = tmp_path_factory.mktemp("big")
    tensors = {f"layer{i}.weight": ("F32", [16384, 4096]) for i in range(4)}  # 4 x 256 MiB
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        nbytes = 4 * shape[0] * shape[1]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    safetensors_path = folder / "big.safetensors"
    with open(safetensors_path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        handle.truncate(8 + len(raw) + offset)
    zip_path = folder / "big.pt"
    torch.save({f"layer{i}.weight": torch.zeros(16384, 4096) for i in range(4)}, zip_path)
    assert zip_path.stat().st_size >= GB and safetensors_path.stat().st_size >= GB
    loaded = torch.load(zip_path, weights_only=True, mmap=True)
    assert sorted(loaded) == sorted(tensors) and loaded["layer3.weight"].shape == (16384, 4096)
    return {"safetensors": safetensors_path, "zip": zip_path}


@pytest.fixture(scope="module")
def big_server(big_files: dict[str, Path]) -> RangeServer:
    server, thread = _serve(big_files["zip"].parent)
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.mark.parametrize(("kind", "limit"), [("safetensors", 1 << 20), ("zip", 2 << 20)])
def test_names_only_check_of_1gb_fetches_little(big_files: dict[str, Path], big_server: RangeServer, kind: str,
                                                limit: int) -> None:
    url = big_server.url(big_files[kind])
    big_server.reset()
    result = ckptlint("check", "--format", "json", *PICKLE_ONLY, url)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["files"][0]["tensors"] == 4 and report["files"][0]["bytes"] >= GB
    sys.stderr.write(f"\n{kind}: {big_server.bytes_sent} bytes in {big_server.requests} requests\n")
    assert 0 < big_server.bytes_sent <= limit, big_server.bytes_sent
    assert big_server.requests <= 12


def test_sources_count_what_the_server_sends(big_files: dict[str, Path], big_server: RangeServer) -> None:
    """In process: ckptlint's own count of bytes fetched is what the server sent; reading one
    tensor fetches exactly its span; reading all in order coalesces."""
    from ckptlint.io import open_checkpoint
    from ckptlint.io.source import fetch_totals

    url = big_server.url(big_files["zip"])
    big_server.reset()
    before = fetch_totals()
    with open_checkpoint(url) as checkpoint:
        opened = fetch_totals()
        assert opened[0] - before[0] == big_server.bytes_sent
        source = checkpoint.sources[url]
        assert source.bytes_fetched == big_server.bytes_sent and checkpoint.bytes_read == 0
        values = checkpoint.read("layer2.weight")
        assert values.shape == (16384, 4096) and not values.any()
        assert source.bytes_fetched - (opened[0] - before[0]) == 256 << 20  # exactly the span
        assert source.bytes_fetched == big_server.bytes_sent
    with open_checkpoint(str(CASES / "non-finite/model.pt")) as local:
        assert not local.sources  # a local file keeps its own code path


def test_sequential_reads_of_small_tensors_coalesce(tmp_path: Path, hostile: RangeServer) -> None:
    from ckptlint.io import open_checkpoint

    path = tmp_path / "many.pt"
    tensors = {f"t{i}": torch.full((256, 64), float(i)) for i in range(64)}  # 64 KiB each
    torch.save(tensors, path)
    with open_checkpoint(hostile.url(path)) as remote, open_checkpoint(str(path)) as local:
        source = remote.sources[hostile.url(path)]
        opened = source.requests
        for key in remote.tensors:
            assert (remote.read(key) == local.read(key)).all()
        reads = source.requests - opened
        assert reads < 16, reads  # 64 tensors read in order: a few growing requests, not one each
        assert source.bytes_fetched <= path.stat().st_size + (3 << 16)  # the head and tail read on opening


def test_a_server_failing_a_tensor_read_is_the_files_error(tmp_path: Path, hostile: RangeServer) -> None:
    """Opened honestly, then a short response while reading values: a CheckpointError naming the
    URL, and the source stays failed (no retry loop, no partial values)."""
    from ckptlint.errors import CheckpointError
    from ckptlint.io import open_checkpoint

    path = tmp_path / "model.safetensors"
    import safetensors.torch

    safetensors.torch.save_file({f"w{i}": torch.randn(256, 256) for i in range(8)}, path)
    url = hostile.url(path)
    with open_checkpoint(url) as remote:
        hostile.mode = "short-range"
        with pytest.raises(CheckpointError, match="truncated the response or lied about the size") as raised:
            remote.read("w5")
        assert raised.value.path == url
        with pytest.raises(CheckpointError):
            remote.read("w6")


# --- identical findings, local and remote ------------------------------------------------------------

SAME_CASES = ["pickle-os-system/model.pt", "pickle-custom-class", "non-finite/model.pt",
              "init-weights/model.safetensors", "bn-stats-dropped", "detr-training-checkpoint/checkpoint.pth"]


def _case_path(case: str) -> Path:
    path = CASES / case
    if path.is_dir():
        return next(p for p in sorted(path.iterdir()) if p.suffix in (".pt", ".pth", ".safetensors", ".bin"))
    return path


@pytest.mark.parametrize("case", SAME_CASES)
def test_http_findings_equal_local(http_server: RangeServer, case: str) -> None:
    path = _case_path(case)
    local = ckptlint("check", "--format", "json", "--no-hash", str(path))
    remote = ckptlint("check", "--format", "json", "--no-hash", http_server.url(path))
    assert remote.returncode == local.returncode, remote.stderr
    assert _findings(remote) == _findings(local)
    assert "Traceback" not in remote.stderr


def test_transfer_with_remote_target_and_local_pretrained(http_server: RangeServer) -> None:
    target = CASES / "detr-training-checkpoint/checkpoint.pth"
    pretrained = FIXTURES / "models/resnet50_tiny.pth"
    args = ("check", "--format", "json", "--no-hash", "--pretrained", str(pretrained), "--min-score", "99.9")
    local = ckptlint(*args, str(target))
    remote = ckptlint(*args, http_server.url(target))
    assert local.returncode == remote.returncode == 0, remote.stderr
    assert _findings(remote) == _findings(local)
    assert json.loads(remote.stdout)["transfer"]["score"] == json.loads(local.stdout)["transfer"]["score"]


def test_malicious_corpus_over_http_matches_local(tmp_path: Path) -> None:
    import malicious_corpus as corpus

    items = corpus.build(tmp_path)[:12]
    server, thread = _serve(tmp_path)
    try:
        for item in items:
            local = ckptlint("check", "--format", "json", "--no-hash", str(item.path), cwd=tmp_path)
            remote = ckptlint("check", "--format", "json", "--no-hash", server.url(item.path), cwd=tmp_path)
            assert (remote.returncode, _findings(remote)) == (local.returncode, _findings(local)), item.path.name
            named = {f["evidence"]["global"] for f in json.loads(remote.stdout)["findings"]
                     if f["name"] == "unsafe-pickle"}
            assert item.expected in named
            assert not (tmp_path / corpus.MARKER).exists()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_file_url_reads_through_the_remote_source() -> None:
    _need_remote_extra()
    path = CASES / "non-finite/model.pt"
    local = ckptlint("check", "--format", "json", "--no-hash", str(path))
    remote = ckptlint("check", "--format", "json", "--no-hash", path.resolve().as_uri())
    assert remote.returncode == local.returncode and _findings(remote) == _findings(local)


def test_sharded_index_over_http(tmp_path: Path, hostile: RangeServer) -> None:
    import safetensors.torch

    folder = tmp_path / "model"
    folder.mkdir()
    safetensors.torch.save_file({"a.weight": torch.randn(4, 4)}, folder / "model-00001-of-00002.safetensors")
    safetensors.torch.save_file({"b.weight": torch.randn(4, 4)}, folder / "model-00002-of-00002.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors"}}))
    result = ckptlint("check", "--format", "json", "--no-hash", hostile.url(folder / "model.safetensors.index.json"))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["files"][0]["tensors"] == 2


# --- hostile servers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "message"), [
    ("lie-size", "truncated the response or lied about the size"),
    ("truncate", "broke off a response"),
    ("short-range", "truncated the response or lied about the size"),
    ("stall", "did not answer within 2 s"),
])
def test_hostile_server_is_one_line_exit_2(tmp_path: Path, hostile: RangeServer, mode: str, message: str) -> None:
    path = tmp_path / "model.pt"
    torch.save({f"w{i}": torch.randn(64, 64) for i in range(40)}, path)
    hostile.mode = mode
    url = hostile.url(path)
    started = time.monotonic()
    result = ckptlint("check", "--no-hash", url, env=_env(CKPTLINT_REMOTE_TIMEOUT="2"), timeout=60)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ckptlint: {url}: "), result.stderr
    assert message in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert time.monotonic() - started < 40


def test_server_ignoring_ranges_is_bounded(tmp_path: Path, hostile: RangeServer) -> None:
    """A server that answers every range with the whole file: a clear error, not a download (what
    the server managed to write into the sockets' buffers before the client hung up is counted)."""
    path = tmp_path / "big.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [1 << 26], "data_offsets": [0, 1 << 28]}}).encode()
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(header)) + header)
        handle.truncate(8 + len(header) + (1 << 28))
    hostile.mode = "ignore-range"
    result = ckptlint("check", "--no-hash", hostile.url(path), env=_env(CKPTLINT_REMOTE_TIMEOUT="5"), timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"ckptlint: {hostile.url(path)}: the server ignores range requests "
                                     "(remote files are read by byte range)")
    assert hostile.bytes_sent <= 32 << 20, hostile.bytes_sent


def test_missing_remote_file_and_unknown_protocol(http_server: RangeServer) -> None:
    url = f"http://127.0.0.1:{http_server.server_port}/no/such/model.pt"
    result = ckptlint("check", url)
    assert result.returncode == 2
    assert result.stderr.strip() == f"ckptlint: {url}: no such remote file or folder"
    result = ckptlint("check", "nosuchproto://bucket/model.pt")
    assert result.returncode == 2
    assert result.stderr.strip() == "ckptlint: nosuchproto://bucket/model.pt: fsspec knows no protocol 'nosuchproto'"


def test_without_fsspec_a_url_names_the_extra() -> None:
    code = ("import sys; sys.modules['fsspec'] = None; from ckptlint.cli import main; "
            "sys.argv = ['ckptlint', 'check', 's3://bucket/model.safetensors']; sys.exit(main())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=_env(),
                            cwd=REPO)
    assert result.returncode == 2
    assert result.stderr.strip() == ("ckptlint: s3://bucket/model.safetensors: reading remote paths needs the "
                                     "remote extra: pip install 'ckptlint[remote]'")


# --- S3: moto's server ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3(big_files: dict[str, Path]) -> dict[str, str]:
    _need_remote_extra()
    pytest.importorskip("s3fs", reason="s3fs (the remote extra) is not installed")
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed")
    boto3 = pytest.importorskip("boto3", reason="boto3 (moto's dependency) is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = _env()
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")  # noqa: S106 - moto's dummy credentials
    client.create_bucket(Bucket="zoo")
    for case in SAME_CASES:
        path = _case_path(case)
        client.upload_file(str(path), "zoo", f"cases/{path.parent.name}/{path.name}")
    client.upload_file(str(big_files["safetensors"]), "zoo", "big/big.safetensors")
    client.upload_file(str(big_files["zip"]), "zoo", "big/big.pt")
    folder = CASES / "init-weights"
    client.upload_file(str(folder / "model.safetensors"), "zoo", "hf/model.safetensors")
    client.put_object(Bucket="zoo", Key="hf/config.json", Body=b"{}")
    client.upload_file(str(_case_path("pickle-os-system/model.pt")), "zoo", "hf/training_args.bin")
    yield {"endpoint": endpoint, **env}
    server.stop()


@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL", "FSSPEC_S3_ENDPOINT_URL"])
def test_s3_endpoint_from_the_standard_variables(s3: dict[str, str], variable: str) -> None:
    path = _case_path("pickle-os-system/model.pt")
    env = _env(**{variable: s3["endpoint"]})
    result = ckptlint("check", "--format", "json", "--no-hash", f"s3://zoo/cases/{path.parent.name}/{path.name}",
                      env=env)
    assert result.returncode == 1, result.stderr
    assert any(f["name"] == "unsafe-pickle" for f in json.loads(result.stdout)["findings"])


@pytest.mark.parametrize("case", SAME_CASES)
def test_s3_findings_equal_local(s3: dict[str, str], case: str) -> None:
    path = _case_path(case)
    local = ckptlint("check", "--format", "json", "--no-hash", str(path))
    remote = ckptlint("check", "--format", "json", "--no-hash", f"s3://zoo/cases/{path.parent.name}/{path.name}",
                      env=_env(AWS_ENDPOINT_URL=s3["endpoint"]))
    assert remote.returncode == local.returncode, remote.stderr
    assert _findings(remote) == _findings(local)


_COUNT_S3 = """
import json, sys
from ckptlint.io.source import fetch_totals
from ckptlint.runner import check_paths
from ckptlint.options import Options
options = Options.from_settings({"select": ["unsafe-pickle", "unknown-pickle-global"]}, hash_files=False)
report = check_paths([sys.argv[1]], options)
print(json.dumps({"fetched": fetch_totals(), "tensors": report.files[0].tensors, "errors": len(report.errors)}))
"""


@pytest.mark.parametrize(("key", "limit"), [("big/big.safetensors", 1 << 20), ("big/big.pt", 2 << 20)])
def test_s3_names_only_check_of_1gb_fetches_little(s3: dict[str, str], key: str, limit: int) -> None:
    result = subprocess.run([sys.executable, "-c", _COUNT_S3, f"s3://zoo/{key}"], capture_output=True, text=True,
                            timeout=120, env=_env(AWS_ENDPOINT_URL=s3["endpoint"]), cwd=REPO)
    assert result.returncode == 0, result.stderr
    counted = json.loads(result.stdout)
    (fetched, requests) = counted["fetched"]
    sys.stderr.write(f"\ns3 {key}: {fetched} bytes in {requests} requests\n")
    assert counted["tensors"] == 4 and counted["errors"] == 0
    assert 0 < fetched <= limit and requests <= 12


def test_s3_folder_scans_every_pickle(s3: dict[str, str]) -> None:
    result = ckptlint("check", "--format", "json", "--no-hash", "s3://zoo/hf",
                      env=_env(AWS_ENDPOINT_URL=s3["endpoint"]))
    report = json.loads(result.stdout)
    assert report["files"][0]["path"] == "s3://zoo/hf/model.safetensors"
    assert {f["file"] for f in report["findings"] if f["name"] == "unsafe-pickle"} == {"s3://zoo/hf/training_args.bin"}
    assert result.returncode == 1, result.stderr


def test_expand_remote_and_content_identity(s3: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from ckptlint.io.source import content_identity, expand_remote

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3["endpoint"])
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(name, s3[name])
    found = expand_remote("s3://zoo/**/*.safetensors")
    assert "s3://zoo/big/big.safetensors" in found and "s3://zoo/hf/model.safetensors" in found
    assert all(url.endswith(".safetensors") for url in found)
    kind, value, size = content_identity("s3://zoo/big/big.pt")
    assert kind in ("etag", "version-id") and value and size >= GB
    assert content_identity(str(CASES / "non-finite/model.pt")) is None


def test_a_remote_glob_with_jobs_and_cache(s3: dict[str, str], tmp_path: Path) -> None:
    """``s3://zoo/cases/**/*.pt`` expands on the store; ``--jobs 2`` gives the same report as
    ``--jobs 1``; a second run with ``--cache`` takes every part from the cache (the objects'
    ETags and sizes are their identity: no byte of them is fetched again)."""
    env = _env(AWS_ENDPOINT_URL=s3["endpoint"])
    pattern = "s3://zoo/cases/**/*.pt"
    one = ckptlint("check", "--format", "json", "--no-hash", pattern, env=env)
    two = ckptlint("check", "--format", "json", "--no-hash", "--jobs", "2", pattern, env=env)
    assert one.returncode == two.returncode and one.stdout == two.stdout, two.stderr
    paths = [f["path"] for f in json.loads(one.stdout)["files"]]
    assert paths and all(p.startswith("s3://zoo/cases/") and p.endswith(".pt") for p in paths)
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    count = """
import json, sys
from ckptlint.io.source import fetch_totals
from ckptlint.python_api import lint_many
report = lint_many([sys.argv[1]], cache=sys.argv[2])
print(json.dumps({"fetched": fetch_totals(), "report": report.render("json")}))
"""
    runs = [json.loads(subprocess.run([sys.executable, "-c", count, pattern, str(cache)], capture_output=True,
                                      text=True, timeout=120, env=env, cwd=REPO, check=True).stdout)
            for _ in range(2)]
    assert runs[0]["report"] == runs[1]["report"]
    assert runs[0]["fetched"][0] > 0 and runs[1]["fetched"][0] == 0  # the second: metadata requests only
    empty = ckptlint("check", "s3://zoo/nothing/**/*.pt", env=env)
    assert empty.returncode == 2 and "no object matches" in empty.stderr
