"""The shared encoder: grid arithmetic, layer outputs, token order, pos-embeds and SSAST's adaptation, SDPA."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pretrain.encoder import (Attention, Encoder, EncoderConfig, adapt_pos_embed, freq_ids_to_tokens,
                              reorder_pos_embed, sincos_pos_embed, token_permutation)


def tiny(**kw) -> EncoderConfig:
    kw.setdefault("depth", 2)
    return EncoderConfig(size="tiny", **kw)


# (num_mel_bins, target_frames, patch_f, patch_t, stride_f, stride_t) -> (f_dim, t_dim); models.md §1.2 / §2.2
GRIDS = [
    ((128, 1024, 16, 16, 16, 16), (8, 64)),  # SSAST / Audio-MAE pretraining: 512
    ((128, 1024, 16, 16, 10, 10), (12, 101)),  # AudioSet fine-tuning, overlapping: 1212
    ((128, 512, 16, 16, 10, 10), (12, 50)),  # ESC-50: 600
    ((128, 128, 16, 16, 10, 10), (12, 12)),  # Speech Commands: 144
    ((128, 100, 16, 16, 10, 10), (12, 9)),  # 1 s TAU clip: 108
    ((128, 1024, 128, 2, 128, 2), (1, 512)),  # frame model pretraining
    ((128, 1024, 128, 2, 128, 1), (1, 1023)),  # frame model fine-tuning
    ((128, 512, 128, 2, 128, 1), (1, 511)),
    ((128, 128, 128, 2, 128, 1), (1, 127)),
    ((128, 512, 16, 16, 16, 16), (8, 32)),  # Audio-MAE ESC: 256
    ((128, 128, 16, 16, 16, 16), (8, 8)),  # Audio-MAE SPC: 64
    ((64, 1000, 16, 16, 16, 16), (4, 62)),  # leftover frames are dropped (no padding)
]


@pytest.mark.parametrize("shape, grid", GRIDS)
def test_grid_arithmetic(shape, grid):
    mel, frames, pf, pt, sf, st = shape
    cfg = tiny(num_mel_bins=mel, target_frames=frames, patch_freq=pf, patch_time=pt, stride_freq=sf, stride_time=st)
    assert cfg.grid == grid and cfg.num_patches == grid[0] * grid[1]


@pytest.mark.parametrize("shape, grid", [GRIDS[1], GRIDS[4], GRIDS[6], GRIDS[11]])
@pytest.mark.parametrize("order", ["freq", "time"])
def test_forward_shapes(shape, grid, order):
    mel, frames, pf, pt, sf, st = shape
    cfg = tiny(depth=1, num_mel_bins=mel, target_frames=frames, patch_freq=pf, patch_time=pt, stride_freq=sf,
               stride_time=st, cls_tokens=2, token_order=order)
    enc = Encoder(cfg)
    x = torch.randn(2, frames, mel)
    n = grid[0] * grid[1]
    assert enc.grid == grid and enc.embed(x).shape == (2, n, 192)
    assert enc.patches(x).shape == (2, n, pf * pt)
    out = enc(x)
    assert out.last.shape == (2, 2 + n, 192) and out.num_cls == 2 and len(out.layers) == 1


def test_config_errors_name_the_fields():
    with pytest.raises(ValueError, match="patch_freq=160.*num_mel_bins=128"):
        EncoderConfig(patch_freq=160)
    with pytest.raises(ValueError, match="patch_time=16.*target_frames=8"):
        EncoderConfig(target_frames=8)
    with pytest.raises(ValueError, match="size='huge'"):
        EncoderConfig(size="huge")
    with pytest.raises(ValueError, match="token_order='row'"):
        EncoderConfig(token_order="row")
    with pytest.raises(ValueError, match="stride_time=0"):
        EncoderConfig(stride_time=0)
    with pytest.raises(ValueError, match="expected fbank"):
        Encoder(tiny(depth=1, target_frames=64))(torch.randn(1, 128, 64))  # [B, F, T] passed by mistake


def test_sizes_and_timm_parameter_names():
    cfg = EncoderConfig(size="base")
    assert (cfg.embed_dim, cfg.num_layers, cfg.num_heads) == (768, 12, 12)
    assert (EncoderConfig(size="large").num_layers, EncoderConfig(size="tiny", depth=3).num_layers) == (24, 3)
    names = {n: tuple(p.shape) for n, p in Encoder(tiny(depth=1, cls_tokens=2)).named_parameters()}
    assert names["blocks.0.attn.qkv.weight"] == (576, 192) and "blocks.0.attn.qkv.bias" in names
    assert names["blocks.0.mlp.fc1.weight"] == (768, 192) and names["patch_embed.proj.weight"] == (192, 1, 16, 16)
    assert names["cls_tokens"] == (1, 2, 192) and names["pos_embed"] == (1, 514, 192)
    assert {"norm.weight", "blocks.0.norm1.weight", "blocks.0.norm2.bias", "blocks.0.attn.proj.weight",
            "blocks.0.mlp.fc2.weight"} <= set(names)


def test_layer_outputs_and_final_norm():
    enc = Encoder(tiny(depth=3, target_frames=128)).eval()
    out = enc(torch.randn(2, 128, 128))
    assert len(out.layers) == 3 and all(h.shape == (2, 1 + 64, 192) for h in out.layers)
    torch.testing.assert_close(out.last, enc.norm(out.layers[-1]))
    last, layers = enc.run_blocks(enc.prepend_cls(enc.add_pos(enc.embed(torch.randn(1, 128, 128)))))
    assert layers == [] and last.shape == (1, 65, 192)
    keep = torch.tensor([[0, 5, 9], [1, 2, 63]])
    out = enc(torch.randn(2, 128, 128), return_layers=False, ids_keep=keep)
    assert out.last.shape == (2, 4, 192) and out.layers == []


def test_patches_match_conv_layout():
    """conv(x) = patches(x) @ W.view(D, -1)^T + b: the target layout is the conv's (freq, time) kernel layout."""
    for order in ("freq", "time"):
        enc = Encoder(tiny(depth=1, target_frames=64, stride_freq=10, stride_time=12, token_order=order))
        x = torch.randn(2, 64, 128, dtype=torch.float64)
        enc = enc.double()
        w, b = enc.patch_embed.proj.weight, enc.patch_embed.proj.bias
        torch.testing.assert_close(enc.embed(x), enc.patches(x) @ w.view(w.shape[0], -1).T + b)


