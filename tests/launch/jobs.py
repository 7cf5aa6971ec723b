"""What the SLURM smoke tests submit: small functions that run on the emulated nodes.

submitit pickles a module-level function or class *by reference* (``tests.launch.jobs.all_reduce_rank``), so the job
has to import this module. The ``slurm_cluster`` fixture puts the repository root on the job's PYTHONPATH (its
``job_setup`` lines) for that; nothing here may rely on the test session's ``sys.path``. Heavy imports (torch) stay
inside the functions: importing this module must be cheap and must not need a GPU.
"""
from __future__ import annotations

import datetime
import os
import signal

import submitit


def all_reduce_rank(x: float) -> dict:
    """Join a gloo group over all the job's tasks and all-reduce ``x + rank``.

    Every rank returns the same ``sum`` (``world * x + world * (world - 1) / 2``) plus where it ran, so a test can
    check the rank layout across the emulated nodes.
    """
    import torch
    import torch.distributed as dist

    env = submitit.helpers.TorchDistributedEnvironment().export()
    # A bounded timeout: a rank that cannot reach MASTER_ADDR fails the job instead of hanging it for 30 minutes.
    dist.init_process_group("gloo", init_method="env://", timeout=datetime.timedelta(seconds=60))
    try:
        t = torch.tensor([x + env.rank], dtype=torch.float64)
        dist.all_reduce(t)
        return {
            "rank": env.rank,
            "world_size": env.world_size,
            "local_rank": env.local_rank,
            "node": os.environ.get("SLURMD_NODENAME"),  # socket.gethostname() is the real host on every fake node
            "master_addr": env.master_addr,
            "sum": t.item(),
        }
    finally:
        dist.destroy_process_group()


def die_by_sigkill() -> None:
    """Kill the task with SIGKILL: no result pickle is written, only SLURM accounting knows the job failed."""
    os.kill(os.getpid(), signal.SIGKILL)
