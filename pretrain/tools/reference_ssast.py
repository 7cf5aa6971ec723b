"""Official-style SSAST model, re-implemented as the original runs: the baseline for tests and pretrain/tools/bench.py.

``OfficialAST`` mirrors YuanGongND/ssast src/models/ast_models.py ``ASTModel`` (timm 0.4.5 DeiT-distilled backbone
``self.v``) with the exact parameter names of the released checkpoints once wrapped in ``nn.DataParallel``
(``module.v.cls_token``, ``module.v.dist_token``, ``module.v.pos_embed``, ``module.v.patch_embed.proj``,
``module.v.blocks.{i}.*``, ``module.v.norm``, ``module.v.head``/``head_dist``, ``module.cpredlayer``,
``module.gpredlayer``, ``module.mask_embed``, ``module.p_input_fdim``/``p_input_tdim``). Written the way the original
runs: naive ``softmax(q @ k^T * scale)`` attention, per-sample Python loops for masks, gathers and losses, and two
separate passes for the joint loss (src/traintest_mask.py). Deliberately slow; do not optimise it.

Deviations, none of which changes a number: ``depth`` may be set (tiny test models; official: always 12); the loops
and buffers keep the input's dtype (official: ``.float()``, i.e. float32 in its fp32 training), so float64 tests are
exact; ``mpc``/``mpg`` accept fixed ``mask_index`` ids (official: always drawn inside with Python ``random``);
the fine-tuning path builds its inner pretraining model in the checkpoint's dtype (official: float32 for a float32
file); ``p_input_fdim``/``p_input_tdim`` are integer buffers (official: ``nn.Parameter(requires_grad=False)``, same
state-dict entries). The Audio-MAE counterparts live in :mod:`pretrain.tools.reference_mae`
(which imports this module; this one imports nothing back).
"""
from __future__ import annotations

import random
from typing import Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretrain.encoder import DropPath, Mlp  # timm's stochastic depth and GELU MLP, identical here

# model_size -> (width, heads) of timm's vit_deit_{tiny,small}_distilled_patch16_224 / base_..._384.
AST_SIZES = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12)}
TIMM_CLASSES = 1000  # the unused ImageNet heads v.head / v.head_dist


