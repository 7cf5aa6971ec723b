"""The pure maskers: SSAST clustered / uniform patch masks, MAE random and 2-D masks."""
from __future__ import annotations

import random
import time

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pretrain.encoder import freq_ids_to_tokens
from pretrain.masking import (
    mae_mask_2d,
    mae_random_masking,
    mask_2d_from_noise,
    masking_from_noise,
    random_mask_ids,
    ssast_cluster_mask,
)
from pretrain.tools.reference_mae import OfficialAudioMAEViT
from pretrain.tools.reference_ssast import gen_maskid_patch

# Masked fraction per frequency row of the official generator on 8x64 (models.md §1.3).
OFFICIAL_ROW_RATES = torch.tensor([0.42, 0.67, 0.81, 0.87, 0.89, 0.89, 0.89, 0.82])


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _row_rates(ids: torch.Tensor, grid=(8, 64)) -> torch.Tensor:
    m = torch.zeros(ids.shape[0], grid[0] * grid[1]).scatter_(1, ids, 1.0)
    return m.view(-1, *grid).mean(dim=(0, 2))


def test_cluster_mask_counts_unique_and_never_index0():
    ids = ssast_cluster_mask(64, (8, 64), 400, generator=gen())
    assert ids.shape == (64, 400) and ids.dtype == torch.long
    assert all(len(set(row.tolist())) == 400 for row in ids)
    assert ids.min() >= 1 and ids.max() < 512
    assert torch.all(ids[:, 1:] > ids[:, :-1])  # ascending


def test_cluster_mask_is_deterministic_given_the_generator():
    a = ssast_cluster_mask(8, (8, 64), generator=gen(3))
    assert torch.equal(a, ssast_cluster_mask(8, (8, 64), generator=gen(3)))
    assert not torch.equal(a, ssast_cluster_mask(8, (8, 64), generator=gen(4)))


def test_faithful_row_profile_matches_official_generator():
    ours = _row_rates(ssast_cluster_mask(400, (8, 64), 400, generator=gen(1)))
    rng = random.Random(0)
    official = _row_rates(torch.tensor([gen_maskid_patch(512, 400, 64, rng=rng).tolist() for _ in range(150)]))
    assert torch.allclose(ours, OFFICIAL_ROW_RATES, atol=0.02), ours
    assert torch.allclose(official, OFFICIAL_ROW_RATES, atol=0.03), official
    fixed = _row_rates(ssast_cluster_mask(400, (8, 64), 400, generator=gen(1), faithful=False))
    assert fixed[7] > fixed[6] - 0.02 and fixed[7] > ours[7] + 0.03  # no more cut in the top row


def test_cluster_shape_is_a_block_with_wrap():
    """n_mask=8 with 3x3 clusters: one whole block (9 > 8 ids) ends the loop; the lowest 8 of it are kept."""
    grid = (32, 64)
    ids = ssast_cluster_mask(200, grid, 8, (3, 3), generator=gen(2))
    block = torch.tensor([64 * i + j for i in range(3) for j in range(3)])
    hits = sum(torch.equal(row, (row[0] + block)[:8]) for row in ids)
    assert hits >= 160  # the rest started in the last two rows or at 0 and needed a second block
    wrap = ssast_cluster_mask(1, (4, 4), 9, (3, 3), generator=gen(0))  # t_dim=4 < 3+start%4: j wraps a row
    assert wrap.shape == (1, 9) and len(set(wrap[0].tolist())) == 9


def test_cluster_mask_time_order_is_the_same_patches():
    grid = (8, 64)
    f = ssast_cluster_mask(4, grid, generator=gen(5))
    t = ssast_cluster_mask(4, grid, generator=gen(5), token_order="time")
    assert torch.equal(freq_ids_to_tokens(f, grid, "time").sort(1).values, t)


def test_cluster_mask_is_fast():
    threads, times = torch.get_num_threads(), []
    torch.set_num_threads(1)  # as in a data worker; intra-op threads only fight over a busy shared CPU
    try:
        for _ in range(8):
            t0 = time.perf_counter()
            ssast_cluster_mask(64, (8, 64), generator=gen())
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    assert min(times) < 0.05, times  # ~2 ms per batch of 64 on one core; the min ignores a busy CPU


def test_random_mask_ids():
    ids = random_mask_ids(16, 512, 400, generator=gen())
    assert ids.shape == (16, 400) and all(len(set(r.tolist())) == 400 for r in ids)
    assert ids.min() >= 0 and ids.max() < 512 and (ids == 0).any()  # the frame model can mask index 0
    assert torch.equal(ids, random_mask_ids(16, 512, 400, generator=gen()))


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 5), n=st.integers(1, 300), ratio=st.floats(0.0, 0.95), seed=st.integers(0, 2**31))
def test_mae_random_masking_properties(b, n, ratio, seed):
    keep, restore, mask = mae_random_masking(b, n, ratio, generator=gen(seed))
    k = int(n * (1 - ratio))
    assert keep.shape == (b, k) and restore.shape == (b, n) and mask.shape == (b, n)
    assert torch.all(mask.sum(1) == n - k)
    assert torch.all(mask.gather(1, keep) == 0)
    shuffle = restore.argsort(1)
    assert torch.equal(shuffle[:, :k], keep)
    assert torch.equal(shuffle.gather(1, restore), torch.arange(n).expand(b, n))  # restore inverts the shuffle


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 4), f=st.integers(1, 12), t=st.integers(1, 40), rt=st.floats(0.0, 0.9),
       rf=st.floats(0.0, 0.9), order=st.sampled_from(["freq", "time"]), seed=st.integers(0, 2**31))
