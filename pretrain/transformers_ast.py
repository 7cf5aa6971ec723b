"""The Hugging Face transformers AST format (``ASTModel`` / ``ASTForAudioClassification`` folders), both directions.

A folder holds ``config.json`` (``model_type: audio-spectrogram-transformer``), the weights (``model.safetensors``,
or ``pytorch_model.bin``, or shards with an ``.index.json``) and, for a classifier, ``preprocessor_config.json``
(``ASTFeatureExtractor``). We write the key names every transformers release reads (>= 4.40 stores them; 5.x renames
them on load and back on save, conversion_mapping.py "ViTModel") and read both spellings:

    ours                        transformers on disk (<= 4.x names)           transformers 5 in memory
    cls_tokens [1, 2, D]        embeddings.cls_token, .distillation_token     same
    pos_embed [1, 2+N, D]       embeddings.position_embeddings (freq-major)   same
    patch_embed.proj            embeddings.patch_embeddings.projection        same
    blocks.i.norm1 / norm2      encoder.layer.i.layernorm_before / _after     layers.i.layernorm_before / _after
    blocks.i.attn.qkv (fused)   encoder.layer.i.attention.attention.query /   layers.i.attention.q_proj / k_proj /
                                .key / .value (rows 0:D, D:2D, 2D:3D)          v_proj
    blocks.i.attn.proj          encoder.layer.i.attention.output.dense        layers.i.attention.o_proj
    blocks.i.mlp.fc1 / fc2      encoder.layer.i.intermediate.dense / .output.dense   layers.i.mlp.fc1 / fc2
    norm                        layernorm
    head.norm, head Linear      classifier.layernorm, classifier.dense        same
    (classifier keys sit under ``audio_spectrogram_transformer.``; an ``ASTModel`` folder has no prefix)

What AST is (modeling_audio_spectrogram_transformer.py): input ``[B, time, freq]``, transposed to ``[B, 1, F, T]``
for ``Conv2d(1, D, (patch_size, patch_size), stride=(frequency_stride, time_stride))``, tokens flattened
frequency-major, always a cls and a distillation token before them, one learned position table of ``2 + N`` rows,
pre-norm blocks (exact-erf GELU, ``hidden_act="gelu"``), a final ``layernorm``, and ``ASTMLPHead`` = LayerNorm +
Linear on ``(h[:, 0] + h[:, 1]) / 2``. So it holds our SSAST-family encoders with square patches and 2 cls tokens (in
either token order: the pos rows are permuted to frequency-major) and the ``cls`` head without hidden layers; frame
tokens (128x2 patches), one cls token (Audio-MAE), mean pooling and the layer-wise heads it cannot hold.

One LayerNorm eps for everything. Ours are 1e-6 in the encoder (timm) and 1e-5 in the head (SSAST's ``mlp_head``);
AST has one ``layer_norm_eps`` for both. A classifier is written with ``layer_norm_eps`` = the head's eps and the
residual stream scaled by ``c = sqrt(head_eps / 1e-6)`` (patch conv, cls tokens, pos table, every ``attn.proj`` and
``mlp.fc2``): LayerNorm is scale-free but for eps, ``LN_eps(c x) = LN_{eps/c^2}(x)``, so every encoder norm computes
ours exactly, the final norm undoes the scale (``last_hidden_state`` and logits are ours), and only the per-layer
``hidden_states`` are ``c`` times ours. ``config.json`` records ``tessera_residual_scale``; importing divides it out.
An encoder (``ASTModel``) needs no scale: ``layer_norm_eps=1e-6``. Other folders (MIT's use 1e-12) are read with our
1e-6, which moves an output by about ``eps / var(x)`` of the residual stream (noted in ``info["notes"]``).

transformers is only needed to write and check a folder (``pip install 'tessera-audio[hf]'``); reading needs
``safetensors`` for ``.safetensors`` files and nothing else.
"""
from __future__ import annotations

import importlib
import json
import math
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from launch.common.errors import BadInput
from launch.runtime.checkpoints import read_torch
from pretrain.encoder import LN_EPS, MLP_RATIO, MODEL_SIZES, EncoderConfig, reorder_pos_embed
from pretrain.official import check_encoder_state, fit_encoder, size_of

