"""Helpers to run the real pretraining entry point as N processes (the torchrun/deepspeed-launcher environment)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.fixtures.pretrain_runs import read_metrics, tiny_overrides  # noqa: F401 (re-exported for tests)

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
