"""The only module that imports DeepSpeed: process group, engine, LR schedule, ZeRO-3 gathering, consolidation.

No hand-kept ds_config.json: :func:`deepspeed_config` derives it, so the batch arithmetic is checked in one place
(``train_batch_size == micro * accum * world``, as torchtitan checks its parallel degrees). Everything else in the
project reaches DeepSpeed through the functions here (``init_process_group``, ``build_engine``,
``full_state_dict``, ``consolidate_zero_checkpoint``) or through the engine object they return.
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from launch.common.errors import BadInput
from launch.runtime.config import DeepSpeedConfig, OptimConfig

log = logging.getLogger("tessera")


def _deepspeed():
    """The deepspeed module, imported on first use (it is slow to import and not needed by the pure helpers)."""
    import deepspeed

    return deepspeed


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
"""The compute dtype of each ``deepspeed.precision``: inputs are cast to it before the engine's forward."""


def deepspeed_config(ds: DeepSpeedConfig, optim: OptimConfig, micro_batch: int, world: int) -> dict[str, Any]:
    """The DeepSpeed config dict for ``micro_batch`` clips per rank on ``world`` ranks."""
    train_batch = micro_batch * ds.grad_accum * world
    assert train_batch == micro_batch * ds.grad_accum * world, (
        f"train_batch_size {train_batch} != micro {micro_batch} x accum {ds.grad_accum} x world {world}")
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage in (1, 2) and not (ds.zero_stage == 1 and ds.precision == "bf16"):
        # The ZeRO-1/2 optimizer computes the global gradient norm at every step and, in fp32, reads its finiteness
        # back to the host (a device sync per step); without clipping nobody needs it. (ZeRO-1 in bf16 runs
        # DeepSpeed's BF16_Optimizer, which requires it and reads nothing back.)
        zero["compute_grad_norm"] = optim.clip_grad > 0
    if ds.zero_stage >= 2:
        zero.update(overlap_comm=torch.cuda.is_available(), contiguous_gradients=True, reduce_scatter=True)
    if ds.zero_stage == 3:
        # ViT blocks are small: keep parameters under 1M elements resident instead of gathering them one by one
        # (the "too many all_gathers" overhead of DeepSpeed#5047).
        zero.update(stage3_param_persistence_threshold=1_000_000, stage3_gather_16bit_weights_on_model_save=True)
    config: dict[str, Any] = {
        "train_batch_size": train_batch,
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": ds.grad_accum,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,  # torch.optim.AdamW (fused)
        "gradient_clipping": optim.clip_grad,
        "steps_per_print": 10**9,  # we log ourselves
        "wall_clock_breakdown": False,
    }
    if ds.precision == "bf16":
        # No overflow check: it reads a flag back to the host at every step (DeepSpeed's default since #6976), and
        # bf16 has fp32's range, so plain torch.autocast bf16 training has none either. fp16's dynamic loss scale
        # needs it (one host read per optimizer step, by design).
        config["bf16"] = {"enabled": True, "check_grad_overflow": False}
    elif ds.precision == "fp16":
        config["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000,
                          "hysteresis": 2, "min_loss_scale": 1}
    return config


def decays(name: str, p: nn.Parameter, no_decay: Iterable[str] = ()) -> bool:
    """Whether weight decay applies: never to 1-D parameters (norms, ``tau``), biases, or names containing an entry
    of ``no_decay`` (timm 0.3.2 ``add_weight_decay`` and its ``skip_list``)."""
    return not (p.ndim <= 1 or name.endswith(".bias") or any(s in name for s in no_decay))


def param_groups(model: nn.Module, weight_decay: float, no_decay: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Two groups as MAE pretraining builds them (timm 0.3.2 ``add_weight_decay``): no decay on 1-D parameters (norms,
    ``tau``) and biases; tokens and learned positions are decayed unless named in ``no_decay`` (substring match, as
    fine-tuning's ``no_weight_decay()`` list: pos_embed, cls tokens)."""
    skip = tuple(no_decay)
    decay, plain = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if decays(name, p, skip) else plain).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


class LRSchedule:
    """Multiplier of the peak LR at optimizer step ``s`` (a ``LambdaLR`` lambda): linear warm-up, then half-cycle
    cosine to ``min_lr``, constant, or SSAST's plateau rule (``torch.optim.lr_scheduler.ReduceLROnPlateau``'s, fed by
    :meth:`observe` after each validation). Its fields are plain numbers, so ``LambdaLR.state_dict()`` saves them
    with the checkpoint and a resumed run continues at the reduced rate."""

    def __init__(self, optim: OptimConfig, total_steps: int):
        self.kind = optim.schedule
        self.warmup = max(0, optim.warmup_steps)
        self.total = total_steps
        self.floor = optim.min_lr / optim.lr if optim.lr > 0 else 0.0
        self.mode, self.factor, self.patience = optim.plateau_mode, optim.plateau_factor, optim.plateau_patience
        self.scale, self.best, self.bad = 1.0, None, 0

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "constant":
            return 1.0
        if self.kind == "plateau":
            return max(self.scale, self.floor)
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))

    def observe(self, value: float) -> bool:
        """One validation result; True when it cut the rate (more than ``patience`` results without improvement,
        counted as ReduceLROnPlateau does with its defaults: relative threshold 1e-4, no cooldown)."""
        if self.kind != "plateau":
            return False
        better = self.best is None or (value > self.best * (1 + 1e-4) if self.mode == "max"
                                       else value < self.best * (1 - 1e-4))
        if better:
            self.best, self.bad = value, 0
            return False
        self.bad += 1
        if self.bad > self.patience:
            self.scale *= self.factor
            self.bad = 0
            return True
        return False


