"""Pretrained encoders in, whatever their origin: :func:`load_encoder` is the one entry point behind ``ckpt=``.

``load_encoder(path, **encoder_overrides) -> (EncoderConfig, state_dict, info)`` accepts

    <run>/encoder.pt                  our DeepSpeed-free export ``{"format": "tessera-encoder/1", ...}``
    <run>/, <run>/checkpoints/,       our DeepSpeed checkpoints: the newest complete one (``COMPLETE`` marker, else
    <run>/checkpoints/step_*/          ``latest``); weights from ``mp_rank_00_model_states.pt``, or for ZeRO-3 (whose
                                       module file holds no weights) and half-precision modules the fp32 master copy
                                       via DeepSpeed's ``zero_to_fp32``; the shape from ``<run>/config.yaml``
    an official SSAST file            raw DataParallel state dict (pretrain/checkpoints_official.py)
    an official Audio-MAE file        ``{'model': ...}`` (pretrained.pth or finetuned.pth)

and returns a state dict that ``Encoder(cfg).load_state_dict`` takes as is, already fitted to the fine-tuning shape
given by ``encoder_overrides`` (target_frames, num_mel_bins, stride_freq, stride_time, token_order, drop_path; see
``fit_encoder``). ``info``: ``format``, ``method`` ("ssast" / "audiomae"), ``source`` (the file or checkpoint folder
read), ``step``, ``head`` (the head kind of the method's official fine-tuning: "mean" for SSAST, "mean_fc_norm" for
Audio-MAE, which drops the final norm), ``notes`` (what was adapted or assumed), and for an official fine-tuned
Audio-MAE file ``official_head`` (its ``fc_norm.*`` / ``head.*``). A wrong or truncated file raises
:class:`launch.common.errors.BadInput` with one line naming it. This is the only module besides pretrain/engine.py that
imports DeepSpeed, lazily and only for ZeRO consolidation.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from launch.common.errors import BadInput
from pretrain.checkpoint import ENCODER_FORMAT, complete_checkpoints
from pretrain.checkpoints_official import (
    FITTABLE,
    audiomae_to_encoder,
    check_encoder_state,
    detect_official,
    export_official_audiomae,
    export_official_ssast,
    fit_encoder,
    load_official_audiomae,
    load_official_audiomae_model,
    load_official_ssast,
    load_official_ssast_model,
    read_torch,
    size_of,
    ssast_to_encoder,
)
from pretrain.encoder import EncoderConfig

MODEL_STATES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")  # ZeRO <= 2, ZeRO-3
OFFICIAL_HEAD = {"ssast": "mean", "audiomae": "mean_fc_norm"}


def _info(fmt: str, method: str | None, source: str, notes: list[str], step: int | None = None) -> dict[str, Any]:
    return {"format": fmt, "method": method, "source": source, "step": step,
            "head": OFFICIAL_HEAD.get(method or "", "mean"), "notes": notes}


def _config(name: str, fields: Mapping[str, Any]) -> EncoderConfig:
    """EncoderConfig from a dict of its fields (unknown keys ignored); BadInput on invalid values."""
    known = {f.name for f in dataclasses.fields(EncoderConfig)}
    try:
        return EncoderConfig(**{k: v for k, v in fields.items() if k in known})
    except (TypeError, ValueError) as e:
        raise BadInput(f"{name}: encoder config: {e}") from None


def load_encoder(path: str | Path, **overrides: Any) -> tuple[EncoderConfig, dict[str, Tensor], dict[str, Any]]:
    """Any supported checkpoint -> (EncoderConfig, Encoder state dict, info); see the module docstring."""
    p, name, notes = Path(path), str(path), []
    if not p.exists():
        raise BadInput(f"{name}: no such file or directory")
    if p.is_dir() or p.name.endswith("_model_states.pt"):  # a DeepSpeed file: read its checkpoint folder
        return _load_deepspeed(p if p.is_dir() else p.parent, overrides, notes)
    obj = read_torch(p)
    if isinstance(obj, Mapping) and "format" in obj:
        return _load_export(name, obj, overrides, notes)
    kind = detect_official(name, obj)
    cfg, sd, raw = (ssast_to_encoder if kind == "ssast" else audiomae_to_encoder)(name, obj, overrides, notes)
    info = _info(f"{kind}-official", kind, name, notes)
    head = {k: v for k, v in raw.items() if k.startswith(("fc_norm.", "head."))} if kind == "audiomae" else {}
    if head:
        info["official_head"] = head
    return cfg, sd, info


def _load_export(name: str, obj: Mapping[str, Any], overrides: Mapping[str, Any], notes: list[str]):
    """Our ``encoder.pt`` (pretrain/checkpoint.py ``export_encoder``)."""
    if obj.get("format") != ENCODER_FORMAT:
        raise BadInput(f"{name}: format {obj.get('format')!r} is not {ENCODER_FORMAT!r}")
    missing = [k for k in ("encoder", "state_dict") if not isinstance(obj.get(k), Mapping)]
    if missing:
        raise BadInput(f"{name}: {ENCODER_FORMAT} file without {' and '.join(missing)} (truncated export?)")
    cfg = _config(name, obj["encoder"])
    sd = dict(obj["state_dict"])
    check_encoder_state(name, cfg, sd)
    cfg, sd = fit_encoder(name, cfg, sd, overrides, notes)
    return cfg, sd, _info(ENCODER_FORMAT, obj.get("method"), name, notes, obj.get("step"))


# -------------------------------------------------------------------------------------------------- DeepSpeed
def find_checkpoint(folder: Path) -> Path | None:
    """The checkpoint folder to read for a run folder, its ``checkpoints/`` folder or a checkpoint folder itself:
    the newest complete one (``COMPLETE`` marker), else the one ``latest`` names; None if there is none."""
    if any((folder / f).is_file() for f in MODEL_STATES):
        return folder
    for d in (folder / "checkpoints", folder):
        if not d.is_dir():
            continue
        done = complete_checkpoints(d)
        if done:
            return done[-1]
        latest = d / "latest"
        if latest.is_file() and (d / latest.read_text().strip()).is_dir():
            return d / latest.read_text().strip()
    return None


def _zero_to_fp32(ckpt: Path) -> dict[str, Tensor]:
    """DeepSpeed's consolidation of the fp32 master weights (ZeRO-1/2/3 optimizer shards), printing silenced."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint  # lazy: heavy, optional

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), tag=ckpt.name)


