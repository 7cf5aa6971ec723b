"""Helpers to run the real pretraining entry point as N processes (the torchrun/deepspeed-launcher environment)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.tiny_corpus import build_tiny

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(world: int, overrides: list[str], log_dir: Path, module: str = "pretrain.train") -> list[subprocess.Popen]:
    """Start ``world`` processes of ``python -m module overrides`` with RANK/WORLD_SIZE/MASTER_* set."""
    port = free_port()
    procs = []
    log_dir.mkdir(parents=True, exist_ok=True)
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        log = open(log_dir / f"rank{rank}.log", "a")
        procs.append(subprocess.Popen([sys.executable, "-m", module, *overrides], cwd=REPO, env=env, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True))
    return procs


def wait_ok(procs: list[subprocess.Popen], log_dir: Path, timeout: float = 300) -> None:
    for rank, p in enumerate(procs):
        try:
            code = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError(f"rank {rank} hung:\n{(log_dir / f'rank{rank}.log').read_text()[-3000:]}")
        assert code == 0, f"rank {rank} exited {code}:\n{(log_dir / f'rank{rank}.log').read_text()[-3000:]}"


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def tone_shards(tmp_path_factory) -> Path:
    """A small labelled shard set of 0.5 s tones (no dependency on the synthetic corpus)."""
    out = tmp_path_factory.mktemp("tones")
    build_tiny(out, n=64, shard_size=8, seconds=0.5)
    return out


def tiny_overrides(method: str, shards: Path, run_dir: Path, steps: int, extra: list[str] = ()) -> list[str]:
    """A very small model and short steps, so a 2-process run takes seconds on 2 cores."""
    common = [f"method={method}", f"run_dir={run_dir}", f"steps={steps}", "seed=3",
              f"data.train=[{{path: {shards}, split: train}}]", "data.stream.clip_seconds=0.5",
              "data.stream.batch_size=4", "data.stream.num_workers=0", "data.stream.shuffle_buffer=16",
              "data.features.target_frames=48", "log.every_steps=1", "log.progress=false",
              "optim.warmup_steps=2", "optim.lr=1e-3", "checkpoint.every_steps=3"]
    model = {"ssast": ["ssast.encoder.depth=2", "ssast.mask_patches=16"],
             "audiomae": ["audiomae.encoder.depth=2", "audiomae.decoder_depth=2", "audiomae.decoder_dim=64",
                          "audiomae.decoder_heads=2"]}[method]
    return common + model + list(extra)
