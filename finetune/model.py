"""The fine-tuned classifier: a pretrained encoder plus a head, and its optimizer groups."""
from __future__ import annotations

import csv
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from finetune.cnn import ARCH as CNN_ARCH
from finetune.cnn import CNNClassifier, CNNConfig
from finetune.heads import HeadConfig, build_head, set_requires_grad
from launch.common.errors import BadInput, check
from launch.runtime import checkpoints
from launch.runtime.engine import decays
from pretrain.encoder import Encoder, EncoderConfig
from pretrain.official import ssast_classifier_state
from pretrain.pretrained import load_encoder

log = logging.getLogger(__name__)

# Parameters fine-tuning never decays (Audio-MAE's ``no_weight_decay()``: pos_embed, cls tokens; plus our layer logits).
NO_DECAY = ("pos_embed", "cls_tokens", "layer_logits")


class Classifier(nn.Module):
    """``encoder`` -> ``head``: log-mel ``[B, T, F]`` -> logits ``[B, C]``."""

    def __init__(self, encoder: Encoder, head: nn.Module, frozen_backbone: bool = False):
        super().__init__()
        self.encoder, self.head, self.frozen_backbone = encoder, head, frozen_backbone
        if frozen_backbone:
            set_requires_grad(encoder, False)

    def train(self, mode: bool = True) -> "Classifier":
        super().train(mode)
        if self.frozen_backbone:
            self.encoder.eval()  # a frozen backbone is a fixed feature extractor: no drop-path
        return self

    def forward(self, fbank: Tensor, ids_keep: Tensor | None = None) -> Tensor:
        """``ids_keep`` [B, K]: the tokens kept by fine-tune-time masking (drawn by the loop, never in here)."""
        needs_layers = getattr(self.head, "needs_layers", True)
        if self.frozen_backbone:
            with torch.no_grad():
                out = self.encoder(fbank, return_layers=needs_layers, ids_keep=ids_keep)
        else:
            out = self.encoder(fbank, return_layers=needs_layers, ids_keep=ids_keep)
        return self.head(out.last, out.layers, out.num_cls)


