"""``run(task, cfg, stop)``: the one step loop of every job; a :class:`Task` says only what differs.

One optimizer step, on every rank::

    for each of grad_accum micro-batches:
        seed = step_seed(seed, rank, micro_step)      torch.manual_seed(seed) (dropout), a Generator (masks, mixup)
        batch = next(task.train_batches(...))         the seeded, resumable stream continues at the micro-step
        out = task.step(ctx, engine, batch, gen)      the task's forward: a loss and scalars to log
        engine.backward(out.loss); engine.step()      DeepSpeed: ZeRO, precision, accumulation, clipping, the LR
    every log.every_steps:   mean of the scalars over micro-steps and ranks -> the tracker (jsonl, TensorBoard, W&B)
    every eval_every:        task.evaluate -> the plateau schedule, the best value (task.save_best), early stop
    every checkpoint.every_steps, at the end, and on a stop request (SIGUSR2): a run checkpoint

Everything random is a function of the step, and the stream resumes at its micro-step, so a run resumed from its
newest complete checkpoint repeats the losses of an uninterrupted one (same seed and world size).

No step between log, validation and checkpoint steps reads a tensor back to the host (on a GPU such a read waits for
all queued work, so the host could no longer run ahead): the scalars are summed on the device and read on log steps;
the stop request is a host flag reduced on the host (:func:`distributed.any_rank`); the engine is configured not to
read (:func:`launch.runtime.engine.deepspeed_config`); the tasks queue their host tensors to the device without
waiting. tests/integration/test_loop.py counts the reads of real runs. What remains is DeepSpeed's by design, per
optimizer step: fp16's overflow flag, the gradient norm when ``optim.clip_grad`` is on, and with bf16 on ZeRO-0 its
unfused optimizer's checks of every gradient (ZeRO-1 trains the same without them).

At the end ``task.finish`` exports what the job is for (an encoder, a tested classifier). Around it all: the run
folder's lock, config check and fresh start (:mod:`launch.runtime.run_folder`).

Writing a new job (say, a distillation student) means writing a :class:`Task`; nothing here changes.
"""
from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, TypeVar

import torch
from torch import Tensor, nn

from launch.common.errors import BadInput
from launch.common.files import atomic_write
from launch.common.seeds import step_seed
from launch.runtime import checkpoints, distributed, run_folder
from launch.runtime.config import (
    CheckpointConfig,
    DeepSpeedConfig,
    LogConfig,
    OptimConfig,
    config_tree,
    how_not_what_keys,
    to_yaml,
)
from launch.runtime.engine import DTYPES, Engine, build_engine, watched
from launch.runtime.tracking import Tracker

log = logging.getLogger("tessera")
T = TypeVar("T")


class RunConfig(Protocol):
    """What the loop reads of a job's config tree (pretraining and fine-tuning trees both hold these)."""

    run_dir: str
    seed: int
    steps: int
    eval_every: int
    optim: OptimConfig
    deepspeed: DeepSpeedConfig
    checkpoint: CheckpointConfig
    log: LogConfig


@dataclass
class StepOutput:
    """What one micro-step of a task gives the loop."""

    loss: Tensor
    """The scalar to backpropagate."""
    scalars: dict[str, Tensor] = field(default_factory=dict)
    """Detached scalar tensors to log, averaged over micro-steps and ranks (kept on the device until a log step)."""
    counters: dict[str, float] = field(default_factory=dict)
    """Host numbers logged as they are at the log step (e.g. samples skipped so far by the stream)."""


@dataclass(frozen=True)
class Selection:
    """How a task's validation picks its best weights."""

    metric: str
    """The validation value, e.g. "val_accuracy"."""
    mode: str = "max"
    patience: int = 0
    """Stop after this many validations without improvement (0: never)."""

    def better(self, value: float, best: float | None) -> bool:
        return best is None or (value > best if self.mode == "max" else value < best)


@dataclass
class Context:
    """Where a task runs: this rank, its device, the run folder, the console and the tracker."""

    env: distributed.DistEnv
    device: torch.device
    dtype: torch.dtype
    """Compute dtype of the engine's inputs (``deepspeed.precision``)."""
    run_dir: Path
    console: Any
    tracker: Tracker | None = None

    def main_first(self, fn: Callable[[], T]) -> T:
        """``fn()`` on rank 0, then (after a barrier) on the other ranks: e.g. rank 0 builds the default corpus
        once, the others then find it built."""
        value = fn() if self.env.is_main else None
        distributed.barrier()
        return value if self.env.is_main else fn()


