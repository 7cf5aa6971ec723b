"""The fine-tuned classifier: frozen backbone, optimizer groups (head LR, layer-wise decay), bad checkpoints."""
from __future__ import annotations

import pytest
import torch

from finetune.heads import HeadConfig
from finetune.model import build_classifier, finetune_groups
from launch.common.errors import BadInput
from pretrain.encoder import EncoderConfig

SCRATCH = EncoderConfig(size="tiny", depth=3, target_frames=48, cls_tokens=2)


def _model(kind="double_norm", frozen=False):
    torch.manual_seed(0)
    model, _ = build_classifier("none", {"stride_freq": 10, "stride_time": 10}, SCRATCH, HeadConfig(kind=kind), 5, frozen)
    return model


@pytest.mark.parametrize("kind", ["mean", "post_norm"])
def test_frozen_backbone_gets_no_gradient_and_stays_bit_identical(kind):
    model = _model(kind, frozen=True)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(3):
        loss = model(torch.randn(4, 48, 128)).logsumexp(-1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.encoder.state_dict().items())
    assert not model.encoder.training  # no drop-path in a frozen feature extractor
    assert any(not torch.equal(p, torch.zeros_like(p)) for p in model.head.parameters())


def test_groups_head_rate_layer_decay_and_no_decay():
    model = _model()
    groups = finetune_groups(model, lr_scale_head=10.0, layer_decay=0.5, weight_decay=0.05)
    scale_of = {id(p): (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert scale_of[id(named["head.layer_logits"])] == (10.0, 0.0)
    assert scale_of[id(named["encoder.blocks.2.attn.qkv.weight"])] == (0.5 ** 1, 0.05)  # top block: decay^(L-i)
    assert scale_of[id(named["encoder.blocks.0.attn.qkv.weight"])] == (0.5 ** 3, 0.05)
    assert scale_of[id(named["encoder.patch_embed.proj.weight"])] == (0.5 ** 4, 0.05)
    assert scale_of[id(named["encoder.cls_tokens"])] == (0.5 ** 4, 0.0)
    assert scale_of[id(named["encoder.blocks.1.norm1.weight"])][1] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(named)


def test_stride_10_adapts_the_grid():
    model = _model()
    assert model.encoder.grid == (12, 4) and model(torch.randn(2, 48, 128)).shape == (2, 5)


def test_wrong_checkpoints_are_refused_in_one_line(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"something": torch.zeros(3)}, bad)
    with pytest.raises(BadInput) as e:
        build_classifier(str(bad), {}, SCRATCH, HeadConfig(), 5, False)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(BadInput, match="no such file"):
        build_classifier(str(tmp_path / "missing.pt"), {}, SCRATCH, HeadConfig(), 5, False)


def test_token_masking_keeps_the_drawn_tokens_only():
    from pretrain.masking import mae_mask_2d

    model = _model("pre_norm")
    ids_keep, _, _ = mae_mask_2d(2, model.encoder.grid, 0.2, 0.2, generator=torch.Generator().manual_seed(0),
                                 token_order=model.encoder.cfg.token_order)
    assert ids_keep.shape == (2, int(4 * 0.8) * int(12 * 0.8))
    assert model(torch.randn(2, 48, 128), ids_keep).shape == (2, 5)