def watched(scores: dict[str, float], optim: OptimConfig) -> float:
    """The validation value the plateau schedule follows; one line naming the choices when it is not there."""
    if optim.plateau_metric not in scores:
        raise BadInput(f"optim.plateau_metric={optim.plateau_metric}: the validation gives {', '.join(sorted(scores))}")
    return scores[optim.plateau_metric]


def lr_lambda(optim: OptimConfig, total_steps: int) -> LRSchedule:
    return LRSchedule(optim, total_steps)


@dataclass
class Engine:
    """The DeepSpeed engine and what the loop needs next to it."""

    engine: Any
    optimizer: Any
    scheduler: torch.optim.lr_scheduler.LambdaLR
    peak_lr: float
    config: dict[str, Any]

    @property
    def schedule(self) -> LRSchedule:
        """The live multiplier (after a resume, the one whose state the checkpoint restored)."""
        return self.scheduler.lr_lambdas[0]

    @property
    def module(self) -> nn.Module:
        return self.engine.module


def build_engine(model: nn.Module, ds: DeepSpeedConfig, optim: OptimConfig, *, micro_batch: int, world: int,
                 total_steps: int, no_decay: Iterable[str] = (), groups: list[dict[str, Any]] | None = None) -> Engine:
    """Wrap ``model`` in a DeepSpeed engine with AdamW and the warm-up/cosine schedule.

    ``groups`` (default: :func:`param_groups`) may carry an ``lr_scale`` each (head LR, layer-wise decay): a group's
    peak rate is ``peak * lr_scale`` and the schedule multiplies every group alike.
    """
    config = deepspeed_config(ds, optim, micro_batch, world)
    if ds.zero_stage == 0 and ds.precision == "bf16" and torch.cuda.is_available():
        log.warning("deepspeed.zero_stage=0 with bf16 runs DeepSpeed's unfused optimizer, which checks every gradient "
                    "for inf/NaN on the host at every step (GPU syncs); deepspeed.zero_stage=1 trains the same without")
    peak = optim.lr * (config["train_batch_size"] / 256 if optim.lr_batch_scale else 1.0)
    groups = groups if groups is not None else param_groups(model, optim.weight_decay, no_decay)
    for group in groups:
        group["lr"] = peak * group.pop("lr_scale", 1.0)
    # torch's fused AdamW kernel (GPU and CPU): its step counters live on the parameters' device, so a step reads
    # nothing back to the host (the default CPU path calls step.item() per group)
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=peak, betas=tuple(optim.betas), eps=optim.eps,
                                  fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(optim, total_steps))
    engine, optimizer, _, scheduler = _deepspeed().initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                           config=config)
    return Engine(engine, optimizer, scheduler, peak, config)


def init_process_group(backend: str = "auto") -> str:
    """Join the job's process group through DeepSpeed (NCCL on GPUs, gloo on CPU); returns the backend used."""
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not torch.distributed.is_initialized():
        _deepspeed().init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)
    return backend


def full_state_dict(engine: Any, module: nn.Module) -> dict[str, torch.Tensor]:
    """Full fp32 tensors of ``module``'s state on every rank (collective under ZeRO-3, whose parameters are
    partitioned: each rank gathers them all; other stages hold full parameters already)."""
    def copy() -> dict[str, torch.Tensor]:
        return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}

    if engine is not None and engine.zero_optimization_stage() == 3:
        with _deepspeed().zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            return copy()
    return copy()


def consolidate_zero_checkpoint(folder: Path) -> dict[str, torch.Tensor]:
    """The fp32 master weights of a ZeRO-1/2/3 checkpoint folder (DeepSpeed's ``zero_to_fp32``), its printing
    silenced; raises what DeepSpeed raises for missing or damaged optimizer shards."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return get_fp32_state_dict_from_zero_checkpoint(str(folder.parent), tag=folder.name)