HF_EXTRA = "pip install 'tessera-audio[hf]'"
MODEL_TYPE = "audio-spectrogram-transformer"
PREFIX = "audio_spectrogram_transformer."
"""Where ``ASTForAudioClassification`` keeps its ``ASTModel``."""
SCALE_KEY = "tessera_residual_scale"
"""config.json key: the factor our export multiplied the residual stream by (see the module docstring)."""
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# ASTConfig's defaults (configuration_audio_spectrogram_transformer.py), for config.json files that leave one out.
AST_DEFAULTS: dict[str, Any] = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                                "intermediate_size": 3072, "hidden_act": "gelu", "layer_norm_eps": 1e-12,
                                "patch_size": 16, "qkv_bias": True, "frequency_stride": 10, "time_stride": 10,
                                "max_length": 1024, "num_mel_bins": 128}
# Our block tensors -> (transformers <= 4.x / on-disk name, transformers 5 in-memory name), under the layer prefix.
BLOCK_NAMES = {"norm1": ("layernorm_before", "layernorm_before"),
               "attn.proj": ("attention.output.dense", "attention.o_proj"),
               "norm2": ("layernorm_after", "layernorm_after"),
               "mlp.fc1": ("intermediate.dense", "mlp.fc1"),
               "mlp.fc2": ("output.dense", "mlp.fc2")}
QKV_NAMES = (("attention.attention.query", "attention.attention.key", "attention.attention.value"),
             ("attention.q_proj", "attention.k_proj", "attention.v_proj"))
LAYER_PREFIXES = ("encoder.layer.{i}.", "layers.{i}.")
EMBED_NAMES = {"pos_embed": "embeddings.position_embeddings",
               "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
               "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
               "norm.weight": "layernorm.weight", "norm.bias": "layernorm.bias"}
RESIDUAL_WRITERS = re.compile(r"^(patch_embed\.proj\.|pos_embed$|cls_tokens$|blocks\.\d+\.(attn\.proj|mlp\.fc2)\.)")
"""Our tensors that add into the residual stream (scaling them all scales the stream)."""


def transformers_module(name: str = "transformers") -> Any:
    """``import name``, or one line saying how to install the extra."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise BadInput(f"the transformers AST format needs {name.split('.')[0]}: {HF_EXTRA}") from None


# ------------------------------------------------------------------------------------------ what AST can hold
def refusal(cfg: EncoderConfig, head: Mapping[str, Any] | None = None) -> str | None:
    """Why an encoder (and a head config, ``None`` for ``ASTModel``) cannot be written as AST, or None if it can."""
    if cfg.patch_freq != cfg.patch_time:
        kind = "frame tokens" if cfg.patch_freq == cfg.num_mel_bins else "a non-square patch"
        return (f"AST patches are square (one patch_size); this encoder has {kind} "
                f"({cfg.patch_freq} mel x {cfg.patch_time} frames)")
    if cfg.cls_tokens != 2:
        return (f"AST always has a cls and a distillation token; this encoder has {cfg.cls_tokens} cls token "
                "(Audio-MAE): export it with format=audiomae")
    if head is None:
        return None
    kind, hidden = head.get("kind"), list(head.get("hidden") or [])
    why = {"mean": "AST's head pools the cls and distillation tokens, not the mean of the patch tokens",
           "mean_fc_norm": "AST's head pools the cls tokens after the final norm, not the patch tokens before it"}
    if kind != "cls":
        return why.get(kind, f"AST's head reads the final layer only; head.kind={kind} weighs every block's output")
    if hidden:
        return f"AST's head is one LayerNorm + Linear; this head has hidden layers {hidden}"
    return None


def residual_scale(head_eps: float | None) -> float:
    """``c`` with ``LN_{head_eps}(c x) = LN_{1e-6}(x)``: 1 for an encoder, sqrt(10) for SSAST's 1e-5 head norm."""
    return 1.0 if head_eps is None else math.sqrt(head_eps / LN_EPS)


