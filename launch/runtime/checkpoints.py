"""The one owner of tessera's file formats: run checkpoints, ``encoder.pt`` and ``best.pt``, read and written here only.

Run checkpoints. ``<run>/checkpoints/step_00000100/`` is written by ``engine.save_checkpoint`` on every rank, with
the loop's client state (step, micro-step = the data stream's position, best validation value). A checkpoint counts
only once it is complete: after a barrier, rank 0 writes ``COMPLETE`` (fsynced) into it, and only then points
``latest`` at it (atomic rename) and rotates. A crash mid-save leaves a folder without ``COMPLETE``, which resume
ignores; a complete checkpoint whose files fail to load is reported in one line and the previous one is used.
Whatever sits beyond the checkpoint a run resumes from (damaged folders, or complete ones of a longer or an
abandoned run) is moved to ``checkpoints/superseded/`` before training goes on: it never shadows the checkpoints
this run writes, and rotation never deletes it. Rotation keeps the ``keep_last`` newest complete checkpoints up to
the one just written, which is never deleted.

Exports, plain PyTorch files that load without DeepSpeed::

    encoder.pt  {"format": "tessera-encoder/1", "method", "encoder": EncoderConfig fields, "state_dict", "step", ...}
    best.pt     {"format": "tessera-classifier/1", "encoder", "head", "classes", "state_dict", "step", "val",
                 "pretrained"}

Reading a run's weights (``ckpt=<run folder>``): the newest complete checkpoint's module states, consolidated to fp32
with DeepSpeed's ``zero_to_fp32`` where the module file holds no weights (ZeRO-3) or half precision ones. What the
weights mean (encoder config, fitting to a new input) is the model code's business (``pretrain/pretrained.py``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from launch.common.errors import BadInput
from launch.common.files import atomic_write, replacing
from launch.runtime import distributed
from launch.runtime import engine as engines

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
"""The run folder's sub-folder of DeepSpeed checkpoints."""
COMPLETE = "COMPLETE"
"""Marker file of a checkpoint that every rank finished writing."""
LATEST = "latest"
"""Tag of the newest complete checkpoint (also what DeepSpeed's own loader looks for)."""
SUPERSEDED = "superseded"
"""Where checkpoints beyond a run's resume point are moved (kept, never deleted, never resumed from)."""
MODEL_STATES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")  # ZeRO <= 2, ZeRO-3
ENCODER_FILE, ENCODER_FORMAT = "encoder.pt", "tessera-encoder/1"
CLASSIFIER_FILE, CLASSIFIER_FORMAT = "best.pt", "tessera-classifier/1"


# ------------------------------------------------------------------------------------------------ reading files


def read_torch(path: str | Path, trusted: bool = False) -> Any:
    """torch.load on the CPU; any failure is one :class:`BadInput` line naming the file.

    Untrusted files load with ``weights_only=True`` (tensors and plain containers; ``argparse.Namespace`` is
    allowed for Audio-MAE's ``args``); ``trusted`` (our own DeepSpeed files, which hold other objects) does not.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: no such file")
    try:
        if trusted:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zip, bad pickle, EOF: all mean "not readable"
        if "Weights only load failed" in str(e):
            raise BadInput(f"{path}: holds pickled objects other than tensors; if you trust it, load it with "
                           "torch.load(weights_only=False) and pass the state dict") from None
        raise BadInput(f"{path}: cannot be read as a torch checkpoint (truncated?)") from None


def format_of(obj: Any) -> str | None:
    """The ``format`` tag of one of our exports, or None for anything else (an official file, a state dict)."""
    return obj.get("format") if isinstance(obj, Mapping) and isinstance(obj.get("format"), str) else None


# ------------------------------------------------------------------------------------------------ run checkpoints


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def step_of(path: Path) -> int | None:
    """The step a checkpoint folder's name gives (``step_00000100`` -> 100), None for other names."""
    name = path.name
    return int(name[5:]) if name.startswith("step_") and name[5:].isdigit() else None


def checkpoint_folders(ckpt_dir: Path) -> list[Path]:
    """Every ``step_*`` folder (complete or not), oldest step first."""
    if not ckpt_dir.is_dir():
        return []
    return sorted((p for p in ckpt_dir.iterdir() if p.is_dir() and step_of(p) is not None), key=step_of)


