"""Pretrained encoders in, whatever their origin: :func:`load_encoder` is the one entry point behind ``ckpt=``.

``load_encoder(path, **encoder_overrides) -> (EncoderConfig, state_dict, info)`` accepts

    <run>/encoder.pt                  our DeepSpeed-free export ``{"format": "tessera-encoder/1", ...}``
    <run>/, <run>/checkpoints/,       our DeepSpeed checkpoints: the newest complete one (``COMPLETE`` marker, else
    <run>/checkpoints/step_*/          ``latest``); ZeRO-3 and half-precision weights consolidated to fp32; the shape
                                       from ``<run>/config.yaml``
    an official SSAST file            raw DataParallel state dict (pretrain/official.py)
    an official Audio-MAE file        ``{'model': ...}`` (pretrained.pth or finetuned.pth)
    a transformers AST folder         ``ASTModel`` / ``ASTForAudioClassification``: config.json + model.safetensors
                                       or pytorch_model.bin (pretrain/transformers_ast.py); its head is left out

and returns a state dict that ``Encoder(cfg).load_state_dict`` takes as is, already fitted to the fine-tuning shape
given by ``encoder_overrides`` (target_frames, num_mel_bins, stride_freq, stride_time, token_order, drop_path; see
``fit_encoder``). ``info``: ``format``, ``method`` ("ssast" / "audiomae"), ``source`` (the file or checkpoint folder
read), ``step``, ``head`` (the head kind of the method's official fine-tuning: "mean" for SSAST, "mean_fc_norm" for
Audio-MAE, which drops the final norm), ``notes`` (what was adapted or assumed), and for an official fine-tuned
Audio-MAE file ``official_head`` (its ``fc_norm.*`` / ``head.*``). A wrong or truncated file raises
:class:`launch.common.errors.BadInput` with one line naming it.

Our own files are read by :mod:`launch.runtime.checkpoints` (the one owner of their formats); this module says what
their weights mean for an :class:`~pretrain.encoder.Encoder`, and hands released files to :mod:`pretrain.official`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

from torch import Tensor

from launch.common.errors import BadInput
from launch.runtime import checkpoints
from pretrain import transformers_ast
from pretrain.encoder import EncoderConfig
from pretrain.official import (
    FITTABLE,
    audiomae_to_encoder,
    check_encoder_state,
    detect_official,
    fit_encoder,
    size_of,
    ssast_to_encoder,
)

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
    if transformers_ast.ast_folder_of(p) is not None:  # a transformers AST folder (config.json + weights)
        cfg, sd, notes, extra = transformers_ast.read_ast_encoder(p, overrides)
        return cfg, sd, {**_info("transformers-ast", "ssast", name, notes), **extra}
    if p.is_dir() or p.name.endswith("_model_states.pt"):  # a DeepSpeed file: read its checkpoint folder
        return _load_deepspeed(p if p.is_dir() else p.parent, overrides, notes)
    obj = checkpoints.read_torch(p)
    if checkpoints.format_of(obj) is not None:
        return _load_export(p, obj, overrides, notes)
    kind = detect_official(name, obj)
    cfg, sd, raw = (ssast_to_encoder if kind == "ssast" else audiomae_to_encoder)(name, obj, overrides, notes)
    info = _info(f"{kind}-official", kind, name, notes)
    head = {k: v for k, v in raw.items() if k.startswith(("fc_norm.", "head."))} if kind == "audiomae" else {}
    if head:
        info["official_head"] = head
    return cfg, sd, info


def _load_export(path: Path, obj: Mapping[str, Any], overrides: Mapping[str, Any], notes: list[str]):
    """Our ``encoder.pt`` (written by :func:`launch.runtime.checkpoints.write_encoder`)."""
    payload, name = checkpoints.read_encoder(path, obj), str(path)
    cfg = _config(name, payload["encoder"])
    sd = dict(payload["state_dict"])
    check_encoder_state(name, cfg, sd)
    cfg, sd = fit_encoder(name, cfg, sd, overrides, notes)
    return cfg, sd, _info(checkpoints.ENCODER_FORMAT, payload.get("method"), name, notes, payload.get("step"))


def _run_config(name: str, tree: Mapping[str, Any]) -> tuple[EncoderConfig, str]:
    """(encoder config, method) from a pretraining run's resolved config tree."""
    try:
        method = tree["method"]
        fields = tree[method]["encoder"]
    except (KeyError, TypeError) as e:
        raise BadInput(f"{name}: config.yaml has no method / <method>.encoder ({type(e).__name__}: {e})") from None
    return _config(name, fields), method


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
    if checkpoints.find_checkpoint(folder) is None and (folder / checkpoints.ENCODER_FILE).is_file():
        return load_encoder(folder / checkpoints.ENCODER_FILE, **overrides)
    run = checkpoints.read_run_weights(folder)
    name = str(run.source)
    notes.extend(run.notes)
    enc = {k[len("encoder."):]: v for k, v in run.module.items() if k.startswith("encoder.")}
    found = _run_config(str(run.source.parent.parent / "config.yaml"), run.config) if run.config else None
    cfg, method = found if found else _infer_config(name, run.module, enc, notes)
    check_encoder_state(name, cfg, enc, show=lambda k: "encoder." + k)
    cfg, enc = fit_encoder(name, cfg, enc, overrides, notes)
    return cfg, enc, _info("deepspeed", method, name, notes, run.step)


__all__ = ["load_encoder", "FITTABLE"]
