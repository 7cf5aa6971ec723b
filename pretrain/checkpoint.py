"""The one owner of checkpoints: DeepSpeed saves, a completion protocol, resume with fall-back, encoder export.

``<run>/checkpoints/step_00000100/`` is written by ``engine.save_checkpoint`` on every rank. A checkpoint counts only
once it is complete: after a barrier, rank 0 writes ``COMPLETE`` (fsynced) into it, and only then points ``latest`` at
it (atomic rename) and deletes checkpoints beyond ``keep_last``. A crash mid-save leaves a folder without
``COMPLETE``, which resume ignores; a complete checkpoint whose files fail to load is reported in one line and the
previous complete one is used.

The encoder export (``<run>/encoder.pt``) is a plain, consolidated fp32 state dict that fine-tuning loads without
DeepSpeed::

    {"format": "tessera-encoder/1", "method": ..., "encoder": {EncoderConfig fields}, "state_dict": {...}, "step": ...}
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from launch.common.files import atomic_write, replacing
from pretrain.distributed import barrier

log = logging.getLogger(__name__)

ENCODER_FORMAT = "tessera-encoder/1"


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not ckpt_dir.exists():
        return []
    return sorted(p for p in ckpt_dir.iterdir() if p.is_dir() and (p / "COMPLETE").exists())


def save(engine, ckpt_dir: Path, step: int, client_state: dict[str, Any], keep_last: int, is_main: bool) -> Path:
    """Save a checkpoint on every rank and mark it complete (collective: all ranks must call)."""
    tag = tag_for(step)
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
    barrier()  # every rank's shards are on disk
    path = ckpt_dir / tag
    if is_main:
        atomic_write(path / "COMPLETE", json.dumps({"step": step}))
        atomic_write(ckpt_dir / "latest", tag)
        for old in complete_checkpoints(ckpt_dir)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return path


def resume(engine, ckpt_dir: Path, explicit: str | None = None) -> tuple[int, dict[str, Any]] | None:
    """Load the newest loadable complete checkpoint (or ``explicit``); returns ``(step, client_state)`` or None.

    Collective: every rank tries the same candidates in the same order, so they agree on the one that loads.
    """
    candidates = [Path(explicit)] if explicit else list(reversed(complete_checkpoints(ckpt_dir)))
    for path in candidates:
        if not (path / "COMPLETE").exists():
            log.error("checkpoint %s is incomplete (no COMPLETE marker); not used", path)
            continue
        try:
            load_path, client = engine.load_checkpoint(str(path.parent), tag=path.name, load_optimizer_states=True,
                                                       load_lr_scheduler_states=True)
        except Exception as e:  # noqa: BLE001 - a damaged file of any kind: say which, fall back to the previous one
            log.error("checkpoint %s cannot be loaded (%s: %s); trying the previous one", path, type(e).__name__,
                      str(e).splitlines()[0] if str(e) else "")
            ok = torch.zeros(1)
        else:
            ok = torch.ones(1) if load_path is not None else torch.zeros(1)
        if torch.distributed.is_initialized():  # all ranks must agree that it loaded everywhere
            torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
        if ok.item() == 1:
            return int(client["step"]), client
    if explicit:
        raise FileNotFoundError(f"checkpoint.resume={explicit}: not a loadable complete checkpoint")
    return None


def consolidated_state_dict(engine, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full fp32 parameters of ``module`` on every rank (collective under ZeRO-3, where parameters are partitioned)."""
    if getattr(engine, "zero_optimization_stage", lambda: 0)() == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}
    return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}


def export_encoder(path: Path, encoder: torch.nn.Module, state_dict: dict[str, torch.Tensor], method: str,
                   encoder_config: Any, step: int, extra: dict[str, Any] | None = None) -> None:
    """Write the plain encoder file atomically (rank 0 only)."""
    payload = {
        "format": ENCODER_FORMAT,
        "method": method,
        "encoder": asdict(encoder_config),
        "state_dict": state_dict,
        "step": step,
        **(extra or {}),
    }
    with replacing(path) as tmp:
        torch.save(payload, tmp)
