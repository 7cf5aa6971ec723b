"""Audio-MAE (facebookresearch/AudioMAE ``models_mae.py`` ``MaskedAutoencoderViT``, audio_exp=True): the masked
autoencoder around the shared encoder, its decoder ("local" Swin-V2 windows as released, or MAE's "global" ViT),
and the norm-pix reconstruction loss.

One step, as ``MaskedAutoencoderViT.forward``: fbank [B, T, F] -> patch tokens (time-major, t * f_dim + f) + fixed
sin-cos pos -> keep the visible 20% (``ids_keep``) -> prepend cls -> encoder blocks -> norm -> decoder_embed ->
append mask tokens and unshuffle (``ids_restore``) -> + decoder pos -> decoder blocks -> decoder_norm ->
decoder_pred -> per-patch MSE against the normalised input patches, averaged over the masked patches only.
The masks come in as tensors (``draw_masks`` draws them from a generator): ``forward`` draws no random numbers.

Positional tables (models.md §2.2): the released sin-cos tables are built by ``get_2d_sincos_pos_embed_flexible(D,
patch_hw=(8, 64))`` although the tokens form a 64 x 8 (time x freq) grid, so token k gets (k mod 64, k div 64), not
(t, f). ``pos_embed_layout="official"`` reproduces that table (it equals our frequency-major table laid over the
time-major tokens); ``"grid"`` uses the true (t, f) grid (``encoder.sincos_pos_embed``). A released checkpoint
carries its tables, so loading one reproduces it either way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

from launch.runtime.config import since
from pretrain.encoder import BlockExecution, Blocks, Encoder, EncoderConfig, sincos_pos_embed
from pretrain.masking import mae_random_masking
from pretrain.swin import ATTENTION_PATHS, GlobalDecoderBlock, LocalDecoderBlock, calc_window_shift

DECODERS = ("local", "global")
POS_LAYOUTS = ("official", "grid")


# --------------------------------------------------------------------------------------------------- pure functions
def _pair(patch: int | tuple[int, int]) -> tuple[int, int]:
    return (patch, patch) if isinstance(patch, int) else (int(patch[0]), int(patch[1]))


def patchify(fbank: Tensor, patch: int | tuple[int, int], token_order: str = "time") -> Tensor:
    """fbank [B, T, F] -> patches [B, N, pt * pf] (models_mae.py ``patchify``, audio_exp, no overlap).

    ``patch`` = p or (patch_time, patch_freq). Values inside a patch are flattened (t, f), i.e. the official
    ``einsum('nchpwq->nhwpqc')`` on imgs [B, 1, T, F]; tokens are time-major (t * f_dim + f), or frequency-major
    (f * t_dim + t) for ``token_order="freq"`` with the same (t, f) layout inside each patch.
    """
    pt, pf = _pair(patch)
    B, T, Fq = fbank.shape
    if T % pt or Fq % pf:
        raise ValueError(f"patchify: fbank {T}x{Fq} is not divisible by the patch {pt}x{pf}")
    x = fbank.reshape(B, T // pt, pt, Fq // pf, pf)  # [B, t, pt, f, pf]
    order = (0, 1, 3, 2, 4) if token_order == "time" else (0, 3, 1, 2, 4)  # -> [B, t, f, pt, pf] or [B, f, t, ...]
    return x.permute(*order).reshape(B, (T // pt) * (Fq // pf), pt * pf)


def unpatchify(x: Tensor, patch: int | tuple[int, int], grid: tuple[int, int], token_order: str = "time") -> Tensor:
    """patches [B, N, pt * pf] -> fbank [B, T, F]: the inverse of :func:`patchify`; ``grid`` = (f_dim, t_dim)."""
    pt, pf = _pair(patch)
    f_dim, t_dim = grid
    B = x.shape[0]
    if token_order == "time":
        x = x.reshape(B, t_dim, f_dim, pt, pf).permute(0, 1, 3, 2, 4)  # [B, t, pt, f, pf]
    else:
        x = x.reshape(B, f_dim, t_dim, pt, pf).permute(0, 2, 3, 1, 4)
    return x.reshape(B, t_dim * pt, f_dim * pf)


def norm_pix_mse(pred: Tensor, target: Tensor, mask: Tensor, norm_pix: bool = True, eps: float = 1e-6,
                 per_clip: bool = False) -> Tensor:
    """models_mae.py ``forward_loss``: pred, target [B, N, P], mask [B, N] (1 = removed) -> scalar loss.

    ``norm_pix``: each target patch becomes (x - mean) / sqrt(var + eps), var unbiased (torch ``.var``) as official.
    Loss = mean over values of (pred - target)^2 per patch, then the mean over the masked patches only. Computed in
    float32 whatever the input dtype. ``per_clip``: each clip's own mean over its masked patches, [B] (every clip
    masks the same count, so their mean is the scalar loss; validation averages clips exactly).
    """
    pred, target, mask = pred.float(), target.float(), mask.float()
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + eps) ** 0.5
    per_patch = ((pred - target) ** 2).mean(dim=-1)  # [B, N]
    if per_clip:
        return (per_patch * mask).sum(1) / mask.sum(1)
    return (per_patch * mask).sum() / mask.sum()


def audiomae_pos_embed(dim: int, grid: tuple[int, int], layout: str = "official", num_cls: int = 1) -> Tensor:
    """Fixed sin-cos table [1, C+N, dim] for time-major tokens (cls rows zero); ``grid`` = (f_dim, t_dim).

    "official": ``get_2d_sincos_pos_embed_flexible(dim, (f_dim, t_dim))`` indexed by the time-major token k, i.e.
    first dim/2 channels encode k mod t_dim and the last dim/2 k div t_dim (util/pos_embed.py + PatchEmbed_org's
    transposed ``patch_hw``). That is exactly the frequency-major table of ``sincos_pos_embed`` without the row
    permutation. "grid": the true grid (first half time t, last half frequency f).
    """
    if layout not in POS_LAYOUTS:
        raise ValueError(f"pos_embed_layout={layout!r}: expected one of {', '.join(POS_LAYOUTS)}")
    return sincos_pos_embed(dim, grid, "freq" if layout == "official" else "time", num_cls)


# ------------------------------------------------------------------------------------------------------------ config
def _audiomae_encoder() -> EncoderConfig:
    return EncoderConfig(token_order="time", cls_tokens=1, pos_embed="sincos")


@dataclass
class AudioMAEConfig(BlockExecution):
    """Audio-MAE pretraining model. Defaults: the released recipe (mask 0.8, local decoder, norm-pix loss). The
    block execution fields (``compile``, ``activation_checkpointing``) apply to encoder and decoder blocks."""

    encoder: EncoderConfig = field(default_factory=_audiomae_encoder)
    """The shared ViT; Audio-MAE uses time-major tokens, 1 cls token, fixed sin-cos positions, 16x16 patches."""
    mask_ratio: float = 0.8
    """Fraction of patches removed (uniform per clip); keeps int(N * (1 - ratio)) = 102 of 512."""
    decoder: str = "local"
    """"local": 16 Swin-V2 window blocks without cls (released ``decoder_mode=1``); "global": MAE's ViT blocks."""
    decoder_dim: int = 512
    """Decoder width."""
    decoder_depth: Optional[int] = None
    """Decoder blocks; None: 16 for "local" (hard-coded ``range(16)`` as released; it ignores ``decoder_depth=8``),
    8 for "global" (MAE's default)."""
    decoder_heads: int = 16
    """Decoder attention heads (released: 16 in both modes)."""
    mlp_ratio: float = 4.0
    """Decoder MLP hidden width / decoder width."""
    window: tuple[int, int] = (4, 4)
    """Local decoder window (time, freq) in tokens (clipped to the grid)."""
    shift: tuple[int, int] = (2, 0)
    """Cyclic shift (time, freq) of the odd local blocks (even blocks: none); (0, 0) = official ``no_shift``."""
    meta_hidden: int = 384
    """Hidden width of the relative-position ``meta_mlp`` (timm_patch default)."""
    meta_drop: float = 0.1
    """Dropout inside ``meta_mlp`` (hard-coded 0.1 in timm_patch)."""
    norm_pix_loss: bool = True
    """Normalise each target patch by its own mean and std (the pretraining script sets it)."""
    pos_embed_layout: str = "official"
    """"official": the released (8, 64)-over-(64, 8) sin-cos tables (encoder and decoder); "grid": the true (t, f)
    grid. See the module docstring."""
    window_attention: str = since("0.2", "auto", how_not_what=True)
    """How the local decoder runs its window attention, both exact (pretrain/swin.py): "folded" (SDPA without a mask,
    the position bias folded into q and k: flash-eligible), "explicit" (the released ops), "auto" (folded on CUDA,
    explicit on CPU, where it is faster)."""

    def __post_init__(self) -> None:
        self.check_execution("audiomae")
        if self.window_attention not in ATTENTION_PATHS:
            raise ValueError(f"audiomae.window_attention={self.window_attention!r}: expected one of "
                             f"{', '.join(ATTENTION_PATHS)}")
        enc = self.encoder
        if self.decoder not in DECODERS:
            raise ValueError(f"audiomae.decoder={self.decoder!r}: expected 'local' or 'global'")
        if self.pos_embed_layout not in POS_LAYOUTS:
            raise ValueError(f"audiomae.pos_embed_layout={self.pos_embed_layout!r}: expected 'official' or 'grid'")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"audiomae.mask_ratio={self.mask_ratio}: expected 0 <= ratio < 1")
        if self.decoder_dim % self.decoder_heads or self.decoder_dim % 4:
            raise ValueError(f"audiomae.decoder_dim={self.decoder_dim}: must be divisible by decoder_heads="
                             f"{self.decoder_heads} and by 4 (sin-cos)")
        if (enc.stride_time, enc.stride_freq) != (enc.patch_time, enc.patch_freq):
            raise ValueError("audiomae: overlapping patches (stride != patch) are not supported for pretraining; the "
                             "reconstruction target is the non-overlapping patchify")
        if enc.target_frames % enc.patch_time or enc.num_mel_bins % enc.patch_freq:
            raise ValueError(f"audiomae: {enc.target_frames}x{enc.num_mel_bins} input is not divisible by the patch "
                             f"{enc.patch_time}x{enc.patch_freq} (frames x mel)")
        if enc.cls_tokens != 1 or enc.pos_embed != "sincos":
            raise ValueError("audiomae: the encoder needs cls_tokens=1 and pos_embed='sincos'")
        if enc.token_order != "time" and (self.decoder == "local" or self.pos_embed_layout == "official"):
            raise ValueError("audiomae: the local decoder and the official pos layout need encoder.token_order='time'")
        self.window, self.shift = tuple(self.window), tuple(self.shift)
        if self.decoder == "local":
            grid = (enc.grid[1], enc.grid[0])  # (t_dim, f_dim)
            win, _ = calc_window_shift(grid, self.window, self.shift)
            if any(n % w for n, w in zip(grid, win)) or any(not 0 <= s < w for s, w in zip(self.shift, self.window)):
                raise ValueError(f"audiomae: the local decoder needs the token grid (t_dim, f_dim)={grid} divisible by "
                                 f"the window {win} and 0 <= shift {self.shift} < window (e.g. target_frames a "
                                 f"multiple of {self.window[0] * enc.patch_time})")

    @property
    def num_decoder_blocks(self) -> int:
        return self.decoder_depth or (16 if self.decoder == "local" else 8)


