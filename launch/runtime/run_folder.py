"""The run folder: one run at a time, the same config on every rerun, a fresh start only when asked for.

* **One run at a time.** Rank 0 holds ``<run>/.lock`` for the whole run: an ``flock`` (released by the kernel when
  the process dies, even by ``kill -9``) plus a record of the holder (host, pid, SLURM job, start time), touched
  as the run goes. A second run in the folder is refused in one line naming the holder. A lock left by a dead run
  never sticks: on the same host the kernel has dropped its flock; on another host the holder's SLURM job must
  still be running, or, without SLURM, its record must have been touched within the last ``STALE_SECONDS``.
* **The same config.** A rerun resumes only a run of the same config (``steps``, ``eval_every`` and
  ``early_stop`` may change: extending a run is allowed; where to write and how often to log never matter).
  Another config (another model size, other classes) is refused in one line naming the first differences.
* **A fresh start** (``checkpoint.resume=never``) moves what the folder held to ``<run>/previous/<time>/``:
  nothing written is ever deleted or overwritten. It happens once per job: a requeued attempt resumes.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from launch.common.errors import BadInput
from launch.runtime.config import HASH_IGNORED

LOCK_FILE = ".lock"
CONFIG_FILE = "config.yaml"
PREVIOUS = "previous"
STALE_SECONDS = 600
"""A holder on another host, outside SLURM, whose record was not touched for this long is taken for dead."""
MAY_CHANGE = ("steps", "eval_every", "early_stop")
"""Top-level keys a rerun may change (the run's length and monitoring, not its model or data)."""
RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "tensorboard", "wandb", "encoder.pt", "best.pt", "metrics.json",
               "predictions.csv", "confusion_matrix.png", "layer_weights.png", CONFIG_FILE)
"""What a run writes into its folder (moved to ``previous/`` on a fresh start)."""


@dataclass
class Holder:
    """Who holds a run folder."""

    host: str
    pid: int
    job: str | None
    started: str

    def describe(self) -> str:
        where = f"pid {self.pid} on {self.host}"
        return f"SLURM job {self.job} ({where})" if self.job else where

    @classmethod
    def me(cls) -> "Holder":
        return cls(socket.gethostname(), os.getpid(), os.environ.get("SLURM_JOB_ID"),
                   time.strftime("%Y-%m-%dT%H:%M:%S"))


def slurm_job_active(job: str) -> bool:
    """Whether SLURM still runs (or is about to run) ``job``; False when SLURM cannot tell."""
    try:
        r = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and r.stdout.strip() in ("RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "PENDING",
                                                       "REQUEUED", "RESIZING")


def _read_holder(path: Path) -> Holder | None:
    try:
        fields = json.loads(path.read_text() or "null")
        return Holder(**fields) if isinstance(fields, dict) else None
    except (OSError, ValueError, TypeError):
        return None


def _elsewhere_alive(holder: Holder, lock: Path) -> bool:
    """A holder on another host (the kernel's flock does not reach across hosts on every file system)."""
    me = Holder.me()
    if holder.host == me.host or (holder.job and holder.job == me.job):
        return False  # same host: the flock decided; our own job id: a requeued run of this very job
    if holder.job:
        return slurm_job_active(holder.job)
    return time.time() - lock.stat().st_mtime < STALE_SECONDS


