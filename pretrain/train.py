"""Pretraining as a task of the one loop (``python launch/pretrain.py``, or ``python -m pretrain.train key=value ...``
for one process, or under torchrun / deepspeed).

What pretraining says to :func:`launch.runtime.loop.run`: the model is SSAST or Audio-MAE; a step turns the rank's
micro-batch of waveforms into log-mel features on the device, draws the method's masks from the step's generator and
returns the method's loss (and its parts, to log); validation is the same loss on an exact pass over ``data.val``
(every clip once, its masks drawn from a seed of its global index, so the value is the mean over real clips whatever
the batch size, rank count or worker count); the export is the consolidated encoder, ``encoder.pt``.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from launch.common.errors import BadInput, cli
from launch.common.seeds import derive_seed
from launch.runtime import checkpoints, distributed, loop
from launch.runtime.config import config_hash
from launch.runtime.engine import full_state_dict
from pretrain.config import PretrainConfig, load_pretrain_config
from pretrain.encoder import apply_block_execution, describe_block_execution
from shards.default import ensure_synthetic, synthetic_dir
from shards.features import build_features
from shards.stream import ShardSet, ShardSetConfig, eval_batches, open_eval_split, open_shard_set, train_loader

VAL_MASK_SALT = 0x7A1
"""Salt of the validation masks' seeds (seed, clip index, salt): fixed per clip, never a training step's seed."""


def build_model(cfg: PretrainConfig) -> nn.Module:
    """The selected method's model (a plain nn.Module: no DeepSpeed or rank logic inside), its blocks compiled and
    checkpointed as ``<method>.compile`` / ``.activation_checkpointing`` say."""
    if cfg.method == "ssast":
        from pretrain.ssast import SSAST

        model = SSAST(cfg.ssast)
    else:
        from pretrain.audiomae import AudioMAE

        model = AudioMAE(cfg.audiomae)
    return apply_block_execution(model, cfg.model)


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
    return ShardSetConfig(str(synthetic_dir(cfg.data.synthetic, cfg.data.stream.sample_rate)), "val")


def _scalars(out: Any) -> dict[str, torch.Tensor]:
    """The scalar tensors of a model output (NamedTuple or dataclass), detached, for logging."""
    items = out._asdict() if hasattr(out, "_asdict") else {f.name: getattr(out, f.name)
                                                            for f in dataclasses.fields(out)}
    return {k: v.detach() for k, v in items.items() if torch.is_tensor(v) and v.numel() == 1}


def clip_masks(model: nn.Module, indices: list[int], seed: int) -> tuple[torch.Tensor, ...]:
    """Validation masks, one clip at a time from a seed of its global index: the same mask for a clip whatever
    batch, rank or worker it lands in. Rows of padding (index -1) get a mask too; their losses are dropped."""
    per_clip = [model.draw_masks(1, torch.Generator().manual_seed(derive_seed(seed, max(i, 0), VAL_MASK_SALT)))
                for i in indices]
    return tuple(torch.cat(parts) for parts in zip(*per_clip))


class PretrainTask(loop.Task):
    """SSAST or Audio-MAE masked pretraining on shard streams."""

    def __init__(self, cfg: PretrainConfig):
        super().__init__(resolve_run_dir(cfg), cfg.data.stream.batch_size)
        self.cfg = cfg
        self.label = cfg.method
        self.sets: list[ShardSetConfig] = []
        self.val: ShardSet | None = None

    def setup(self, ctx: loop.Context) -> None:
        self.sets = ctx.main_first(lambda: resolve_data(self.cfg, ctx.console))  # rank 0 builds the default corpus
        val = resolve_val(self.cfg)
        self.val = open_eval_split(val, "data.val") if val is not None else None
        self.features = build_features(self.cfg.data.features).to(ctx.device)

    def build_model(self, ctx: loop.Context) -> nn.Module:
        self.model = build_model(self.cfg)
        return self.model

    def describe(self, ctx: loop.Context, model: nn.Module) -> list[str]:
        enc, cfg = model.encoder, self.cfg
        f_dim, t_dim = enc.grid
        return [f"method            {cfg.method} ({cfg.model.encoder.size}, {cfg.model.encoder.depth or 'all'} blocks)",
                f"input             {cfg.data.features.target_frames} frames x {cfg.data.features.num_mel_bins} mel "
                f"-> {f_dim} x {t_dim} = {enc.num_patches} patches ({cfg.model.encoder.token_order}-major)",
                f"masking           {model.describe_masking()}",
                f"blocks            {describe_block_execution(model, cfg.model)}"]

    def train_batches(self, ctx: loop.Context, start_micro_step: int) -> Iterator[Any]:
        return train_loader(self.sets, self.cfg.data.stream, rank=ctx.env.rank, start_step=start_micro_step,
                            pin_memory=ctx.device.type == "cuda")

    def step(self, ctx: loop.Context, engine: Any, batch: Any, generator: torch.Generator) -> loop.StepOutput:
        # Nothing here reads a device tensor back: the masks are drawn on the host and queued to the device, the
        # scalars stay tensors (tests/integration/test_loop.py counts the reads of whole runs).
        fbank = self.features(batch.wave.to(ctx.device, non_blocking=True)).to(ctx.dtype)
        masks = [loop.to_device(m, ctx.device) for m in self.model.draw_masks(fbank.shape[0], generator)]
        out = engine(fbank, *masks)
        scalars = {k: v for k, v in _scalars(out).items() if k != "loss"}
        return loop.StepOutput(out.loss, scalars, {"corrupt": batch.corrupt})

    @property
    def validates(self) -> bool:
        return self.val is not None

    def evaluate(self, ctx: loop.Context, engine: Any) -> dict[str, float]:
        """Mean masked-prediction loss (and accuracy) over the real clips of ``data.val`` (see the module doc)."""
        model = engine.module
        model.eval()
        self.features.eval()  # no SpecAugment / noise on validation
        sums: dict[str, float] = {}
        with torch.no_grad():
            for batch in eval_batches(self.val, self.cfg.data.stream, rank=ctx.env.rank, world=ctx.env.world_size):
                fbank = self.features(batch.wave.to(ctx.device)).to(ctx.dtype)
                out = engine(fbank, *clip_masks(model, batch.index.tolist(), self.cfg.seed), per_clip=True)
                valid = batch.valid.to(ctx.device)
                sums["clips"] = sums.get("clips", 0.0) + float(valid.sum())
                for name, values in out._asdict().items():
                    if torch.is_tensor(values) and values.dim() == 1:
                        sums[name] = sums.get(name, 0.0) + float(values.float()[valid].sum())
        model.train()
        self.features.train()
        keys = sorted(sums)
        totals = dict(zip(keys, distributed.sum_across_ranks([sums[k] for k in keys])))
        if not totals.get("clips"):
            raise BadInput(f"data.val ({self.val.name}): no clip of the validation split could be read")
        return {f"val_{k}": v / totals["clips"] for k, v in totals.items() if k != "clips"}

    def finish(self, ctx: loop.Context, engine: Any, state: loop.LoopState) -> dict[str, Any]:
        state_dict = full_state_dict(engine, engine.module.encoder)
        path = ctx.run_dir / checkpoints.ENCODER_FILE
        if ctx.env.is_main:
            checkpoints.write_encoder(path, state_dict, self.cfg.method,
                                      dataclasses.asdict(self.cfg.model.encoder), state.step,
                                      {"config_hash": config_hash(self.cfg)})
            ctx.console.print(f"[bold green]done[/]: {state.step} steps; encoder -> {path}; checkpoints -> "
                              f"{ctx.run_dir / checkpoints.CHECKPOINTS}; metrics -> {ctx.run_dir / 'metrics.jsonl'}")
        return {"encoder": str(path)}


def run(cfg: PretrainConfig, stop=None) -> dict[str, Any]:
    """Pretrain as configured, on every rank (see :func:`launch.runtime.loop.run`)."""
    return loop.run(PretrainTask(cfg), cfg, stop)


def prepare(cfg: PretrainConfig) -> None:
    """Before anything is queued: the default corpus built (once, here), every shard set opened (a missing path or
    manifest is one line now, not a failed job), the validation split checked."""
    for s in resolve_data(cfg):
        open_shard_set(s)
    val = resolve_val(cfg)  # a plateau schedule without validation data is refused
    if val is not None:
        open_eval_split(val, "data.val")


def main(argv: list[str] | None = None) -> int:
    return cli(lambda: run(load_pretrain_config(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
