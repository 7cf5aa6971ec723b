"""Audio-MAE: patchify layout, norm-pix loss, Swin-V2 window pieces against literal naive replicas, the full model."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pretrain.audiomae import (AudioMAE, AudioMAEConfig, MAEOutput, audiomae_pos_embed, norm_pix_mse, patchify,
                               unpatchify)
from pretrain.encoder import EncoderConfig
from pretrain.swin import (GlobalDecoderBlock, LocalDecoderBlock, WindowAttention, calc_window_shift,
                           log_relative_coordinates, shifted_window_mask, window_partition, window_reverse)


def randomise(module: torch.nn.Module, seed: int = 0, scale: float = 0.5) -> torch.nn.Module:
    """Non-trivial weights everywhere (LayerNorm gains near 1, tau spread over heads) so every parameter matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("tau"):
                p.copy_(torch.linspace(0.3, 2.0, p.numel()))
            else:
                gain = 1.0 if name.endswith("weight") and p.ndim == 1 else 0.0
                p.copy_(gain + scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


# ----------------------------------------------------------------------------------------------------------- windows
def test_window_partition_reverse_round_trip_and_order():
    x = torch.arange(2 * 8 * 4 * 3, dtype=torch.float64).view(2, 8, 4, 3)  # [B, H, W, C]
    win = window_partition(x, (4, 2))
    assert win.shape == (2 * 2 * 2, 4, 2, 3)
    assert torch.equal(window_reverse(win, (4, 2), (8, 4)), x)
    # window 1 of clip 0 = rows 0..3, columns 2..3 (row-major windows, batch-major)
    assert torch.equal(win[1], x[0, 0:4, 2:4])
    assert torch.equal(win[4], x[1, 0:4, 0:2])


def test_calc_window_shift_clips_like_timm_patch():
    assert calc_window_shift((64, 8), (4, 4), (2, 0)) == ((4, 4), (2, 0))
    assert calc_window_shift((4, 8), (4, 4), (2, 0)) == ((4, 4), (0, 0))  # grid == window: no shift
    assert calc_window_shift((2, 8), (4, 4), (2, 2)) == ((2, 4), (0, 2))


def naive_timm_patch_mask(feat, window, shift):
    """Literal replica of timm_patch ``_make_attention_mask`` (including its slice(-w, -0) for an unshifted axis)."""
    H, W = feat
    img = torch.zeros(1, H, W, 1)
    cnt = 0
    for h in (slice(0, -window[0]), slice(-window[0], -shift[0]), slice(-shift[0], None)):
        for w in (slice(0, -window[1]), slice(-window[1], -shift[1]), slice(-shift[1], None)):
            img[:, h, w, :] = cnt
            cnt += 1
    mw = window_partition(img, window).view(-1, window[0] * window[1])
    m = mw.unsqueeze(1) - mw.unsqueeze(2)
    return m.masked_fill(m != 0, -100.0).masked_fill(m == 0, 0.0)


@pytest.mark.parametrize("feat,window,shift", [((8, 4), (4, 4), (2, 0)), ((8, 8), (4, 4), (2, 2)),
                                               ((12, 4), (4, 2), (1, 1))])
def test_shifted_window_mask_equals_timm_patch(feat, window, shift):
    assert torch.equal(shifted_window_mask(feat, window, shift), naive_timm_patch_mask(feat, window, shift))
    assert shifted_window_mask(feat, window, (0, 0)) is None


def test_log_relative_coordinates():
    rel = log_relative_coordinates((2, 3))  # L = 6
    assert rel.shape == (36, 2)
    # query (1, 0) = index 3, key (0, 2) = index 2: offset (1, -2)
    assert torch.allclose(rel[3 * 6 + 2], torch.tensor([math.log(2), -math.log(3)]))
    assert torch.equal(rel[0], torch.zeros(2))


# ---------------------------------------------------------------------------------------- attention vs naive replicas
def naive_cosine_attention(attn: WindowAttention, x, mask=None):
    """timm_patch ``WindowMultiHeadAttention._forward_batch`` verbatim in maths (explicit softmax, norm product)."""
    Bw, L, C = x.shape
    h = attn.heads
    q, k, v = attn.qkv(x).view(Bw, L, 3, h, C // h).permute(2, 0, 3, 1, 4).unbind(0)
    denom = torch.norm(q, dim=-1, keepdim=True) @ torch.norm(k, dim=-1, keepdim=True).transpose(-2, -1)
    a = q @ k.transpose(-2, -1) / denom.clamp(min=1e-6)
    a = a / attn.tau.clamp(min=0.01).reshape(1, h, 1, 1)
    a = a + attn.meta_mlp(attn.relative_coordinates_log).transpose(1, 0).reshape(h, L, L).unsqueeze(0)
    if mask is not None:
        nW = mask.shape[0]
        a = (a.view(Bw // nW, nW, h, L, L) + mask.unsqueeze(1).unsqueeze(0)).view(-1, h, L, L)
    return attn.proj((a.softmax(-1) @ v).transpose(1, 2).reshape(Bw, L, -1))


@pytest.mark.parametrize("with_mask", [False, True])
def test_scaled_cosine_attention_matches_naive(with_mask):
    torch.manual_seed(0)
    attn = randomise(WindowAttention(16, 4, (2, 4), meta_hidden=8)).double().eval()
    mask = shifted_window_mask((4, 8), (2, 4), (1, 2)).double() if with_mask else None
    nW = 4 if with_mask else 3
    x = torch.randn(2 * nW, 8, 16, dtype=torch.float64)
    assert torch.allclose(attn(x, mask), naive_cosine_attention(attn, x, mask), atol=1e-12, rtol=0)


def naive_local_block(block: LocalDecoderBlock, x):
    """Shifted-window block without windows or rolls: full attention over the grid, allowed pairs only.

    Token (t, f) and (t', f') attend to each other iff they fall in the same cell of the window grid *offset by the
    shift* with partial cells at both edges (boundaries at shift + k * window, no wrap). The bias uses the true
    offsets, which equal the rolled in-window offsets for such pairs. Other pairs get timm_patch's additive -100
    (not -inf: with a large learned bias a masked pair can keep a weight of ~exp(-100 + bias gap), as released).
    """
    B, N, C = x.shape
    H, W = block.feat_size
    attn, h = block.attn, block.attn.heads
    t, f = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    t, f = t.flatten(), f.flatten()  # time-major token order
    cell_t = torch.div(t - block.shift[0], block.window[0], rounding_mode="floor")
    cell_f = torch.div(f - block.shift[1], block.window[1], rounding_mode="floor")
    allowed = (cell_t[:, None] == cell_t[None]) & (cell_f[:, None] == cell_f[None])  # [N, N]
    rel = torch.stack([t[:, None] - t[None], f[:, None] - f[None]], -1).to(x.dtype)  # query - key
    log_rel = (torch.sign(rel) * torch.log1p(rel.abs())).float().to(x.dtype)  # the released buffer is float32
    bias = attn.meta_mlp(log_rel).permute(2, 0, 1)  # [h, N, N]
    q, k, v = attn.qkv(x).view(B, N, 3, h, C // h).permute(2, 0, 3, 1, 4).unbind(0)
    cos = (q / q.norm(dim=-1, keepdim=True)) @ (k / k.norm(dim=-1, keepdim=True)).transpose(-2, -1)
    logits = cos / attn.tau.clamp(min=0.01).view(1, h, 1, 1) + bias
    logits = logits + (~allowed).to(x.dtype) * -100.0
    y = attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(B, N, C))
    x = x + block.norm1(y)
    return x + block.norm2(block.mlp(x))


@pytest.mark.parametrize("shift", [(0, 0), (2, 0), (2, 1)])
def test_local_block_matches_naive_global_attention_with_allowed_pairs(shift):
    torch.manual_seed(0)
    block = randomise(LocalDecoderBlock(16, 2, feat_size=(8, 4), window=(4, 2), shift=shift, meta_hidden=8))
    block = block.double().eval()
    x = torch.randn(3, 32, 16, dtype=torch.float64)
    assert torch.allclose(block(x), naive_local_block(block, x), atol=1e-12, rtol=0)


def test_local_block_never_attends_across_the_wrap():
    """A perturbation of the first time rows reaches, through attention, only their own region (not the grid tail)."""
    torch.manual_seed(0)
    block = randomise(LocalDecoderBlock(8, 2, feat_size=(8, 2), window=(4, 2), shift=(2, 0), meta_hidden=8))
    block = block.double().eval()
    x = torch.randn(1, 16, 8, dtype=torch.float64)
    x2 = x.clone()
    x2[:, :2 * 2] += 1.0  # time rows 0..1 (the wrapped head of the last shifted window)
    changed = (block(x2) - block(x)).abs().sum(-1).view(8, 2).sum(-1) > 1e-12  # per time row
    assert changed.tolist() == [True, True, False, False, False, False, False, False]


def test_local_block_parameter_names_follow_released_checkpoint():
    names = set(LocalDecoderBlock(32, 2, (8, 4)).state_dict())
    expected = {f"{m}.{p}" for m in ("attn.qkv", "attn.proj", "attn.meta_mlp.fc1", "attn.meta_mlp.fc2", "norm1",
                                      "mlp.fc1", "mlp.fc2", "norm2") for p in ("weight", "bias")} | {"attn.tau"}
    assert names == expected


def test_global_block_matches_naive_prenorm_vit():
    torch.manual_seed(0)
    block = randomise(GlobalDecoderBlock(16, 4)).double().eval()
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    y = block.norm1(x)
    q, k, v = block.attn.qkv(y).view(2, 7, 3, 4, 4).permute(2, 0, 3, 1, 4).unbind(0)
    a = (q @ k.transpose(-2, -1) * 4 ** -0.5).softmax(-1)
    x1 = x + block.attn.proj((a @ v).transpose(1, 2).reshape(2, 7, 16))
    ref = x1 + block.mlp.fc2(F.gelu(block.mlp.fc1(block.norm2(x1))))
    assert torch.allclose(block(x), ref, atol=1e-12, rtol=0)


# ------------------------------------------------------------------------------------------------ patchify and loss
def official_patchify(fbank, p):
    """models_mae.py ``patchify`` (audio_exp, no custom patch) verbatim on imgs = fbank.unsqueeze(1)."""
    imgs = fbank.unsqueeze(1)  # [B, 1, T, F]
    h, w = imgs.shape[2] // p, imgs.shape[3] // p
    x = imgs.reshape(imgs.shape[0], 1, h, p, w, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(imgs.shape[0], h * w, p ** 2)


def test_patchify_matches_official_einsum_and_round_trips():
    x = torch.randn(2, 32, 16)  # [B, T, F]: t_dim 8, f_dim 4 at p=4
    p = patchify(x, 4)
    assert torch.equal(p, official_patchify(x, 4))
    assert torch.equal(p[1, 2 * 4 + 3], x[1, 8:12, 12:16].reshape(-1))  # token t=2, f=3; values (t, f)
    assert torch.equal(unpatchify(p, 4, (4, 8)), x)
    pf = patchify(x, 4, token_order="freq")  # frequency-major tokens, same values inside a patch
    assert torch.equal(pf[0, 3 * 8 + 2], p[0, 2 * 4 + 3])
    assert torch.equal(unpatchify(pf, 4, (4, 8), token_order="freq"), x)
    rect = patchify(x, (8, 2))  # patch_time 8, patch_freq 2
    assert rect.shape == (2, 4 * 8, 16) and torch.equal(unpatchify(rect, (8, 2), (8, 4)), x)


def test_norm_pix_mse_hand_case():
    target = torch.tensor([[[1.0, 3.0], [0.0, 0.0], [2.0, 6.0]]])  # [1, 3 patches, 2 values]
    pred = torch.tensor([[[0.0, 0.0], [5.0, 5.0], [1.0, 1.0]]])
    mask = torch.tensor([[1.0, 0.0, 1.0]])  # patch 1 kept: its huge error must not count
    raw = ((1 + 9) / 2 + (1 + 25) / 2) / 2
    assert torch.isclose(norm_pix_mse(pred, target, mask, norm_pix=False), torch.tensor(raw))
    # norm-pix, unbiased var: patch 0 -> (-1, 1) / sqrt(2 + eps); patch 2 -> (-2, 2) / sqrt(8 + eps)
    a, b = 1 / math.sqrt(2 + 1e-6), 2 / math.sqrt(8 + 1e-6)
    normed = (((0 + a) ** 2 + (0 - a) ** 2) / 2 + ((1 + b) ** 2 + (1 - b) ** 2) / 2) / 2
    assert torch.isclose(norm_pix_mse(pred, target, mask), torch.tensor(normed))
    mask_all = torch.ones(1, 3)
    assert norm_pix_mse(pred, target, mask_all) > norm_pix_mse(pred, target, mask)  # kept patch 1 counts now


def official_flexible_sincos(dim, grid_size):
    """util/pos_embed.py ``get_2d_sincos_pos_embed_flexible(dim, grid_size, cls_token=True)`` in numpy."""
    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    gh, gw = np.arange(grid_size[0], dtype=np.float32), np.arange(grid_size[1], dtype=np.float32)
    grid = np.stack(np.meshgrid(gw, gh), axis=0).reshape(2, 1, grid_size[0], grid_size[1])
    emb = np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)
    return np.concatenate([np.zeros([1, dim]), emb], axis=0)


def test_pos_embed_layouts():
    grid = (8, 64)  # (f_dim, t_dim) of 1024 x 128 at 16 x 16
    official = audiomae_pos_embed(32, grid, "official")[0]
    # released: PatchEmbed_org.patch_hw = (8, 64) -> flexible((8, 64)) laid over the time-major tokens as is
    assert torch.allclose(official, torch.from_numpy(official_flexible_sincos(32, (8, 64))).float(), atol=1e-6)
    true_grid = audiomae_pos_embed(32, grid, "grid")[0]
    k = 1 + 5 * 8 + 3  # token t=5, f=3 (time-major)
    assert torch.allclose(true_grid[k, :16], official[1 + 5, :16])  # first half encodes t = 5
    assert torch.allclose(true_grid[k, 16:], official[1 + 3 * 64, 16:])  # last half encodes f = 3
    assert torch.equal(official[0], torch.zeros(32)) and torch.equal(true_grid[0], torch.zeros(32))


# ------------------------------------------------------------------------------------------------------ whole model
def tiny_cfg(**kw) -> AudioMAEConfig:
    enc = EncoderConfig(size="tiny", depth=1, num_mel_bins=16, target_frames=32, patch_freq=4, patch_time=4,
                        stride_freq=4, stride_time=4, cls_tokens=1, pos_embed="sincos", token_order="time")
    base = dict(encoder=enc, decoder_dim=32, decoder_heads=2, decoder_depth=2, meta_hidden=16, mask_ratio=0.75)
    return AudioMAEConfig(**{**base, **kw})  # grid: t_dim 8 x f_dim 4 = 32 patches, 8 visible


@pytest.mark.parametrize("decoder", ["local", "global"])
def test_forward_backward_gradients(decoder):
    torch.manual_seed(0)
    model = AudioMAE(tiny_cfg(decoder=decoder))
    x = torch.randn(2, 32, 16)
    masks = model.draw_masks(2, torch.Generator().manual_seed(1))
    out = model(x, *masks)
    assert isinstance(out, MAEOutput) and out.pred.shape == (2, 32, 16) and out.loss.ndim == 0
    assert torch.equal(out.mask, masks[2]) and out.mask.sum() == 2 * 24
    assert torch.isclose(out.loss, norm_pix_mse(out.pred, patchify(x, 4), out.mask))
    out.loss.backward()
    for name, p in model.named_parameters():
        if "pos_embed" in name:
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert model.mask_token.grad.abs().sum() > 0 and model.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    if decoder == "local":
        assert all(blk.attn.tau.grad.abs().sum() > 0 for blk in model.decoder_blocks)


def test_bf16_module_as_deepspeed_casts_it():
    """DeepSpeed bf16 casts every parameter and buffer; masks arrive as float32 / int64 CPU tensors."""
    torch.manual_seed(0)
    model = AudioMAE(tiny_cfg()).bfloat16()
    x = torch.randn(2, 32, 16).bfloat16()
    out = model(x, *model.draw_masks(2, torch.Generator().manual_seed(1)))
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss) and out.pred.dtype == torch.bfloat16
    out.loss.backward()
    assert torch.isfinite(model.decoder_blocks[1].attn.tau.grad).all()


def test_masked_tokens_do_not_reach_the_encoder():
    torch.manual_seed(0)
    model = AudioMAE(tiny_cfg()).eval()
    ids_keep, ids_restore, mask = model.draw_masks(1, torch.Generator().manual_seed(3))
    x = torch.randn(1, 32, 16)
    x2 = x.clone()
    t, f = divmod(int(mask[0].nonzero()[0]), 4)  # a removed token
    x2[0, 4 * t:4 * t + 4, 4 * f:4 * f + 4] += 10.0
    assert torch.equal(model.forward_encoder(x, ids_keep), model.forward_encoder(x2, ids_keep))


@pytest.mark.parametrize("decoder", ["local", "global"])
def test_decoder_unshuffles_visible_tokens_and_mask_tokens_into_place(decoder):
    torch.manual_seed(0)
    model = AudioMAE(tiny_cfg(decoder=decoder)).eval()
    ids_keep, ids_restore, mask = model.draw_masks(2, torch.Generator().manual_seed(5))
    latent = torch.randn(2, 1 + ids_keep.shape[1], 192)
    seen = {}
    model.decoder_blocks[0].register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    model.forward_decoder(latent, ids_restore)
    x, emb, pos = seen["x"], model.decoder_embed(latent), model.decoder_pos_embed[0]
    c = 0 if decoder == "local" else 1  # the local decoder drops cls
    if c:
        assert torch.allclose(x[:, 0], emb[:, 0] + pos[0])
    for b in range(2):
        for j, k in enumerate(ids_keep[b].tolist()):
            assert torch.allclose(x[b, c + k], emb[b, 1 + j] + pos[1 + k])
        for k in mask[b].nonzero().flatten().tolist():
            assert torch.allclose(x[b, c + k], model.mask_token[0, 0] + pos[1 + k])


def test_determinism_given_a_generator():
    torch.manual_seed(0)
    model = AudioMAE(tiny_cfg()).eval()  # eval: no meta_mlp dropout
    x = torch.randn(2, 32, 16)
    a = model(x, *model.draw_masks(2, torch.Generator().manual_seed(7)))
    b = model(x, *model.draw_masks(2, torch.Generator().manual_seed(7)))
    c = model(x, *model.draw_masks(2, torch.Generator().manual_seed(8)))
    assert torch.equal(a.loss, b.loss) and torch.equal(a.pred, b.pred)
    assert not torch.equal(a.mask, c.mask)


def test_config_defaults_and_structure():
    cfg = AudioMAEConfig()
    assert cfg.num_decoder_blocks == 16 and AudioMAEConfig(decoder="global").num_decoder_blocks == 8
    model = AudioMAE(tiny_cfg(decoder_depth=None, pos_embed_layout="official"))
    assert len(model.decoder_blocks) == 16
    assert [b.shift for b in model.decoder_blocks[:4]] == [(0, 0), (2, 0), (0, 0), (2, 0)]
    assert torch.equal(model.encoder.pos_embed, audiomae_pos_embed(192, (4, 8), "official"))
    assert torch.equal(model.decoder_pos_embed, audiomae_pos_embed(32, (4, 8), "official"))
    keys = set(model.state_dict())
    assert {"mask_token", "decoder_pos_embed", "decoder_embed.weight", "decoder_norm.weight", "decoder_pred.weight",
            "decoder_blocks.15.attn.tau", "decoder_blocks.15.attn.meta_mlp.fc2.weight"} <= keys
    with pytest.raises(ValueError, match="decoder"):
        AudioMAEConfig(decoder="mvit")
    with pytest.raises(ValueError, match="divisible by the window"):  # t_dim 6 vs window 4
        tiny_cfg(encoder=EncoderConfig(num_mel_bins=16, target_frames=24, patch_freq=4, patch_time=4, stride_freq=4,
                                       stride_time=4, pos_embed="sincos", token_order="time"))
    with pytest.raises(ValueError, match="token_order"):
        tiny_cfg(encoder=EncoderConfig(num_mel_bins=16, target_frames=32, patch_freq=4, patch_time=4, stride_freq=4,
                                       stride_time=4, pos_embed="sincos", token_order="freq"))