def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest step first."""
    return [p for p in checkpoint_folders(ckpt_dir) if (p / COMPLETE).exists()]


def rotate(ckpt_dir: Path, written: Path, keep_last: int) -> list[Path]:
    """Delete complete checkpoints older than the ``keep_last`` newest up to ``written`` (0: keep all); returns
    what was deleted. ``written`` and anything newer than it are never candidates."""
    if keep_last <= 0:
        return []
    upto = [p for p in complete_checkpoints(ckpt_dir) if step_of(p) <= step_of(written) and p != written]
    doomed = upto[: max(0, len(upto) - (keep_last - 1))]
    for old in doomed:
        shutil.rmtree(old, ignore_errors=True)
    return doomed


def supersede_after(ckpt_dir: Path, step: int) -> list[Path]:
    """Move every checkpoint folder beyond ``step`` to ``checkpoints/superseded/`` (rank 0; returns the new paths).

    A run that resumes from ``step`` writes its own checkpoints after it; folders already there (damaged ones that
    failed to load, or complete ones of a run with more steps) would otherwise shadow them or be overwritten.
    """
    moved = []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for folder in checkpoint_folders(ckpt_dir):
        if step_of(folder) > step:
            target = ckpt_dir / SUPERSEDED / f"{folder.name}-{stamp}"
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(folder, target)
            moved.append(target)
    return moved


def save(engine, ckpt_dir: Path, step: int, client_state: dict[str, Any], keep_last: int, is_main: bool) -> Path:
    """Save a checkpoint on every rank, mark it complete, point ``latest`` at it, rotate (collective)."""
    tag = tag_for(step)
    path = ckpt_dir / tag
    if is_main and (path / COMPLETE).exists():  # never let a folder look complete while it is being rewritten
        (path / COMPLETE).unlink()
    distributed.barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
    distributed.barrier()  # every rank's shards are on disk
    if is_main:
        atomic_write(path / COMPLETE, json.dumps({"step": step}))
        atomic_write(ckpt_dir / LATEST, tag)
        rotate(ckpt_dir, path, keep_last)
    distributed.barrier()
    return path


def resume(engine, ckpt_dir: Path, explicit: str | None = None) -> tuple[int, dict[str, Any]] | None:
    """Load the newest loadable complete checkpoint (or ``explicit``); returns ``(step, client_state)`` or None.

    Collective: every rank tries the same candidates in the same order, so they agree on the one that loads.
    """
    if explicit is not None:
        path = Path(explicit)
        if not (path / COMPLETE).is_file():
            why = "no such folder" if not path.is_dir() else f"no {COMPLETE} marker (an incomplete or foreign folder)"
            raise BadInput(f"checkpoint.resume={explicit}: not a complete tessera checkpoint ({why})")
        candidates = [path]
    else:
        candidates = list(reversed(complete_checkpoints(ckpt_dir)))
    for path in candidates:
        try:
            load_path, client = engine.load_checkpoint(str(path.parent), tag=path.name, load_optimizer_states=True,
                                                       load_lr_scheduler_states=True)
            loaded = load_path is not None and isinstance(client, Mapping) and "step" in client
        except Exception as e:  # noqa: BLE001 - a damaged file of any kind: say which, fall back to the previous one
            log.error("checkpoint %s cannot be loaded (%s: %s); trying the previous one", path, type(e).__name__,
                      str(e).splitlines()[0] if str(e) else "")
            loaded = False
        if distributed.all_ranks(loaded):
            return int(client["step"]), dict(client)
    if explicit is not None:
        raise BadInput(f"checkpoint.resume={explicit}: the checkpoint cannot be loaded (see the error above)")
    return None


def find_checkpoint(folder: Path) -> Path | None:
    """The checkpoint folder to read for a run folder, its ``checkpoints/`` folder or a checkpoint folder itself:
    the newest complete one (``COMPLETE`` marker), else the one ``latest`` names; None if there is none."""
    if any((folder / f).is_file() for f in MODEL_STATES):
        return folder
    for d in (folder / CHECKPOINTS, folder):
        if not d.is_dir():
            continue
        done = complete_checkpoints(d)
        if done:
            return done[-1]
        latest = d / LATEST
        if latest.is_file() and (d / latest.read_text().strip()).is_dir():
            return d / latest.read_text().strip()
    return None


@dataclass
class RunWeights:
    """A run checkpoint's module weights, fp32, with what is known about them."""

    source: Path
    """The checkpoint folder read."""
    module: dict[str, torch.Tensor]
    """The whole model's state (e.g. ``encoder.blocks.0...`` plus the method's heads)."""
    step: int | None
    config: dict[str, Any] | None
    """The run's resolved ``config.yaml`` (plain containers), None when the folder has none."""
    notes: list[str] = field(default_factory=list)


