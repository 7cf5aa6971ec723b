"""``run(cfg)``: the pretraining loop every rank executes (``python -m pretrain.train key=value ...``).

One step: the rank's next micro-batch of waveforms -> log-mel features on the device -> masks drawn from a generator
seeded by (seed, rank, micro-step) -> the DeepSpeed engine's forward / backward / step. Everything random is a function
of the step, and the data stream continues at the step it is told, so a resumed run repeats the losses of an
uninterrupted one (same seed and world size).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from launch.common.errors import BadInput, cli
from launch.common.files import atomic_write
from launch.common.seeds import step_seed
from pretrain import checkpoint, distributed
from pretrain.config import PretrainConfig, config_hash, load_pretrain_config, to_yaml
from pretrain.engine import build_engine, watched
from shards.default import ensure_synthetic
from shards.features import build_features
from shards.stream import ShardSetConfig, eval_batches, train_loader

log = logging.getLogger("pretrain")


def build_model(cfg: PretrainConfig) -> nn.Module:
    """The selected method's model (a plain nn.Module: no DeepSpeed or rank logic inside)."""
    if cfg.method == "ssast":
        from pretrain.ssast import SSAST

        return SSAST(cfg.ssast)
    from pretrain.audiomae import AudioMAE

    return AudioMAE(cfg.audiomae)


def resolve_run_dir(cfg: PretrainConfig) -> Path:
    """``run_dir``, or ``runs/pretrain/<method>-<hash of the config>``: the same config resumes the same run."""
    return Path(cfg.run_dir or f"runs/pretrain/{cfg.method}-{config_hash(cfg)}").resolve()


def resolve_data(cfg: PretrainConfig, console=None) -> list[ShardSetConfig]:
    """The training shard sets; the synthetic corpus (built on first use) when none is given."""
    if cfg.data.train:
        return list(cfg.data.train)
    root = ensure_synthetic(cfg.data.synthetic, cfg.data.stream.sample_rate, console=console)
    return [ShardSetConfig(str(root), "unlabelled", 3.0), ShardSetConfig(str(root), "labelled", 1.0)]


def resolve_val(cfg: PretrainConfig) -> ShardSetConfig | None:
    """The validation split: ``data.val``; on the synthetic corpus its val split when the schedule needs one."""
    if cfg.data.val is not None or cfg.optim.schedule != "plateau":
        return cfg.data.val
    if cfg.data.train:
        raise BadInput("optim.schedule=plateau watches a validation value: give data.val={path: ..., split: ...}")
    from shards.default import synthetic_dir

    return ShardSetConfig(str(synthetic_dir(cfg.data.synthetic, cfg.data.stream.sample_rate)), "val")


