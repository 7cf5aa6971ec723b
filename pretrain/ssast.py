"""SSAST: masked spectrogram patch modelling (joint discriminative InfoNCE + generative MSE), on the shared encoder.

Reproduces YuanGongND/ssast src/models/ast_models.py (``mpc``, ``mpg``, ``gen_maskid_patch``/``gen_maskid_frame``)
and the ``pretrain_joint`` loss of src/traintest_mask.py: ``nce + 10 * mse``, each from its own pass with its own
mask. Differences, all numerically neutral: the masks are drawn outside ``forward`` from a generator (vectorised,
see pretrain/masking.py); the per-sample Python loops are batched gathers; the two passes run as one forward over
2B samples (``one_pass``); attention is SDPA; the prediction width is patch_freq*patch_time (hard-coded 256).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretrain.encoder import BlockExecution, Encoder, EncoderConfig
from pretrain.masking import random_mask_ids, ssast_cluster_mask


def _ssast_encoder() -> EncoderConfig:
    return EncoderConfig(cls_tokens=2, pos_embed="learned", token_order="freq")


@dataclass
class SSASTConfig(BlockExecution):
    """The SSAST model and objective. The encoder defaults to the official layout (2 cls, learned pos, freq-major).
    The block execution fields (``compile``, ``activation_checkpointing``) apply to the encoder blocks."""

    encoder: EncoderConfig = field(default_factory=_ssast_encoder)
    mask_patches: int = 400
    """Masked patches per clip and pass (official: 400 of 512, ablations 250 / 100)."""
    cluster: Optional[bool] = None
    """Clustered masks (``gen_maskid_patch``) or uniform ones (``gen_maskid_frame``); None: clustered when
    patch_freq != num_mel_bins, as the official code decides (patch model yes, frame model no)."""
    cluster_range: tuple[int, int] = (3, 5)
    """Cluster side drawn per clip from {low..high} (official ``randrange(3) + 3``)."""
    faithful_cluster_truncation: bool = True
    """True: keep the lowest candidate ids as CPython's ``list(set(ids))[:n]`` does (fewer masks in the low
    frequency rows); False: a uniform subset of the candidates."""
    mse_weight: float = 10.0
    """Weight of the generative MSE in the joint loss (official 10)."""
    one_pass: bool = True
    """Run the discriminative and generative passes as one forward over 2B samples (same result, one launch)."""

    def __post_init__(self) -> None:
        self.check_execution("ssast")
        n = self.encoder.num_patches
        if not 0 < self.mask_patches < n:
            raise ValueError(f"ssast.mask_patches={self.mask_patches}: expected 0 < mask_patches < {n} patches "
                             f"(grid {self.encoder.grid[0]}x{self.encoder.grid[1]})")
        lo, hi = self.cluster_range
        if not 1 <= lo <= hi:
            raise ValueError(f"ssast.cluster_range={tuple(self.cluster_range)}: expected 1 <= low <= high")
        if self.mse_weight < 0:
            raise ValueError(f"ssast.mse_weight={self.mse_weight}: expected >= 0")

    @property
    def use_cluster(self) -> bool:
        return self.encoder.patch_freq != self.encoder.num_mel_bins if self.cluster is None else bool(self.cluster)


class SSASTOutput(NamedTuple):
    """Scalars, or [B] values per clip when the forward is asked for ``per_clip`` (validation)."""

    loss: Tensor
    """nce + mse_weight * mse."""
    nce: Tensor
    """InfoNCE of the discriminative pass."""
    mse: Tensor
    """MSE of the generative pass."""
    acc: Tensor
    """Masked-patch classification accuracy of the discriminative pass (detached)."""


def infonce(pred: Tensor, target: Tensor, per_clip: bool = False) -> tuple[Tensor, Tensor]:
    """SSAST's InfoNCE (``mpc``): per clip, total = target @ pred^T [M, M]; loss = -mean diag log_softmax(total, -1).

    pred, target [B, M, P]. Faithful quirks (models.md §1.3, issue #13): the softmax runs over predictions
    (dim -1), not targets as in Eq. 1; no temperature; the target is detached; accuracy = argmax over dim 0
    (targets) of the row-softmaxed matrix == own index. Computed in float32. Returns (loss, acc), both scalars, or
    both [B] per clip with ``per_clip`` (every clip has M masked patches, so their mean is the scalar).
    """
    total = target.detach().float() @ pred.float().transpose(1, 2)  # [B, M(target), M(pred)]
    logp = F.log_softmax(total, dim=-1)  # [B, M, M]
    idx = torch.arange(total.shape[1], device=total.device)
    # Official: argmax(softmax(total, dim=-1), dim=0); the row-wise softmax matters, argmax(total, 0) differs.
    hits = (logp.argmax(dim=1) == idx).float()  # [B, M]
    if per_clip:
        return -logp.diagonal(dim1=1, dim2=2).mean(-1), hits.mean(-1).detach()
    return -logp.diagonal(dim1=1, dim2=2).mean(), hits.mean().detach()


def masked_mse(pred: Tensor, target: Tensor, per_clip: bool = False) -> Tensor:
    """SSAST's ``mpg`` loss: mean((pred - target)^2) over the masked patches [B, M, P] (float32); [B] per clip."""
    err = (pred.float() - target.float()).pow(2)
    return err.mean((1, 2)) if per_clip else err.mean()


def _head(dim: int, out: int) -> nn.Sequential:
    # Official cpredlayer / gpredlayer: Linear(D, D) - ReLU - Linear(D, 256), PyTorch default init.
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, out))