def test_token_orders_are_a_permutation_and_audiomae_conv_is_transposed():
    torch.manual_seed(0)
    kw = dict(depth=2, target_frames=96, stride_freq=10, stride_time=10, cls_tokens=1)
    fmaj, tmaj = Encoder(tiny(token_order="freq", **kw)).eval(), Encoder(tiny(token_order="time", **kw)).eval()
    tmaj.load_adapted(fmaj.state_dict(), old_token_order="freq")  # reorders the learned pos rows
    perm = token_permutation(fmaj.grid, "time")
    x = torch.randn(2, 96, 128)
    torch.testing.assert_close(tmaj.embed(x), fmaj.embed(x)[:, perm])
    torch.testing.assert_close(tmaj(x).last[:, 1:], fmaj(x).last[:, 1:][:, perm], atol=1e-5, rtol=1e-5)
    # Audio-MAE's conv runs on [B, 1, T, F] with weight (D, 1, time, freq): ours is its transpose(2, 3).
    w_mae = fmaj.patch_embed.proj.weight.transpose(2, 3)
    mae = F.conv2d(x.unsqueeze(1), w_mae, fmaj.patch_embed.proj.bias, stride=(10, 10)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(tmaj.embed(x), mae, atol=1e-5, rtol=1e-5)
    # freq-major ids -> time-major token ids, and back through the permutation
    ids = torch.arange(fmaj.num_patches)
    assert torch.equal(perm[freq_ids_to_tokens(ids, fmaj.grid, "time")], ids)


def _mae_2d_sincos_flexible(embed_dim, grid_size):
    """Literal numpy copy of AudioMAE util/pos_embed.py get_2d_sincos_pos_embed_flexible (cls_token=False)."""
    def one_d(dim, pos):
        omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
        omega = 1.0 / 10000 ** omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid_h = np.arange(grid_size[0], dtype=np.float32)
    grid_w = np.arange(grid_size[1], dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape([2, 1, grid_size[0], grid_size[1]])
    return np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)


def test_sincos_pos_embed():
    enc = Encoder(tiny(depth=1, target_frames=256, pos_embed="sincos", cls_tokens=2, token_order="time"))
    assert not enc.pos_embed.requires_grad and torch.all(enc.pos_embed[:, :2] == 0)
    ref = torch.from_numpy(_mae_2d_sincos_flexible(192, (8, 16))).float()  # rows (f, t) freq-major
    torch.testing.assert_close(sincos_pos_embed(192, (8, 16), "freq", 1)[0, 1:], ref)
    torch.testing.assert_close(enc.pos_embed[0, 2:], ref[token_permutation((8, 16), "time")])


def test_learned_pos_embed_init():
    enc = Encoder(EncoderConfig(size="small", depth=1, cls_tokens=2))
    pos = enc.pos_embed
    assert pos.requires_grad and pos.shape == (1, 514, 384) and pos.abs().max() <= 2.0
    assert abs(pos.std().item() - 0.02) < 0.002 and pos[:, :2].abs().sum() > 0  # cls rows are trained too
    assert abs(enc.cls_tokens.std().item() - 0.02) < 0.01 and torch.all(enc.blocks[0].attn.qkv.bias == 0)
    w = enc.patch_embed.proj.weight
    bound = math.sqrt(6 / (w.shape[0] + w[0].numel()))  # xavier_uniform on the flattened (D, 256) weight
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound


def _ssast_adapt_reference(pos, p_f, p_t, f, t, cls=2):
    """Literal copy of the fine-tuning branch of SSAST src/models/ast_models.py (hard-coded 8 included)."""
    d = pos.shape[-1]
    new = pos[:, cls:, :].detach().reshape(1, p_f * p_t, d).transpose(1, 2).reshape(1, d, p_f, p_t)
    if t < p_t:
        new = new[:, :, :, int(p_t / 2) - int(t / 2): int(p_t / 2) - int(t / 2) + t]
    else:
        new = F.interpolate(new, size=(8, t), mode="bilinear")
    if f < p_f:
        new = new[:, :, int(p_f / 2) - int(f / 2): int(p_f / 2) - int(f / 2) + f, :]  # bug (+ t) fixed
    else:
        new = F.interpolate(new, size=(f, t), mode="bilinear")
    new = new.reshape(1, d, f * t).transpose(1, 2)
    return torch.cat([pos[:, :cls, :].detach(), new], dim=1)


@pytest.mark.parametrize("old, new", [((8, 64), (12, 101)), ((8, 64), (12, 50)), ((8, 64), (8, 50)),
                                      ((8, 64), (12, 12)), ((8, 64), (4, 80)), ((1, 512), (1, 1023))])
def test_adapt_pos_embed_matches_ssast(old, new):
    torch.manual_seed(0)
    pos = torch.randn(1, 2 + old[0] * old[1], 24)
    ours = adapt_pos_embed(pos, old, new, num_cls=2)
    torch.testing.assert_close(ours, _ssast_adapt_reference(pos, *old, *new), atol=1e-6, rtol=1e-6)
    # same rows in the other token order
    pos_t = reorder_pos_embed(pos, old, 2, "freq", "time")
    ours_t = adapt_pos_embed(pos_t, old, new, num_cls=2, token_order="time")
    torch.testing.assert_close(ours_t, reorder_pos_embed(ours, new, 2, "freq", "time"))


def test_adapt_pos_embed_two_steps_time_cut_then_freq():
    """(8,64) -> (8,50) (cols 7:57) -> (12,50) equals the direct (8,64) -> (12,50) (SSAST's ESC case)."""
    pos = torch.randn(1, 2 + 512, 16)
    step = adapt_pos_embed(pos, (8, 64), (8, 50), 2)
    torch.testing.assert_close(step[:, 2:].reshape(8, 50, 16), pos[:, 2:].reshape(8, 64, 16)[:, 7:57])
    torch.testing.assert_close(adapt_pos_embed(step, (8, 50), (12, 50), 2), adapt_pos_embed(pos, (8, 64), (12, 50), 2))


def test_ssast_freq_cut_bug_flag():
    pos = torch.randn(1, 2 + 512, 8)
    with pytest.raises(ValueError, match="ssast_freq_cut_bug"):  # slice [3 : 3 + t=3] keeps 3 rows, not 2
        adapt_pos_embed(pos, (8, 64), (2, 3), 2, ssast_freq_cut_bug=True)
    torch.testing.assert_close(adapt_pos_embed(pos, (8, 64), (4, 4), 2, ssast_freq_cut_bug=True),
                               adapt_pos_embed(pos, (8, 64), (4, 4), 2))  # t == f: the bug is invisible


def test_load_adapted_into_stride10_encoder_of_another_length():
    src = Encoder(tiny(depth=1, cls_tokens=2))  # (8, 64) at stride 16, 1024 frames
    dst = Encoder(tiny(depth=1, cls_tokens=2, target_frames=512, stride_freq=10, stride_time=10))  # (12, 50)
    with pytest.raises(ValueError, match="old_grid"):
        dst.load_adapted(src.state_dict())
    dst.load_adapted(src.state_dict(), old_grid=(8, 64))
    torch.testing.assert_close(dst.pos_embed.detach(), adapt_pos_embed(src.pos_embed.detach(), (8, 64), (12, 50), 2))
    torch.testing.assert_close(dst.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)
    torch.testing.assert_close(dst.patch_embed.proj.weight, src.patch_embed.proj.weight)
    assert dst(torch.randn(1, 512, 128)).last.shape == (1, 602, 192)
    with pytest.raises(ValueError, match="patch kernel"):
        Encoder(tiny(depth=1, cls_tokens=2, patch_freq=128, patch_time=2, stride_freq=128, stride_time=2)
                ).load_adapted(src.state_dict(), old_grid=(8, 64))


def test_load_adapted_sincos_keeps_the_checkpoint_table_on_the_same_grid():
    cfg = dict(depth=1, target_frames=128, pos_embed="sincos", token_order="time")
    src, dst = Encoder(tiny(**cfg)), Encoder(tiny(**cfg))
    sd = src.state_dict()
    sd["pos_embed"] = torch.randn_like(sd["pos_embed"])  # e.g. Audio-MAE's own (8, 64) layout
    dst.load_adapted(sd)
    torch.testing.assert_close(dst.pos_embed.detach(), sd["pos_embed"])
    other = Encoder(tiny(**cfg, stride_freq=10, stride_time=10))  # (12, 12): rebuilt, not interpolated
    other.load_adapted(sd, old_grid=(8, 8))
    torch.testing.assert_close(other.pos_embed.detach(), sincos_pos_embed(192, (12, 12), "time", 1))


def test_sdpa_attention_equals_naive_softmax_float64():
    torch.manual_seed(0)
    attn = Attention(24, 3).double()
    x = torch.randn(2, 7, 24, dtype=torch.float64)
    q, k, v = attn.qkv(x).reshape(2, 7, 3, 3, 8).permute(2, 0, 3, 1, 4)  # timm's layout: [3, B, H, L, d]
    naive = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8), dim=-1) @ v  # timm 0.4.5 Attention
    ref = attn.proj(naive.transpose(1, 2).reshape(2, 7, 24))
    torch.testing.assert_close(attn(x), ref, atol=1e-12, rtol=1e-12)


def test_drop_path_rates_increase_linearly_and_eval_is_deterministic():
    enc = Encoder(tiny(depth=4, target_frames=32, drop_path=0.3))
    assert [round(b.drop_path.p, 6) for b in enc.blocks] == [0.0, 0.1, 0.2, 0.3]
    x = torch.randn(2, 32, 128)
    enc.eval()
    torch.testing.assert_close(enc(x).last, enc(x).last)