def test_mae_mask_2d_properties(b, f, t, rt, rf, order, seed):
    kt, kf = int(t * (1 - rt)), int(f * (1 - rf))
    if kt == 0 or kf == 0:
        return
    keep, restore, mask = mae_mask_2d(b, (f, t), rt, rf, generator=gen(seed), token_order=order)
    assert keep.shape == (b, kt * kf) and torch.all(mask.sum(1) == f * t - kt * kf)
    assert torch.all(mask.gather(1, keep) == 0) and torch.all(keep[:, 1:] > keep[:, :-1])
    shuffle = restore.argsort(1)
    assert torch.equal(shuffle[:, :kt * kf], keep)
    assert torch.equal(shuffle.gather(1, restore), torch.arange(f * t).expand(b, -1))
    grid = mask.view(b, f, t) if order == "freq" else mask.view(b, t, f).transpose(1, 2)  # [B, f, t]
    kept = grid == 0
    assert torch.all(kept.any(2).sum(1) == kf) and torch.all(kept.any(1).sum(1) == kt)  # whole rows / columns


# Hand-worked: argsort([.5, .1, .9, .3]) = [1, 3, 0, 2], so the official rule keeps tokens {1, 3} (the two smallest
# noises); the inverse permutation [2, 0, 3, 1] would keep {0, 2} instead. For frequency argsort([.7, .2, .4]) =
# [1, 2, 0]: bands {1, 2} (not {0, 2}).
NOISE_T, NOISE_F = torch.tensor([[0.5, 0.1, 0.9, 0.3]]), torch.tensor([[0.7, 0.2, 0.4]])


def test_1d_masking_keeps_the_smallest_noises_as_official():
    keep, restore, mask = masking_from_noise(NOISE_T, 2)
    assert keep.tolist() == [[1, 3]] and restore.tolist() == [[2, 0, 3, 1]] and mask.tolist() == [[1, 0, 1, 0]]


def test_2d_masking_keeps_the_smallest_time_and_frequency_noises_as_official():
    # f_dim 3 x t_dim 4, time steps {1, 3} x bands {1, 2}: time-major ids t*3+f, frequency-major ids f*4+t
    keep, restore, mask = mask_2d_from_noise(NOISE_T, NOISE_F, 2, 2, token_order="time")
    assert keep.tolist() == [[4, 5, 10, 11]]
    assert mask.view(4, 3).tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 1], [1, 0, 0]]  # [t, f]
    assert restore.argsort(1)[:, :4].tolist() == [[4, 5, 10, 11]]
    assert mask_2d_from_noise(NOISE_T, NOISE_F, 2, 2, token_order="freq")[0].tolist() == [[5, 7, 9, 11]]


def test_2d_masking_equals_the_official_random_masking_2d_on_the_same_noise():
    """mae_mask_2d draws the time noise, then the frequency noise; the reference models_vit.py ``random_masking_2d``
    on that noise keeps the same tokens (in noise order), and its masked forward equals our classifier's with them."""
    from finetune.heads import HeadConfig, build_head
    from finetune.model import Classifier
    from pretrain.encoder import Encoder
    from pretrain.official import load_official_audiomae

    b, (f_dim, t_dim), rt, rf = 3, (8, 5), 0.4, 0.3  # keeps 3 of 5 time steps x 5 of 8 bands
    keep, _, _ = mae_mask_2d(b, (f_dim, t_dim), rt, rf, generator=gen(7), token_order="time")
    g = gen(7)
    noise_t, noise_f = torch.rand(b, t_dim, generator=g), torch.rand(b, f_dim, generator=g)
    vit = OfficialAudioMAEViT(num_classes=3, img_size=(16 * t_dim, 128), embed_dim=192, depth=1, num_heads=3,
                              drop_path_rate=0.0).double()
    with torch.no_grad():
        for p in vit.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype) + (p.ndim == 1) * 1.0)
    vit.eval()
    ids = torch.arange(f_dim * t_dim, dtype=torch.float64).view(1, -1, 1).expand(b, -1, 2)  # token id as feature
    kept = vit.random_masking_2d(ids, rt, rf, noise_t, noise_f)[..., 0].long()
    assert kept.shape == (b, 3 * 5) and torch.equal(kept.sort(1).values, keep)
    cfg, enc_sd = load_official_audiomae({"model": vit.state_dict()})
    encoder = Encoder(cfg).double()
    encoder.load_state_dict(enc_sd)
    head = build_head(HeadConfig(kind="mean_fc_norm"), 192, 1, 3).double()
    head.norm.load_state_dict(vit.fc_norm.state_dict())
    head.mlp[-1].load_state_dict(vit.head.state_dict())
    model = Classifier(encoder, head).eval()
    x = torch.randn(b, 16 * t_dim, 128, dtype=torch.float64, generator=g)  # [B, T, F]
    with torch.no_grad():
        torch.testing.assert_close(model(x, keep), vit(x.unsqueeze(1), rt, rf, noise_t, noise_f), atol=1e-10,
                                   rtol=1e-10)