def scale_residual(sd: Mapping[str, Tensor], scale: float) -> dict[str, Tensor]:
    """Our encoder state with every residual-stream writer times ``scale`` (computed in float64)."""
    if scale == 1.0:
        return dict(sd)
    return {k: (v.double() * scale).to(v.dtype) if RESIDUAL_WRITERS.match(k) else v for k, v in sd.items()}


def ast_config_fields(cfg: EncoderConfig, layer_norm_eps: float = LN_EPS) -> dict[str, Any]:
    """The ``ASTConfig`` fields of an encoder (no labels): patch, strides, frames, mel bins, widths, eps."""
    return {"hidden_size": cfg.embed_dim, "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
            "intermediate_size": cfg.embed_dim * MLP_RATIO, "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0, "layer_norm_eps": layer_norm_eps, "qkv_bias": True,
            "patch_size": cfg.patch_freq, "frequency_stride": cfg.stride_freq, "time_stride": cfg.stride_time,
            "max_length": cfg.target_frames, "num_mel_bins": cfg.num_mel_bins}


# ------------------------------------------------------------------------------------------ state dicts, pure
def encoder_to_ast(sd: Mapping[str, Tensor], cfg: EncoderConfig, prefix: str = "") -> dict[str, Tensor]:
    """Our encoder state (2 cls tokens) -> AST keys (on-disk names), pos rows frequency-major; contiguous copies."""
    d, c = cfg.embed_dim, cfg.cls_tokens
    out = {f"{prefix}{theirs}": sd[ours] for ours, theirs in EMBED_NAMES.items()}
    out[f"{prefix}embeddings.position_embeddings"] = reorder_pos_embed(sd["pos_embed"], cfg.grid, c,
                                                                        cfg.token_order, "freq")
    out[f"{prefix}embeddings.cls_token"], out[f"{prefix}embeddings.distillation_token"] = sd["cls_tokens"].split(1, 1)
    for i in range(cfg.num_layers):
        layer = prefix + LAYER_PREFIXES[0].format(i=i)
        for ours, (theirs, _) in BLOCK_NAMES.items():
            for p in ("weight", "bias"):
                out[f"{layer}{theirs}.{p}"] = sd[f"blocks.{i}.{ours}.{p}"]
        for p in ("weight", "bias"):
            for name, part in zip(QKV_NAMES[0], sd[f"blocks.{i}.attn.qkv.{p}"].split(d, 0)):  # timm: q, k, v rows
                out[f"{layer}{name}.{p}"] = part
    return {k: v.detach().cpu().contiguous().clone() for k, v in out.items()}


def head_to_ast(norm: nn.LayerNorm, linear: nn.Linear) -> dict[str, Tensor]:
    """Our cls head (LayerNorm, Linear) -> ``classifier.layernorm`` / ``classifier.dense``."""
    return {f"classifier.{name}.{p}": getattr(m, p).detach().cpu().contiguous().clone()
            for name, m in (("layernorm", norm), ("dense", linear)) for p in ("weight", "bias")}


def ast_to_encoder(name: str, sd: Mapping[str, Tensor], depth: int, qkv_bias: bool = True) -> dict[str, Tensor]:
    """AST keys (either spelling, with or without the classifier prefix) -> our encoder state (freq-major pos).

    ``qkv_bias=False`` folders get zero q/k/v biases (the same function). Missing keys: one line naming them."""
    sd = {k[len(PREFIX):] if k.startswith(PREFIX) else k: v for k, v in sd.items()}
    missing: list[str] = []

    def get(*names: str) -> Tensor | None:
        found = next((sd[n] for n in names if n in sd), None)
        if found is None:
            missing.append(names[0])
        return found

    out = {ours: get(theirs) for ours, theirs in EMBED_NAMES.items()}
    cls, dist = get("embeddings.cls_token"), get("embeddings.distillation_token")
    for i in range(depth):
        old, new = (p.format(i=i) for p in LAYER_PREFIXES)
        for ours, (theirs_old, theirs_new) in BLOCK_NAMES.items():
            for p in ("weight", "bias"):
                out[f"blocks.{i}.{ours}.{p}"] = get(f"{old}{theirs_old}.{p}", f"{new}{theirs_new}.{p}")
        w = [get(f"{old}{a}.weight", f"{new}{b}.weight") for a, b in zip(*QKV_NAMES)]
        if qkv_bias:
            b = [get(f"{old}{a}.bias", f"{new}{b}.bias") for a, b in zip(*QKV_NAMES)]
        else:
            b = [torch.zeros(x.shape[0], dtype=x.dtype) if x is not None else None for x in w]
        if not missing:
            out[f"blocks.{i}.attn.qkv.weight"], out[f"blocks.{i}.attn.qkv.bias"] = torch.cat(w), torch.cat(b)
    if missing:
        more = f" (+{len(missing) - 2} more)" if len(missing) > 2 else ""
        raise BadInput(f"{name}: not a transformers AST checkpoint: missing {', '.join(missing[:2])}{more}")
    out["cls_tokens"] = torch.cat([cls, dist], dim=1)  # [1, 2, D]: cls, then distillation
    return out