class RunLock:
    """``<run>/.lock`` held by this process (see the module docstring); use as a context manager or release()."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK_FILE
        self.file = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise BadInput(self._refusal(_read_holder(self.path))) from None
        holder = _read_holder(self.path)
        if holder is not None and _elsewhere_alive(holder, self.path):
            f.close()
            raise BadInput(self._refusal(holder))
        f.seek(0)
        f.truncate()
        f.write(json.dumps(asdict(Holder.me())))
        f.flush()
        self.file = f
        return self

    def _refusal(self, holder: Holder | None) -> str:
        who = holder.describe() if holder else "another process"
        return (f"{self.path.parent}: another run is using this folder ({who}); wait for it, stop it, or give "
                "another run_dir")

    def touch(self) -> None:
        """Show that the holder is alive (for holders on other hosts)."""
        if self.file is not None:
            os.utime(self.path)

    def release(self) -> None:
        if self.file is not None:
            self.file.seek(0)
            self.file.truncate()
            self.file.close()  # closing drops the flock
            self.file = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


@contextmanager
def held(run_dir: Path, is_main: bool, prepare: Callable[[], None] | None = None) -> Iterator[RunLock]:
    """Hold ``run_dir`` for a run on every rank: rank 0 takes the lock and, holding it, runs ``prepare`` (config
    check, fresh start); every rank raises the same refusal when either fails (collective), and the lock is released
    when the block ends, however it ends."""
    from launch.runtime import distributed

    lock, refusal = RunLock(run_dir), ""
    if is_main:
        try:
            lock.acquire()
            if prepare is not None:
                prepare()
        except BadInput as e:
            lock.release()
            refusal = str(e)
    if not distributed.all_ranks(not refusal):
        raise BadInput(refusal or f"{run_dir}: rank 0 refused the run folder (its log says why)")
    try:
        yield lock
    finally:
        lock.release()


def check_free(run_dir: Path) -> None:
    """Refuse in one line when a live run holds ``run_dir`` (the launcher asks before queueing a job)."""
    lock = RunLock(run_dir)
    if lock.path.exists():
        lock.acquire().release()


# ------------------------------------------------------------------------------------------------ the same config


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any], may_change: Iterable[str] = ()) -> list[str]:
    """``key: old -> new`` for every key both trees hold with different values, except the groups that never change
    a result, the keys a rerun may change and the dotted keys ``may_change`` (fields that change how a run computes,
    not what). Keys only one tree holds (a field added or removed since) are not differences."""
    skip, free = tuple(HASH_IGNORED) + MAY_CHANGE, set(may_change)
    a, b = _flatten(old), _flatten(new)
    return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in sorted(a.keys() & b.keys())
            if k.split(".")[0] not in skip and k not in free and _normal(a[k]) != _normal(b[k])]


def _normal(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def holds_run(run_dir: Path, outputs: Iterable[str] = RUN_OUTPUTS) -> bool:
    """Whether the folder holds what a run wrote (not just the config the launcher put there)."""
    return any((run_dir / name).exists() for name in outputs if name != CONFIG_FILE)


def read_config(run_dir: Path, what_to_do: str = "move the run folder away or give another run_dir"
                ) -> dict[str, Any] | None:
    """The config a run folder holds (its config.yaml) as plain containers; None when it has none. A damaged file is
    one line naming it and ``what_to_do``, never a silent default: every reader of a run's config comes here."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    try:
        tree = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as e:  # noqa: BLE001 - a damaged config.yaml: say so, do not guess
        raise BadInput(f"{path}: not valid YAML ({type(e).__name__}); {what_to_do}") from None
    if not isinstance(tree, dict):
        raise BadInput(f"{path}: holds a {type(tree).__name__}, not a run's config (a mapping of keys); {what_to_do}")
    return tree


def check_same_config(run_dir: Path, tree: Mapping[str, Any], may_change: Iterable[str] = ()) -> None:
    """Refuse in one line when ``run_dir`` holds a run of another config (see the module docstring)."""
    if not holds_run(run_dir):
        return
    old = read_config(run_dir)
    if old is None:
        return
    changes = config_changes(old, tree, may_change)
    if changes:
        more = f" and {len(changes) - 3} more" if len(changes) > 3 else ""
        raise BadInput(f"{run_dir}: holds a run of another config ({'; '.join(changes[:3])}{more}); rerun with "
                       f"checkpoint.resume=never to start afresh (the old run moves to {run_dir / PREVIOUS}/), "
                       "or give another run_dir")


def resume_mode(resume: str) -> str:
    """``checkpoint.resume`` as this attempt of the job must read it: a job that SLURM requeued (preempted, or at its
    time limit) made its fresh start in its first attempt, so it resumes ("auto") instead of starting over again."""
    if resume == "never" and int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0:
        return "auto"
    return resume


def move_to_previous(run_dir: Path, outputs: Iterable[str] = RUN_OUTPUTS) -> Path | None:
    """A fresh start: move what ``run_dir`` holds of a run to ``previous/<time>/``; returns that folder (None when
    it held no run: a config.yaml the launcher wrote while the job waited stays where it is)."""
    outputs = list(outputs)
    if not holds_run(run_dir, outputs):
        return None
    present = [run_dir / name for name in outputs if (run_dir / name).exists()]
    target = run_dir / PREVIOUS / time.strftime("%Y%m%d-%H%M%S")
    while target.exists():
        target = target.with_name(target.name + "-1")
    target.mkdir(parents=True)
    for path in present:
        os.replace(path, target / path.name)
    return target