def read_run_weights(folder: Path) -> RunWeights:
    """The newest complete checkpoint of a run folder (or a checkpoint folder) as fp32 module weights."""
    ckpt = find_checkpoint(folder)
    if ckpt is None:
        raise BadInput(f"{folder}: no complete DeepSpeed checkpoint ({CHECKPOINTS}/step_*/{COMPLETE}) and no "
                       f"{ENCODER_FILE}")
    states_file = next(ckpt / f for f in MODEL_STATES if (ckpt / f).is_file())
    states = read_torch(states_file, trusted=True)
    module = states.get("module") if isinstance(states, Mapping) else None
    if not isinstance(module, Mapping):
        raise BadInput(f"{states_file}: not a DeepSpeed model-states file (no 'module' state dict)")
    notes: list[str] = []
    stage = ((states.get("ds_config") or {}).get("zero_optimization") or {}).get("stage", 0)
    partitioned = stage == 3 or any(v.numel() == 0 for v in module.values() if torch.is_tensor(v))
    half = any(torch.is_tensor(v) and v.is_floating_point() and v.dtype != torch.float32 for v in module.values())
    weights = dict(module)
    if half and not partitioned and stage == 0:  # plain bf16/fp16: its fp32 copy is stored without parameter names
        notes.append("half-precision module weights upcast to fp32 (ZeRO-0 keeps no named fp32 master copy; "
                     f"{ENCODER_FILE} holds the same values)")
    elif partitioned or half:
        try:
            weights = engines.consolidate_zero_checkpoint(ckpt)
            notes.append(f"fp32 weights consolidated with DeepSpeed zero_to_fp32 (ZeRO-{stage})")
        except Exception as e:  # noqa: BLE001 - missing/damaged optimizer shards
            why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if partitioned:
                raise BadInput(f"{ckpt}: ZeRO-3 weights cannot be consolidated ({why})") from None
            notes.append(f"half-precision module weights upcast to fp32 (no fp32 master copy: {why})")
    weights = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in weights.items()}
    return RunWeights(ckpt, weights, states.get("step", states.get("global_steps")), _run_config(ckpt.parent.parent),
                      notes)


def _run_config(run_dir: Path) -> dict[str, Any] | None:
    """A run folder's ``config.yaml`` as plain containers; None if there is none."""
    f = run_dir / "config.yaml"
    if not f.is_file():
        return None
    from omegaconf import OmegaConf

    try:
        tree = OmegaConf.to_container(OmegaConf.load(f))
    except Exception as e:  # noqa: BLE001 - YAML error of any kind: one line
        raise BadInput(f"{f}: not valid YAML ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(tree, dict):
        raise BadInput(f"{f}: expected a mapping of config keys")
    return tree


# ------------------------------------------------------------------------------------------------------- exports


def _save(path: Path, payload: dict[str, Any]) -> Path:
    with replacing(path) as tmp:
        torch.save(payload, tmp)
    return path


def write_encoder(path: Path, state_dict: Mapping[str, torch.Tensor], method: str, encoder: Mapping[str, Any],
                  step: int, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``encoder.pt`` atomically (rank 0 only): a consolidated fp32 encoder and its config fields."""
    return _save(path, {"format": ENCODER_FORMAT, "method": method, "encoder": dict(encoder),
                        "state_dict": dict(state_dict), "step": step, **(extra or {})})


def read_encoder(path: Path, obj: Any = None) -> dict[str, Any]:
    """An ``encoder.pt`` (already loaded as ``obj``, or read from ``path``), checked: format, config, weights."""
    obj = read_torch(path) if obj is None else obj
    if format_of(obj) != ENCODER_FORMAT:
        raise BadInput(f"{path}: format {format_of(obj)!r} is not {ENCODER_FORMAT!r}")
    missing = [k for k in ("encoder", "state_dict") if not isinstance(obj.get(k), Mapping)]
    if missing:
        raise BadInput(f"{path}: {ENCODER_FORMAT} file without {' and '.join(missing)} (truncated export?)")
    return dict(obj)


def write_classifier(path: Path, state_dict: Mapping[str, torch.Tensor], *, encoder: Mapping[str, Any],
                     head: Mapping[str, Any], classes: list[str], step: int, val: Mapping[str, Any],
                     pretrained: Mapping[str, Any]) -> Path:
    """Write ``best.pt`` atomically (rank 0 only): a fine-tuned classifier, fp32, with what it needs to rebuild."""
    return _save(path, {"format": CLASSIFIER_FORMAT, "encoder": dict(encoder), "head": dict(head),
                        "classes": list(classes), "step": step, "val": dict(val), "pretrained": dict(pretrained),
                        "state_dict": {k: v.detach().float().cpu() for k, v in state_dict.items()}})


def read_classifier(path: Path) -> dict[str, Any]:
    """A ``best.pt``, checked: format, encoder and head configs, classes and weights; one line when it is not."""
    obj = read_torch(path, trusted=True)
    if format_of(obj) != CLASSIFIER_FORMAT:
        raise BadInput(f"{path}: not a fine-tuned classifier (expected format {CLASSIFIER_FORMAT})")
    bad = [k for k, kind in (("encoder", Mapping), ("head", Mapping), ("classes", list), ("state_dict", Mapping))
           if not isinstance(obj.get(k), kind)]
    if bad or not obj["classes"]:
        raise BadInput(f"{path}: {CLASSIFIER_FORMAT} file without {', '.join(bad) or 'classes'} (truncated?)")
    return dict(obj)