def encoder_config_of(name: str, conf: Mapping[str, Any]) -> EncoderConfig:
    """An AST ``config.json`` -> our EncoderConfig (2 cls tokens, learned pos, frequency-major), or one line why not."""
    c = {**AST_DEFAULTS, **conf}
    if conf.get("model_type") != MODEL_TYPE:
        raise BadInput(f"{name}: model_type={conf.get('model_type')!r}, expected {MODEL_TYPE!r}")
    d, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
    size, depth = size_of(name, d, int(c["num_hidden_layers"]))
    patch = c["patch_size"]
    patch = patch if isinstance(patch, int) else patch[0] if len(set(patch)) == 1 else None
    problems = [(heads != MODEL_SIZES[size][2], f"num_attention_heads={heads}, our width {d} has "
                                                 f"{MODEL_SIZES[size][2]}"),
                (int(c["intermediate_size"]) != d * MLP_RATIO, f"intermediate_size={c['intermediate_size']}, "
                                                                f"ours is {MLP_RATIO} x {d}"),
                (c["hidden_act"] != "gelu", f"hidden_act={c['hidden_act']!r}, ours is the exact-erf 'gelu'"),
                (patch is None, f"patch_size={c['patch_size']}: AST patches are square")]
    for bad, why in problems:
        if bad:
            raise BadInput(f"{name}: config.json: {why}")
    try:
        return EncoderConfig(size=size, depth=depth, num_mel_bins=int(c["num_mel_bins"]),
                             target_frames=int(c["max_length"]), patch_freq=patch, patch_time=patch,
                             stride_freq=int(c["frequency_stride"]), stride_time=int(c["time_stride"]), cls_tokens=2,
                             pos_embed="learned", token_order="freq")
    except ValueError as e:
        raise BadInput(f"{name}: config.json: {e}") from None