def _run_config(run_dir: Path) -> tuple[EncoderConfig, str] | None:
    """(encoder config, method) from the run's resolved ``config.yaml``; None if there is none."""
    f = run_dir / "config.yaml"
    if not f.is_file():
        return None
    from omegaconf import OmegaConf

    try:
        tree = OmegaConf.to_container(OmegaConf.load(f))
        method = tree["method"]
        fields = tree[method]["encoder"]
    except Exception as e:  # noqa: BLE001 - YAML error or a missing key: one line either way
        raise BadInput(f"{f}: cannot read method / <method>.encoder ({type(e).__name__}: {e})") from None
    return _config(str(f), fields), method


def _infer_config(name: str, module: Mapping[str, Tensor], enc: Mapping[str, Tensor], notes: list[str]):
    """(EncoderConfig, method) from our weights alone: 128 mel bins and stride = patch assumed."""
    method = "ssast" if "mask_embed" in module else "audiomae" if "decoder_embed.weight" in module else None
    missing = [k for k in ("patch_embed.proj.weight", "cls_tokens", "pos_embed") if k not in enc]
    if missing or method is None:
        raise BadInput(f"{name}: not a tessera SSAST / Audio-MAE checkpoint: missing "
                       f"{', '.join('encoder.' + k for k in missing) or 'mask_embed / decoder_embed.weight'}")
    w, c = enc["patch_embed.proj.weight"], enc["cls_tokens"].shape[1]
    depth = 1 + max((int(k.split(".")[1]) for k in enc if k.startswith("blocks.")), default=-1)
    size, depth = size_of(name, w.shape[0], depth)
    pf, pt = int(w.shape[2]), int(w.shape[3])
    f_dim, n = (128 - pf) // pf + 1, enc["pos_embed"].shape[1] - c
    notes.append("no config.yaml next to the checkpoint: shape inferred from the weights (128 mel, stride = patch)")
    ssast = method == "ssast"
    cfg = _config(name, dict(size=size, depth=depth, num_mel_bins=128, target_frames=(n // f_dim) * pt,
                             patch_freq=pf, patch_time=pt, stride_freq=pf, stride_time=pt, cls_tokens=c,
                             pos_embed="learned" if ssast else "sincos", token_order="freq" if ssast else "time"))
    return cfg, method


def _load_deepspeed(folder: Path, overrides: Mapping[str, Any], notes: list[str]):
    ckpt = find_checkpoint(folder)
    if ckpt is None:
        if (folder / "encoder.pt").is_file():
            return load_encoder(folder / "encoder.pt", **overrides)
        raise BadInput(f"{folder}: no complete DeepSpeed checkpoint (checkpoints/step_*/COMPLETE) and no encoder.pt")
    name = str(ckpt)
    states_file = next(ckpt / f for f in MODEL_STATES if (ckpt / f).is_file())
    states = read_torch(states_file, trusted=True)
    module = states.get("module") if isinstance(states, Mapping) else None
    if not isinstance(module, Mapping):
        raise BadInput(f"{states_file}: not a DeepSpeed model-states file (no 'module' state dict)")
    enc = {k[len("encoder."):]: v for k, v in module.items() if k.startswith("encoder.")}
    stage = ((states.get("ds_config") or {}).get("zero_optimization") or {}).get("stage", 0)
    partitioned = stage == 3 or any(v.numel() == 0 for v in enc.values())  # ZeRO-3: placeholders, no weights
    half = any(v.is_floating_point() and v.dtype != torch.float32 for v in enc.values())
    if half and not partitioned and stage == 0:  # plain bf16/fp16: its fp32 copy is stored without parameter names
        notes.append("half-precision module weights upcast to fp32 (ZeRO-0 keeps no named fp32 master copy; "
                     "encoder.pt holds the same values)")
    elif partitioned or half:
        try:
            full = _zero_to_fp32(ckpt)
            enc = {k[len("encoder."):]: v for k, v in full.items() if k.startswith("encoder.")}
            notes.append(f"fp32 weights consolidated with DeepSpeed zero_to_fp32 (ZeRO-{stage})")
        except Exception as e:  # noqa: BLE001 - missing/damaged optimizer shards
            why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if partitioned:
                raise BadInput(f"{name}: ZeRO-3 weights cannot be consolidated ({why})") from None
            notes.append(f"half-precision module weights upcast to fp32 (no fp32 master copy: {why})")
    enc = {k: v.float() if v.is_floating_point() else v for k, v in enc.items()}
    found = _run_config(ckpt.parent.parent)
    cfg, method = found if found else _infer_config(name, module, enc, notes)
    check_encoder_state(name, cfg, enc, show=lambda k: "encoder." + k)
    cfg, enc = fit_encoder(name, cfg, enc, overrides, notes)
    step = states.get("step", states.get("global_steps"))
    return cfg, enc, _info("deepspeed", method, name, notes, step)


__all__ = ["load_encoder", "find_checkpoint", "load_official_ssast", "load_official_ssast_model",
           "load_official_audiomae", "load_official_audiomae_model", "export_official_ssast",
           "export_official_audiomae", "fit_encoder", "read_torch", "FITTABLE"]