# ------------------------------------------------------------------------------------------- timm 0.4.5 ViT parts
class Attention(nn.Module):
    """timm ``Attention``: fused qkv (bias), naive softmax(q k^T * head_dim^-0.5) v, proj."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B, h, N, C/h]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    """timm ``Block``: pre-norm, x + attn(norm1(x)), x + mlp(norm2(x)); LayerNorm eps 1e-6, mlp_ratio 4."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """ast_models.py ``PatchEmbed`` / MAE ``PatchEmbed_new``: proj conv, then ``flatten(2).transpose(1, 2)``."""

    def __init__(self, dim: int, kernel: tuple[int, int], stride: tuple[int, int]) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, dim, kernel_size=kernel, stride=stride)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, D, h, w] -> [B, h*w, D] (row-major over h, w)


class DeiTDistilled(nn.Module):
    """timm 0.4.5 ``DistilledVisionTransformer`` as ASTModel rebuilds it (``self.v``): 1-channel conv, learned
    ``pos_embed`` [1, 2+N, D]; ``head``/``head_dist`` (1000-way) are kept for the state dict but never used."""

    def __init__(self, dim: int, depth: int, heads: int, num_patches: int, kernel: tuple[int, int],
                 stride: tuple[int, int]) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 2, dim))
        self.patch_embed = PatchEmbed(dim, kernel, stride)
        self.pos_drop = nn.Dropout(0.0)
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, TIMM_CLASSES)
        self.head_dist = nn.Linear(dim, TIMM_CLASSES)
        # timm _init_weights: trunc_normal(.02) tokens and Linear, LayerNorm 1/0; ASTModel: default-init conv.
        for p in (self.cls_token, self.dist_token, self.pos_embed):
            nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------------- masking
def gen_maskid_patch(sequence_len: int, mask_size: int, p_t_dim: int, cluster: int = 3, rng=random) -> Tensor:
    """ast_models.py ``gen_maskid_patch`` verbatim (Python ``random``, or a seeded ``random.Random`` as ``rng``;
    CPython's set order keeps the lowest ids)."""
    mask_id: list[int] = []
    cur_clus = rng.randrange(cluster) + 3  # cluster side in [3, 6)
    while len(list(set(mask_id))) <= mask_size:
        start_id = rng.randrange(sequence_len)
        cur_mask = []
        for i in range(0, cur_clus):
            for j in range(0, cur_clus):
                mask_cand = start_id + p_t_dim * i + j
                if mask_cand > 0 and mask_cand < sequence_len:
                    cur_mask.append(mask_cand)
        mask_id = mask_id + cur_mask
    mask_id = list(set(mask_id))[:mask_size]
    return torch.tensor(mask_id)


def gen_maskid_frame(sequence_len: int, mask_size: int) -> Tensor:
    """ast_models.py ``gen_maskid_frame``: ``random.sample`` without clustering (frame model)."""
    return torch.tensor(random.sample(range(0, sequence_len), mask_size))


# ------------------------------------------------------------------------------------------------------ ASTModel
class OfficialAST(nn.Module):
    """ASTModel: ``pretrain_stage=True`` builds the pretraining model (``v``, ``cpredlayer``, ``gpredlayer``,
    ``mask_embed``, ``p_input_*``); ``pretrain_stage=False`` takes ``load_pretrained_mdl_path`` (a path or a
    ``module.``-prefixed state dict), loads it into a fresh pretraining model (strict=False), keeps its ``v``, adds
    ``mlp_head`` and adapts conv stride and pos-embed to the fine-tuning shape exactly as the official code does.

    ``forward(x [B, T, F], task)``: 'ft_avgtok' / 'ft_cls' -> logits [B, label_dim]; 'pretrain_mpc' -> (acc, nce);
    'pretrain_mpg' -> mse.
    """

    def __init__(self, label_dim: int = 527, fshape: int = 128, tshape: int = 2, fstride: int = 128,
                 tstride: int = 2, input_fdim: int = 128, input_tdim: int = 1024, model_size: str = "base",
                 pretrain_stage: bool = True, load_pretrained_mdl_path=None, depth: Optional[int] = None) -> None:
        super().__init__()
        if model_size not in AST_SIZES:
            raise ValueError(f"model_size={model_size!r}: expected one of {', '.join(AST_SIZES)}")
        dim, heads = AST_SIZES[model_size]
        depth = depth or 12
        self.cls_token_num = 2
        if pretrain_stage:
            if load_pretrained_mdl_path is not None:
                raise ValueError("pretraining is always from scratch: load_pretrained_mdl_path must be None")
            if fstride != fshape or tstride != tshape:
                raise ValueError("fstride != fshape or tstride != tshape: no overlap at the pretraining stage")
            self.fshape, self.tshape, self.fstride, self.tstride = fshape, tshape, fstride, tstride
            self.input_fdim, self.input_tdim = input_fdim, input_tdim
            # the official "trick" to save the pretraining input size in the state dict
            self.register_buffer("p_input_fdim", torch.tensor(input_fdim))
            self.register_buffer("p_input_tdim", torch.tensor(input_tdim))
            self.p_f_dim, self.p_t_dim = self.get_shape(fstride, tstride, input_fdim, input_tdim, fshape, tshape)
            self.num_patches = self.p_f_dim * self.p_t_dim
            self.v = DeiTDistilled(dim, depth, heads, self.num_patches, (fshape, tshape), (fstride, tstride))
            self.cpredlayer = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 256))
            self.gpredlayer = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 256))
            self.unfold = nn.Unfold(kernel_size=(fshape, tshape), stride=(fstride, tstride))
            self.mask_embed = nn.Parameter(torch.zeros([1, 1, dim]))
            nn.init.xavier_normal_(self.mask_embed)
            return
        self._init_finetune(label_dim, fshape, tshape, fstride, tstride, input_fdim, input_tdim, model_size,
                            load_pretrained_mdl_path, depth, dim)

    def _init_finetune(self, label_dim, fshape, tshape, fstride, tstride, input_fdim, input_tdim, model_size,
                       sd, depth, dim) -> None:
        """The ``pretrain_stage == False`` branch of ASTModel.__init__, line by line."""
        if sd is None:
            raise ValueError("Please set load_pretrained_mdl_path to load a pretrained models.")
        if not isinstance(sd, Mapping):
            sd = torch.load(sd, map_location="cpu", weights_only=True)
        try:
            p_fshape, p_tshape = sd["module.v.patch_embed.proj.weight"].shape[2:]
            p_input_fdim, p_input_tdim = sd["module.p_input_fdim"].item(), sd["module.p_input_tdim"].item()
        except KeyError:
            raise ValueError("The model loaded is not from a torch.nn.Dataparallel object.") from None
        audio_model = OfficialAST(fstride=p_fshape, tstride=p_tshape, fshape=p_fshape, tshape=p_tshape,
                                  input_fdim=p_input_fdim, input_tdim=p_input_tdim, pretrain_stage=True,
                                  model_size=model_size, depth=depth)
        audio_model.to(sd["module.v.pos_embed"].dtype)  # official: float32 model and checkpoint (exact f64 tests)
        # DataParallel(audio_model).load_state_dict(sd, strict=False): the same as loading the unprefixed keys
        audio_model.load_state_dict({k[len("module."):]: v for k, v in sd.items() if k.startswith("module.")},
                                    strict=False)
        self.v = audio_model.v
        self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, label_dim))
        f_dim, t_dim = self.get_shape(fstride, tstride, input_fdim, input_tdim, fshape, tshape)
        p_f_dim, p_t_dim = audio_model.p_f_dim, audio_model.p_t_dim
        num_patches = f_dim * t_dim
        p_num_patches = p_f_dim * p_t_dim
        if fshape != p_fshape or tshape != p_tshape:
            raise ValueError(f"The patch shape of pretraining and fine-tuning is not consistant, pretraining: "
                             f"f={p_fshape}, t={p_tshape}, finetuning: f={fshape}, t={tshape}")
        if fstride != p_fshape or tstride != p_tshape:
            new_proj = nn.Conv2d(1, dim, kernel_size=(fshape, tshape), stride=(fstride, tstride))
            new_proj.weight = nn.Parameter(torch.sum(self.v.patch_embed.proj.weight, dim=1).unsqueeze(1))
            new_proj.bias = self.v.patch_embed.proj.bias
            self.v.patch_embed.proj = new_proj
        new_pos_embed = self.v.pos_embed[:, self.cls_token_num:, :].detach().reshape(1, p_num_patches, dim) \
            .transpose(1, 2).reshape(1, dim, p_f_dim, p_t_dim)
        # cut or interpolate the positional embedding (the 8 and the "+ t_dim" of the frequency cut are official)
        if t_dim < p_t_dim:
            new_pos_embed = new_pos_embed[:, :, :, int(p_t_dim / 2) - int(t_dim / 2):
                                          int(p_t_dim / 2) - int(t_dim / 2) + t_dim]
        else:
            new_pos_embed = F.interpolate(new_pos_embed, size=(8, t_dim), mode="bilinear")
        if f_dim < p_f_dim:
            new_pos_embed = new_pos_embed[:, :, int(p_f_dim / 2) - int(f_dim / 2):
                                          int(p_f_dim / 2) - int(f_dim / 2) + t_dim, :]
        else:
            new_pos_embed = F.interpolate(new_pos_embed, size=(f_dim, t_dim), mode="bilinear")
        new_pos_embed = new_pos_embed.reshape(1, dim, num_patches).transpose(1, 2)
        self.v.pos_embed = nn.Parameter(torch.cat([self.v.pos_embed[:, :self.cls_token_num, :].detach(),
                                                   new_pos_embed], dim=1))

    @staticmethod
    def get_shape(fstride, tstride, input_fdim, input_tdim, fshape, tshape) -> tuple[int, int]:
        """(f_dim, t_dim) of the conv output (official: a test Conv2d on random input; same arithmetic)."""
        return (input_fdim - fshape) // fstride + 1, (input_tdim - tshape) // tstride + 1

    # ------------------------------------------------------------------ fine-tuning
    def _tokens(self, x: Tensor) -> Tensor:
        """x [B, 1, F, T] -> v.norm(blocks([cls, dist, patches] + pos)) [B, 2+N, D]."""
        B = x.shape[0]
        x = self.v.patch_embed(x)  # [B, N, D] frequency-major
        x = torch.cat((self.v.cls_token.expand(B, -1, -1), self.v.dist_token.expand(B, -1, -1), x), dim=1)
        x = self.v.pos_drop(x + self.v.pos_embed)
        for blk in self.v.blocks:
            x = blk(x)
        return self.v.norm(x)

    def finetuningavgtok(self, x: Tensor) -> Tensor:
        """Mean of the patch tokens (both cls excluded) -> mlp_head: [B, label_dim]."""
        return self.mlp_head(torch.mean(self._tokens(x)[:, self.cls_token_num:, :], dim=1))

    def finetuningcls(self, x: Tensor) -> Tensor:
        x = self._tokens(x)
        return self.mlp_head((x[:, 0] + x[:, 1]) / 2)

    # ------------------------------------------------------------------ pretraining
    def _mask_ids(self, B: int, mask_patch: int, cluster: bool, mask_index: Optional[Tensor], device) -> Tensor:
        if mask_index is not None:
            return mask_index.to(device).long()
        ids = torch.empty((B, mask_patch), device=device).long()
        for i in range(B):
            ids[i] = (gen_maskid_patch(self.num_patches, mask_patch, self.p_t_dim) if cluster
                      else gen_maskid_frame(self.num_patches, mask_patch))
        return ids

    def _masked_pass(self, x: Tensor, mask_index: Tensor) -> Tensor:
        """Patch embeddings at ``mask_index`` replaced by mask_embed, + cls/dist + pos, blocks, v.norm."""
        B = x.shape[0]
        mask_dense = torch.ones([x.shape[0], x.shape[1], x.shape[2]], device=x.device, dtype=x.dtype)
        for i in range(B):
            mask_dense[i, mask_index[i], :] = 0
        mask_tokens = self.mask_embed.expand(B, x.shape[1], -1)
        x = x * mask_dense + (1 - mask_dense) * mask_tokens
        x = torch.cat((self.v.cls_token.expand(B, -1, -1), self.v.dist_token.expand(B, -1, -1), x), dim=1)
        x = self.v.pos_drop(x + self.v.pos_embed)
        for blk in self.v.blocks:
            x = blk(x)
        return self.v.norm(x)

    def mpc(self, x: Tensor, mask_patch: int, cluster: bool, mask_index: Optional[Tensor] = None):
        """Masked patch classification: (acc, nce) with the official InfoNCE (softmax over predictions)."""
        input = self.unfold(x).transpose(1, 2)  # [B, N, 256] raw patches, frequency-major
        B = x.shape[0]
        x = self.v.patch_embed(x)
        mask_index = self._mask_ids(B, mask_patch, cluster, mask_index, x.device)
        encode_samples = torch.empty((B, mask_patch, 256), device=x.device, dtype=x.dtype)
        for i in range(B):
            encode_samples[i] = input[i, mask_index[i], :].clone().detach()
        x = self._masked_pass(x, mask_index)
        pred = torch.empty((B, mask_patch, 256), device=x.device, dtype=x.dtype)
        for i in range(B):
            pred[i] = self.cpredlayer(x[i, mask_index[i] + self.cls_token_num, :])
        nce = torch.tensor(0.0, dtype=x.dtype, device=x.device)
        correct = torch.tensor(0.0, dtype=x.dtype, device=x.device)
        for i in np.arange(0, B):
            total = torch.mm(encode_samples[i], torch.transpose(pred[i], 0, 1))  # [M(target), M(pred)]
            correct += torch.sum(torch.eq(torch.argmax(torch.softmax(total, dim=-1), dim=0),
                                          torch.arange(0, mask_patch, device=x.device)))
            nce += torch.sum(torch.diag(torch.log_softmax(total, dim=-1)))
        return 1.0 * correct / (B * mask_patch), nce / (-1.0 * B * mask_patch)

    def mpg(self, input: Tensor, mask_patch: int, cluster: bool, mask_index: Optional[Tensor] = None) -> Tensor:
        """Masked patch reconstruction: mean squared error over the masked patches."""
        B = input.shape[0]
        x = self.v.patch_embed(input)
        input = self.unfold(input).transpose(1, 2)
        mask_index = self._mask_ids(B, mask_patch, cluster, mask_index, x.device)
        x = self._masked_pass(x, mask_index)
        pred = torch.empty((B, mask_patch, self.fshape * self.tshape), device=x.device, dtype=x.dtype)
        target = torch.empty((B, mask_patch, self.fshape * self.tshape), device=x.device, dtype=x.dtype)
        for i in range(B):
            pred[i] = self.gpredlayer(x[i, mask_index[i] + self.cls_token_num, :])
            target[i] = input[i, mask_index[i], :]
        return torch.mean((pred - target) ** 2)

    def forward(self, x: Tensor, task: str, cluster: bool = True, mask_patch: int = 400,
                mask_index: Optional[Tensor] = None):
        """x [B, T, F] (e.g. [12, 1024, 128]) -> the task's output; ``mask_index`` [B, M] freq-major ids or None."""
        x = x.unsqueeze(1).transpose(2, 3)  # [B, 1, F, T]
        if task == "ft_avgtok":
            return self.finetuningavgtok(x)
        if task == "ft_cls":
            return self.finetuningcls(x)
        if task == "pretrain_mpc":
            return self.mpc(x, mask_patch=mask_patch, cluster=cluster, mask_index=mask_index)
        if task == "pretrain_mpg":
            return self.mpg(x, mask_patch=mask_patch, cluster=cluster, mask_index=mask_index)
        raise ValueError(f"Task unrecognized: {task!r}")


def official_joint_loss(model: OfficialAST, x: Tensor, mask_patch: int = 400, cluster: bool = True,
                        ids_c: Optional[Tensor] = None, ids_g: Optional[Tensor] = None):
    """src/traintest_mask.py ``pretrain_joint``: two passes, loss = nce + 10 * mse -> (loss, nce, mse, acc)."""
    acc, nce = model(x, "pretrain_mpc", cluster=cluster, mask_patch=mask_patch, mask_index=ids_c)
    mse = model(x, "pretrain_mpg", cluster=cluster, mask_patch=mask_patch, mask_index=ids_g)
    return nce + 10 * mse, nce, mse, acc


__all__ = ["OfficialAST", "official_joint_loss", "gen_maskid_patch", "gen_maskid_frame", "Block", "Attention",
           "PatchEmbed", "DropPath", "AST_SIZES"]