class MAEOutput(NamedTuple):
    loss: Tensor
    """Norm-pix MSE over the masked patches: a scalar, or [B] per clip (``per_clip``)."""
    pred: Tensor
    """[B, N, patch_time * patch_freq] reconstruction of every patch (normalised units if norm_pix_loss)."""
    mask: Tensor
    """[B, N], 1 = removed."""


# ------------------------------------------------------------------------------------------------------------- model
class AudioMAE(nn.Module):
    """Masked autoencoder; parameter names follow the released pretrained.pth except the encoder's
    (``cls_token`` -> ``encoder.cls_tokens``, ``patch_embed`` conv transposed; see pretrain/encoder.py)."""

    def __init__(self, cfg: AudioMAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg.encoder)
        f_dim, t_dim = self.encoder.grid
        self.patch = (cfg.encoder.patch_time, cfg.encoder.patch_freq)
        n, d, dd = self.encoder.num_patches, self.encoder.embed_dim, cfg.decoder_dim
        if cfg.pos_embed_layout == "official":  # overwrite the encoder's fixed table with the released quirk
            with torch.no_grad():
                self.encoder.pos_embed.copy_(audiomae_pos_embed(d, self.encoder.grid, "official"))
        self.decoder_embed = nn.Linear(d, dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        self.decoder_pos_embed = nn.Parameter(audiomae_pos_embed(dd, self.encoder.grid, cfg.pos_embed_layout),
                                              requires_grad=False)  # [1, 1+N, dd], fixed as released
        if cfg.decoder == "local":
            self.decoder_blocks = Blocks([
                LocalDecoderBlock(dd, cfg.decoder_heads, feat_size=(t_dim, f_dim), window=cfg.window,
                                  shift=(0, 0) if i % 2 == 0 else cfg.shift, mlp_ratio=cfg.mlp_ratio,
                                  meta_hidden=cfg.meta_hidden, meta_drop=cfg.meta_drop,
                                  attention=cfg.window_attention)
                for i in range(cfg.num_decoder_blocks)])
        else:
            self.decoder_blocks = Blocks([GlobalDecoderBlock(dd, cfg.decoder_heads, cfg.mlp_ratio)
                                          for _ in range(cfg.num_decoder_blocks)])
        self.decoder_norm = nn.LayerNorm(dd, eps=1e-6)
        self.decoder_pred = nn.Linear(dd, self.patch[0] * self.patch[1])
        self.num_keep = int(n * (1 - cfg.mask_ratio))
        self._init_decoder()

    def _init_decoder(self) -> None:
        """models_mae.py ``initialize_weights`` for the decoder: xavier_uniform Linear (incl. meta_mlp), bias 0,
        LayerNorm 1/0, mask_token N(0, .02); ``tau`` stays 1. (The encoder initialises itself the same way.)"""
        for name, m in self.named_modules():
            if name.startswith("encoder"):
                continue
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.mask_token, std=0.02)

    # ------------------------------------------------------------------ masks
    def draw_masks(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """(ids_keep [B, K], ids_restore [B, N], mask [B, N]) on the CPU from ``generator`` (pretrain/masking.py)."""
        return mae_random_masking(batch, self.encoder.num_patches, self.cfg.mask_ratio, generator=generator)

    def describe_masking(self) -> str:
        """One line for the start-up summary: visible patches and the decoder."""
        cfg = self.cfg
        dec = (f"local decoder {cfg.num_decoder_blocks} x Swin window {cfg.window}, shift {cfg.shift} on odd blocks"
               if cfg.decoder == "local" else f"global decoder {cfg.num_decoder_blocks} x ViT")
        return (f"random {cfg.mask_ratio:g}: encoder sees {self.num_keep} of {self.encoder.num_patches} patches "
                f"+ 1 cls; {dec}")

    # ------------------------------------------------------------------ forward
    def forward_encoder(self, fbank: Tensor, ids_keep: Tensor) -> Tensor:
        """fbank [B, T, F], ids_keep [B, K] -> normed latent [B, 1+K, D] (cls first)."""
        x = self.encoder.add_pos(self.encoder.embed(fbank))  # [B, N, D], pos added before masking as official
        x = x.gather(1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # [B, K, D]
        x = self.encoder.prepend_cls(x)  # [B, 1+K, D], cls + its (zero) pos row
        return self.encoder.run_blocks(x)[0]

    def forward_decoder(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """latent [B, 1+K, D], ids_restore [B, N] -> pred [B, N, pt * pf] (models_mae.py ``forward_decoder``)."""
        x = self.decoder_embed(latent)  # [B, 1+K, dd]
        B, N = ids_restore.shape
        masked = self.mask_token.to(x.dtype).expand(B, N - (x.shape[1] - 1), -1)  # [B, N-K, dd]
        x_ = torch.cat([x[:, 1:], masked], dim=1)  # [B, N, dd] in shuffle order
        x_ = x_.gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # unshuffle to token order
        x = torch.cat([x[:, :1], x_], dim=1) + self.decoder_pos_embed.to(x.dtype)  # [B, 1+N, dd]
        if self.cfg.decoder == "local":
            x = x[:, 1:]  # released decoder_mode=1 drops cls before the windows
        x, _ = self.decoder_blocks(x)
        pred = self.decoder_pred(self.decoder_norm(x))
        return pred if self.cfg.decoder == "local" else pred[:, 1:]  # [B, N, P]

    def forward_loss(self, fbank: Tensor, pred: Tensor, mask: Tensor, per_clip: bool = False) -> Tensor:
        """Norm-pix MSE of pred [B, N, P] against ``patchify(fbank)`` over mask [B, N] == 1."""
        target = patchify(fbank, self.patch, self.cfg.encoder.token_order)
        return norm_pix_mse(pred, target, mask, self.cfg.norm_pix_loss, per_clip=per_clip)

    def forward(self, fbank: Tensor, ids_keep: Tensor, ids_restore: Tensor, mask: Tensor,
                per_clip: bool = False) -> MAEOutput:
        """fbank [B, T, F] and the three mask tensors of :meth:`draw_masks` (moved to the fbank's device);
        ``per_clip``: the loss of every clip, [B], instead of the batch's."""
        dev = fbank.device
        ids_keep, ids_restore, mask = ids_keep.to(dev), ids_restore.to(dev), mask.to(dev)
        latent = self.forward_encoder(fbank, ids_keep)
        pred = self.forward_decoder(latent, ids_restore)
        return MAEOutput(self.forward_loss(fbank, pred, mask, per_clip), pred, mask)
