"""The ViT encoder shared by SSAST and Audio-MAE: patch embedding, positional embeddings, SDPA blocks, layer outputs.

Input is a normalised log-mel fbank ``[B, T, F]`` (time, freq), as both official loaders produce. The patch conv runs
on ``[B, 1, F, T]`` (SSAST's layout), so its output is ``[B, D, f_dim, t_dim]`` and the two token orders differ only in
how that grid is flattened:

    token_order="freq"  SSAST      index = f * t_dim + t   (``x.flatten(2)``)
    token_order="time"  Audio-MAE  index = t * f_dim + f   (``x.transpose(2, 3).flatten(2)``)

Conv weight layouts (what ``pretrain/checkpoints.py`` converts):

    ours                 patch_embed.proj.weight  (D, 1, patch_freq, patch_time)
    SSAST                module.v.patch_embed.proj.weight (D, 1, freq, time)   -> identical, copy as is
    Audio-MAE            patch_embed.proj.weight (D, 1, time, freq)            -> ``.transpose(2, 3)``

Block parameter names are timm's (``blocks.{i}.norm1``, ``.attn.qkv`` fused with bias, ``.attn.proj``, ``.norm2``,
``.mlp.fc1``, ``.mlp.fc2``), then ``norm``, ``pos_embed`` ``[1, C+N, D]`` (cls rows first) and ``cls_tokens``
``[1, C, D]`` (SSAST: cat(cls_token, dist_token); Audio-MAE: cls_token). Attention is always
``F.scaled_dot_product_attention`` (fused kernels on GPU); the official code uses timm's naive softmax attention.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from launch.common.errors import check
from launch.runtime.config import since

# width, depth, heads (timm DeiT/ViT); mlp_ratio 4 and LayerNorm eps 1e-6 for all.
MODEL_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}
MLP_RATIO = 4
LN_EPS = 1e-6
TOKEN_ORDERS = ("freq", "time")
POS_EMBEDS = ("learned", "sincos")


@dataclass
class BlockExecution:
    """How the transformer blocks of a model run (never what they compute): compiled, and which keep their
    activations for the backward. Part of each method's config (``ssast.compile``, ``audiomae.compile``, ...), since
    the blocks are the method's; applied by :func:`apply_block_execution`."""

    compile: bool = since("0.2", False, how_not_what=True)
    """``torch.compile`` every encoder and decoder block (each in place, the DeepSpeed engine and the loss stay
    eager; ZeRO 0-2). The first steps take longer while each block shape compiles."""
    compile_backend: str = since("0.2", "inductor", how_not_what=True)
    """The ``torch.compile`` backend ("inductor"; "aot_eager" to debug, or where no C++ compiler is at hand)."""
    activation_checkpointing: int = since("0.2", 0, how_not_what=True)
    """Recompute the activations of every k-th block (0, k, 2k, ...) in the backward instead of keeping them: 1
    recomputes every block, 2 every other one, 0 none. Saves the memory of those blocks' activations for about a
    third more compute in them (non-reentrant ``torch.utils.checkpoint``; dropout and drop-path draw the same)."""

    def check_execution(self, prefix: str) -> None:
        check(f"{prefix}.compile_backend", repr(self.compile_backend), bool(self.compile_backend),
              "a torch.compile backend name (inductor, aot_eager, ...)")
        check(f"{prefix}.activation_checkpointing", self.activation_checkpointing, self.activation_checkpointing >= 0,
              "0 (off) or k >= 1 (recompute every k-th block)")