def latest_pretrain_run(root: Path = Path("runs/pretrain")) -> Path:
    """The newest ``encoder.pt`` under ``root`` (what ``ckpt=latest`` means)."""
    candidates = sorted(root.resolve().glob("*/encoder.pt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise BadInput(f"ckpt=latest: no pretraining run under {root.resolve()} (run `python launch/pretrain.py` "
                       "first, pass ckpt=PATH, or ckpt=none to train from scratch)")
    return candidates[-1]


def build_classifier(ckpt: str, overrides: dict[str, Any], scratch: EncoderConfig, head_cfg: HeadConfig,
                     num_classes: int, frozen: bool) -> tuple[Classifier, dict[str, Any]]:
    """The encoder from ``ckpt`` (adapted to the fine-tune input) plus a fresh head; returns it and load info."""
    if ckpt == "none":
        enc_cfg = EncoderConfig(**{**scratch.__dict__, **{k: v for k, v in overrides.items() if v is not None}})
        encoder, info = Encoder(enc_cfg), {"source": "scratch", "format": "none"}
    else:
        path = latest_pretrain_run() if ckpt == "latest" else Path(ckpt)
        enc_cfg, state, info = load_encoder(path, **{k: v for k, v in overrides.items() if v is not None})
        encoder = Encoder(enc_cfg)
        missing, unexpected = encoder.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise BadInput(f"{path}: encoder weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
        info = {**info, "path": str(path)}
    head = build_head(head_cfg, encoder.embed_dim, encoder.depth, num_classes)
    return Classifier(encoder, head, frozen), info


def finetune_groups(model: Classifier, lr_scale_head: float, layer_decay: float, weight_decay: float) -> list[dict]:
    """Optimizer groups: per-layer rate ``decay^(L+1-id)`` (Audio-MAE ``util/lr_decay.py``; id 0 = patch embedding,
    tokens and positions, id i = block i, L+1 = the head at ``lr_scale_head``), no decay on 1-D / bias / NO_DECAY."""
    depth = model.encoder.depth
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("head."):
            scale = lr_scale_head
        elif name.startswith("encoder.blocks."):
            layer = int(name.split(".")[2]) + 1
            scale = layer_decay ** (depth + 1 - layer)
        elif name.startswith("encoder.norm."):
            scale = 1.0  # the final norm sits with the top layer (layer id L+1, as fc_norm in Audio-MAE)
        else:
            scale = layer_decay ** (depth + 1)
        decay = weight_decay if decays(name, p, NO_DECAY) else 0.0
        groups.setdefault((scale, decay), []).append(p)
    return [{"params": ps, "lr_scale": s, "weight_decay": d} for (s, d), ps in sorted(groups.items())]


def load_classifier(path: Path, classes: Sequence[str] | str | None = None, head: str | None = None,
                    encoder: Mapping[str, Any] | None = None) -> tuple[Classifier, dict[str, Any]]:
    """A classifier checkpoint -> the classifier and its payload; one line when it cannot be used.

    ``path``: a ``best.pt`` written by fine-tuning (the other arguments are then unused), or an official fine-tuned
    SSAST file (``torch.save`` of the DataParallel ``ASTModel`` by traintest.py). Such a file stores neither the
    pooling, nor class names, nor its input shape: ``head`` is "mean" (``ft_avgtok``, every recipe's; the default) or
    "cls" (``ft_cls``); ``classes`` see :func:`class_names`; ``encoder``: what is known of the shape
    (``stride_freq``, ``stride_time``, ``target_frames``, ``num_mel_bins``; None = unknown, inferred from the
    weights' shapes where only one shape fits). Its payload has our fields, with ``format`` "ssast-official".
    """
    path = Path(path)
    try:
        obj = checkpoints.read_torch(path)  # weights only: a downloaded file never runs pickled code
    except BadInput as e:
        if "pickled objects" not in str(e):
            raise
        obj = None
    if obj is not None and checkpoints.format_of(obj) is None:
        return _official_classifier(path, obj, classes, head or "mean", dict(encoder or {}))
    payload = checkpoints.read_classifier(path)
    if payload["encoder"].get("arch") == CNN_ARCH:  # the DCASE-size student (finetune/cnn.py)
        return load_cnn_classifier(path, payload), payload
    try:
        enc = Encoder(EncoderConfig(**payload["encoder"]))
        model = Classifier(enc, build_head(HeadConfig(**payload["head"]), enc.embed_dim, enc.depth,
                                           len(payload["classes"])))
        model.load_state_dict(payload["state_dict"])
    except (TypeError, ValueError, RuntimeError) as e:  # configs or weights that do not fit each other
        raise BadInput(f"{path}: not a usable classifier ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    return model, payload


OFFICIAL_POOLING = {"mean": "ft_avgtok", "cls": "ft_cls"}


def _official_classifier(path: Path, obj: Any, classes, kind: str, given: dict[str, Any]):
    """Official fine-tuned SSAST file -> Classifier whose logits are ASTModel's ``forward(x, task)``."""
    if kind not in OFFICIAL_POOLING:
        raise BadInput(f"{path}: head.kind={kind!r}: an official SSAST mlp_head pools with 'mean' (ft_avgtok) or "
                       "'cls' (ft_cls)")
    notes: list[str] = []
    enc_cfg, enc_state, mlp_head = ssast_classifier_state(str(path), obj, given, notes)
    names = class_names(classes, mlp_head["1.weight"].shape[0], str(path), notes)
    encoder = Encoder(enc_cfg)
    encoder.load_state_dict(enc_state)
    head_cfg = HeadConfig(kind=kind)
    head = build_head(head_cfg, encoder.embed_dim, encoder.depth, len(names))
    # SSAST's mlp_head = Sequential(LayerNorm(D), Linear(D, n)): our head's norm and its (only) Linear
    head.norm.load_state_dict({"weight": mlp_head["0.weight"], "bias": mlp_head["0.bias"]})
    head.mlp[-1].load_state_dict({"weight": mlp_head["1.weight"], "bias": mlp_head["1.bias"]})
    model = Classifier(encoder, head)
    pretrained = {"format": "ssast-official-finetuned", "method": "ssast", "source": str(path),
                  "pooling": OFFICIAL_POOLING[kind], "notes": notes}
    payload = {"format": "ssast-official", "encoder": asdict(enc_cfg), "head": asdict(head_cfg), "classes": names,
               "step": None, "val": {}, "pretrained": pretrained, "state_dict": model.state_dict()}
    return model, payload


def class_names(source: Sequence[str] | str | None, n: int, name: str, notes: list[str]) -> list[str]:
    """Class names for a head of ``n`` outputs: a list; a comma-separated string; a file: SSAST's
    ``class_labels_indices.csv`` (columns index, mid, display_name: names in index order) or one name a line; or
    None: numbered "0".."n-1" (the index column of SSAST's label files), since official files carry no names."""
    if source is None:
        notes.append(f"class names: numbered 0..{n - 1} (the file has none; give classes=)")
        return [str(i) for i in range(n)]
    if isinstance(source, str):
        p = Path(source)
        if p.is_file():
            names = _names_from_file(p)
        elif "," in source:
            names = [c.strip() for c in source.split(",")]
        else:
            raise BadInput(f"classes={source!r}: neither a file nor a comma-separated list of names")
    else:
        names = [str(c) for c in source]
    if len(names) != n or not all(names):
        raise BadInput(f"{name}: classes= gives {len(names)} names{' (one is empty)' if not all(names) else ''}, the "
                       f"checkpoint's head has {n} outputs")
    return names


def _names_from_file(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    header = next(csv.reader(lines[:1]), [])
    if "display_name" not in header:  # a plain list, one name a line
        return [line.strip() for line in lines if line.strip()]
    rows = list(csv.DictReader(lines))
    if "index" in header:
        try:
            rows.sort(key=lambda r: int(r["index"]))
        except ValueError:
            raise BadInput(f"{path}: the index column holds a non-integer") from None
    return [r["display_name"] for r in rows]


# ---------------------------------------------------------------------------------------- the DCASE-size CNN student


def cnn_payload(model: CNNClassifier) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``encoder`` and ``head`` entries of a CNN student's best.pt: its config, marked ``arch: cnn``."""
    return {"arch": CNN_ARCH, **asdict(model.cfg)}, {"kind": CNN_ARCH}


def load_cnn_classifier(path: Path, payload: Mapping[str, Any]) -> CNNClassifier:
    """A CNN student's best.pt payload -> the model with its weights; one line when they do not fit."""
    try:
        cfg = CNNConfig(**{k: v for k, v in payload["encoder"].items() if k != "arch"})
        model = CNNClassifier(cfg, len(payload["classes"]))
        model.load_state_dict(payload["state_dict"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise BadInput(f"{path}: not a usable CNN classifier ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    return model


@dataclass
class OfficialFileConfig:
    """What an official fine-tuned SSAST file does not store (the ``head`` and ``encoder`` hints of
    :func:`load_classifier`), as the ``official.*`` keys of prediction and export; unused for our own checkpoints."""

    head: str = "mean"
    """The pooling it was fine-tuned with: "mean" (``ft_avgtok``, every official recipe's) or "cls" (``ft_cls``)."""
    stride_freq: Optional[int] = None
    """Patch strides and frame count of its fine-tuning grid; None: inferred from the weights where one shape fits."""
    stride_time: Optional[int] = None
    target_frames: Optional[int] = None
    num_mel_bins: Optional[int] = None

    def __post_init__(self) -> None:
        check("official.head", repr(self.head), self.head in ("mean", "cls"), "mean (ft_avgtok) or cls (ft_cls)")
        for name in ("stride_freq", "stride_time", "target_frames", "num_mel_bins"):
            value = getattr(self, name)
            check(f"official.{name}", value, value is None or value >= 1, ">= 1, or null (inferred)")

    def shape(self) -> dict[str, int]:
        """The ``encoder`` hints of :func:`load_classifier`: the fields that are known."""
        known = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "head"}
        return {k: v for k, v in known.items() if v is not None}