# ------------------------------------------------------------------------------------------------------ reading
def ast_folder_of(path: str | Path) -> Path | None:
    """The AST folder ``path`` is (or whose config.json / weights file it is), else None. Cheap: reads one JSON."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent if p.name in ("config.json",) + WEIGHT_FILES else None
    if folder is None or not (folder / "config.json").is_file():
        return None
    try:
        conf = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return folder if isinstance(conf, dict) and conf.get("model_type") == MODEL_TYPE else None


def _read_weights(folder: Path) -> tuple[dict[str, Tensor], str]:
    """(state dict, file name) from model.safetensors / pytorch_model.bin, single or sharded (.index.json)."""
    for file in WEIGHT_FILES:
        index = folder / f"{file}.index.json"
        files = [folder / file] if (folder / file).is_file() else []
        if not files and index.is_file():
            try:
                files = sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()})
            except (OSError, ValueError, KeyError, TypeError):
                raise BadInput(f"{index}: not a weight index (weight_map)") from None
        if not files:
            continue
        sd: dict[str, Tensor] = {}
        for f in files:
            if f.suffix == ".safetensors":
                safetensors_torch = transformers_module("safetensors.torch")
                try:
                    sd.update(safetensors_torch.load_file(str(f), device="cpu"))
                except Exception as e:  # noqa: BLE001 - SafetensorError, OSError: a truncated or foreign file
                    raise BadInput(f"{f}: cannot be read as safetensors ({str(e).splitlines()[0][:80]})") from None
            else:
                sd.update(read_torch(f))
        return sd, files[0].name
    raise BadInput(f"{folder}: an AST config.json without weights ({' or '.join(WEIGHT_FILES)})")


def read_ast_encoder(path: str | Path, overrides: Mapping[str, Any]):
    """An AST folder -> (EncoderConfig, encoder state dict fitted to ``overrides``, notes, info extras).

    Behind :func:`pretrain.pretrained.load_encoder`; the head of a classifier folder is left out (its labels are in
    ``info["labels"]``), and our own export's residual scale is divided out."""
    folder = ast_folder_of(path)
    name = str(path)
    if folder is None:
        raise BadInput(f"{name}: not a transformers AST folder (config.json with model_type {MODEL_TYPE!r})")
    conf = json.loads((folder / "config.json").read_text())
    cfg = encoder_config_of(str(folder / "config.json"), conf)
    raw, file = _read_weights(folder)
    sd = ast_to_encoder(str(folder / file), raw, cfg.num_layers, bool(conf.get("qkv_bias", True)))
    check_encoder_state(str(folder / file), cfg, sd)
    notes: list[str] = []
    eps, scale = float(conf.get("layer_norm_eps", AST_DEFAULTS["layer_norm_eps"])), float(conf.get(SCALE_KEY, 1.0))
    if scale != 1.0:
        sd = scale_residual(sd, 1.0 / scale)
        notes.append(f"residual stream divided by {SCALE_KEY}={scale:.6g} (written by tessera's export)")
    if not math.isclose(eps / scale**2, LN_EPS, rel_tol=1e-6):
        notes.append(f"layer_norm_eps={eps:g} read with our {LN_EPS:g}: outputs move by about eps/var(x)")
    if not conf.get("qkv_bias", True):
        notes.append("qkv_bias=false: q/k/v biases set to zero")
    id2label = conf.get("id2label") or {}
    labels = [id2label[k] for k in sorted(id2label, key=int)] if "classifier.dense.weight" in raw else []
    if labels:
        notes.append(f"the {len(labels)}-class AST head is not loaded (a new head is trained)")
    extra = {"head": "cls", "labels": labels}  # AST's own pooling is head.kind=cls
    cfg, sd = fit_encoder(name, cfg, sd, overrides, notes)
    return cfg, sd, notes, extra


# ------------------------------------------------------------------------------------------------------ writing
def _cls_head(head: nn.Module) -> tuple[nn.LayerNorm, nn.Linear]:
    """(norm, Linear) of a ``cls`` head with no hidden layer (MLPHead = [Dropout, Linear])."""
    linears = [m for m in head.mlp.modules() if isinstance(m, nn.Linear)]
    if not isinstance(getattr(head, "norm", None), nn.LayerNorm) or len(linears) != 1:
        raise ValueError("export: a cls head is one LayerNorm (head.norm) + one Linear (head.mlp)")
    return head.norm, linears[0]