@dataclass
class EncoderConfig:
    """Shape of the encoder and of the spectrogram it reads. Defaults: SSAST's 16x16 patch model on 1024x128."""

    size: str = "tiny"
    """Width/depth/heads from ``MODEL_SIZES``: tiny 192/12/3, small 384/12/6, base 768/12/12, large 1024/24/16."""
    depth: int = 0
    """Number of blocks; 0: the depth of ``size`` (set it only for small test models)."""
    num_mel_bins: int = 128
    """Input height in mel bins (F)."""
    target_frames: int = 1024
    """Input length in frames (T, 10 ms each); the fbank must have exactly this many frames."""
    patch_freq: int = 16
    """Patch height in mel bins (SSAST fshape; 128 for the frame model)."""
    patch_time: int = 16
    """Patch width in frames (SSAST tshape; 2 for the frame model)."""
    stride_freq: int = 16
    """Patch stride in mel bins (10: SSAST's overlapping fine-tuning patches)."""
    stride_time: int = 16
    """Patch stride in frames (10 for overlapping patches, 1 for the fine-tuned frame model)."""
    cls_tokens: int = 1
    """Number of cls tokens: 2 for SSAST (cls + dist), 1 for Audio-MAE."""
    pos_embed: str = "learned"
    """"learned" (SSAST, trunc_normal std 0.02) or "sincos" (Audio-MAE, fixed 2-D sin-cos, not trained)."""
    token_order: str = "freq"
    """"freq": frequency-major tokens (SSAST, f*t_dim+t); "time": time-major (Audio-MAE, t*f_dim+f)."""
    drop_path: float = 0.0
    """Stochastic depth of the last block (probability); block i uses drop_path*i/(depth-1), as timm."""

    def __post_init__(self) -> None:
        if self.size not in MODEL_SIZES:
            raise ValueError(f"encoder.size={self.size!r}: expected one of {', '.join(MODEL_SIZES)}")
        if self.depth < 0:
            raise ValueError(f"encoder.depth={self.depth}: expected >= 0 (0: the depth of the size)")
        for name in ("num_mel_bins", "target_frames", "patch_freq", "patch_time", "stride_freq", "stride_time"):
            if getattr(self, name) < 1:
                raise ValueError(f"encoder.{name}={getattr(self, name)}: expected >= 1")
        if self.patch_freq > self.num_mel_bins:
            raise ValueError(f"encoder.patch_freq={self.patch_freq} is larger than encoder.num_mel_bins="
                             f"{self.num_mel_bins}: no patch fits")
        if self.patch_time > self.target_frames:
            raise ValueError(f"encoder.patch_time={self.patch_time} is larger than encoder.target_frames="
                             f"{self.target_frames}: no patch fits")
        if self.cls_tokens not in (1, 2):
            raise ValueError(f"encoder.cls_tokens={self.cls_tokens}: expected 1 (Audio-MAE) or 2 (SSAST)")
        if self.pos_embed not in POS_EMBEDS:
            raise ValueError(f"encoder.pos_embed={self.pos_embed!r}: expected 'learned' or 'sincos'")
        if self.token_order not in TOKEN_ORDERS:
            raise ValueError(f"encoder.token_order={self.token_order!r}: expected 'freq' or 'time'")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"encoder.drop_path={self.drop_path}: expected 0 <= drop_path < 1")
        if self.pos_embed == "sincos" and self.embed_dim % 4:
            raise ValueError(f"encoder.pos_embed='sincos' needs a width divisible by 4, got {self.embed_dim}")

    @property
    def embed_dim(self) -> int:
        return MODEL_SIZES[self.size][0]

    @property
    def num_layers(self) -> int:
        return self.depth or MODEL_SIZES[self.size][1]

    @property
    def num_heads(self) -> int:
        return MODEL_SIZES[self.size][2]

    @property
    def grid(self) -> tuple[int, int]:
        """(f_dim, t_dim): patches along frequency and time (conv output size, no padding)."""
        return ((self.num_mel_bins - self.patch_freq) // self.stride_freq + 1,
                (self.target_frames - self.patch_time) // self.stride_time + 1)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]


class EncoderOutput(NamedTuple):
    last: Tensor
    """Final-normed output [B, C+N, D]."""
    layers: list[Tensor]
    """Each block's raw output [B, C+N, D] (before the final norm); empty unless asked for."""
    num_cls: int
    """Number of leading cls tokens C."""


# --------------------------------------------------------------------------------------------------- token order
def token_permutation(grid: tuple[int, int], token_order: str) -> Tensor:
    """``perm[k]`` = frequency-major index of token ``k`` (LongTensor [N]); the identity for ``"freq"``."""
    f_dim, t_dim = grid
    ids = torch.arange(f_dim * t_dim)
    return ids if token_order == "freq" else ids.view(f_dim, t_dim).t().reshape(-1)


def freq_ids_to_tokens(ids: Tensor, grid: tuple[int, int], token_order: str) -> Tensor:
    """Map frequency-major indices (any shape) to token indices of ``token_order``."""
    if token_order == "freq":
        return ids
    f_dim, t_dim = grid
    return (ids % t_dim) * f_dim + ids // t_dim  # f*t_dim+t -> t*f_dim+f


def _grid_to_fmajor(x: Tensor, grid: tuple[int, int], token_order: str) -> Tensor:
    """Patch rows [B, N, D] in ``token_order`` -> image layout [B, D, f_dim, t_dim]."""
    f_dim, t_dim = grid
    b, n, d = x.shape
    if token_order == "freq":
        return x.transpose(1, 2).reshape(b, d, f_dim, t_dim)
    return x.transpose(1, 2).reshape(b, d, t_dim, f_dim).transpose(2, 3)


def _fmajor_to_rows(x: Tensor, token_order: str) -> Tensor:
    """Image layout [B, D, f_dim, t_dim] -> rows [B, N, D] in ``token_order``."""
    if token_order == "time":
        x = x.transpose(2, 3)
    return x.flatten(2).transpose(1, 2)


# --------------------------------------------------------------------------------------------- positional embeddings
def _sincos_1d(dim: int, pos: Tensor) -> Tensor:
    """MAE util/pos_embed.py get_1d_sincos_pos_embed_from_grid: [M] -> [M, dim] (sin half, then cos half)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = pos.reshape(-1, 1).double() * omega  # [M, dim/2]
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_pos_embed(dim: int, grid: tuple[int, int], token_order: str = "freq", num_cls: int = 1) -> Tensor:
    """Fixed 2-D sin-cos embedding [1, C+N, dim] (float32), cls rows zero.

    MAE's ``get_2d_sincos_pos_embed_flexible(dim, (f_dim, t_dim))`` over the real grid: the first dim/2 channels
    encode the time index, the last dim/2 the frequency index, whatever the token order (rows are then permuted
    into ``token_order``). The official Audio-MAE (8, 64) layout over a 64x8 token grid (models.md §2.2) is not
    this; import it from the checkpoint.
    """
    f_dim, t_dim = grid
    f_idx, t_idx = torch.meshgrid(torch.arange(f_dim), torch.arange(t_dim), indexing="ij")  # [f, t] each
    emb = torch.cat([_sincos_1d(dim // 2, t_idx), _sincos_1d(dim // 2, f_idx)], dim=1)  # [f*t, dim], freq-major
    emb = emb[token_permutation(grid, token_order)]
    return torch.cat([torch.zeros(num_cls, dim, dtype=emb.dtype), emb]).float().unsqueeze(0)


def adapt_pos_embed(pos: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int], num_cls: int,
                    token_order: str = "freq", ssast_freq_cut_bug: bool = False) -> Tensor:
    """SSAST's pos-embed adaptation to a new grid (ast_models.py ASTModel.__init__, fine-tuning branch).

    pos [1, C+N_old, D] -> [1, C+N_new, D]; cls rows are kept. Patch rows are laid out as [D, f, t]; then time is
    center-cut (``[t_old/2 - t/2 : ... + t]``) if it shrinks, else bilinearly resized to (f_old, t_new); then
    frequency is center-cut if it shrinks, else bilinearly resized to (f_new, t_new); align_corners=False.

    Official deviation: the time resize targets a hard-coded 8 rows, which equals f_old for every released
    checkpoint (8 for 16x16 patches; for the frame model, f_old=1, the detour through 8 equal rows changes
    nothing); we use f_old. ``ssast_freq_cut_bug=True`` reproduces the official frequency cut, which slices
    ``[a : a + t_new]`` instead of ``[a : a + f_new]``; it gives the wrong number of rows (and the official
    code fails on the reshape) unless ``t_new`` happens to fit, so it is only for checking that behaviour.
    """
    (f_old, t_old), (f_new, t_new) = old_grid, new_grid
    if pos.shape[1] != num_cls + f_old * t_old:
        raise ValueError(f"pos_embed has {pos.shape[1]} rows, expected {num_cls} cls + {f_old}x{t_old} patches")
    cls, x = pos[:, :num_cls], _grid_to_fmajor(pos[:, num_cls:], old_grid, token_order)  # x: [1, D, f, t]
    if t_new < t_old:
        a = t_old // 2 - t_new // 2
        x = x[:, :, :, a:a + t_new]
    else:
        x = F.interpolate(x, size=(f_old, t_new), mode="bilinear", align_corners=False)
    if f_new < f_old:
        a = f_old // 2 - f_new // 2
        x = x[:, :, a:a + (t_new if ssast_freq_cut_bug else f_new), :]
        if x.shape[2] != f_new:
            raise ValueError(f"ssast_freq_cut_bug: the frequency cut kept {x.shape[2]} rows instead of {f_new} "
                             "(the official code fails here too)")
    else:
        x = F.interpolate(x, size=(f_new, t_new), mode="bilinear", align_corners=False)
    return torch.cat([cls, _fmajor_to_rows(x, token_order)], dim=1)


def reorder_pos_embed(pos: Tensor, grid: tuple[int, int], num_cls: int, src_order: str, dst_order: str) -> Tensor:
    """Permute the patch rows of pos [1, C+N, D] from one token order to the other."""
    if src_order == dst_order:
        return pos
    rows = _fmajor_to_rows(_grid_to_fmajor(pos[:, num_cls:], grid, src_order), dst_order)
    return torch.cat([pos[:, :num_cls], rows], dim=1)


# --------------------------------------------------------------------------------------------------------- blocks
class DropPath(nn.Module):
    """Stochastic depth per sample (timm ``DropPath``); identity at p=0 or in eval mode."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class Attention(nn.Module):
    """timm ``Attention`` (fused qkv with bias, output proj) computed with ``scaled_dot_product_attention``."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # [B, H, L, d/H], scale 1/sqrt(d/H)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))  # [B, L, D]


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (timm ViT ``Block``): x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, dim * MLP_RATIO)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def recomputed(index: int, every: int) -> bool:
    """Whether block ``index`` recomputes its activations when every ``every``-th block does (0: none)."""
    return every > 0 and index % every == 0


class Blocks(nn.ModuleList):
    """Transformer blocks run in order (state-dict names stay ``blocks.{i}.*``). ``checkpoint_every`` (set by
    :func:`apply_block_execution`): the blocks :func:`recomputed` selects keep no activations for the backward; they
    run again in it (non-reentrant ``torch.utils.checkpoint``, which restores the RNG state, so dropout and drop-path
    draw what they drew in the forward)."""

    checkpoint_every: int = 0

    def forward(self, x: Tensor, return_layers: bool = False) -> tuple[Tensor, list[Tensor]]:
        """x [B, L, D] -> (last block's output [B, L, D], each block's output if asked, else [])."""
        layers = []
        for i, blk in enumerate(self):
            if recomputed(i, self.checkpoint_every) and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
            if return_layers:
                layers.append(x)
        return x, layers


def block_stacks(model: nn.Module) -> list[Blocks]:
    """Every :class:`Blocks` of ``model`` (the encoder's, and a decoder's)."""
    return [m for m in model.modules() if isinstance(m, Blocks)]


def apply_block_execution(model: nn.Module, execution: BlockExecution) -> nn.Module:
    """Activation checkpointing and ``torch.compile`` on every block of ``model``, as ``execution`` says.

    Each block is compiled in place (``nn.Module.compile``): parameter names, hence checkpoints and DeepSpeed's
    view of the model, are unchanged, and the step's glue (masking, gathers, loss) stays eager, as torchtitan
    compiles per block. Checkpointing wraps the compiled block from outside (:class:`Blocks`).
    """
    for stack in block_stacks(model):
        stack.checkpoint_every = execution.activation_checkpointing
        if execution.compile:
            for blk in stack:
                blk.compile(backend=execution.compile_backend)
    return model


def describe_block_execution(model: nn.Module, execution: BlockExecution) -> str:
    """One line for the start-up summary, e.g. "16 blocks, compiled (inductor), 8 recompute their activations"."""
    stacks = block_stacks(model)
    total = sum(len(s) for s in stacks)
    again = sum(recomputed(i, s.checkpoint_every) for s in stacks for i in range(len(s)))
    how = f"compiled ({execution.compile_backend})" if execution.compile else "eager"
    return f"{total} blocks, {how}, {again} recompute their activations in the backward"


class PatchEmbed(nn.Module):
    """Holds ``proj``: Conv2d(1, D, (patch_freq, patch_time), stride) applied to [B, 1, F, T]."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, cfg.embed_dim, (cfg.patch_freq, cfg.patch_time), (cfg.stride_freq, cfg.stride_time))


# -------------------------------------------------------------------------------------------------------- encoder
class Encoder(nn.Module):
    """The ViT encoder; its pieces (``embed``, ``add_pos``, ``prepend_cls``, ``run_blocks``) serve the SSAST and
    Audio-MAE wrappers, ``forward`` serves fine-tuning."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_dim, self.depth, self.num_heads = cfg.embed_dim, cfg.num_layers, cfg.num_heads
        self.num_cls = cfg.cls_tokens
        self.grid = cfg.grid  # (f_dim, t_dim)
        self.num_patches = cfg.num_patches
        self.patch_dim = cfg.patch_freq * cfg.patch_time  # values per patch (SSAST's hard-coded 256)
        d = self.embed_dim
        self.patch_embed = PatchEmbed(cfg)
        self.cls_tokens = nn.Parameter(torch.zeros(1, self.num_cls, d))
        learned = cfg.pos_embed == "learned"
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_cls + self.num_patches, d), requires_grad=learned)
        rates = [cfg.drop_path * i / max(self.depth - 1, 1) for i in range(self.depth)]  # torch.linspace(0, p, L)
        self.blocks = Blocks([Block(d, self.num_heads, r) for r in rates])
        self.norm = nn.LayerNorm(d, eps=LN_EPS)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """MAE's initialize_weights: xavier_uniform Linear (bias 0) and flattened patch conv, LN 1/0, cls N(0,.02)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.data.view(w.shape[0], -1))
        nn.init.normal_(self.cls_tokens, std=0.02)
        with torch.no_grad():
            if self.cfg.pos_embed == "learned":
                nn.init.trunc_normal_(self.pos_embed, std=0.02)  # timm trunc_normal_(std=.02): cut at +-2 absolute
            else:
                self.pos_embed.copy_(sincos_pos_embed(self.embed_dim, self.grid, self.cfg.token_order, self.num_cls))

    def _check_input(self, fbank: Tensor) -> None:
        want = (self.cfg.target_frames, self.cfg.num_mel_bins)
        if fbank.ndim != 3 or tuple(fbank.shape[1:]) != want:
            raise ValueError(f"encoder input: expected fbank [B, T={want[0]}, F={want[1]}], got {tuple(fbank.shape)}")

    def embed(self, fbank: Tensor) -> Tensor:
        """fbank [B, T, F] -> patch tokens [B, N, D] in the configured order (no pos, no cls)."""
        self._check_input(fbank)
        x = self.patch_embed.proj(fbank.transpose(1, 2).unsqueeze(1))  # [B, D, f_dim, t_dim]
        return _fmajor_to_rows(x, self.cfg.token_order)  # [B, N, D]

    def patches(self, fbank: Tensor) -> Tensor:
        """fbank [B, T, F] -> raw patches [B, N, patch_freq*patch_time] in token order, each flattened (freq, time)
        like ``nn.Unfold`` on [B, 1, F, T] (SSAST's targets); conv(x) = patches @ weight.view(D, -1).T + bias."""
        self._check_input(fbank)
        x = F.unfold(fbank.transpose(1, 2).unsqueeze(1), (self.cfg.patch_freq, self.cfg.patch_time),
                     stride=(self.cfg.stride_freq, self.cfg.stride_time))  # [B, P, N] freq-major
        x = x.transpose(1, 2)  # [B, N, P]
        if self.cfg.token_order == "time":
            x = x[:, token_permutation(self.grid, "time").to(x.device)]
        return x

    def pos_embed_patches(self) -> Tensor:
        """The patch rows of the positional embedding [1, N, D]."""
        return self.pos_embed[:, self.num_cls:]

    def add_pos(self, tokens: Tensor, ids: Tensor | None = None) -> Tensor:
        """tokens [B, N, D] + pos; with ``ids`` [B, K] the tokens are [B, K, D] at those token indices."""
        pos = self.pos_embed_patches()  # [1, N, D]
        if ids is None:
            return tokens + pos
        return tokens + pos.expand(ids.shape[0], -1, -1).gather(1, ids.unsqueeze(-1).expand(-1, -1, pos.shape[-1]))

    def prepend_cls(self, tokens: Tensor) -> Tensor:
        """tokens [B, L, D] -> [B, C+L, D]: the cls tokens (+ their pos rows) in front."""
        cls = (self.cls_tokens + self.pos_embed[:, :self.num_cls]).expand(tokens.shape[0], -1, -1)
        return torch.cat([cls.to(tokens.dtype), tokens], dim=1)

    def run_blocks(self, x: Tensor, return_layers: bool = False) -> tuple[Tensor, list[Tensor]]:
        """x [B, L, D] -> (norm(last block output) [B, L, D], each block's raw output if asked, else [])."""
        x, layers = self.blocks(x, return_layers)
        return self.norm(x), layers

    def forward(self, fbank: Tensor, return_layers: bool = True, ids_keep: Tensor | None = None) -> EncoderOutput:
        """Fine-tuning path: fbank [B, T, F] -> all tokens [B, C+N, D]; with ``ids_keep`` [B, K] (e.g. Audio-MAE's
        fine-tuning time/frequency masking, :func:`pretrain.masking.mae_mask_2d`) only those tokens [B, C+K, D]."""
        x = self.add_pos(self.embed(fbank))  # [B, N, D]
        if ids_keep is not None:
            ids_keep = ids_keep.to(x.device, non_blocking=True)  # queued, not waited for (pin it to be fully async)
            x = x.gather(1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # [B, K, D]
        x = self.prepend_cls(x)  # [B, C+N, D]
        last, layers = self.run_blocks(x, return_layers)
        return EncoderOutput(last, layers, self.num_cls)

    def load_adapted(self, state_dict: Mapping[str, Any], old_grid: tuple[int, int] | None = None,
                     old_token_order: str | None = None, ssast_freq_cut_bug: bool = False, strict: bool = True):
        """Load an encoder state dict trained on another grid (length, stride), adapting ``pos_embed`` as SSAST does.

        ``old_grid`` (f_dim, t_dim) of the checkpoint is needed when the pos-embed size differs (e.g. (8, 64) at
        stride 16 -> (12, 101) at stride 10); ``old_token_order`` (default: ours) reorders its rows. On the same
        grid the checkpoint's embedding is loaded as is, learned or fixed (so Audio-MAE's own (8, 64)-quirk sin-cos
        table is kept); on another grid a learned one is adapted (:func:`adapt_pos_embed`) and a fixed sin-cos one
        is rebuilt for our grid. The patch kernel must match; the stride may change (the conv weights do not depend
        on it). Returns ``load_state_dict``'s result.
        """
        sd = dict(state_dict)
        w, own_w = sd.get("patch_embed.proj.weight"), self.patch_embed.proj.weight
        if w is not None and tuple(w.shape) != tuple(own_w.shape):
            raise ValueError(f"patch_embed.proj.weight {tuple(w.shape)} does not fit {tuple(own_w.shape)} "
                             "(patch kernel change is not supported; Audio-MAE weights need .transpose(2, 3))")
        pos, c = sd.get("pos_embed"), self.num_cls
        src_order, dst_order = old_token_order or self.cfg.token_order, self.cfg.token_order
        if pos is not None:
            if old_grid is None and pos.shape[1] == self.pos_embed.shape[1]:
                old_grid = self.grid
            if old_grid is not None and tuple(old_grid) == self.grid:
                sd["pos_embed"] = reorder_pos_embed(pos, self.grid, c, src_order, dst_order)
            elif self.cfg.pos_embed == "sincos":
                sd["pos_embed"] = self.pos_embed.detach().clone()  # fixed: rebuilt for our grid, not interpolated
            elif old_grid is None:
                raise ValueError(f"pos_embed {tuple(pos.shape)} vs ours {tuple(self.pos_embed.shape)}: "
                                 "pass old_grid=(f_dim, t_dim) of the checkpoint")
            else:
                pos = adapt_pos_embed(pos.float(), tuple(old_grid), self.grid, c, src_order, ssast_freq_cut_bug)
                sd["pos_embed"] = reorder_pos_embed(pos, self.grid, c, src_order, dst_order)
        return self.load_state_dict(sd, strict=strict)


__all__ = ["MODEL_SIZES", "BlockExecution", "Blocks", "apply_block_execution", "describe_block_execution",
           "EncoderConfig", "EncoderOutput", "Encoder", "adapt_pos_embed", "sincos_pos_embed",
           "reorder_pos_embed", "token_permutation", "freq_ids_to_tokens"]