@dataclass
class LoopState:
    """Where the loop stands; ``best`` and ``bad_evals`` travel with every checkpoint."""

    step: int = 0
    best: float | None = None
    bad_evals: int = 0
    last_saved: int = 0

    def client_state(self, accum: int) -> dict[str, Any]:
        # "micro_step" is the data stream's position; "best" keeps -inf for "none yet" (older checkpoints do)
        return {"step": self.step, "micro_step": self.step * accum,
                "best": -math.inf if self.best is None else self.best, "bad_evals": self.bad_evals}


class Task(ABC):
    """What a job says: the model, what one step computes, what evaluation measures, what is exported."""

    label: str = "train"
    """Name on the progress bar."""
    selection: Selection | None = None
    """How validation picks the best weights (None: it does not)."""

    def __init__(self, run_dir: Path, micro_batch: int):
        self.run_dir = Path(run_dir).resolve()
        self.micro_batch = micro_batch
        """Clips per rank per micro-step (DeepSpeed's micro batch)."""

    def setup(self, ctx: Context) -> None:
        """Resolve and check the data (``ctx.main_first`` for what rank 0 must do first)."""

    @abstractmethod
    def build_model(self, ctx: Context) -> nn.Module:
        """The model (a plain nn.Module), built after the seed is set: the same weights on every rank."""

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]] | None:
        """Optimizer groups (with ``lr_scale``); None: the default decay / no-decay split."""
        return None

    def describe(self, ctx: Context, model: nn.Module) -> list[str]:
        """Task-specific lines of the start-up summary."""
        return []

    @abstractmethod
    def train_batches(self, ctx: Context, start_micro_step: int) -> Iterator[Any]:
        """The rank's endless training stream, continuing at ``start_micro_step``."""

    @abstractmethod
    def step(self, ctx: Context, engine: Any, batch: Any, generator: torch.Generator) -> StepOutput:
        """One micro-step's forward: ``generator`` (seeded by the step) draws masks, mixup partners ..."""

    @property
    def validates(self) -> bool:
        """Whether :meth:`evaluate` has data to measure."""
        return False

    def evaluate(self, ctx: Context, engine: Any) -> dict[str, float]:
        """Validation values (``val_*``), the same on every rank (collective)."""
        return {}

    def save_best(self, ctx: Context, engine: Any, step: int, scores: dict[str, float]) -> None:
        """A new best validation value (every rank calls this; rank 0 writes)."""

    def finish(self, ctx: Context, engine: Any, state: LoopState) -> dict[str, Any]:
        """The job's outputs after the last step (collective); returns summary entries."""
        return {}


# ---------------------------------------------------------------------------------------------------- the loop


def run(task: Task, cfg: RunConfig, stop: Any = None) -> dict[str, Any]:
    """Train ``task`` as ``cfg`` says, on every rank; returns a summary (``stopped_at`` set when a stop request
    ended it early: a checkpoint at that step exists and the requeued job resumes there)."""
    from rich.console import Console

    env, device = distributed.setup(cfg.deepspeed.backend)
    console = Console(stderr=True, quiet=not env.is_main)
    ctx = Context(env, device, DTYPES[cfg.deepspeed.precision], task.run_dir, console)
    with run_folder.held(task.run_dir, env.is_main, lambda: _open_folder(task.run_dir, cfg, console)) as lock:
        return _train(task, cfg, ctx, lock, stop)


def _open_folder(run_dir: Path, cfg: RunConfig, console: Any) -> None:
    """Rank 0, holding the lock: the same config or a fresh start on request, then the resolved config.yaml."""
    if run_folder.resume_mode(cfg.checkpoint.resume) == "never":
        moved = run_folder.move_to_previous(run_dir)
        if moved:
            console.print(f"fresh start (checkpoint.resume=never): the previous run is now in {moved}")
    else:
        run_folder.check_same_config(run_dir, config_tree(cfg), how_not_what_keys(cfg))
    atomic_write(run_dir / run_folder.CONFIG_FILE, to_yaml(cfg))