def _gather(x: Tensor, ids: Tensor) -> Tensor:
    """x [B, N, K], ids [B, M] -> [B, M, K]."""
    return x.gather(1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class SSAST(nn.Module):
    """Encoder + ``mask_embed`` + ``cpredlayer`` / ``gpredlayer``; parameter names match the official checkpoint."""

    def __init__(self, cfg: SSASTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg.encoder)
        d, p = self.encoder.embed_dim, self.encoder.patch_dim
        self.mask_embed = nn.Parameter(torch.zeros(1, 1, d))
        nn.init.xavier_normal_(self.mask_embed)
        self.cpredlayer = _head(d, p)
        self.gpredlayer = _head(d, p)

    def describe_masking(self) -> str:
        n, m = self.encoder.num_patches, self.cfg.mask_patches
        kind = (f"clustered {self.cfg.cluster_range[0]}-{self.cfg.cluster_range[1]}"
                f"{'' if self.cfg.faithful_cluster_truncation else ', uniform truncation'}"
                if self.cfg.use_cluster else "uniform")
        passes = "one batched forward of 2B" if self.cfg.one_pass else "two forwards"
        return f"{kind}, {m} of {n} patches ({100 * m / n:.0f}%) per pass; nce + {self.cfg.mse_weight:g} mse, {passes}"

    def draw_masks(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Two independent masks, (discriminative ids, generative ids), each LongTensor [B, M] on the CPU."""
        return self.draw_mask(batch, generator), self.draw_mask(batch, generator)

    def draw_mask(self, batch: int, generator: torch.Generator) -> Tensor:
        """One mask [B, M] of token ids (encoder order): clustered or uniform, as configured."""
        enc, m = self.encoder, self.cfg.mask_patches
        if self.cfg.use_cluster:
            return ssast_cluster_mask(batch, enc.grid, m, tuple(self.cfg.cluster_range), generator=generator,
                                      token_order=enc.cfg.token_order, faithful=self.cfg.faithful_cluster_truncation)
        return random_mask_ids(batch, enc.num_patches, m, generator=generator)

    def forward_encoder(self, tokens: Tensor, ids: Tensor) -> Tensor:
        """Patch embeddings [B, N, D] with the ``ids`` [B, M] replaced by mask_embed -> normed masked-token outputs
        [B, M, D]. As official: the embedding is replaced first, then pos is added, then cls tokens prepended."""
        masked = torch.zeros(tokens.shape[:2], dtype=torch.bool, device=tokens.device).scatter_(1, ids, True)
        x = torch.where(masked.unsqueeze(-1), self.mask_embed.to(tokens.dtype), tokens)  # [B, N, D]
        x = self.encoder.prepend_cls(self.encoder.add_pos(x))  # [B, C+N, D]
        last, _ = self.encoder.run_blocks(x)  # [B, C+N, D], final norm applied
        return _gather(last[:, self.encoder.num_cls:], ids)  # [B, M, D]

    def forward_loss(self, patches: Tensor, h_c: Tensor, ids_c: Tensor, h_g: Tensor, ids_g: Tensor,
                     per_clip: bool = False) -> SSASTOutput:
        """Heads and losses: InfoNCE on the discriminative pass, MSE on the generative pass."""
        nce, acc = infonce(self.cpredlayer(h_c), _gather(patches, ids_c), per_clip)  # pred vs target [B, M, P]
        mse = masked_mse(self.gpredlayer(h_g), _gather(patches, ids_g), per_clip)
        return SSASTOutput(nce + self.cfg.mse_weight * mse, nce, mse, acc)

    def forward(self, fbank: Tensor, ids_c: Tensor, ids_g: Tensor, per_clip: bool = False) -> SSASTOutput:
        """fbank [B, T, F]; ids_c / ids_g [B, M] from :meth:`draw_masks` -> SSASTOutput(loss, nce, mse, acc), scalars
        or [B] per clip."""
        ids_c, ids_g = ids_c.to(fbank.device), ids_g.to(fbank.device)
        patches = self.encoder.patches(fbank)  # [B, N, P], targets (raw normalised input)
        tokens = self.encoder.embed(fbank)  # [B, N, D]
        b = fbank.shape[0]
        if self.cfg.one_pass:
            h = self.forward_encoder(torch.cat([tokens, tokens]), torch.cat([ids_c, ids_g]))  # [2B, M, D]
            h_c, h_g = h[:b], h[b:]
        else:
            h_c, h_g = self.forward_encoder(tokens, ids_c), self.forward_encoder(tokens, ids_g)
        return self.forward_loss(patches, h_c, ids_c, h_g, ids_g, per_clip)


__all__ = ["SSASTConfig", "SSAST", "SSASTOutput", "infonce", "masked_mse"]
