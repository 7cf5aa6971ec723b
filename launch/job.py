"""What runs in every task (process) of a job: the distributed environment, then the entry's ``run(cfg, stop)``.

A :class:`Job` is checkpointable (submitit requeues it when SLURM preempts it or its time runs out). Requeued, it simply
runs again: ``run`` resumes from the latest complete checkpoint in the run folder, so the job finishes with the step
count it was asked for and nothing already trained is lost.

Near the time limit SLURM sends SIGUSR2 (``--signal=USR2@<delay>``, set by submitit). We catch it in every task and
tell the training loop to stop; the loop saves a checkpoint at the current step on all ranks, and only then rank 0
hands over to submitit, which requeues the job. A plain preemption (``scontrol requeue``, SIGTERM) gives no such
warning: the job resumes from the last periodic checkpoint and repeats the few steps since, with the same losses.
"""
from __future__ import annotations

import importlib
import os
import signal
import threading
import time
from typing import Any

import submitit


class Job(submitit.helpers.Checkpointable):
    """``target(cfg, stop=event)`` in every task; ``target`` is ``"module:function"`` (importable on the nodes)."""

    def __init__(self, target: str, cfg: Any, threads: int = 1):
        self.target = target
        self.cfg = cfg
        self.threads = threads
        """CPU threads of each task's PyTorch (the job's cores per task)."""

    def __call__(self) -> Any:
        # The distributed environment comes from submitit; rank variables exported by the submitting shell (sbatch
        # passes the environment on) would otherwise look like a torchrun launch.
        for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            os.environ.pop(var, None)
        os.environ["OMP_NUM_THREADS"] = str(self.threads)
        import torch

        torch.set_num_threads(self.threads)  # torch may already be loaded (unpickling the config), past OMP's reach
        stop = threading.Event()
        submitit_handler = signal.getsignal(signal.SIGUSR2)

        def on_usr2(signum, frame):  # may arrive on any rank, at any point of a step: only raise a flag
            stop.set()

        signal.signal(signal.SIGUSR2, on_usr2)
        module, function = self.target.split(":")
        result = getattr(importlib.import_module(module), function)(self.cfg, stop=stop)
        if isinstance(result, dict) and result.get("stopped_at") is not None:
            # the loop saved a checkpoint at the current step on every rank; now let submitit requeue the job
            if result.get("rank", 0) == 0 and callable(submitit_handler):
                submitit_handler(signal.SIGUSR2, None)
            while True:  # other ranks wait to be stopped by the requeue
                time.sleep(1)
        return result

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Requeue the same job: it resumes from its latest checkpoint (``checkpoint.resume=auto``)."""
        return submitit.helpers.DelayedSubmission(Job(self.target, self.cfg, self.threads))
