"""The fine-tuned classifier: a pretrained encoder plus a head, and its optimizer groups."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from finetune.heads import HeadConfig, build_head, set_requires_grad
from launch.common.errors import BadInput
from launch.runtime import checkpoints
from launch.runtime.engine import decays
from pretrain.encoder import Encoder, EncoderConfig
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


def load_classifier(path: Path) -> tuple[Classifier, dict[str, Any]]:
    """A ``best.pt`` written by fine-tuning -> the classifier and its payload; one line when it cannot be used."""
    payload = checkpoints.read_classifier(path)
    try:
        encoder = Encoder(EncoderConfig(**payload["encoder"]))
        head = build_head(HeadConfig(**payload["head"]), encoder.embed_dim, encoder.depth, len(payload["classes"]))
        model = Classifier(encoder, head)
        model.load_state_dict(payload["state_dict"])
    except (TypeError, ValueError, RuntimeError) as e:  # configs or weights that do not fit each other
        raise BadInput(f"{path}: not a usable classifier ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    return model, payload
