"""Classification heads on top of the encoder: the mean-pooling baselines and the layer-wise weighted-sum heads.

Notation of the layer-wise fine-tuning paper: ``O_i`` is the output of transformer block ``i`` (``i = 1..L``, before
the encoder's final norm), ``W = softmax(w)`` with ``w`` the ``L`` learned layer logits, ``Mean`` averages the
patch tokens (the ``C`` cls tokens are always excluded) and ``MLPHead`` is one configurable MLP shared by the three
layer-wise variants:

    kind           pooled vector                         logits
    mean           Mean(FinalNorm(O_L))                  MLPHead(LN(.))      SSAST ft_avgtok (baseline)
    cls            Cls(FinalNorm(O_L))                   MLPHead(LN(.))      SSAST ft_cls
    mean_fc_norm   Mean(O_L), final norm dropped         MLPHead(fc_norm(.)) Audio-MAE models_vit global_pool
    pre_norm       S = sum_i W_i Mean(Norm_i(O_i))       MLPHead(S)
    post_norm      S = sum_i W_i Mean(O_i)               MLPHead(Norm(S))
    double_norm    S = sum_i W_i Mean(Norm_i(O_i))       MLPHead(Norm(S))

Every head has the same call, ``head(last, layers, num_cls) -> logits [B, num_classes]``: ``last`` is the encoder's
final normed output ``[B, C+N, D]`` and ``layers`` the ``L`` raw block outputs, each ``[B, C+N, D]`` (so
``head(*encoder(fbank))`` works with ``pretrain.encoder.EncoderOutput``). ``Cls`` is the mean of the cls and
distillation tokens for SSAST's two-token models, the cls token for one-token models. ``head.needs_layers`` is False
only for ``mean`` and ``cls``, which can run with ``return_layers=False``; the two have the same modules (``norm``,
``mlp``), so a released ``mlp_head`` loads into either. The baselines
use ``MLPHead`` too, so ``hidden=[]`` (the default) gives exactly the published ``LayerNorm + Linear`` heads and a
non-empty ``hidden`` keeps baseline and layer-wise heads comparable.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor, nn

HEAD_KINDS = ("mean", "cls", "mean_fc_norm", "pre_norm", "post_norm", "double_norm")
LAYERWISE_KINDS = ("pre_norm", "post_norm", "double_norm")
ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}
# The paper's Norm / Norm_i, and Audio-MAE's fc_norm (timm ViT: partial(nn.LayerNorm, eps=1e-6)).
NORM_EPS = 1e-6
# SSAST's mlp_head is nn.Sequential(nn.LayerNorm(D), nn.Linear(D, n)): PyTorch's default eps.
SSAST_HEAD_EPS = 1e-5


@dataclass
class HeadConfig:
    """Which head sits on the encoder and the shape of its MLP."""

    kind: str = "mean"
    """One of ``mean`` (SSAST baseline, ``ft_avgtok``), ``cls`` (SSAST ``ft_cls``: the cls tokens), ``mean_fc_norm``
    (Audio-MAE baseline), ``pre_norm``, ``post_norm``, ``double_norm`` (layer-wise weighted sums over all blocks)."""
    hidden: list[int] = field(default_factory=list)
    """Hidden widths of the MLP head; empty: a single Linear (the published heads)."""
    dropout: float = 0.0
    """Dropout probability on the input of every Linear of the MLP head (timm's ``head_drop`` when ``hidden=[]``)."""
    activation: str = "gelu"
    """Activation between hidden layers: gelu, relu or silu."""

    def __post_init__(self) -> None:
        if self.kind not in HEAD_KINDS:
            raise ValueError(f"head.kind={self.kind!r}: expected one of {', '.join(HEAD_KINDS)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"head.activation={self.activation!r}: expected one of {', '.join(ACTIVATIONS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"head.dropout={self.dropout}: expected 0 <= dropout < 1")
        if any(int(h) <= 0 for h in self.hidden):
            raise ValueError(f"head.hidden={list(self.hidden)}: widths must be positive")


# ----------------------------------------------------------------------------------------------------------------------
# Pure pooling maths


def mean_patch_tokens(x: Tensor, num_cls: int) -> Tensor:
    """``Mean`` of the paper: average over the patch tokens only.

    x: [B, C+N, D] with the ``C = num_cls`` cls tokens first (SSAST has 2, Audio-MAE 1) -> [B, D].
    """
    if not 0 <= num_cls < x.shape[1]:
        raise ValueError(f"num_cls={num_cls} leaves no patch tokens in a sequence of {x.shape[1]}")
    return x[:, num_cls:].mean(dim=1)


def cls_token_pool(x: Tensor, num_cls: int) -> Tensor:
    """``Cls``: SSAST ``finetuningcls``, ``(x[:, 0] + x[:, 1]) / 2`` (cls and distillation token) for two cls
    tokens, ``x[:, 0]`` for one (Audio-MAE / timm without global pool). x: [B, C+N, D] -> [B, D]."""
    if num_cls == 1:
        return x[:, 0]
    if num_cls == 2:
        return (x[:, 0] + x[:, 1]) / 2
    raise ValueError(f"the cls head pools 1 or 2 cls tokens, got num_cls={num_cls}")


def weighted_layer_sum(means: Tensor, weights: Tensor) -> Tensor:
    """``S = sum_i W_i M_i``, shared by the pre_norm, post_norm and double_norm formulas.

    means: [L, B, D] per-layer pooled vectors; weights: [L] (sums to 1) -> [B, D].
    """
    if means.shape[0] != weights.shape[0]:
        raise ValueError(f"{means.shape[0]} layer means but {weights.shape[0]} weights")
    return torch.einsum("l,lbd->bd", weights.to(means.dtype), means)


def set_requires_grad(module: nn.Module, flag: bool) -> nn.Module:
    """Freeze (``flag=False``) or unfreeze every parameter of ``module``; returns it for chaining.

    Train/eval mode is left to the caller: a frozen backbone may still want dropout off (``.eval()``) or on.
    """
    for p in module.parameters():
        p.requires_grad_(flag)
    return module


# ----------------------------------------------------------------------------------------------------------------------
# Modules


class MLPHead(nn.Sequential):
    """``[Dropout -> Linear -> act]* -> Dropout -> Linear``: [B, D] -> [B, num_classes].

    With ``hidden=[]`` this is one Linear (plus optional dropout), i.e. the published heads after their norm.
    """

    def __init__(self, dim: int, num_classes: int, hidden: Sequence[int] = (), dropout: float = 0.0,
                 activation: str = "gelu"):
        layers: list[nn.Module] = []
        width = dim
        for h in hidden:
            layers += [nn.Dropout(dropout), nn.Linear(width, int(h)), ACTIVATIONS[activation]()]
            width = int(h)
        layers += [nn.Dropout(dropout), nn.Linear(width, num_classes)]
        super().__init__(*layers)


class MeanHead(nn.Module):
    """Baselines: mean over patch tokens, then ``LayerNorm`` + MLP head.

    ``from_last=True`` (kind ``mean``, SSAST ``ft_avgtok``): pools the final normed output, then SSAST's head LN.
    ``from_last=False`` (kind ``mean_fc_norm``, Audio-MAE ``models_vit`` global pool): pools the last block's output
    *without* the final norm (Audio-MAE deletes it when fine-tuning), then a fresh ``fc_norm``.
    """

    def __init__(self, cfg: HeadConfig, dim: int, num_classes: int, from_last: bool = True):
        super().__init__()
        self.from_last = from_last
        # The trainer can skip keeping every block's output alive (encoder(..., return_layers=False)).
        self.needs_layers = not from_last
        self.norm = nn.LayerNorm(dim, eps=SSAST_HEAD_EPS if from_last else NORM_EPS)
        self.mlp = MLPHead(dim, num_classes, cfg.hidden, cfg.dropout, cfg.activation)

    def forward(self, last: Tensor, layers: Sequence[Tensor], num_cls: int) -> Tensor:
        if not (self.from_last or layers):
            raise ValueError("mean_fc_norm pools the last block's raw output: call the encoder with return_layers=True")
        x = last if self.from_last else layers[-1]  # [B, C+N, D]
        return self.mlp(self.norm(mean_patch_tokens(x, num_cls)))  # [B, num_classes]


class ClsHead(MeanHead):
    """SSAST ``ft_cls``: the cls tokens of the final normed output, then SSAST's head LN + MLP head; the modules and
    parameter names are the ``mean`` head's."""

    def __init__(self, cfg: HeadConfig, dim: int, num_classes: int):
        super().__init__(cfg, dim, num_classes, from_last=True)

    def forward(self, last: Tensor, layers: Sequence[Tensor], num_cls: int) -> Tensor:
        return self.mlp(self.norm(cls_token_pool(last, num_cls)))  # [B, num_classes]


class LayerwiseHead(nn.Module):
    """Softmax-weighted sum over the ``L`` block outputs, then the MLP head.

    ``norm_each`` adds the per-layer ``Norm_i`` before pooling (pre_norm, double_norm); ``norm_sum`` adds ``Norm``
    on the weighted sum (post_norm, double_norm).
    """

    def __init__(self, cfg: HeadConfig, dim: int, num_layers: int, num_classes: int, norm_each: bool,
                 norm_sum: bool):
        super().__init__()
        self.num_layers = num_layers
        self.needs_layers = True
        # Zeros -> W = 1/L: every layer starts equal, so the learned weights show what training preferred.
        self.layer_logits = nn.Parameter(torch.zeros(num_layers))
        self.layer_norms = (nn.ModuleList(nn.LayerNorm(dim, eps=NORM_EPS) for _ in range(num_layers))
                            if norm_each else None)
        self.norm = nn.LayerNorm(dim, eps=NORM_EPS) if norm_sum else nn.Identity()
        self.mlp = MLPHead(dim, num_classes, cfg.hidden, cfg.dropout, cfg.activation)

    def layer_weights(self) -> Tensor:
        """``W = softmax(w)``: [L], differentiable; ``.detach().cpu().tolist()`` to save or show it."""
        return torch.softmax(self.layer_logits, dim=0)

    def pooled(self, layers: Sequence[Tensor], num_cls: int) -> Tensor:
        """``S``: layers = L x [B, C+N, D] -> [B, D] (before ``Norm`` and the MLP)."""
        if len(layers) != self.num_layers:
            raise ValueError(f"head built for {self.num_layers} layers got {len(layers)} layer outputs")
        if self.layer_norms is not None:
            # Norm_i must see every token before pooling: LN does not commute with the mean.
            means = [mean_patch_tokens(norm(o), num_cls) for norm, o in zip(self.layer_norms, layers)]
        else:
            means = [mean_patch_tokens(o, num_cls) for o in layers]
        return weighted_layer_sum(torch.stack(means), self.layer_weights())  # [L, B, D] -> [B, D]

    def forward(self, last: Tensor, layers: Sequence[Tensor], num_cls: int) -> Tensor:
        return self.mlp(self.norm(self.pooled(layers, num_cls)))  # [B, num_classes]


def build_head(cfg: HeadConfig, dim: int, num_layers: int, num_classes: int) -> nn.Module:
    """The head named by ``cfg.kind`` for an encoder of width ``dim`` and ``num_layers`` blocks."""
    if cfg.kind == "mean":
        return MeanHead(cfg, dim, num_classes, from_last=True)
    if cfg.kind == "cls":
        return ClsHead(cfg, dim, num_classes)
    if cfg.kind == "mean_fc_norm":
        return MeanHead(cfg, dim, num_classes, from_last=False)
    if cfg.kind in LAYERWISE_KINDS:
        return LayerwiseHead(cfg, dim, num_layers, num_classes,
                             norm_each=cfg.kind in ("pre_norm", "double_norm"),
                             norm_sum=cfg.kind in ("post_norm", "double_norm"))
    raise ValueError(f"head.kind={cfg.kind!r}: expected one of {', '.join(HEAD_KINDS)}")
