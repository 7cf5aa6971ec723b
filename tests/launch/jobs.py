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
import time
from pathlib import Path

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


def read_progress(path: str | Path) -> list[str]:
    """The lines of a progress file written by :class:`CountingTask` (none when it does not exist yet)."""
    try:
        return Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []


class CountingTask(submitit.helpers.Checkpointable):
    """Counts ``steps`` steps of ``step_s`` seconds, one ``step <i>`` line per step in the file ``progress``.

    Each run first writes ``start <i> from <source> restart=<SLURM_RESTART_COUNT>``: it starts at ``start`` when
    submitit built it from :meth:`checkpoint` (source ``checkpoint``), otherwise after the last step in the file
    (source ``file``), as a job that SLURM requeued without warning finds it. It ends with ``end``.
    """

    def __init__(self, progress: str, steps: int, step_s: float, start: int | None = None):
        self.progress = progress
        self.steps = steps
        self.step_s = step_s
        self.start = start
        self.done_steps = 0

    def _write(self, line: str) -> None:
        with open(self.progress, "a") as f:  # one short append per line: lines stay whole when the task is killed
            f.write(line + "\n")

    def __call__(self) -> int:
        if self.start is not None:
            first, source = self.start, "checkpoint"
        else:
            first = sum(1 for line in read_progress(self.progress) if line.startswith("step "))
            source = "file"
        self.done_steps = first
        self._write(f"start {first} from {source} restart={os.environ.get('SLURM_RESTART_COUNT', '0')}")
        for i in range(first, self.steps):
            time.sleep(self.step_s)
            # The preemption signal must not fall between the line and the count, or checkpoint() would save a step
            # count that disagrees with the file: hold it back until both are done.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
            self._write(f"step {i}")
            self.done_steps = i + 1
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR2})
        self._write("end")
        return self.done_steps

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """Called by submitit in the task when the preemption signal arrives: resubmit from the steps done so far."""
        self._write(f"checkpoint {self.done_steps}")
        return submitit.helpers.DelayedSubmission(
            CountingTask(self.progress, self.steps, self.step_s, start=self.done_steps)
        )
