"""Official-style Audio-MAE, re-implemented as the original runs: the baseline for tests and pretrain/tools/bench.py.

``OfficialAudioMAE`` mirrors facebookresearch/AudioMAE models_mae.py ``MaskedAutoencoderViT`` (audio_exp=True,
in_chans=1) and ``OfficialAudioMAEViT`` mirrors models_vit.py ``VisionTransformer(global_pool=True)`` as
main_finetune_as.py builds and loads it. Parameter names are those of the released ``pretrained.pth`` /
``finetuned.pth`` (inside ``{'model': ...}``): ``cls_token``, ``pos_embed`` [1, 1+N, D] (fixed sin-cos with the
``patch_hw = (F/p, T/p) = (8, 64)`` quirk), ``patch_embed.proj`` (conv on [B, 1, T, F]: time-major tokens),
``blocks.{i}.*``, ``norm``, ``mask_token``, ``decoder_embed``, ``decoder_pos_embed``, ``decoder_blocks.{i}.*``,
``decoder_norm``, ``decoder_pred``; fine-tuning: ``fc_norm``, ``head``. Naive attention everywhere; the masks are
drawn inside ``forward`` from ``torch.rand`` noise as official (or from a given ``noise`` [B, N]).

Deviations, none of which changes a number: the local decoder's grid, depth (official: 16), window and ``meta_mlp``
width are parameters (official: hard-coded feat_size (64, 8), window (4, 4), 16 blocks, 384); its Swin-V2 blocks are
pretrain/swin.py's ``LocalDecoderBlock`` (released parameter names, same roll / window / -100 mask code) with the
attention replaced by timm_patch's naive ``_forward_batch``; the fine-tune model's ``random_masking_2d`` takes its
T x F grid from ``img_size`` (official: hard-coded 64 x 8) and optional ``noise_t`` / ``noise_f`` (official: always
``torch.rand``); it has no mixup.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np
import torch
from torch import Tensor, nn

from pretrain.swin import LocalDecoderBlock, WindowAttention
from pretrain.tools.reference_ssast import Block, PatchEmbed


# ------------------------------------------------------------------------------------ util/pos_embed.py verbatim
def get_1d_sincos_pos_embed_from_grid(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    assert embed_dim % 2 == 0
    omega = np.arange(embed_dim // 2, dtype=np.float64)  # official np.float (= float64)
    omega /= embed_dim / 2.0
    omega = 1.0 / 10000 ** omega  # (D/2,)
    out = np.einsum("m,d->md", pos.reshape(-1), omega)  # (M, D/2)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # (M, D)


def get_2d_sincos_pos_embed_flexible(embed_dim: int, grid_size: tuple[int, int], cls_token: bool = False):
    """[grid_size[0] * grid_size[1] (+1), embed_dim]; first half encodes the column (w), second half the row (h)."""
    grid_h = np.arange(grid_size[0], dtype=np.float32)
    grid_w = np.arange(grid_size[1], dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0)  # here w goes first
    grid = grid.reshape([2, 1, grid_size[0], grid_size[1]])
    assert embed_dim % 2 == 0
    emb_h = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[0])
    emb_w = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[1])
    pos_embed = np.concatenate([emb_h, emb_w], axis=1)
    if cls_token:
        pos_embed = np.concatenate([np.zeros([1, embed_dim]), pos_embed], axis=0)
    return pos_embed


# --------------------------------------------------------------------------------- timm_patch Swin-V2, naive attention
class _NaiveWindowAttention(WindowAttention):
    """timm_patch ``WindowMultiHeadAttention._forward_batch``: explicit cosine logits, softmax, no SDPA."""

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        Bw, L, C = x.shape
        h = self.heads
        query, key, value = self.qkv(x).view(Bw, L, 3, h, C // h).permute(2, 0, 3, 1, 4).unbind(0)
        denom = torch.norm(query, dim=-1, keepdim=True) @ torch.norm(key, dim=-1, keepdim=True).transpose(-2, -1)
        attn = query @ key.transpose(-2, -1) / denom.clamp(min=1e-6)
        attn = attn / self.tau.clamp(min=0.01).reshape(1, h, 1, 1)
        attn = attn + self.position_bias().unsqueeze(0)  # _relative_positional_encodings
        if mask is not None:
            num_win = mask.shape[0]
            attn = attn.view(Bw // num_win, num_win, h, L, L) + mask.unsqueeze(1).unsqueeze(0).to(attn.dtype)
            attn = attn.view(-1, h, L, L)
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ value).transpose(1, 2).reshape(Bw, L, -1))


class SwinTransformerBlock(LocalDecoderBlock):
    """timm_patch ``SwinTransformerBlock`` (post-norm, extra_norm=False) with the naive window attention."""

    def __init__(self, dim: int, num_heads: int, feat_size, window_size, shift_size, mlp_ratio: float = 4.0,
                 meta_hidden: int = 384) -> None:
        super().__init__(dim, num_heads, feat_size, window_size, shift_size, mlp_ratio, meta_hidden)
        self.attn = _NaiveWindowAttention(dim, num_heads, self.window, meta_hidden, 0.1)


# --------------------------------------------------------------------------------------------- MaskedAutoencoderViT
class OfficialAudioMAE(nn.Module):
    """models_mae.py ``MaskedAutoencoderViT`` with audio_exp=True, in_chans=1. ``img_size`` = (T, F).

    ``forward(imgs [B, 1, T, F], mask_ratio, noise=None)`` -> (loss, pred [B, N, p*p], mask [B, N]).
    """

    def __init__(self, img_size=(1024, 128), patch_size: int = 16, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, decoder_embed_dim: int = 512, decoder_depth: int = 8,
                 decoder_num_heads: int = 16, mlp_ratio: float = 4.0, norm_pix_loss: bool = False,
                 decoder_mode: int = 0, no_shift: bool = False, local_depth: int = 16, window_size=(4, 4),
                 meta_hidden: int = 384) -> None:
        super().__init__()
        p = patch_size
        # PatchEmbed_org: patch_hw = (W // p, H // p) = (8, 64) for 1024 x 128: the transposed grid of the quirk
        self.patch_embed = PatchEmbed(embed_dim, (p, p), (p, p))
        self.patch_embed.patch_hw = (img_size[1] // p, img_size[0] // p)
        self.patch_embed.num_patches = num_patches = (img_size[1] // p) * (img_size[0] // p)
        self.patch_size = p
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, decoder_embed_dim),
                                              requires_grad=False)
        self.decoder_mode = decoder_mode
        if decoder_mode == 1:
            feat_size = (img_size[0] // p, img_size[1] // p)  # official (64, 8): (t_dim, f_dim)
            shifts = [(0, 0) if no_shift or i % 2 == 0 else (2, 0) for i in range(local_depth)]
            self.decoder_blocks = nn.ModuleList([
                SwinTransformerBlock(decoder_embed_dim, decoder_num_heads, feat_size, tuple(window_size), s,
                                     mlp_ratio, meta_hidden) for s in shifts])
        else:
            self.decoder_blocks = nn.ModuleList([Block(decoder_embed_dim, decoder_num_heads, mlp_ratio)
                                                 for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_embed_dim, p ** 2, bias=True)
        self.norm_pix_loss = norm_pix_loss
        self.initialize_weights()

    def initialize_weights(self) -> None:
        hw = self.patch_embed.patch_hw
        for param in (self.pos_embed, self.decoder_pos_embed):
            table = get_2d_sincos_pos_embed_flexible(param.shape[-1], hw, cls_token=True)
            param.data.copy_(torch.from_numpy(table).float().unsqueeze(0))
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.zeros_(m.bias)
                nn.init.ones_(m.weight)

    def patchify(self, imgs: Tensor) -> Tensor:
        """imgs [B, 1, T, F] -> [B, (T/p)*(F/p), p*p], time-major, values (t, f) inside a patch."""
        p = self.patch_size
        h, w = imgs.shape[2] // p, imgs.shape[3] // p
        x = imgs.reshape(shape=(imgs.shape[0], 1, h, p, w, p))
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(shape=(imgs.shape[0], h * w, p ** 2 * 1))

    def random_masking(self, x: Tensor, mask_ratio: float, noise: Optional[Tensor] = None):
        """Per-sample shuffle by argsort of noise: (x_masked [B, K, D], mask [B, N] 1=removed, ids_restore)."""
        N, L, D = x.shape
        len_keep = int(L * (1 - mask_ratio))
        if noise is None:
            noise = torch.rand(N, L, device=x.device)
        ids_shuffle = torch.argsort(noise.to(x.device), dim=1)  # ascend: small is keep, large is remove
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        x_masked = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, D))
        mask = torch.ones([N, L], device=x.device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, dim=1, index=ids_restore)
        return x_masked, mask, ids_restore

    def forward_encoder(self, x: Tensor, mask_ratio: float, noise: Optional[Tensor] = None):
        x = self.patch_embed(x)  # [B, N, D]
        x = x + self.pos_embed[:, 1:, :]
        x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)
        cls_tokens = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat((cls_tokens, x), dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, x: Tensor, ids_restore: Tensor) -> Tensor:
        x = self.decoder_embed(x)
        mask_tokens = self.mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)  # no cls token
        x_ = torch.gather(x_, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))  # unshuffle
        x = torch.cat([x[:, :1, :], x_], dim=1)  # append cls token
        x = x + self.decoder_pos_embed
        if self.decoder_mode != 0:
            x = x[:, 1:, :]
        for blk in self.decoder_blocks:
            x = blk(x)
        pred = self.decoder_pred(self.decoder_norm(x))
        return pred if self.decoder_mode != 0 else pred[:, 1:, :]

    def forward_loss(self, imgs: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = ((pred - target) ** 2).mean(dim=-1)  # [N, L], mean loss per patch
        return (loss * mask).sum() / mask.sum()  # mean loss on removed patches

    def forward(self, imgs: Tensor, mask_ratio: float = 0.8, noise: Optional[Tensor] = None):
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask


# ------------------------------------------------------------------------------------- models_vit VisionTransformer
class OfficialAudioMAEViT(nn.Module):
    """models_vit.py ``VisionTransformer`` as main_finetune_as.py builds it: PatchEmbed_new (stride 16), zero fixed
    ``pos_embed`` (overwritten by the checkpoint), blocks with drop_path linspace(0, rate), ``norm`` deleted when
    ``global_pool``: ``forward(x [B, 1, T, F])`` = head(fc_norm(mean(blocks(x)[:, 1:]))) -> [B, num_classes]."""

    def __init__(self, num_classes: int = 527, img_size=(1024, 128), patch_size: int = 16, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, drop_path_rate: float = 0.1, global_pool: bool = True) -> None:
        super().__init__()
        p = patch_size
        self.patch_embed = PatchEmbed(embed_dim, (p, p), (p, p))
        num_patches = (img_size[0] // p) * (img_size[1] // p)
        self.grid_tf = (img_size[0] // p, img_size[1] // p)  # random_masking_2d's T, F (official: hard-coded 64, 8)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False)
        self.pos_drop = nn.Dropout(0.0)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth)]
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, 4.0, dpr[i]) for i in range(depth)])
        self.global_pool = global_pool
        if global_pool:
            self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6)  # the pretrained `norm` is deleted
        else:
            self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def load_pretrained(self, checkpoint: Mapping[str, Any]):
        """main_finetune_as.py: ``checkpoint['model']``, drop a mismatched head, load strict=False, head init
        trunc_normal std 2e-5. Returns load_state_dict's message (decoder_*, mask_token, norm.* are unexpected)."""
        checkpoint_model = dict(checkpoint["model"])
        state_dict = self.state_dict()
        for k in ["head.weight", "head.bias"]:
            if k in checkpoint_model and checkpoint_model[k].shape != state_dict[k].shape:
                del checkpoint_model[k]
        msg = self.load_state_dict(checkpoint_model, strict=False)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)
        return msg

    def forward_features(self, x: Tensor) -> Tensor:
        B = x.shape[0]
        x = self.patch_embed(x)
        x = x + self.pos_embed[:, 1:, :]
        cls_tokens = (self.cls_token + self.pos_embed[:, :1, :]).expand(B, -1, -1)
        x = self.pos_drop(torch.cat((cls_tokens, x), dim=1))
        for blk in self.blocks:
            x = blk(x)
        if self.global_pool:
            return self.fc_norm(x[:, 1:, :].mean(dim=1))  # global pool without cls token, no final norm
        return self.norm(x)[:, 0]

    def random_masking_2d(self, x: Tensor, mask_t_prob: float, mask_f_prob: float, noise_t: Optional[Tensor] = None,
                          noise_f: Optional[Tensor] = None) -> Tensor:
        """models_vit.py ``random_masking_2d``: x [N, T*F, D] time-major -> the kept time steps x kept bands
        [N, T'*F', D], gathered in noise order (time by ``argsort(noise_t)[:T']``, then bands by
        ``argsort(noise_f)[:F']``)."""
        N, L, D = x.shape
        T, F = self.grid_tf
        x = x.reshape(N, T, F, D)
        len_keep_T = int(T * (1 - mask_t_prob))
        if noise_t is None:
            noise_t = torch.rand(N, T, device=x.device)
        ids_shuffle = torch.argsort(noise_t.to(x.device), dim=1)  # ascend: small is keep, large is remove
        ids_keep = ids_shuffle[:, :len_keep_T]
        index = ids_keep.unsqueeze(-1).unsqueeze(-1).repeat(1, 1, F, D)
        x = torch.gather(x, dim=1, index=index)  # N, len_keep_T(T'), F, D
        x = x.permute(0, 2, 1, 3)  # N T' F D => N F T' D
        len_keep_F = int(F * (1 - mask_f_prob))
        if noise_f is None:
            noise_f = torch.rand(N, F, device=x.device)
        ids_shuffle = torch.argsort(noise_f.to(x.device), dim=1)
        ids_keep = ids_shuffle[:, :len_keep_F]
        index = ids_keep.unsqueeze(-1).unsqueeze(-1).repeat(1, 1, len_keep_T, D)
        x_masked = torch.gather(x, dim=1, index=index)
        x_masked = x_masked.permute(0, 2, 1, 3)  # N F' T' D => N T' F' D
        return x_masked.reshape(N, len_keep_F * len_keep_T, D)

    def forward_features_mask(self, x: Tensor, mask_t_prob: float, mask_f_prob: float,
                              noise_t: Optional[Tensor] = None, noise_f: Optional[Tensor] = None) -> Tensor:
        """models_vit.py: always the 2-D path (``if self.random_masking_2d:`` tests a bound method, always true)."""
        B = x.shape[0]
        x = self.patch_embed(x)
        x = x + self.pos_embed[:, 1:, :]
        x = self.random_masking_2d(x, mask_t_prob, mask_f_prob, noise_t, noise_f)
        cls_tokens = (self.cls_token + self.pos_embed[:, :1, :]).expand(B, -1, -1)
        x = self.pos_drop(torch.cat((cls_tokens, x), dim=1))
        for blk in self.blocks:
            x = blk(x)
        if self.global_pool:
            return self.fc_norm(x[:, 1:, :].mean(dim=1))
        return self.norm(x)[:, 0]

    def forward(self, x: Tensor, mask_t_prob: float = 0.0, mask_f_prob: float = 0.0,
                noise_t: Optional[Tensor] = None, noise_f: Optional[Tensor] = None) -> Tensor:
        if mask_t_prob > 0.0 or mask_f_prob > 0.0:
            return self.head(self.forward_features_mask(x, mask_t_prob, mask_f_prob, noise_t, noise_f))
        return self.head(self.forward_features(x))


__all__ = ["OfficialAudioMAE", "OfficialAudioMAEViT", "SwinTransformerBlock", "get_2d_sincos_pos_embed_flexible"]
