"""Audio-MAE decoder blocks: the "local" Swin-V2-style window block and the "global" pre-norm ViT block.

The local block reproduces ``SwinTransformerBlock`` / ``WindowMultiHeadAttention`` of AudioMAE's
``timm_patch/swin_transformer.py`` (facebookresearch/AudioMAE @ 877faec, copied over timm's file by ``timm_patch.sh``)
as ``models_mae.py`` builds it with ``decoder_mode=1``:

- windows of ``window`` tokens on the ``(t_dim, f_dim)`` token grid (time-major tokens, index ``t * f_dim + f``), the
  window clipped to the grid and the shift zeroed where the grid is not larger than the window (``_calc_window_shift``);
- cyclic shift ``torch.roll(x, (-sh, -sw))`` and the shifted-window mask with **-100** (not -inf) between regions
  (``_make_attention_mask``);
- scaled cosine attention ``(q.k / max(|q||k|, 1e-6)) / tau.clamp(min=0.01)`` with a learnable per-head ``tau``
  initialised to **1** (``torch.ones(num_heads)``);
- a continuous relative-position bias ``meta_mlp`` (Linear 2->384, ReLU, Dropout 0.1, Linear 384->heads, Dropout 0.1)
  on ``sign(d) * log(1 + |d|)`` of the pair offsets ``coord_query - coord_key``, added to every window;
- post-norm residuals ``x + norm1(attn(x))``, ``x + norm2(mlp(x))`` (``extra_norm=False``: no ``norm3``), GELU MLP.

Parameter names follow the released ``pretrained.pth`` (``decoder_blocks.{i}.attn.{tau,qkv,proj,meta_mlp.fc1,
meta_mlp.fc2}``, ``norm1``, ``mlp.fc1/fc2``, ``norm2``); the coordinate and mask buffers are non-persistent as there.

Efficiency: windows are batched, and the position bias (plus, in shifted blocks, the -100 mask) is summed once per
forward into one batch-independent table ``[nW or 1, heads, L, L]`` that meets the logits in one broadcast add. Two
exact ways to run the attention itself (``attention``):

- ``"explicit"``: the released maths op by op (``q.k / max(|q||k|, 1e-6) / tau + bias``, softmax, ``@ v``). Fastest
  where no fused kernel applies: on CPU, SDPA with an additive mask falls back to its math path, which adds a
  ``_safe_softmax`` and two scaling passes (1.3-1.5x slower than this at 16-token windows, measured);
- ``"folded"``: ``F.scaled_dot_product_attention`` without any ``attn_mask``: ``q`` and ``k`` are L2-normalised,
  ``1 / tau`` is folded into ``q``, and the bias table rides in extra columns, ``[q_i, bias_i] . [k_j, e_j] =
  q_i.k_j + bias_ij`` (:func:`folded_bias_attention`), so a flash kernel is eligible on the GPU in shifted and
  unshifted blocks alike. Its only deviation from the released maths is the normalisation guard (``F.normalize``
  clamps each norm at 1e-12 instead of the product at 1e-6; identical unless a query or key is ~0);
- ``"auto"`` (default): folded on CUDA, explicit elsewhere.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MASK_VALUE = -100.0  # timm_patch's value between shifted-window regions (not -inf)


def window_partition(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """[B, H, W, C] -> [B * nW, wh, ww, C]: row-major windows, batch-major (timm_patch ``window_partition``)."""
    B, H, W, C = x.shape
    wh, ww = window
    x = x.view(B, H // wh, wh, W // ww, ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, wh, ww, C)


def window_reverse(windows: torch.Tensor, window: tuple[int, int], feat_size: tuple[int, int]) -> torch.Tensor:
    """[B * nW, wh, ww, C] -> [B, H, W, C]: the inverse of :func:`window_partition`."""
    H, W = feat_size
    wh, ww = window
    B = windows.shape[0] // ((H // wh) * (W // ww))
    x = windows.view(B, H // wh, W // ww, wh, ww, -1)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, -1)


def calc_window_shift(feat_size: tuple[int, int], window: tuple[int, int],
                      shift: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """timm_patch ``_calc_window_shift``: clip the window to the grid; no shift along an axis the window covers."""
    win = tuple(f if f <= w else w for f, w in zip(feat_size, window))
    sh = tuple(0 if f <= w else s for f, w, s in zip(feat_size, win, shift))
    return win, sh  # type: ignore[return-value]


def shifted_window_mask(feat_size: tuple[int, int], window: tuple[int, int],
                        shift: tuple[int, int]) -> torch.Tensor | None:
    """[nW, L, L] additive mask (0 within a region, -100 across) for the cyclically shifted grid; None if no shift.

    After ``roll(-shift)`` the last window along a shifted axis holds the tail of the grid and its wrapped-around head;
    they must not attend to each other. Labels: 3 regions per shifted axis as in ``_make_attention_mask`` (for an
    unshifted axis timm_patch's empty ``slice(-w, -0)`` collapses its regions to one, as here).
    """
    if not any(shift):
        return None
    H, W = feat_size
    label = torch.zeros(H, W)
    for axis, (n, w, s) in enumerate(zip(feat_size, window, shift)):
        if s == 0:
            continue
        region = torch.zeros(n)
        region[n - w:n - s] = 1  # last window, not wrapped
        region[n - s:] = 2  # the wrapped head
        label = label * 3 + (region[:, None] if axis == 0 else region[None, :])
    win = window_partition(label[None, :, :, None], window).reshape(-1, window[0] * window[1])  # [nW, L]
    diff = win[:, None, :] - win[:, :, None]  # [nW, L(query), L(key)]
    return torch.zeros_like(diff).masked_fill(diff != 0, MASK_VALUE)


def log_relative_coordinates(window: tuple[int, int]) -> torch.Tensor:
    """[L * L, 2]: ``sign(d) * log(1 + |d|)`` of ``coord_query - coord_key``, row ``i * L + j`` (timm_patch
    ``_make_pair_wise_relative_positions``)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window[0]), torch.arange(window[1]), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).reshape(-1, 2).float()  # [L*L, 2]
    return torch.sign(rel) * torch.log1p(rel.abs())