@dataclass
class Progress:
    """What the loop reports; written as JSON lines to ``metrics.jsonl``."""

    path: Path
    is_main: bool
    lines: list[dict[str, Any]] = field(default_factory=list)

    def write(self, record: dict[str, Any]) -> None:
        self.lines.append(record)
        if self.is_main:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def truncate_metrics(path: Path, step: int) -> None:
    """Keep only the records up to ``step`` (a resumed run repeats the steps after its checkpoint)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
    atomic_write(path, "".join(line + "\n" for line in kept))


def _describe(cfg: PretrainConfig, model: nn.Module, world: int, peak_lr: float, run_dir: Path, start: int) -> str:
    enc = model.encoder
    micro = cfg.data.stream.batch_size
    eff = micro * cfg.deepspeed.grad_accum * world
    n_params = sum(p.numel() for p in model.parameters())
    f_dim, t_dim = enc.grid
    lines = [
        f"run folder        {run_dir}",
        f"method            {cfg.method} ({cfg.model.encoder.size}, {n_params / 1e6:.2f}M parameters)",
        f"input             {cfg.data.features.target_frames} frames x {cfg.data.features.num_mel_bins} mel "
        f"-> {f_dim} x {t_dim} = {enc.num_patches} patches ({cfg.model.encoder.token_order}-major)",
        f"masking           {model.describe_masking() if hasattr(model, 'describe_masking') else ''}",
        f"batch             {micro} per rank x {cfg.deepspeed.grad_accum} accum x {world} ranks = {eff} clips/step",
        f"learning rate     peak {peak_lr:.3g}, {cfg.optim.warmup_steps} warm-up steps, {cfg.optim.schedule}",
        f"engine            ZeRO-{cfg.deepspeed.zero_stage}, {cfg.deepspeed.precision}",
        f"steps             {start} -> {cfg.steps}",
    ]
    return "\n".join(lines)


def _mean_across_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    t /= torch.distributed.get_world_size()
    return dict(zip(keys, t.tolist()))


def _scalars(out: Any) -> dict[str, float]:
    """The scalar tensors of a model output (NamedTuple or dataclass) as floats, for logging."""
    if hasattr(out, "_asdict"):
        items = out._asdict()
    else:
        items = {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}
    return {k: float(v.detach()) for k, v in items.items() if torch.is_tensor(v) and v.numel() == 1}


def evaluate(engine, features, val: ShardSetConfig, cfg: PretrainConfig, env, device, dtype) -> dict[str, float]:
    """Mean masked-prediction loss (and accuracy) on the validation split: an exact pass, fixed masks per batch."""
    model = engine.module
    model.eval()
    features.eval()  # no SpecAugment / noise on validation
    totals: dict[str, float] = {}
    n = 0
    with torch.no_grad():
        for i, batch in enumerate(eval_batches(val, cfg.data.stream, rank=env.rank, world=env.world_size)):
            fbank = features(batch.wave.to(device)).to(dtype)
            gen = torch.Generator().manual_seed(step_seed(cfg.seed + 1, env.rank, i))
            out = engine(fbank, *model.draw_masks(fbank.shape[0], gen))
            for k, v in _scalars(out).items():
                totals[k] = totals.get(k, 0.0) + v
            n += 1
    model.train()
    features.train()
    return _mean_across_ranks({f"val_{k}": v / max(n, 1) for k, v in totals.items()}, device)


def stop_requested(stop, device: torch.device) -> bool:
    """True on every rank when any rank was told to stop (SIGUSR2 before the time limit)."""
    if stop is None:
        return False
    flag = torch.tensor([1.0 if stop.is_set() else 0.0], device=device)
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


def run(cfg: PretrainConfig, stop=None) -> dict[str, Any]:
    """Pretrain as configured; returns a summary (final losses, paths). Every rank calls this.

    ``stop`` (a ``threading.Event``) asks the loop to save a checkpoint at the current step and return early; the
    summary then has ``stopped_at`` set (the launcher requeues the job, which resumes there).
    """
    env, device = distributed.setup(cfg.deepspeed.backend)
    run_dir = resolve_run_dir(cfg)
    ckpt_dir = run_dir / "checkpoints"
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
    from rich.console import Console

    console = Console(stderr=True, quiet=not env.is_main)
    sets = resolve_data(cfg, console) if env.is_main else None
    distributed.barrier()  # rank 0 may have built the synthetic corpus
    sets = sets or resolve_data(cfg)

    val = resolve_val(cfg)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_model(cfg)
    features = build_features(cfg.data.features).to(device)
    built = build_engine(model, cfg.deepspeed, cfg.optim, micro_batch=cfg.data.stream.batch_size,
                         world=env.world_size, total_steps=cfg.steps)
    engine = built.engine
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.deepspeed.precision, torch.float32)

    start = 0
    if cfg.checkpoint.resume != "never":
        explicit = None if cfg.checkpoint.resume == "auto" else cfg.checkpoint.resume
        resumed = checkpoint.resume(engine, ckpt_dir, explicit)
        if resumed:
            start = resumed[0]
            log.info("resumed from %s at step %d", ckpt_dir / checkpoint.tag_for(start), start)
    console.print(_describe(cfg, model, env.world_size, built.peak_lr, run_dir, start))

    accum = cfg.deepspeed.grad_accum
    batches: Iterator = train_loader(sets, cfg.data.stream, rank=env.rank, start_step=start * accum,
                                     pin_memory=device.type == "cuda")
    progress = Progress(run_dir / "metrics.jsonl", env.is_main)
    if env.is_main:
        truncate_metrics(progress.path, start)  # steps after the checkpoint will be logged again
    running: dict[str, float] = {}
    counted, data_wait, t0 = 0, 0.0, time.perf_counter()
    last_saved = start
    bar_ctx = _progress_bar(console, cfg, start) if (env.is_main and cfg.log.progress) else nullcontext(None)
    with bar_ctx as bar:
        for step in range(start, cfg.steps):
            for micro in range(accum):
                micro_step = step * accum + micro
                t_wait = time.perf_counter()
                batch = next(batches)
                data_wait += time.perf_counter() - t_wait
                seed = step_seed(cfg.seed, env.rank, micro_step)
                torch.manual_seed(seed)  # dropout / drop-path
                gen = torch.Generator().manual_seed(seed)  # masks
                fbank = features(batch.wave.to(device, non_blocking=True)).to(dtype)
                out = engine(fbank, *model.draw_masks(fbank.shape[0], gen))
                engine.backward(out.loss)
                engine.step()
                for k, v in _scalars(out).items():
                    running[k] = running.get(k, 0.0) + v
                counted += 1
            done = step + 1
            if bar is not None:
                bar[0].update(bar[1], completed=done, loss=running.get("loss", 0.0) / max(counted, 1))
            record: dict[str, Any] = {}
            if done % cfg.log.every_steps == 0 or done == cfg.steps:
                elapsed = time.perf_counter() - t0
                record = _mean_across_ranks({k: v / counted for k, v in running.items()}, device)
                record.update(step=done, lr=built.scheduler.get_last_lr()[0],
                              clips_per_s=counted * cfg.data.stream.batch_size * env.world_size / elapsed,
                              data_wait=data_wait / elapsed, corrupt=batch.corrupt)
                running, counted, data_wait, t0 = {}, 0, 0.0, time.perf_counter()
            every = cfg.eval_every or cfg.log.every_steps
            if val is not None and (done % every == 0 or done == cfg.steps):
                t_eval = time.perf_counter()
                scores = evaluate(engine, features, val, cfg, env, device, dtype)
                record.update(scores, step=done)
                # the same mean on every rank, so every rank makes the same decision
                if cfg.optim.schedule == "plateau" and built.schedule.observe(watched(scores, cfg.optim)):
                    console.print(f"step {done}: {cfg.optim.plateau_metric} has not improved for "
                                  f"{cfg.optim.plateau_patience + 1} validations; lr x {cfg.optim.plateau_factor}")
                t0 += time.perf_counter() - t_eval  # validation is not training time
            if record:
                progress.write(record)
                if not (cfg.log.progress and console.is_terminal):  # logs (SLURM, local jobs) get lines
                    console.print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in record.items()))
            if done % cfg.checkpoint.every_steps == 0 or done == cfg.steps:
                checkpoint.save(engine, ckpt_dir, done, {"step": done, "micro_step": done * accum},
                                cfg.checkpoint.keep_last, env.is_main)
                last_saved = done
            if done < cfg.steps and stop_requested(stop, device):
                if last_saved != done:
                    checkpoint.save(engine, ckpt_dir, done, {"step": done, "micro_step": done * accum},
                                    cfg.checkpoint.keep_last, env.is_main)
                log.warning("stopping at step %d on request (time limit); the requeued job resumes here", done)
                return {"run_dir": str(run_dir), "stopped_at": done, "rank": env.rank, "world_size": env.world_size,
                        "metrics": progress.lines}

    state = checkpoint.consolidated_state_dict(engine, engine.module.encoder)
    encoder_path = run_dir / "encoder.pt"
    if env.is_main:
        checkpoint.export_encoder(encoder_path, engine.module.encoder, state, cfg.method, cfg.model.encoder,
                                  cfg.steps, {"config_hash": config_hash(cfg)})
        console.print(f"[bold green]done[/]: {cfg.steps} steps; encoder -> {encoder_path}; "
                      f"checkpoints -> {ckpt_dir}; metrics -> {progress.path}")
    distributed.barrier()
    return {"run_dir": str(run_dir), "encoder": str(encoder_path), "last_saved": last_saved,
            "metrics": progress.lines, "rank": env.rank, "world_size": env.world_size}


def _progress_bar(console, cfg: PretrainConfig, start: int):
    from contextlib import contextmanager

    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
    from rich.progress import Progress as Bar

    @contextmanager
    def bar():
        with Bar(TextColumn(f"[bold]{cfg.method}"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
                 TimeRemainingColumn(), console=console) as p:
            task = p.add_task("pretrain", total=cfg.steps, completed=start, loss=float("nan"))
            yield p, task

    return bar()


def main(argv: list[str] | None = None) -> int:
    return cli(lambda: run(load_pretrain_config(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
