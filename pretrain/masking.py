"""Pure maskers: SSAST's clustered / random patch masks and MAE's random / 2-D masks.

Every masker takes a ``torch.Generator`` and returns CPU tensors; the models take the indices as input and never
draw random numbers in ``forward``. Conventions: token indices are in the encoder's token order (``"freq"``:
f*t_dim+t, SSAST; ``"time"``: t*f_dim+f, Audio-MAE); MAE masks use 0 = keep, 1 = remove.
The MAE maskers apply the official rule to their noise (:func:`masking_from_noise`, :func:`mask_2d_from_noise`: the
same noise keeps the same tokens as the official code). The streams of random numbers differ from the official
Python ``random`` / ``torch.rand`` calls, so the masks match the official ones in distribution, not bit for bit.
"""
from __future__ import annotations

import torch
from torch import Tensor

from pretrain.encoder import freq_ids_to_tokens


def _sorted_rows(keep: Tensor, n: int) -> Tensor:
    """bool [B, N] with exactly ``n`` True per row -> their indices [B, n], ascending."""
    return keep.nonzero()[:, 1].view(keep.shape[0], n)


def ssast_cluster_mask(batch: int, grid: tuple[int, int], n_mask: int = 400, cluster_range: tuple[int, int] = (3, 5),
                       *, generator: torch.Generator, token_order: str = "freq", faithful: bool = True) -> Tensor:
    """SSAST's clustered patch mask (src/models/ast_models.py ``gen_maskid_patch``) -> LongTensor [B, n_mask].

    Per sample: a cluster size c ~ U{cluster_range} (official ``randrange(3) + 3``); then blocks of ids
    ``start + t_dim*i + j`` (i, j < c; ``start ~ U[0, N)``; i steps frequency, j steps time and wraps into the next
    frequency row; ids outside (0, N) dropped, so index 0 is never masked) are added until more than ``n_mask``
    distinct ids are covered. Truncation to ``n_mask``: ``faithful=True`` keeps the lowest ids, as the official
    ``list(set(ids))[:n_mask]`` does (CPython iterates a set of small ints in ascending order), which drops the
    highest frequency rows first (row rates ~ .42 .67 .81 .87 .89 .89 .89 .82 on 8x64); ``faithful=False`` keeps a
    uniform random subset of the candidates (the fix). Ids come back ascending, in ``token_order``.

    Vectorised over the batch: all blocks of a round are drawn at once and the stopping block is found from the
    first block that covers each id (the union after block k = ids first covered at <= k).
    """
    f_dim, t_dim = grid
    n = f_dim * t_dim
    lo, hi = cluster_range
    if not 0 < n_mask < n:
        raise ValueError(f"n_mask={n_mask}: expected 0 < n_mask < {n} patches (index 0 is never masked)")
    if not 1 <= lo <= hi:
        raise ValueError(f"cluster_range={cluster_range}: expected 1 <= low <= high")
    clus = torch.randint(lo, hi + 1, (batch,), generator=generator)  # [B]
    ij = torch.arange(hi)
    offsets = (t_dim * ij.view(-1, 1) + ij.view(1, -1)).reshape(-1)  # [hi*hi], i-major like the official loop
    inside = (ij.view(-1, 1) < clus.view(-1, 1, 1)) & (ij.view(1, -1) < clus.view(-1, 1, 1))  # [B, hi, hi]
    inside = inside.view(batch, 1, -1)  # [B, 1, hi*hi]
    # The official loop needs ~ 2.4*n_mask/c^2 blocks at 78% coverage; rounds of that many, continued if short.
    per_round = max(8, int(3 * n_mask / lo ** 2))
    first = torch.full((batch, n + 1), torch.iinfo(torch.long).max, dtype=torch.long)  # first block covering id
    done = torch.zeros(batch, dtype=torch.bool)
    stop = torch.zeros(batch, dtype=torch.long)  # index of the last block drawn per sample
    drawn = 0
    while not bool(done.all()):
        start = torch.randint(0, n, (batch, per_round), generator=generator)  # [B, R]
        cand = start.unsqueeze(-1) + offsets  # [B, R, hi*hi]
        cand = torch.where(inside & (cand > 0) & (cand < n), cand, n)  # column n: discarded
        block = (drawn + torch.arange(per_round)).view(1, -1, 1).expand_as(cand)
        first.scatter_reduce_(1, cand.reshape(batch, -1), block.reshape(batch, -1), reduce="amin")
        drawn += per_round
        hist = torch.zeros(batch, drawn + 1, dtype=torch.long)
        covered = first[:, :n]
        hist.scatter_add_(1, covered.clamp(max=drawn), torch.ones_like(covered))  # ids first covered at block k
        union = hist[:, :drawn].cumsum(1)  # [B, drawn]: distinct ids after block k
        over = union > n_mask
        stop = torch.where(done, stop, over.int().argmax(1))
        done = over.any(1)
    cand = first[:, :n] <= stop.view(-1, 1)  # [B, N]: the official mask_id set
    if faithful:
        keep = cand & (cand.cumsum(1) <= n_mask)  # the n_mask lowest ids
    else:
        score = torch.rand(batch, n, generator=generator).masked_fill(~cand, 2.0)
        keep = torch.zeros_like(cand).scatter_(1, score.topk(n_mask, dim=1, largest=False).indices, True)
    ids = _sorted_rows(keep, n_mask)
    if token_order != "freq":
        ids = freq_ids_to_tokens(ids, grid, token_order).sort(dim=1).values
    return ids