class Mlp(nn.Module):
    """timm ``Mlp``: fc1 -> act -> dropout -> fc2 -> dropout."""

    def __init__(self, dim: int, hidden: int, out: int | None = None, act: type[nn.Module] = nn.GELU,
                 drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, out or dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


ATTENTION_PATHS = ("auto", "explicit", "folded")


def explicit_cosine_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tau: torch.Tensor,
                              bias: torch.Tensor) -> torch.Tensor:
    """timm_patch ``_forward_batch`` maths: softmax(q.k / max(|q||k|, 1e-6) / tau.clamp(0.01) + bias) @ v.

    q, k, v [B, nW, h, L, d] (windows of a clip grouped); tau [h]; bias [nW or 1, h, L, L] -> [B, nW, h, L, d].
    """
    denom = q.norm(dim=-1, keepdim=True) @ k.norm(dim=-1, keepdim=True).transpose(-2, -1)  # [B, nW, h, L, L]
    logits = (q @ k.transpose(-2, -1)) / denom.clamp(min=1e-6)
    logits = logits / tau.clamp(min=0.01).view(-1, 1, 1).to(logits.dtype) + bias.to(logits.dtype)
    return logits.softmax(dim=-1) @ v


def folded_bias_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """softmax(q.k^T + bias) @ v through SDPA without an ``attn_mask`` (scale 1).

    q, k, v [B, nW, h, L, d]; bias [nW or 1, h, L, L] -> [B, nW, h, L, d]. Query i carries its bias row as L extra
    columns and key j the one-hot e_j, so ``[q_i, bias_i] . [k_j, e_j] = q_i.k_j + bias_ij`` (products by 1 and 0
    are exact). v gets zero columns to the same width (flash kernels need one head width), and all three are padded
    with zeros to a multiple of 8 (the kernels' alignment); the extra output columns are cut off.
    """
    B, nW, h, L, d = q.shape
    width = d + L + (-(d + L)) % 8
    pad = width - d - L
    eye = torch.eye(L, dtype=q.dtype, device=q.device).expand(B, nW, h, L, L)
    rows = bias.to(q.dtype).expand(B, nW, h, L, L)
    q2 = F.pad(torch.cat([q, rows], dim=-1), (0, pad)).view(B * nW, h, L, width)
    k2 = F.pad(torch.cat([k, eye], dim=-1), (0, pad)).view(B * nW, h, L, width)
    v2 = F.pad(v, (0, width - d)).view(B * nW, h, L, width)
    out = F.scaled_dot_product_attention(q2, k2, v2, scale=1.0)
    return out[..., :d].view(B, nW, h, L, d)