def _resume(built: Engine, cfg: RunConfig, ctx: Context) -> LoopState:
    """The newest complete checkpoint (or the one asked for), and what lies beyond it moved aside."""
    ckpt_dir = task_ckpt_dir(ctx.run_dir)
    state = LoopState()
    resume = run_folder.resume_mode(cfg.checkpoint.resume)
    if resume != "never":
        explicit = None if resume == "auto" else resume
        resumed = checkpoints.resume(built.engine, ckpt_dir, explicit)
        if resumed:
            step, client = resumed
            best = client.get("best")
            state = LoopState(step, None if best is None or best == -math.inf else float(best),
                              int(client.get("bad_evals", 0)), step)
            log.info("resumed from %s at step %d", ckpt_dir / checkpoints.tag_for(step), step)
    if ctx.env.is_main:
        for moved in checkpoints.supersede_after(ckpt_dir, state.step):
            log.warning("checkpoint beyond the resume step %d moved aside (kept, never resumed from): %s",
                        state.step, moved)
    distributed.barrier()
    return state


def task_ckpt_dir(run_dir: Path) -> Path:
    return run_dir / checkpoints.CHECKPOINTS


def _describe(task: Task, cfg: RunConfig, ctx: Context, model: nn.Module, built: Engine, start: int) -> str:
    world = ctx.env.world_size
    eff = task.micro_batch * cfg.deepspeed.grad_accum * world
    n_params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lines = [f"run folder        {ctx.run_dir}",
             f"model             {n_params / 1e6:.2f}M parameters ({trainable / 1e6:.2f}M trained)",
             *task.describe(ctx, model),
             f"batch             {task.micro_batch} per rank x {cfg.deepspeed.grad_accum} accum x {world} ranks = "
             f"{eff} clips/step",
             f"learning rate     peak {built.peak_lr:.3g}, {cfg.optim.warmup_steps} warm-up steps, {cfg.optim.schedule}",
             f"engine            ZeRO-{cfg.deepspeed.zero_stage}, {cfg.deepspeed.precision}",
             f"steps             {start} -> {cfg.steps}"]
    return "\n".join(lines)


def _train(task: Task, cfg: RunConfig, ctx: Context, lock: run_folder.RunLock, stop: Any) -> dict[str, Any]:
    env = ctx.env
    task.setup(ctx)
    if cfg.optim.schedule == "plateau" and not task.validates:
        raise BadInput("optim.schedule=plateau watches a validation value: give data.val={path: ..., split: ...}")
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = task.build_model(ctx)
    built = build_engine(model, cfg.deepspeed, cfg.optim, micro_batch=task.micro_batch, world=env.world_size,
                         total_steps=cfg.steps, groups=task.param_groups(model))
    engine = built.engine
    state = _resume(built, cfg, ctx)
    ctx.tracker = Tracker(ctx.run_dir, cfg.log, start_step=state.step, is_main=env.is_main, config=config_tree(cfg))
    ctx.console.print(_describe(task, cfg, ctx, model, built, state.step))
    try:
        stopped = _steps(task, cfg, ctx, built, state, lock, stop)
        summary = {"run_dir": str(ctx.run_dir), "rank": env.rank, "world_size": env.world_size, "steps": state.step,
                   "last_saved": state.last_saved, "best": state.best}
        if stopped:
            log.warning("stopping at step %d on request (time limit); the requeued job resumes here", state.step)
            return {**summary, "stopped_at": state.step, "metrics": ctx.tracker.records}
        summary.update(task.finish(ctx, engine, state))
        distributed.barrier()
        return {**summary, "metrics": ctx.tracker.records}
    finally:
        ctx.tracker.close()


