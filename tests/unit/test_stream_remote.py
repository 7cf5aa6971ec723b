"""Shard sets read from URLs: a real HTTP server on the loopback (``python -m http.server``, and a small server of our
own that drops connections, answers 503 or stalls), the ``pipe:`` form, and manifests that cannot be fetched.

Every remote read must give exactly what the local copy gives (same clips, same batches, same resume), a transient
fault must be invisible apart from a warning, a persistent one must cost only the shard it hits, and nothing may hang.
"""
from __future__ import annotations

import os
import re
import socket
import struct
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import islice
from pathlib import Path

import pytest
import torch

from launch.common.errors import BadInput
from launch.common.fields import SINCE
from shards import remote
from shards.stream import ShardSetConfig, StreamConfig, eval_batches, open_eval_split, open_shard_set, train_loader
from tests.fixtures.deadline import deadline

FAST = dict(read_retries=3, retry_backoff_s=0.01, read_timeout_s=0.5)
"""Retries that cost milliseconds, and a timeout short enough for a stalled server to cost half a second."""


@pytest.fixture(autouse=True)
def no_proxy_for_the_loopback(monkeypatch):
    """urllib honours http_proxy: the loopback servers must be asked directly (DataLoader workers inherit this)."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def http_server(tone_shards):
    """``python -m http.server`` on a free loopback port, serving the folder that holds ``tone_shards``."""
    proc = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory",
                             str(tone_shards.parent)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        with deadline(20):
            line = proc.stdout.readline()  # "Serving HTTP on 127.0.0.1 port 43567 (http://127.0.0.1:43567/) ..."
        port = int(re.search(r"port (\d+)", line).group(1))
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class FaultyServer(ThreadingHTTPServer):
    """Serves the files of ``root`` on the loopback, with Range requests when ``ranges`` (``python -m http.server``
    ignores them), and planned faults: ``plan[file]`` lists what that file's next requests get, then they succeed.

    ``"503"``/``"404"``: that status. ``"reset:N"``: N bytes of the body, then a TCP reset. ``"cut:N"``: N bytes,
    then a clean close (a body shorter than its Content-Length). ``"stall:N"``: N bytes, then silence.
    ``"changed"``: the whole file under another ETag (as if it had been rewritten since the last request).
    """

    daemon_threads = True

    def __init__(self, root: Path, plan: dict[str, list[str]], ranges: bool = True):
        self.root, self.plan, self.ranges = root, {k: list(v) for k, v in plan.items()}, ranges
        self.requests: list[tuple[str, str | None, int, str]] = []  # (file, Range header, client pid, fault)
        self.lock, self.release = threading.Lock(), threading.Event()
        super().__init__(("127.0.0.1", 0), _FaultyHandler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{self.root.name}"

    def requests_of(self, name: str) -> list[tuple[str, str | None, int, str]]:
        return [r for r in self.requests if r[0] == name]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.shutdown()
        self.server_close()


class _FaultyHandler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the http.server protocol
        server: FaultyServer = self.server
        name = self.path.rsplit("/", 1)[-1]
        pid = int(re.search(r"pid (\d+)", self.headers.get("User-Agent", "pid 0")).group(1))
        with server.lock:
            planned = server.plan.get(name)
            fault = planned.pop(0) if planned else "ok"
            server.requests.append((name, self.headers.get("Range"), pid, fault))
        kind, _, arg = fault.partition(":")
        path = server.root / name
        if kind in ("503", "404") or not path.is_file():
            self.send_error(int(kind) if kind in ("503", "404") else 404)
            return
        data, start = path.read_bytes(), 0
        if self.headers.get("Range") and server.ranges:
            start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", '"v2"' if kind == "changed" else '"v1"')
        self.end_headers()
        if kind in ("ok", "changed"):
            self.wfile.write(body)
            return
        self.wfile.write(body[: int(arg)])
        self.wfile.flush()
        if kind == "reset":  # linger 0: the close sends RST instead of FIN
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        elif kind == "stall":
            server.release.wait(10)
        self.close_connection = True

    def log_message(self, *args):
        pass


def _eval_rows(source, cfg: StreamConfig, world: int = 1) -> list[tuple]:
    rows = []
    for rank in range(world):
        for b in eval_batches(source, cfg, rank=rank, world=world):
            rows += [(rank, k, i, v, w) for k, i, v, w in zip(b.keys, b.index.tolist(), b.valid.tolist(), b.wave)]
    return rows


def _assert_same_rows(got: list[tuple], expected: list[tuple]) -> None:
    assert [r[:4] for r in got] == [r[:4] for r in expected]
    assert all(torch.equal(a[4], b[4]) for a, b in zip(got, expected))


def _train(source, cfg: StreamConfig, n: int, start_step: int = 0) -> list[tuple]:
    return [(b.keys, b.wave.clone(), b.corrupt) for b in islice(train_loader([source], cfg, start_step=start_step), n)]


def _assert_same_batches(got: list[tuple], expected: list[tuple]) -> None:
    assert [k for k, _, _ in got] == [k for k, _, _ in expected]
    assert all(torch.equal(a[1], b[1]) for a, b in zip(got, expected))


# ----------------------------------------------------------------------------------------------------------------------
# 1. a shard set served over HTTP reads exactly as its local copy


def test_http_shard_set_reads_as_the_local_copy(tone_shards, http_server):
    local, url = ShardSetConfig(str(tone_shards)), ShardSetConfig(f"{http_server}/{tone_shards.name}/")
    a, b = open_shard_set(local), open_eval_split(url, "data.val")
    assert (b.counts, b.classes, b.name) == (a.counts, a.classes, a.name)
    assert b.urls[0] == f"{http_server}/{tone_shards.name}/train-000000.tar"
    with deadline(60):
        cfg = StreamConfig(clip_seconds=0.25, batch_size=4, num_workers=2, shuffle_buffer=8, segment_batches=3, seed=5)
        full = _train(local, cfg, 8)
        _assert_same_batches(_train(url, cfg, 8), full)
        _assert_same_batches(_train(url, cfg, 3, start_step=5), full[5:])  # exact resume at micro-step 5, mid-segment
        cfg = StreamConfig(clip_seconds=0.5, batch_size=5, num_workers=1)
        _assert_same_rows(_eval_rows(url, cfg, world=2), _eval_rows(local, cfg, world=2))


# ----------------------------------------------------------------------------------------------------------------------
# 2. transient faults are retried from the byte reached: no sample lost, none repeated


TRANSIENT = {
    "train-000000.tar": ["reset:50000"],  # after 3 of its 8 samples
    "train-000001.tar": ["503"],
    "train-000002.tar": ["cut:60000"],  # mid-member
    "train-000003.tar": ["stall:30000"],  # the read timeout (0.5 s) fires
    "train-000004.tar": ["reset:20000", "503", "cut:40000"],  # three in a row: the last retry allowed succeeds
}


@pytest.mark.parametrize("ranges", [True, False], ids=["range", "no_range"])
def test_transient_faults_are_invisible(tone_shards, ranges):
    cfg = StreamConfig(clip_seconds=0.5, batch_size=8, num_workers=0, **FAST)
    expected = _eval_rows(ShardSetConfig(str(tone_shards)), cfg)
    with deadline(60), FaultyServer(tone_shards, TRANSIENT, ranges) as server:
        got = _eval_rows(ShardSetConfig(server.url), cfg)
    _assert_same_rows(got, expected)
    assert all(r[3] for r in got)
    first, resumed = server.requests_of("train-000000.tar")
    assert first[1] is None and 0 < int(resumed[1].removeprefix("bytes=").rstrip("-")) <= 50000
    assert [r[3] for r in server.requests_of("train-000004.tar")] == ["reset:20000", "503", "cut:40000", "ok"]

    # training through the same faults, in two DataLoader workers: the local batches, and each worker has its own
    # connections (a connection opened before the fork would be shared by both, or by none)
    cfg = StreamConfig(clip_seconds=0.25, batch_size=4, num_workers=2, shuffle_buffer=8, seed=1, **FAST)
    expected = _train(ShardSetConfig(str(tone_shards)), cfg, 10)
    with deadline(60), FaultyServer(tone_shards, TRANSIENT, ranges) as server:
        got = _train(ShardSetConfig(server.url), cfg, 10)
    _assert_same_batches(got, expected)
    assert all(corrupt == 0 for _, _, corrupt in got) and any(r[3] != "ok" for r in server.requests)
    shard_pids = {pid for name, _, pid, _ in server.requests if name.endswith(".tar")}
    assert len(shard_pids) == 2 and os.getpid() not in shard_pids
    assert {pid for name, _, pid, _ in server.requests if name == "manifest.json"} == {os.getpid()}


# ----------------------------------------------------------------------------------------------------------------------
# 3. a shard that keeps failing is skipped and counted like a damaged one; a 404 is not retried


def test_a_shard_that_keeps_failing_costs_only_that_shard(tone_shards):
    plan = {"train-000002.tar": ["503"] * 99, "train-000005.tar": ["reset:0"] * 99, "train-000006.tar": ["404"] * 99,
            "train-000007.tar": ["cut:40000", "changed"]}  # rewritten between two reads: not spliced
    retry = {**FAST, "read_retries": 2}
    with deadline(60), FaultyServer(tone_shards, plan) as server:
        rows = _eval_rows(ShardSetConfig(server.url), StreamConfig(clip_seconds=0.5, batch_size=8, num_workers=0,
                                                                   **retry))
        lost = sorted(i for _, _, i, valid, _ in rows if not valid and i >= 0)
        # shards 2, 5, 6: invalid rows in place; shard 7 keeps the 2 samples read before it changed
        assert lost == [*range(16, 24), *range(40, 56), *range(58, 64)]
        assert [len(server.requests_of(f"train-00000{k}.tar")) for k in (2, 5, 6, 7)] == [3, 3, 1, 2]
        cfg = StreamConfig(clip_seconds=0.25, batch_size=8, num_workers=0, shuffle_buffer=4, **retry)
        batches = _train(ShardSetConfig(server.url), cfg, 8)
    keys = {int(k[-4:]) for ks, _, _ in batches for k in ks}
    assert keys and not keys & {*range(16, 24), *range(40, 56)}
    assert batches[-1][2] > 0  # the skipped shards are counted


# ----------------------------------------------------------------------------------------------------------------------
# 4. the pipe: form, and object stores through their command-line client


def test_pipe_form_reads_as_the_local_copy(tone_shards):
    cfg = StreamConfig(clip_seconds=0.5, batch_size=8, num_workers=0)
    expected = _eval_rows(ShardSetConfig(str(tone_shards)), cfg)
    with deadline(60):
        _assert_same_rows(_eval_rows(ShardSetConfig(f"pipe:cat {tone_shards}/{{}}"), cfg), expected)
        s = open_shard_set(ShardSetConfig(f"pipe:cat {tone_shards}"))  # without {}: the file name is appended
        assert s.urls[0] == f"pipe:cat {tone_shards}/train-000000.tar" and s.name == f"{tone_shards.name}/train"
        cfg = StreamConfig(clip_seconds=0.25, batch_size=4, num_workers=0, shuffle_buffer=8, segment_batches=3)
        _assert_same_batches(_train(ShardSetConfig(f"pipe:cat {tone_shards}/{{}}"), cfg, 4),
                             _train(ShardSetConfig(str(tone_shards)), cfg, 4))


def test_s3_through_the_aws_command_line(tone_shards, tmp_path, monkeypatch):
    if remote._fsspec_has("s3"):
        pytest.skip("s3fs is installed: s3:// goes through fsspec, not the aws command line")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # the aws client's contract for `aws s3 cp s3://BUCKET/KEY -`: the object on standard output, status 1 if missing
    (bin_dir / "aws").write_text(f'#!/bin/sh\nexec cat "{tone_shards.parent}/${{3#s3://bucket/}}"\n')
    (bin_dir / "aws").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    cfg = StreamConfig(clip_seconds=0.5, batch_size=8, num_workers=0, **FAST)
    with deadline(60):
        rows = _eval_rows(ShardSetConfig(f"s3://bucket/{tone_shards.name}"), cfg)
    _assert_same_rows(rows, _eval_rows(ShardSetConfig(str(tone_shards)), cfg))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(BadInput, match=r"^s3://bucket/x/manifest.json: reading s3:// needs fsspec .*'aws'"):
        open_shard_set(ShardSetConfig("s3://bucket/x"))


# ----------------------------------------------------------------------------------------------------------------------
# 5. a manifest that cannot be fetched is one line naming the URL


def test_unfetchable_manifest_is_one_line_naming_the_url(tone_shards, http_server):
    fast = StreamConfig(**FAST)
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    cases = {
        f"{http_server}/nope": "no manifest (HTTP 404",  # an answer: not retried
        f"http://127.0.0.1:{closed}/set": "cannot fetch the manifest (ConnectionRefusedError",
        f"pipe:cat {tone_shards}/nope/{{}}": "cannot fetch the manifest (cat ",
    }
    with deadline(30):
        for base, expected in cases.items():
            with pytest.raises(BadInput) as info:
                open_shard_set(ShardSetConfig(base), fast)
            message = str(info.value)
            assert "\n" not in message and message.startswith(f"{remote.join(base, 'manifest.json')}: {expected}")
            if "404" not in expected:
                assert message.endswith("(gave up after 4 attempts))"), message


# ----------------------------------------------------------------------------------------------------------------------
# 6. names, backoff and config


def test_names_backoff_and_config():
    assert remote.join("http://h:1/a/set/", "manifest.json") == "http://h:1/a/set/manifest.json"
    assert remote.join("https://h/set?token=x", "t.tar") == "https://h/set/t.tar?token=x"
    assert remote.join("gs://b/set", "t.tar") == "gs://b/set/t.tar"
    assert remote.join("pipe:curl -s -f https://h/set/{} --retry 3", "t.tar") == "pipe:curl -s -f https://h/set/t.tar --retry 3"
    assert [remote.base_name(b) for b in ("http://h/x/tones/", "s3://b/tones", "pipe:cat /d/tones/{}", "/d/tones")] \
        == ["tones"] * 4
    assert remote.backoff_delays(remote.RetryPolicy(retries=9, backoff_s=0.5)) == [0.5, 1, 2, 4, 8, 16, 32, 60, 60]
    assert remote.is_transient(ConnectionResetError()) and not remote.is_transient(FileNotFoundError())
    new = {f.name for f in StreamConfig.__dataclass_fields__.values() if SINCE in f.metadata}
    assert new == {"read_retries", "retry_backoff_s", "read_timeout_s"}  # left out of existing run folders' hashes
    for key, value, expected in (("read_retries", -1, "0..100"), ("read_timeout_s", 0, "0 < s <= 3600")):
        with pytest.raises(ValueError, match=rf"^data.stream.{key}={value}: expected {re.escape(expected)}"):
            StreamConfig(**{key: value})