def write_ast(folder: Path, encoder: nn.Module, head: nn.Module | None = None,
              head_config: Mapping[str, Any] | None = None, classes: list[str] | None = None,
              features: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write ``encoder`` (+ ``head`` of ``head_config`` {kind, hidden}: ``ASTForAudioClassification``; without:
    ``ASTModel``) into the existing empty ``folder``: config.json, model.safetensors and, with ``features``
    (sample_rate, norm_mean, norm_std), preprocessor_config.json. What AST cannot hold is one line (:func:`refusal`).
    Returns what was written (architecture, eps, scale, files)."""
    cfg = encoder.cfg
    if head is not None and head_config is None:
        raise ValueError("write_ast: pass the head's config (kind, hidden) with the head")
    why = refusal(cfg, head_config if head is not None else None)
    if why:
        raise BadInput(f"format=hf: {why}")
    transformers = transformers_module()
    safetensors_torch = transformers_module("safetensors.torch")
    norm, linear = _cls_head(head) if head is not None else (None, None)
    eps = norm.eps if norm is not None else LN_EPS
    scale = residual_scale(eps if norm is not None else None)
    sd = scale_residual({k: v.detach().float() for k, v in encoder.state_dict().items()}, scale)
    fields = ast_config_fields(cfg, eps)
    if head is None:
        arch, weights = "ASTModel", encoder_to_ast(sd, cfg)
    else:
        arch, weights = "ASTForAudioClassification", {**encoder_to_ast(sd, cfg, PREFIX), **head_to_ast(norm, linear)}
        names = list(classes or [f"LABEL_{i}" for i in range(linear.out_features)])
        if len(names) != linear.out_features:
            raise BadInput(f"format=hf: {len(names)} class names for a {linear.out_features}-way head")
        fields.update(id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    if scale != 1.0:
        fields[SCALE_KEY] = scale
    conf = transformers.ASTConfig(architectures=[arch], **fields)
    conf.save_pretrained(str(folder))
    safetensors_torch.save_file(weights, str(folder / WEIGHT_FILES[0]), metadata={"format": "pt"})
    written = ["config.json", WEIGHT_FILES[0]]
    if features is not None:
        extractor = transformers.ASTFeatureExtractor(
            feature_size=1, sampling_rate=int(features["sample_rate"]), num_mel_bins=cfg.num_mel_bins,
            max_length=cfg.target_frames, padding_value=0.0, do_normalize=True, mean=float(features["norm_mean"]),
            std=float(features["norm_std"]), return_attention_mask=False)
        extractor.save_pretrained(str(folder))
        written.append("preprocessor_config.json")
    return {"architecture": arch, "layer_norm_eps": eps, "residual_scale": scale, "files": written,
            "tensors": len(weights)}


def compare_with_transformers(folder: Path, encoder: nn.Module, head: nn.Module | None = None,
                              batch: int = 2, seed: int = 0) -> float:
    """Load ``folder`` with transformers' ``from_pretrained`` and return max |ours - theirs| on a seeded random fbank:
    the logits of ``ASTForAudioClassification`` vs ``head(encoder(x))``, or ``last_hidden_state`` vs the encoder's
    normed output (patch rows frequency-major). Keys that do not load are one line."""
    transformers = transformers_module()
    log, bars = transformers.logging.get_verbosity(), transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        cls = transformers.ASTModel if head is None else transformers.ASTForAudioClassification
        theirs, info = cls.from_pretrained(str(folder), output_loading_info=True)
    finally:
        transformers.logging.set_verbosity(log)
        if bars:
            transformers.utils.logging.enable_progress_bar()
    bad = [k for key in ("missing_keys", "unexpected_keys", "mismatched_keys") for k in info.get(key) or []]
    if bad:
        raise BadInput(f"{folder}: transformers {transformers.__version__} does not load {len(bad)} tensors, e.g. "
                       f"{bad[0]}")
    cfg = encoder.cfg
    x = torch.randn(batch, cfg.target_frames, cfg.num_mel_bins, generator=torch.Generator().manual_seed(seed))
    ours_modules = [m for m in (encoder, head) if m is not None]
    modes = [m.training for m in ours_modules]
    for m in ours_modules + [theirs]:
        m.eval()
    try:
        with torch.no_grad():
            out = encoder(x.to(next(encoder.parameters()).device), return_layers=head is not None)
            if head is not None:
                ours, got = head(out.last, out.layers, out.num_cls), theirs(input_values=x).logits
            else:  # reorder_pos_embed permutes the patch rows of any [B, C+N, D]
                ours = reorder_pos_embed(out.last, cfg.grid, cfg.cls_tokens, cfg.token_order, "freq")
                got = theirs(input_values=x).last_hidden_state
    finally:
        for m, mode in zip(ours_modules, modes):
            m.train(mode)
    return float((ours.float().cpu() - got.float()).abs().max())


__all__ = ["refusal", "encoder_to_ast", "head_to_ast", "ast_to_encoder", "encoder_config_of", "ast_folder_of",
           "read_ast_encoder", "write_ast", "compare_with_transformers", "scale_residual", "residual_scale",
           "transformers_module", "HF_EXTRA", "SCALE_KEY"]
