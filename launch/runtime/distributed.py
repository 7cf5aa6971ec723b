"""Where this process sits in the job, the process group, and the few collectives the loop needs.

Detection order (as dora's ``get_distrib_spec``): a torchrun / deepspeed launcher (``RANK``/``WORLD_SIZE`` set) ->
a submitit task (SLURM or submitit's local executor: ``submitit.JobEnvironment``) -> a single process. The process
group is joined through :func:`launch.runtime.engine.init_process_group` (DeepSpeed's own initialisation).
"""
from __future__ import annotations

import logging
import os
import socket
import sys
from dataclasses import dataclass
from typing import Any, Sequence

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


def setup(backend: str = "auto") -> tuple[DistEnv, torch.device]:
    """Everything a rank does first: find its place, join the process group, log on rank 0 only, pick its device."""
    from launch.runtime.engine import init_process_group

    env = detect()
    used = init_process_group(backend)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RankZeroFilter) for f in handler.filters):
            handler.addFilter(RankZeroFilter(env.rank))
    log.info("process group: rank %d/%d (%s, %s)", env.rank, env.world_size, used, env.source)
    return env, device_for(env)


class RankZeroFilter(logging.Filter):
    """Let records through on rank 0 only (other ranks keep warnings and errors)."""

    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        return self.rank == 0 or record.levelno >= logging.WARNING


# ------------------------------------------------------------------------------------------------- collectives


def _world() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def _collective_device() -> torch.device:
    """Where a collective's tensor must live: the GPU for NCCL, the CPU for gloo."""
    nccl = torch.distributed.get_backend() == "nccl"
    return torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")


def barrier() -> None:
    if _world() > 1:
        torch.distributed.barrier()


_HOST_GROUP: list = []


def _host_group():
    """The group host flags travel in: the default one under gloo; under NCCL a gloo group over the same ranks,
    made on first use (every rank reaches it at the same call). An NCCL flag would go through the GPU, and reading
    it back waits for all the work queued there: a device sync at every step's stop check."""
    if torch.distributed.get_backend() != "nccl":
        return None
    if not _HOST_GROUP:
        _HOST_GROUP.append(torch.distributed.new_group(backend="gloo"))
    return _HOST_GROUP[0]


def all_ranks(ok: bool) -> bool:
    """True when ``ok`` holds on every rank (every rank gets the same answer, so they take the same branch)."""
    if _world() == 1:
        return ok
    flag = torch.tensor([1.0 if ok else 0.0])  # on the host, reduced on the host (gloo)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN, group=_host_group())
    return bool(flag.item())


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` holds on any rank (e.g. a stop request that reached one rank)."""
    return not all_ranks(not flag)


def sum_across_ranks(values: Sequence[float]) -> list[float]:
    """Element-wise sums over ranks, in float64 (exact counts and sums for evaluation means)."""
    if _world() == 1:
        return [float(v) for v in values]
    t = torch.tensor(list(values), dtype=torch.float64, device=_collective_device())
    torch.distributed.all_reduce(t)
    return t.tolist()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank (``[obj]`` in a world of one)."""
    if _world() == 1:
        return [obj]
    gathered: list[Any] = [None] * _world()
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def mean_across_ranks(values: dict[str, float]) -> dict[str, float]:
    """The mean of every value over ranks (each rank passes the same keys)."""
    keys = sorted(values)
    sums = sum_across_ranks([values[k] for k in keys])
    return {k: s / _world() for k, s in zip(keys, sums)}