def _steps(task: Task, cfg: RunConfig, ctx: Context, built: Engine, state: LoopState, lock: run_folder.RunLock,
           stop: Any) -> bool:
    """Train from ``state.step`` to ``cfg.steps``; True when a stop request ended it (after a checkpoint)."""
    env, engine, accum = ctx.env, built.engine, cfg.deepspeed.grad_accum
    ckpt_dir = task_ckpt_dir(ctx.run_dir)
    batches = task.train_batches(ctx, state.step * accum)
    eval_every = cfg.eval_every or cfg.log.every_steps
    sums: dict[str, Tensor] = {}
    counters: dict[str, float] = {}
    counted, data_wait, t0 = 0, 0.0, time.perf_counter()

    def save() -> None:
        checkpoints.save(engine, ckpt_dir, state.step, state.client_state(accum), cfg.checkpoint.keep_last,
                         env.is_main)
        state.last_saved = state.step

    bar_ctx = _progress_bar(ctx.console, task.label, cfg.steps, state.step) \
        if (env.is_main and cfg.log.progress) else nullcontext(None)
    with bar_ctx as bar:
        for step in range(state.step, cfg.steps):
            for micro in range(accum):
                seed = step_seed(cfg.seed, env.rank, step * accum + micro)
                torch.manual_seed(seed)  # dropout / drop-path
                generator = torch.Generator().manual_seed(seed)  # masks, mixup partners, token masks
                t_wait = time.perf_counter()
                batch = next(batches)
                data_wait += time.perf_counter() - t_wait
                out = task.step(ctx, engine, batch, generator)
                engine.backward(out.loss)
                engine.step()
                for k, v in {"loss": out.loss, **out.scalars}.items():
                    sums[k] = sums[k] + v.detach() if k in sums else v.detach().clone()
                counters.update(out.counters)
                counted += 1
            state.step = step + 1
            done = state.step
            record: dict[str, Any] = {}
            if done % cfg.log.every_steps == 0 or done == cfg.steps:
                elapsed = time.perf_counter() - t0
                record = distributed.mean_across_ranks({k: float(v) / counted for k, v in sums.items()})
                record.update(lr=built.scheduler.get_last_lr()[0],
                              clips_per_s=counted * task.micro_batch * env.world_size / elapsed,
                              data_wait=data_wait / elapsed, **counters)
                sums, counted, data_wait, t0 = {}, 0, 0.0, time.perf_counter()
                if bar is not None:
                    bar[0].update(bar[1], loss=record["loss"])
                lock.touch()
            if task.validates and (done % eval_every == 0 or done == cfg.steps):
                t_eval = time.perf_counter()
                record.update(_validate(task, cfg, ctx, built, state))
                t0 += time.perf_counter() - t_eval  # validation is not training time
            if bar is not None:
                bar[0].update(bar[1], completed=done)
            if record:
                ctx.tracker.record(done, record)
                if not (cfg.log.progress and ctx.console.is_terminal):  # logs (SLURM, local jobs) get lines
                    ctx.console.print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                               for k, v in {"step": done, **record}.items()))
            if done % cfg.checkpoint.every_steps == 0 or done == cfg.steps:
                save()
            if done < cfg.steps and stop is not None and distributed.any_rank(stop.is_set()):
                if state.last_saved != done:
                    save()
                return True
            if task.selection and task.selection.patience and state.bad_evals >= task.selection.patience:
                ctx.console.print(f"early stop at step {done}: no better {task.selection.metric} for "
                                  f"{state.bad_evals} validations")
                if state.last_saved != done:
                    save()
                break
    return False


def _validate(task: Task, cfg: RunConfig, ctx: Context, built: Engine, state: LoopState) -> dict[str, float]:
    """One evaluation: its values, the plateau schedule and the best value (the same on every rank)."""
    scores = task.evaluate(ctx, built.engine)
    if cfg.optim.schedule == "plateau" and built.schedule.observe(watched(scores, cfg.optim)):
        ctx.console.print(f"step {state.step}: {cfg.optim.plateau_metric} has not improved for "
                          f"{cfg.optim.plateau_patience + 1} validations; lr x {cfg.optim.plateau_factor}")
    sel = task.selection
    if sel is not None:
        if sel.metric not in scores:
            raise BadInput(f"the task selects its best weights on {sel.metric}, but its validation gives "
                           f"{', '.join(sorted(scores)) or 'nothing'}")
        value = scores[sel.metric]
        if sel.better(value, state.best):
            state.best, state.bad_evals = value, 0
            task.save_best(ctx, built.engine, state.step, scores)
        else:
            state.bad_evals += 1
    return scores


def _progress_bar(console: Any, label: str, total: int, start: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    @contextmanager
    def bar():
        with Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn(), console=console) as p:
            yield p, p.add_task(label, total=total, completed=start, loss=float("nan"))

    return bar()


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor (a mask drawn on the CPU) on ``device`` without waiting for the GPU: a copy from pageable memory,
    or one without ``non_blocking``, first synchronises with the device's queue; a pinned one is queued like a kernel.
    (The tensor is fresh each step, so it cannot change before the copy runs.)"""
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)
