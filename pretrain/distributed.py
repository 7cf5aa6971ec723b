"""Where this process sits in the job, and the process group.

Detection order (as dora's ``get_distrib_spec``): a torchrun / deepspeed launcher (``RANK``/``WORLD_SIZE`` set) ->
a submitit task (SLURM or submitit's local executor: ``submitit.JobEnvironment``) -> a single process.
"""
from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    source: str = "single"
    """Who told us: "launcher", "submitit" or "single"."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def detect() -> DistEnv:
    """This process's rank / local rank / world size; exports MASTER_ADDR/PORT etc. for ``env://`` init."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return DistEnv(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"]),
                       "launcher")
    if "SUBMITIT_EXECUTOR" in os.environ or "SUBMITIT_LOCAL_JOB_ID" in os.environ or "SLURM_JOB_ID" in os.environ:
        try:
            import submitit

            env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
            return DistEnv(env.rank, env.local_rank, env.world_size, "submitit")
        except RuntimeError:
            pass  # a SLURM allocation without a submitit task (e.g. an interactive salloc shell): single process
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
    return DistEnv()


def device_for(env: DistEnv) -> torch.device:
    """One GPU per task (the local rank's), else the CPU."""
    if torch.cuda.is_available():
        index = env.local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def init(env: DistEnv, backend: str = "auto") -> None:
    """Initialise the process group through DeepSpeed (NCCL on GPUs, gloo on CPU)."""
    import deepspeed

    if torch.distributed.is_initialized():
        return
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)
    log.info("process group: rank %d/%d (%s, %s)", env.rank, env.world_size, backend, env.source)


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def setup(backend: str = "auto") -> tuple[DistEnv, torch.device]:
    """Everything a rank does first: find its place, join the process group, log on rank 0 only, pick its device."""
    import sys

    env = detect()
    init(env, backend)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RankZeroFilter(env.rank))
    return env, device_for(env)


class RankZeroFilter(logging.Filter):
    """Let records through on rank 0 only (other ranks keep warnings and errors)."""

    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        return self.rank == 0 or record.levelno >= logging.WARNING
