"""The released SSAST / Audio-MAE checkpoint formats: their files -> our ``Encoder``, our encoder -> their files.

Used through :mod:`pretrain.pretrained` (:func:`~pretrain.pretrained.load_encoder`, behind ``ckpt=``); the export
functions write files the official code loads.

What the conversion does (models.md §1.2, §1.6, §2.2, §2.3, §2.6, §3; pretrain/encoder.py for our layout):

    official SSAST (raw DataParallel state dict, keys ``module.``-prefixed; the prefix is optional here)
        module.v.cls_token + module.v.dist_token (1,1,D) each  -> cls_tokens (1, 2, D), cls first
        module.v.pos_embed (1, 2+N, D), learned, freq-major    -> pos_embed as is (token_order="freq")
        module.v.patch_embed.proj.weight (D, 1, freq, time)    -> as is: the conv already runs on [B, 1, F, T]
        module.v.blocks.{i}.*, module.v.norm.*                 -> blocks.{i}.*, norm.* (same timm names)
        module.p_input_fdim / p_input_tdim (0-dim ints)        -> num_mel_bins / target_frames; patch from the conv
        ignored: module.v.head*, module.cpredlayer/gpredlayer/mask_embed (see load_official_ssast_model)
    official fine-tuned SSAST (traintest.py saves the DataParallel state dict: no p_input_*, no pretraining heads)
        module.v.* as above, already on the fine-tuning grid     -> as above; the shape: see finetuned_shapes
        module.mlp_head.0 / .1 (LayerNorm, Linear)              -> a ``mean`` (ft_avgtok) or ``cls`` (ft_cls) head's
                                                                   norm / last Linear (load_official_ssast_classifier)
    official Audio-MAE (``{'model': sd}``, or the full ``{'model','optimizer','epoch','scaler','args'}``, or sd)
        cls_token (1,1,D)                                       -> cls_tokens (1, 1, D)
        pos_embed (1, 1+N, D), fixed sin-cos, time-major rows   -> pos_embed as is (token_order="time",
                                                                   pos_embed="sincos"): the (8, 64) quirk kept
        patch_embed.proj.weight (D, 1, time, freq) on [B,1,T,F] -> ``.transpose(2, 3)``: our conv runs on
                                                                   [B, 1, F, T], and conv(x^T, W^T) = conv(x, W)^T
        blocks.{i}.*, norm.*                                    -> same names
        ignored: decoder_*, mask_token (see load_official_audiomae_model), fc_norm/head (-> info)
        The input length is not stored: 128 mel bins are assumed and target_frames = (N / 8) * 16.

Fine-tuning shapes: ``encoder overrides`` (target_frames, num_mel_bins, stride_freq, stride_time, token_order,
drop_path) give the fine-tuning encoder; a learned pos-embed is then cut / interpolated as SSAST's fine-tuning code
does (``encoder.adapt_pos_embed``); a fixed sin-cos one keeps the first time steps when only the length shrinks
(the rows those tokens had in pretraining), else is rebuilt for the new grid in the checkpoint's own layout.

Official fine-tune numbers. SSAST (``ft_avgtok``): head.kind=mean (final norm -> mean of the patch tokens ->
LayerNorm + Linear; ``ft_cls``: head.kind=cls, the mean of cls and dist), fine-tune stride 10 for patch models. Audio-MAE (models_vit ``global_pool``): the final ``norm``
is *discarded*; use head.kind=mean_fc_norm (mean of the last block's raw output -> fresh fc_norm -> Linear with
trunc_normal std 2e-5), together with the recipe's layer-wise LR decay 0.75. ``info["head"]`` names the kind.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from launch.common.errors import BadInput
from launch.runtime.checkpoints import read_torch
from pretrain.audiomae import audiomae_pos_embed
from pretrain.encoder import MLP_RATIO, MODEL_SIZES, EncoderConfig, adapt_pos_embed, reorder_pos_embed

BLOCK_KEYS = tuple(f"{m}.{p}" for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
                   for p in ("weight", "bias"))
FITTABLE = ("target_frames", "num_mel_bins", "stride_freq", "stride_time", "token_order", "drop_path")
"""Encoder fields a loader may change (the fine-tuning shape); the others are fixed by the weights."""
AUDIOMAE_MEL_BINS = 128  # Audio-MAE checkpoints do not store the input size; every released one uses 128 mel bins
SSAST_MEL_BINS = 128  # every SSAST recipe reads 128 mel bins; a fine-tuned file no longer stores p_input_fdim
_SSAST_REQUIRED = ("v.cls_token", "v.dist_token", "v.pos_embed", "v.patch_embed.proj.weight",
                   "v.patch_embed.proj.bias", "v.norm.weight", "v.norm.bias")
_SSAST_PRETRAIN = ("p_input_fdim", "p_input_tdim")  # the pretraining model's "trick" to store its input size
_SSAST_FT_HEAD = ("mlp_head.0.weight", "mlp_head.0.bias", "mlp_head.1.weight", "mlp_head.1.bias")
_MAE_REQUIRED = ("cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias")
_WIDTHS = {w: name for name, (w, _, _) in MODEL_SIZES.items()}


# ------------------------------------------------------------------------------------------------------ reading
def _source(src: str | Path | Mapping[str, Any]) -> tuple[str, Any]:
    """(name for messages, loaded object)."""
    if isinstance(src, Mapping):
        return "<state dict>", src
    return str(src), read_torch(src)


def _missing(name: str, missing: list[str]) -> BadInput:
    more = f" (+{len(missing) - 2} more)" if len(missing) > 2 else ""
    return BadInput(f"{name}: not an SSAST or Audio-MAE checkpoint: missing {', '.join(missing[:2])}{more}")


def _num_blocks(sd: Mapping[str, Any], prefix: str) -> int:
    heads = {k[len(prefix):].split(".", 1)[0] for k in sd if k.startswith(prefix)}
    ids = [int(h) for h in heads if h.isdigit()]
    return max(ids) + 1 if ids else 0


def _required_missing(sd: Mapping[str, Any], required: tuple[str, ...], blocks: str, show: str = "") -> list[str]:
    """Required keys absent from ``sd`` (with every block 0..depth-1 complete), shown with ``show`` prefixed."""
    keys = list(required) + [f"{blocks}{i}.{k}" for i in range(max(_num_blocks(sd, blocks), 1)) for k in BLOCK_KEYS]
    return [show + k for k in keys if k not in sd]


def ssast_state(name: str, obj: Any) -> dict[str, Tensor]:
    """The official SSAST state dict (pretraining or fine-tuned) without its ``module.`` prefix; BadInput if keys
    are missing."""
    sd = obj.get("model", obj) if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping) else obj
    if not isinstance(sd, Mapping):
        raise BadInput(f"{name}: not an SSAST or Audio-MAE checkpoint: holds a {type(sd).__name__}, not a dict")
    if any(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items() if k.startswith("module.")}
    missing = _required_missing(sd, _SSAST_REQUIRED, "v.blocks.", show="module.")
    if missing:
        raise _missing(name, missing)
    if not is_finetuned_ssast(sd) and any(k not in sd for k in _SSAST_PRETRAIN):
        raise BadInput(f"{name}: not an SSAST or Audio-MAE checkpoint: missing module.p_input_fdim (a pretraining "
                       "file) or module.mlp_head.1.weight (a fine-tuned file)")
    return dict(sd)


def is_finetuned_ssast(sd: Mapping[str, Any]) -> bool:
    """A fine-tuned ASTModel's state (unprefixed): ``mlp_head`` and no ``p_input_*`` (the pretraining model that held
    them is dropped once its ``v`` is taken, ast_models.py ``pretrain_stage=False``)."""
    return "mlp_head.1.weight" in sd and "p_input_fdim" not in sd


def audiomae_state(name: str, obj: Any) -> dict[str, Tensor]:
    """The Audio-MAE model state dict (``obj['model']`` or ``obj`` itself); BadInput if keys are missing."""
    sd = obj["model"] if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping) else obj
    if not isinstance(sd, Mapping):
        raise BadInput(f"{name}: not an SSAST or Audio-MAE checkpoint: holds a {type(sd).__name__}, not a dict")
    missing = _required_missing(sd, _MAE_REQUIRED, "blocks.")
    if missing:
        raise _missing(name, missing)
    return dict(sd)


def detect_official(name: str, obj: Any) -> str:
    """"ssast" or "audiomae" for a loaded official checkpoint; BadInput naming the missing keys of the nearer one."""
    if not isinstance(obj, Mapping):
        raise BadInput(f"{name}: not an SSAST or Audio-MAE checkpoint: holds a {type(obj).__name__}, not a dict")
    inner = obj["model"] if isinstance(obj.get("model"), Mapping) else obj
    errors = {}
    for kind, parse in (("ssast", ssast_state), ("audiomae", audiomae_state)):
        try:
            parse(name, inner)
            return kind
        except BadInput as e:
            errors[kind] = e
    looks_mae = "cls_token" in inner or "blocks.0.attn.qkv.weight" in inner or inner is not obj
    raise errors["audiomae" if looks_mae else "ssast"]


# ----------------------------------------------------------------------------------------------------- shapes
def size_of(name: str, width: int, depth: int) -> tuple[str, int]:
    """(size, depth field) for a width and a block count (depth 0 = the size's own depth)."""
    if width not in _WIDTHS:
        sizes = ", ".join(f"{n} {w}" for w, n in _WIDTHS.items())
        raise BadInput(f"{name}: width {width} is not one of our sizes ({sizes})")
    size = _WIDTHS[width]
    return size, 0 if depth == MODEL_SIZES[size][1] else depth


def encoder_shapes(cfg: EncoderConfig) -> dict[str, tuple[int, ...]]:
    """Our Encoder's state-dict shapes for ``cfg``, computed without building it."""
    d, h, c, n = cfg.embed_dim, cfg.embed_dim * MLP_RATIO, cfg.cls_tokens, cfg.num_patches
    shapes = {"patch_embed.proj.weight": (d, 1, cfg.patch_freq, cfg.patch_time), "patch_embed.proj.bias": (d,),
              "cls_tokens": (1, c, d), "pos_embed": (1, c + n, d), "norm.weight": (d,), "norm.bias": (d,)}
    per_block = {"norm1": (d,), "attn.qkv": (3 * d, d), "attn.proj": (d, d), "norm2": (d,), "mlp.fc1": (h, d),
                 "mlp.fc2": (d, h)}
    for i in range(cfg.num_layers):
        for m, shape in per_block.items():
            shapes[f"blocks.{i}.{m}.weight"] = shape
            shapes[f"blocks.{i}.{m}.bias"] = (shape[0],)
    return shapes


def check_encoder_state(name: str, cfg: EncoderConfig, sd: Mapping[str, Tensor], show=lambda k: k) -> None:
    """BadInput (one line) for the first missing or mis-shaped tensor of ``sd`` against ``cfg``; ``show`` maps our
    key to the name the file uses."""
    expected = encoder_shapes(cfg)
    missing = [show(k) for k in expected if k not in sd]
    if missing:
        raise _missing(name, missing)
    for k, shape in expected.items():
        if tuple(sd[k].shape) != shape:
            f_dim, t_dim = cfg.grid
            why = (f" ({cfg.cls_tokens} cls + {f_dim}x{t_dim} patches of {cfg.num_mel_bins} mel x "
                   f"{cfg.target_frames} frames)" if k == "pos_embed" else "")
            raise BadInput(f"{name}: {show(k)} has shape {tuple(sd[k].shape)}, expected {shape}{why}")


# ------------------------------------------------------------------------------------------- fine-tuning shape
def fit_encoder(name: str, cfg: EncoderConfig, sd: dict[str, Tensor], overrides: Mapping[str, Any],
                notes: list[str] | None = None) -> tuple[EncoderConfig, dict[str, Tensor]]:
    """Apply encoder ``overrides`` (only :data:`FITTABLE` fields may differ) and adapt ``pos_embed`` to the new grid
    and token order. Returns (new cfg, state dict that ``Encoder(new cfg).load_state_dict`` takes as is)."""
    notes = [] if notes is None else notes
    fields = {f.name for f in dataclasses.fields(EncoderConfig)}
    for key, value in overrides.items():
        if key not in fields:
            raise BadInput(f"{name}: encoder.{key} is not an encoder field")
        if key not in FITTABLE and value != getattr(cfg, key):
            raise BadInput(f"{name}: encoder.{key}={value!r} but the checkpoint has {getattr(cfg, key)!r}; only "
                           f"{', '.join(FITTABLE)} can change when loading")
    try:
        new = dataclasses.replace(cfg, **overrides)
    except (TypeError, ValueError) as e:
        raise BadInput(f"{name}: {e}") from None
    if new.grid == cfg.grid and new.token_order == cfg.token_order:
        return new, sd
    sd, pos, c = dict(sd), sd["pos_embed"], cfg.cls_tokens
    if new.grid == cfg.grid:
        sd["pos_embed"] = reorder_pos_embed(pos, cfg.grid, c, cfg.token_order, new.token_order)
        return new, sd
    (f_old, t_old), (f_new, t_new) = cfg.grid, new.grid
    if cfg.pos_embed == "learned":
        pos = adapt_pos_embed(pos, cfg.grid, new.grid, c, cfg.token_order)
        notes.append(f"pos_embed {f_old}x{t_old} -> {f_new}x{t_new}: SSAST's center cut / bilinear interpolation")
        if f_old not in (1, 8) and t_new >= t_old:
            notes.append(f"SSAST's code resizes time to a hard-coded 8 frequency rows; with {f_old} rows its result "
                         "differs from this one (which uses the checkpoint's rows)")
    else:
        pos = _fit_sincos(pos, cfg, new, notes)
    sd["pos_embed"] = reorder_pos_embed(pos, new.grid, c, cfg.token_order, new.token_order)
    return new, sd


def _fit_sincos(pos: Tensor, old: EncoderConfig, new: EncoderConfig, notes: list[str]) -> Tensor:
    """Fixed sin-cos table for the new grid, rows still in ``old.token_order``."""
    (f_old, t_old), (f_new, t_new), c, d = old.grid, new.grid, old.cls_tokens, pos.shape[-1]
    same_stride = (old.stride_freq, old.stride_time) == (new.stride_freq, new.stride_time)
    if same_stride and f_new == f_old and t_new < t_old:  # a shorter clip: its tokens keep their pretraining rows
        x = reorder_pos_embed(pos, old.grid, c, old.token_order, "freq")
        rows = x[:, c:].reshape(1, f_old, t_old, d)[:, :, :t_new].reshape(1, f_old * t_new, d)
        notes.append(f"pos_embed: the first {t_new} of {t_old} time steps kept (fixed sin-cos)")
        return reorder_pos_embed(torch.cat([x[:, :c], rows], dim=1), new.grid, c, "freq", old.token_order)
    layout = "grid"
    for candidate in ("official", "grid"):
        table = reorder_pos_embed(audiomae_pos_embed(d, old.grid, candidate, c), old.grid, c, "time", old.token_order)
        if torch.allclose(table, pos.float(), atol=1e-5):
            layout = candidate
            break
    else:
        notes.append("pos_embed: an unrecognised fixed table; rebuilt as the true-grid sin-cos")
    notes.append(f"pos_embed: fixed sin-cos rebuilt for {f_new}x{t_new} ({layout} layout)")
    table = audiomae_pos_embed(d, new.grid, layout, c)
    return reorder_pos_embed(table, new.grid, c, "time", old.token_order).to(pos.dtype)


# ---------------------------------------------------------------------------------------------- SSAST in / out
def _ssast_encoder_weights(name: str, sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our Encoder's tensors from an unprefixed SSAST state: ``v.*`` minus the timm heads, cls + dist stacked."""
    d = sd["v.patch_embed.proj.weight"].shape[0]
    enc = {k[2:]: v for k, v in sd.items() if k.startswith(("v.blocks.", "v.norm.", "v.patch_embed.", "v.pos_"))}
    if tuple(sd["v.cls_token"].shape) != (1, 1, d) or sd["v.dist_token"].shape != sd["v.cls_token"].shape:
        raise BadInput(f"{name}: module.v.cls_token / dist_token have shapes {tuple(sd['v.cls_token'].shape)} / "
                       f"{tuple(sd['v.dist_token'].shape)}, expected (1, 1, {d})")
    enc["cls_tokens"] = torch.cat([sd["v.cls_token"], sd["v.dist_token"]], dim=1)  # [1, 2, D]: cls, then dist
    return enc


def _ssast_show(key: str) -> str:
    return "module.v." + key if key != "cls_tokens" else "module.v.cls_token"


def ssast_to_encoder(name: str, obj: Any, overrides: Mapping[str, Any], notes: list[str]):
    """Pretraining or fine-tuned SSAST file -> (cfg, Encoder state fitted to ``overrides``, unprefixed file state).
    A fine-tuned file's own shape comes from ``overrides`` where they fit it, else from its shapes; its position
    embedding is then adapted to ``overrides`` like a pretraining one (a fine-tuning start from it)."""
    sd = ssast_state(name, obj)
    if is_finetuned_ssast(sd):
        cfg, enc = _ssast_finetuned_encoder(name, sd, overrides, notes, adapt=True)
        return (*fit_encoder(name, cfg, enc, overrides, notes), sd)
    w = sd["v.patch_embed.proj.weight"]
    size, depth = size_of(name, w.shape[0], _num_blocks(sd, "v.blocks."))
    try:
        cfg = EncoderConfig(size=size, depth=depth, num_mel_bins=int(sd["p_input_fdim"].item()),
                            target_frames=int(sd["p_input_tdim"].item()), patch_freq=w.shape[2], patch_time=w.shape[3],
                            stride_freq=w.shape[2], stride_time=w.shape[3], cls_tokens=2, pos_embed="learned",
                            token_order="freq")
    except ValueError as e:
        raise BadInput(f"{name}: {e}") from None
    enc = _ssast_encoder_weights(name, sd)
    check_encoder_state(name, cfg, enc, show=_ssast_show)
    return (*fit_encoder(name, cfg, enc, overrides, notes), sd)


# ------------------------------------------------------------------------------------- fine-tuned SSAST files
SHAPE_KEYS = ("num_mel_bins", "stride_freq", "stride_time", "target_frames")
"""What a fine-tuned SSAST file does not store: the conv stride is no parameter, and p_input_* went with the
pretraining model. Only the number of patch tokens (pos_embed rows - 2) and the patch (conv kernel) are left."""


def finetuned_shapes(patch: tuple[int, int], n_patches: int, num_mel_bins: int, stride_freq: int | None = None,
                     stride_time: int | None = None, target_frames: int | None = None) -> list[dict[str, int]]:
    """Every input shape under which ASTModel's conv (kernel ``patch``) yields ``n_patches`` tokens on
    ``num_mel_bins`` mel bins: dicts of :data:`SHAPE_KEYS`. None = unknown: strides 1..patch are tried; an unknown
    frame count is the shortest clip with that grid (up to stride-1 more frames give the same tokens: the conv
    never reads them). A grid of one row (column) reads offset 0 at any stride: listed once, with stride = patch."""
    pf, pt = patch
    if num_mel_bins < pf or n_patches < 1:
        return []
    found: dict[tuple[int, int, int], None] = {}
    for sf in ([stride_freq] if stride_freq else range(1, pf + 1)):
        f_dim = (num_mel_bins - pf) // sf + 1  # get_shape's conv arithmetic
        if n_patches % f_dim:
            continue
        t_dim = n_patches // f_dim
        for st in ([stride_time] if stride_time else range(1, pt + 1)):
            if target_frames is None:
                frames = pt + (t_dim - 1) * st
            elif target_frames >= pt and (target_frames - pt) // st + 1 == t_dim:
                frames = target_frames
            else:
                continue
            found[(pf if f_dim == 1 else sf, pt if t_dim == 1 else st, frames)] = None
    return [dict(num_mel_bins=num_mel_bins, stride_freq=sf, stride_time=st, target_frames=frames)
            for sf, st, frames in found]


def _grid_of(shape: Mapping[str, int], patch: tuple[int, int]) -> tuple[int, int]:
    return ((shape["num_mel_bins"] - patch[0]) // shape["stride_freq"] + 1,
            (shape["target_frames"] - patch[1]) // shape["stride_time"] + 1)


def _show_shape(s: Mapping[str, int]) -> str:
    return f"stride {s['stride_freq']}x{s['stride_time']} on {s['num_mel_bins']} mel x {s['target_frames']} frames"


def resolve_finetuned_shape(name: str, patch: tuple[int, int], n_patches: int, given: Mapping[str, Any],
                            adapt: bool, notes: list[str]) -> dict[str, int]:
    """The fine-tuned file's own shape: the one shape of :func:`finetuned_shapes` that fits the ``given`` values
    (None or absent: unknown; num_mel_bins defaults to 128); BadInput (one line, naming the keys to give) when none
    or several fit. ``adapt`` (a fine-tuning start, ``given`` is the new input): when nothing fits the given frame
    count, the file's grid alone is enough (its position embedding is then adapted as SSAST's fine-tuning does)."""
    mel = given.get("num_mel_bins") or SSAST_MEL_BINS
    sf, st, frames = given.get("stride_freq"), given.get("stride_time"), given.get("target_frames")
    shapes = finetuned_shapes(patch, n_patches, mel, sf, st, frames)
    how = "given" if sf and st and frames else "inferred from the shapes"
    if not shapes and adapt and frames is not None:
        shapes = finetuned_shapes(patch, n_patches, mel, sf, None, None)
        grids = {_grid_of(s, patch) for s in shapes}
        if len(grids) == 1:  # one grid: which time stride made it does not matter to a new fine-tuning
            shapes = [min(shapes, key=lambda s: s["stride_time"] != (st or patch[1]))]
            how = "its own grid, from the shapes; then adapted to the fine-tuning input"
    pf, pt = patch
    what = f"{name}: a fine-tuned SSAST file with {n_patches} patch tokens of {pf}x{pt}"
    keys = [k for k, v in (("encoder.stride_freq", sf), ("encoder.stride_time", st),
                           ("the frame count (target_frames)", frames)) if not v]
    if not shapes:
        known = [f"{k}={v}" for k, v in (("stride_freq", sf), ("stride_time", st), ("target_frames", frames)) if v]
        raise BadInput(f"{what}: no fine-tuning shape fits {mel} mel bins{' and ' + ', '.join(known) if known else ''}"
                       "; give the encoder.stride_freq, encoder.stride_time, target_frames (and encoder.num_mel_bins "
                       "if not 128) it was fine-tuned with")
    if len(shapes) > 1:
        more = f"; +{len(shapes) - 3} more" if len(shapes) > 3 else ""
        shown = "; ".join(_show_shape(s) for s in shapes[:3]) + more
        raise BadInput(f"{what} fits several fine-tuning shapes ({shown}): give {', '.join(keys) or 'the shape'}")
    shape = shapes[0]
    f_dim, t_dim = _grid_of(shape, patch)
    notes.append(f"fine-tuned SSAST file: {f_dim}x{t_dim} patches = {_show_shape(shape)} ({how})")
    if not given.get("num_mel_bins"):
        notes.append(f"{SSAST_MEL_BINS} mel bins assumed (every SSAST recipe; give encoder.num_mel_bins otherwise)")
    if not frames and shape["stride_time"] > 1 and t_dim > 1:
        notes.append(f"target_frames {shape['target_frames']}: the shortest clip with this grid (up to "
                     f"{shape['stride_time'] - 1} more frames give the same tokens)")
    return shape


def _ssast_finetuned_encoder(name: str, sd: Mapping[str, Tensor], given: Mapping[str, Any], notes: list[str],
                             adapt: bool) -> tuple[EncoderConfig, dict[str, Tensor]]:
    """(cfg on the file's own grid, Encoder state) of a fine-tuned SSAST file; ``given``: known shape values."""
    w = sd["v.patch_embed.proj.weight"]
    size, depth = size_of(name, w.shape[0], _num_blocks(sd, "v.blocks."))
    patch = (int(w.shape[2]), int(w.shape[3]))
    shape = resolve_finetuned_shape(name, patch, sd["v.pos_embed"].shape[1] - 2, given, adapt, notes)
    try:
        cfg = EncoderConfig(size=size, depth=depth, patch_freq=patch[0], patch_time=patch[1], cls_tokens=2,
                            pos_embed="learned", token_order="freq", **shape)
    except ValueError as e:
        raise BadInput(f"{name}: {e}") from None
    enc = _ssast_encoder_weights(name, sd)
    check_encoder_state(name, cfg, enc, show=_ssast_show)
    return cfg, enc


def ssast_classifier_state(name: str, obj: Any, given: Mapping[str, Any], notes: list[str]):
    """A fine-tuned SSAST file -> (cfg, Encoder state, mlp_head state ``{"0.weight", "0.bias", "1.weight",
    "1.bias"}``: LayerNorm, Linear). The encoder keeps the file's grid: ``given`` shape values must fit it
    (the others are inferred); token_order / drop_path may change."""
    sd = ssast_state(name, obj)
    if not is_finetuned_ssast(sd):
        raise BadInput(f"{name}: an SSAST pretraining file (module.p_input_fdim, no module.mlp_head): not a "
                       "classifier; fine-tune it with ckpt=")
    given = {k: v for k, v in given.items() if v is not None}
    cfg, enc = _ssast_finetuned_encoder(name, sd, given, notes, adapt=False)
    cfg, enc = fit_encoder(name, cfg, enc, {k: v for k, v in given.items() if k not in SHAPE_KEYS}, notes)
    head = {k[len("mlp_head."):]: sd[k] for k in _SSAST_FT_HEAD if k in sd}
    d, out = cfg.embed_dim, sd["mlp_head.1.weight"]
    expected = {"0.weight": (d,), "0.bias": (d,), "1.weight": (out.shape[0], d), "1.bias": (out.shape[0],)}
    for k, shape in expected.items():
        if k not in head or tuple(head[k].shape) != shape:
            got = tuple(head[k].shape) if k in head else "missing"
            raise BadInput(f"{name}: module.mlp_head.{k} is {got}, expected {shape} (LayerNorm({d}) + Linear)")
    if any(k.startswith("mlp_head.2") for k in sd):
        raise BadInput(f"{name}: module.mlp_head has more than LayerNorm + Linear: not an SSAST release head")
    return cfg, enc, head


def load_official_ssast_classifier(src: str | Path | Mapping[str, Any], **given: Any):
    """An official fine-tuned SSAST file (path or DataParallel state dict) -> (EncoderConfig, Encoder state dict,
    mlp_head state, notes). ``given``: what is known of its fine-tuning shape (num_mel_bins, stride_freq,
    stride_time, target_frames), the rest is inferred from its shapes where only one shape fits."""
    name, obj = _source(src)
    notes: list[str] = []
    return (*ssast_classifier_state(name, obj, given, notes), notes)


def load_official_ssast(src: str | Path | Mapping[str, Any], **overrides: Any) -> tuple[EncoderConfig, dict]:
    """Released SSAST weights (path or state dict) -> (EncoderConfig, state dict for ``Encoder``).

    ``overrides``: the fine-tuning shape, e.g. ``target_frames=512, stride_freq=10, stride_time=10`` (ESC-50 patch
    model: pos-embed 8x64 -> cut to 8x50 -> interpolated to 12x50, as ast_models.py does).
    """
    name, obj = _source(src)
    cfg, sd, _ = ssast_to_encoder(name, obj, overrides, [])
    return cfg, sd


def load_official_ssast_model(src: str | Path | Mapping[str, Any], **overrides: Any) -> tuple[EncoderConfig, dict]:
    """Released SSAST weights -> (EncoderConfig, state dict for ``pretrain.ssast.SSAST``), i.e. with ``mask_embed``,
    ``cpredlayer`` and ``gpredlayer``: to continue pretraining, or to check our losses against the official ones."""
    name, obj = _source(src)
    cfg, enc, sd = ssast_to_encoder(name, obj, overrides, [])
    missing = [f"module.{k}" for k in ("mask_embed", "cpredlayer.0.weight", "gpredlayer.0.weight") if k not in sd]
    if missing:
        raise _missing(name, missing)
    heads = {k: v for k, v in sd.items() if k == "mask_embed" or k.startswith(("cpredlayer.", "gpredlayer."))}
    return cfg, {**{f"encoder.{k}": v for k, v in enc.items()}, **heads}


def _encoder_of(model: torch.nn.Module) -> torch.nn.Module:
    return model.encoder if hasattr(model, "encoder") else model


def _own_state(enc: torch.nn.Module, token_order: str) -> dict[str, Tensor]:
    """Detached CPU copies of the encoder's state, pos rows in ``token_order``; checks stride == patch."""
    cfg = enc.cfg
    if (cfg.stride_freq, cfg.stride_time) != (cfg.patch_freq, cfg.patch_time):
        raise ValueError(f"export: the official formats hold pretraining encoders (stride == patch); this one has "
                         f"stride {cfg.stride_freq}x{cfg.stride_time} for a {cfg.patch_freq}x{cfg.patch_time} patch")
    sd = {k: v.detach().cpu().clone() for k, v in enc.state_dict().items()}
    sd["pos_embed"] = reorder_pos_embed(sd["pos_embed"], cfg.grid, cfg.cls_tokens, cfg.token_order, token_order)
    return sd


def export_official_ssast(model: torch.nn.Module, timm_heads: bool = True) -> "OrderedDict[str, Tensor]":
    """Our ``Encoder`` (2 cls tokens) or ``SSAST`` model -> the released SSAST state dict (``module.``-prefixed),
    loadable by ast_models.py's fine-tuning path; ``torch.save`` it as is. With an SSAST model the pretraining heads
    are included; ``timm_heads`` adds the unused 1000-way ``v.head``/``v.head_dist`` (zeros) so the key set is the
    release's. Exact inverse of :func:`load_official_ssast`."""
    enc = _encoder_of(model)
    if enc.cfg.cls_tokens != 2:
        raise ValueError(f"export_official_ssast: SSAST has 2 cls tokens (cls, dist); this encoder has "
                         f"{enc.cfg.cls_tokens}")
    sd, d = _own_state(enc, "freq"), enc.embed_dim
    out: OrderedDict[str, Tensor] = OrderedDict()
    out["module.p_input_fdim"] = torch.tensor(enc.cfg.num_mel_bins)
    out["module.p_input_tdim"] = torch.tensor(enc.cfg.target_frames)
    out["module.v.cls_token"], out["module.v.dist_token"] = sd.pop("cls_tokens").split(1, dim=1)
    out.update((f"module.v.{k}", v) for k, v in sd.items())
    if timm_heads:
        for head in ("head", "head_dist"):
            out[f"module.v.{head}.weight"], out[f"module.v.{head}.bias"] = torch.zeros(1000, d), torch.zeros(1000)
    if hasattr(model, "cpredlayer"):
        out.update((f"module.{k}", v.detach().cpu().clone()) for k, v in model.state_dict().items()
                   if not k.startswith("encoder."))
    return out


# ------------------------------------------------------------------------------------------- Audio-MAE in / out
def audiomae_to_encoder(name: str, obj: Any, overrides: Mapping[str, Any], notes: list[str]):
    sd = audiomae_state(name, obj)
    w = sd["patch_embed.proj.weight"]  # [D, 1, time, freq]
    size, depth = size_of(name, w.shape[0], _num_blocks(sd, "blocks."))
    pt, pf = int(w.shape[2]), int(w.shape[3])
    f_dim = AUDIOMAE_MEL_BINS // pf
    n = sd["pos_embed"].shape[1] - 1
    if f_dim < 1 or n % f_dim:
        raise BadInput(f"{name}: pos_embed has {n} patch rows, not a multiple of the {f_dim} frequency patches of "
                       f"{AUDIOMAE_MEL_BINS} mel bins")
    try:
        cfg = EncoderConfig(size=size, depth=depth, num_mel_bins=f_dim * pf, target_frames=(n // f_dim) * pt,
                            patch_freq=pf, patch_time=pt, stride_freq=pf, stride_time=pt, cls_tokens=1,
                            pos_embed="sincos", token_order="time")
    except ValueError as e:
        raise BadInput(f"{name}: {e}") from None
    enc = {k: v for k, v in sd.items() if k.startswith(("blocks.", "norm.", "patch_embed.", "pos_embed"))}
    enc["patch_embed.proj.weight"] = w.transpose(2, 3).contiguous()  # (D,1,time,freq) -> ours (D,1,freq,time)
    enc["cls_tokens"] = sd["cls_token"]
    if "norm.weight" not in sd:  # a models_vit fine-tuned file: `norm` was deleted, fc_norm/head exist instead
        enc["norm.weight"], enc["norm.bias"] = torch.ones(w.shape[0]), torch.zeros(w.shape[0])
        notes.append("no final norm in the checkpoint (fine-tuned file): norm set to identity; pool with mean_fc_norm")
    show = {"cls_tokens": "cls_token", "patch_embed.proj.weight": "patch_embed.proj.weight (transposed)"}
    check_encoder_state(name, cfg, enc, show=lambda k: show.get(k, k))
    return (*fit_encoder(name, cfg, enc, overrides, notes), sd)


def load_official_audiomae(src: str | Path | Mapping[str, Any], **overrides: Any) -> tuple[EncoderConfig, dict]:
    """Released Audio-MAE weights (path, ``{'model': sd}``, the full training dict, or sd) -> (EncoderConfig, state
    dict for ``Encoder``): time-major tokens, 1 cls, the checkpoint's own fixed sin-cos table. Fine-tune with
    head.kind=mean_fc_norm to reproduce models_vit (see the module docstring)."""
    name, obj = _source(src)
    cfg, sd, _ = audiomae_to_encoder(name, obj, overrides, [])
    return cfg, sd


def load_official_audiomae_model(src: str | Path | Mapping[str, Any], **overrides: Any) -> tuple[EncoderConfig, dict]:
    """Released Audio-MAE pretraining weights -> (EncoderConfig, state dict for ``pretrain.audiomae.AudioMAE``):
    the decoder keys already have our names (build AudioMAE with the matching decoder settings)."""
    name, obj = _source(src)
    cfg, enc, sd = audiomae_to_encoder(name, obj, overrides, [])
    decoder = {k: v for k, v in sd.items() if k.startswith("decoder_") or k == "mask_token"}
    if "decoder_embed.weight" not in decoder:
        raise _missing(name, ["decoder_embed.weight", "mask_token"])
    if "decoder_pos_embed" in decoder and decoder["decoder_pos_embed"].shape[1] != 1 + cfg.num_patches:
        rows = decoder["decoder_pos_embed"].shape[1]
        raise BadInput(f"{name}: decoder_pos_embed has {rows} rows, the encoder grid {cfg.grid[0]}x{cfg.grid[1]} "
                       f"needs {1 + cfg.num_patches}: a pretraining model keeps its grid")
    return cfg, {**{f"encoder.{k}": v for k, v in enc.items()}, **decoder}


def export_official_audiomae(model: torch.nn.Module) -> dict[str, "OrderedDict[str, Tensor]"]:
    """Our ``Encoder`` (1 cls token) or ``AudioMAE`` model -> ``{'model': state dict}`` in the released key format
    (conv transposed back to (D, 1, time, freq), time-major pos rows; decoder keys as is for an AudioMAE model).
    main_finetune_as.py / models_mae.py load it; exact inverse of :func:`load_official_audiomae`."""
    enc = _encoder_of(model)
    if enc.cfg.cls_tokens != 1:
        raise ValueError(f"export_official_audiomae: Audio-MAE has 1 cls token; this encoder has {enc.cfg.cls_tokens}")
    sd = _own_state(enc, "time")
    out: OrderedDict[str, Tensor] = OrderedDict(cls_token=sd.pop("cls_tokens"))
    sd["patch_embed.proj.weight"] = sd["patch_embed.proj.weight"].transpose(2, 3).contiguous()
    out.update(sd)
    if hasattr(model, "decoder_embed"):
        out.update((k, v.detach().cpu().clone()) for k, v in model.state_dict().items() if not k.startswith("encoder."))
    return {"model": out}


__all__ = ["load_official_ssast", "load_official_ssast_model", "load_official_audiomae", "load_official_audiomae_model",
           "load_official_ssast_classifier", "export_official_ssast", "export_official_audiomae", "fit_encoder",
           "detect_official", "encoder_shapes", "check_encoder_state", "ssast_to_encoder", "audiomae_to_encoder",
           "ssast_classifier_state", "finetuned_shapes", "resolve_finetuned_shape", "is_finetuned_ssast", "size_of",
           "FITTABLE", "SSAST_MEL_BINS"]