def random_mask_ids(batch: int, n_tokens: int, n_mask: int, *, generator: torch.Generator) -> Tensor:
    """SSAST frame-model mask (``gen_maskid_frame``: ``random.sample(range(N), n_mask)``) -> [B, n_mask] ascending."""
    if not 0 < n_mask <= n_tokens:
        raise ValueError(f"n_mask={n_mask}: expected 0 < n_mask <= {n_tokens}")
    noise = torch.rand(batch, n_tokens, generator=generator)
    return noise.argsort(dim=1)[:, :n_mask].sort(dim=1).values


def mae_random_masking(batch: int, n_tokens: int, ratio: float, *,
                       generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """MAE ``random_masking`` (models_mae.py): per-sample uniform masking by argsort of noise.

    Returns ids_keep [B, K] (K = int(N * (1 - ratio)), in shuffle order as MAE), ids_restore [B, N] (argsort of the
    shuffle: ``gather(cat(kept, masked), ids_restore)`` puts tokens back in place), mask [B, N] float (0 keep,
    1 remove).
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio={ratio}: expected 0 <= ratio < 1")
    noise = torch.rand(batch, n_tokens, generator=generator)  # small: keep, large: remove
    return masking_from_noise(noise, int(n_tokens * (1 - ratio)))


def masking_from_noise(noise: Tensor, keep: int) -> tuple[Tensor, Tensor, Tensor]:
    """The official rule: noise [B, N] -> ids_keep = argsort(noise)[:, :keep] (the ``keep`` smallest), ids_restore,
    mask; see :func:`mae_random_masking`."""
    ids_shuffle = noise.argsort(dim=1)  # official: "ascend: small is keep, large is remove"
    return ids_shuffle[:, :keep], ids_shuffle.argsort(dim=1), _mask_from(ids_shuffle, keep)


def _mask_from(ids_shuffle: Tensor, keep: int) -> Tensor:
    mask = torch.ones(ids_shuffle.shape)
    mask[:, :keep] = 0
    return mask.gather(1, ids_shuffle.argsort(dim=1))  # [B, N], 0 keep / 1 remove, in token order


def _kept_by_noise(noise: Tensor, keep: int) -> Tensor:
    """bool [B, L]: True at ``argsort(noise)[:, :keep]``, the official ``ids_keep`` of one axis."""
    return torch.zeros(noise.shape, dtype=torch.bool).scatter_(1, noise.argsort(dim=1)[:, :keep], True)


def mae_mask_2d(batch: int, grid: tuple[int, int], ratio_t: float, ratio_f: float, *, generator: torch.Generator,
                token_order: str = "time") -> tuple[Tensor, Tensor, Tensor]:
    """Audio-MAE ``random_masking_2d``: drop whole time steps and whole frequency bands of the token grid.

    Keeps int(t_dim*(1-ratio_t)) x int(f_dim*(1-ratio_f)) tokens. Draws the time noise [B, t_dim], then the frequency
    noise [B, f_dim], as the official code does; the kept set is :func:`mask_2d_from_noise`'s. Same returns as
    :func:`mae_random_masking`.
    """
    f_dim, t_dim = grid
    if not (0.0 <= ratio_t < 1.0 and 0.0 <= ratio_f < 1.0):
        raise ValueError(f"ratio_t={ratio_t}, ratio_f={ratio_f}: expected 0 <= ratio < 1")
    keep_t, keep_f = int(t_dim * (1 - ratio_t)), int(f_dim * (1 - ratio_f))
    if keep_t == 0 or keep_f == 0:
        raise ValueError(f"mae_mask_2d keeps {keep_t} time steps x {keep_f} bands: nothing left")
    noise_t = torch.rand(batch, t_dim, generator=generator)
    noise_f = torch.rand(batch, f_dim, generator=generator)
    return mask_2d_from_noise(noise_t, noise_f, keep_t, keep_f, token_order)


def mask_2d_from_noise(noise_t: Tensor, noise_f: Tensor, keep_t: int, keep_f: int,
                       token_order: str = "time") -> tuple[Tensor, Tensor, Tensor]:
    """The official 2-D rule: noise_t [B, t_dim], noise_f [B, f_dim] -> the time steps ``argsort(noise_t)[:keep_t]``
    x the bands ``argsort(noise_f)[:keep_f]`` (models_vit.py / models_mae.py ``random_masking_2d``).

    Returns ids_keep [B, keep_t*keep_f] in ascending token order (as models_mae.py's variant; models_vit.py gathers
    them in noise order, which neither mean pooling nor attention sees: every token carries its pos-embed),
    ids_restore (ids_shuffle = kept ids ascending, then removed ids ascending) and mask [B, N] (0 keep, 1 remove).
    """
    batch = noise_t.shape[0]
    t_kept, f_kept = _kept_by_noise(noise_t, keep_t), _kept_by_noise(noise_f, keep_f)  # [B, t], [B, f]
    kept = f_kept.unsqueeze(2) & t_kept.unsqueeze(1)  # [B, f, t] freq-major
    if token_order == "time":
        kept = kept.transpose(1, 2)
    kept = kept.reshape(batch, -1)  # [B, N] in token order
    ids_shuffle = (~kept).int().argsort(dim=1, stable=True)  # kept ids ascending, then removed ids ascending
    k = keep_t * keep_f
    return ids_shuffle[:, :k], ids_shuffle.argsort(dim=1), (~kept).float()


__all__ = ["ssast_cluster_mask", "random_mask_ids", "mae_random_masking", "masking_from_noise", "mae_mask_2d",
           "mask_2d_from_noise"]