class WindowAttention(nn.Module):
    """Scaled-cosine window attention with a log-spaced continuous position bias (``WindowMultiHeadAttention``)."""

    def __init__(self, dim: int, heads: int, window: tuple[int, int], meta_hidden: int = 384,
                 meta_drop: float = 0.1, attention: str = "auto") -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"decoder dim {dim} is not divisible by {heads} heads")
        if attention not in ATTENTION_PATHS:
            raise ValueError(f"window attention {attention!r}: expected one of {', '.join(ATTENTION_PATHS)}")
        self.heads, self.window, self.attention = heads, tuple(window), attention
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        # Dropout 0.1 on the bias network is hard-coded in timm_patch ("appears to 'overfit' without").
        self.meta_mlp = Mlp(2, meta_hidden, heads, act=nn.ReLU, drop=meta_drop)
        self.tau = nn.Parameter(torch.ones(heads))
        self.register_buffer("relative_coordinates_log", log_relative_coordinates(self.window), persistent=False)

    def position_bias(self) -> torch.Tensor:
        """[heads, L, L] bias from ``meta_mlp`` (``_relative_positional_encodings``)."""
        L = self.window[0] * self.window[1]
        # DeepSpeed's ZeRO-3 casts parameters, not buffers, to bf16/fp16: follow the weights' dtype
        coords = self.relative_coordinates_log.to(self.meta_mlp.fc1.weight.dtype)
        return self.meta_mlp(coords).transpose(0, 1).reshape(self.heads, L, L)

    def folded(self, x: torch.Tensor) -> bool:
        """Whether this call runs the mask-free SDPA path (see the module docstring)."""
        return self.attention == "folded" or (self.attention == "auto" and x.is_cuda)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B * nW, L, C] (batch-major windows); mask: [nW, L, L] additive or None -> [B * nW, L, C]."""
        Bw, L, C = x.shape
        h = self.heads
        bias = self.position_bias()[None]  # [1, h, L, L]
        if mask is not None:  # the shift mask joins the bias once, batch-independent: [nW, h, L, L]
            bias = bias + mask[:, None].to(bias.dtype)
        nW = bias.shape[0]
        q, k, v = self.qkv(x).view(Bw // nW, nW, L, 3, h, C // h).permute(3, 0, 1, 4, 2, 5)  # [B, nW, h, L, hd]
        if self.folded(x):
            inv_tau = (1.0 / self.tau.clamp(min=0.01)).view(-1, 1, 1).to(q.dtype)
            out = folded_bias_attention(F.normalize(q, dim=-1) * inv_tau, F.normalize(k, dim=-1), v, bias)
        else:
            out = explicit_cosine_attention(q, k, v, self.tau, bias)
        return self.proj(out.permute(0, 1, 3, 2, 4).reshape(Bw, L, C))


class LocalDecoderBlock(nn.Module):
    """Audio-MAE's local decoder block (timm_patch ``SwinTransformerBlock``), post-norm, on a ``feat_size`` grid.

    ``feat_size`` = (t_dim, f_dim) of the time-major token grid; ``shift`` is the cyclic shift before clipping
    (released: (0, 0) on even blocks, (2, 0) on odd ones, i.e. time only).
    """

    def __init__(self, dim: int, heads: int, feat_size: tuple[int, int], window: tuple[int, int] = (4, 4),
                 shift: tuple[int, int] = (0, 0), mlp_ratio: float = 4.0, meta_hidden: int = 384,
                 meta_drop: float = 0.1, norm_eps: float = 1e-6, attention: str = "auto") -> None:
        super().__init__()
        self.feat_size = tuple(feat_size)
        self.window, self.shift = calc_window_shift(self.feat_size, tuple(window), tuple(shift))
        for n, w in zip(self.feat_size, self.window):
            if n % w:
                raise ValueError(f"token grid {self.feat_size} is not divisible by the window {self.window}")
        self.attn = WindowAttention(dim, heads, self.window, meta_hidden, meta_drop, attention)
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.register_buffer("attn_mask", shifted_window_mask(self.feat_size, self.window, self.shift),
                             persistent=False)

    def window_attention(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, C] -> [B, N, C]: shift, partition, attend, merge, unshift (``_shifted_window_attn``)."""
        B, N, C = x.shape
        H, W = self.feat_size
        x = x.view(B, H, W, C)
        if any(self.shift):
            x = torch.roll(x, shifts=(-self.shift[0], -self.shift[1]), dims=(1, 2))
        win = window_partition(x, self.window).view(-1, self.window[0] * self.window[1], C)  # [B*nW, L, C]
        win = self.attn(win, self.attn_mask)
        x = window_reverse(win.view(-1, *self.window, C), self.window, self.feat_size)  # [B, H, W, C]
        if any(self.shift):
            x = torch.roll(x, shifts=self.shift, dims=(1, 2))
        return x.reshape(B, N, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, t_dim * f_dim, C] time-major, no cls token."""
        x = x + self.norm1(self.window_attention(x))  # post-norm (op -> norm), as released
        return x + self.norm2(self.mlp(x))


class Attention(nn.Module):
    """Plain multi-head self-attention (timm 0.3.2 ``Attention``, qkv bias) through SDPA."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # [B, h, N, hd]
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C))


class GlobalDecoderBlock(nn.Module):
    """MAE's default decoder block: pre-norm ViT (timm 0.3.2 ``Block``), attention over all tokens incl. cls."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))
