"""The step's fast paths, each against the plain path: activation checkpointing gives the plain gradients, the
encoder never hands scaled_dot_product_attention a mask, the Swin decoder's folded attention needs none and equals
the released maths, and the block execution options are range-checked in one line."""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from launch.common.errors import BadInput
from pretrain.audiomae import AudioMAE, AudioMAEConfig
from pretrain.config import load_pretrain_config
from pretrain.encoder import BlockExecution, EncoderConfig, apply_block_execution, block_stacks, recomputed
from pretrain.ssast import SSAST, SSASTConfig

SDPA = F.scaled_dot_product_attention


def ssast(drop_path: float = 0.1) -> SSAST:
    enc = EncoderConfig(size="tiny", depth=3, num_mel_bins=32, target_frames=32, patch_freq=8, patch_time=8,
                        stride_freq=8, stride_time=8, cls_tokens=2, drop_path=drop_path)
    return SSAST(SSASTConfig(encoder=enc, mask_patches=10))


def audiomae(window_attention: str = "auto", depth: int = 4) -> AudioMAE:
    """Time x freq grid 8 x 4 of 4 x 4 patches, windows 4 x 2, time shift 2 on the odd decoder blocks."""
    enc = EncoderConfig(size="tiny", depth=2, num_mel_bins=16, target_frames=32, patch_freq=4, patch_time=4,
                        stride_freq=4, stride_time=4, cls_tokens=1, pos_embed="sincos", token_order="time",
                        drop_path=0.1)
    return AudioMAE(AudioMAEConfig(encoder=enc, decoder_dim=32, decoder_depth=depth, decoder_heads=2, window=(4, 2),
                                   shift=(2, 0), meta_hidden=16, meta_drop=0.1, window_attention=window_attention))


def loss_and_grads(model: torch.nn.Module, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One training-mode forward/backward; dropout and drop-path draw from ``seed``."""
    x = torch.randn(3, model.encoder.cfg.target_frames, model.encoder.cfg.num_mel_bins,
                    generator=torch.Generator().manual_seed(1), dtype=next(model.parameters()).dtype)
    masks = model.draw_masks(3, torch.Generator().manual_seed(2))
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = model(x, *masks).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_recomputed_selects_every_kth_block():
    assert [recomputed(i, 0) for i in range(4)] == [False] * 4
    assert [recomputed(i, 1) for i in range(4)] == [True] * 4
    assert [i for i in range(7) if recomputed(i, 3)] == [0, 3, 6]


@pytest.mark.parametrize("build", [ssast, audiomae], ids=["ssast", "audiomae"])
@pytest.mark.parametrize("every", [1, 2])
def test_activation_checkpointing_gives_the_plain_gradients_and_recomputes(build, every):
    """Same weights, same RNG: the loss and every gradient are bit-identical with dropout and drop-path on (the
    recomputation replays the RNG), and the selected blocks start twice (forward, then again in the backward; the
    recomputation stops early, so only pre-hooks see it)."""
    torch.manual_seed(0)
    model = build()
    plain_loss, plain = loss_and_grads(model)
    apply_block_execution(model, BlockExecution(activation_checkpointing=every))
    calls = Counter()
    for s, stack in enumerate(block_stacks(model)):
        for i, blk in enumerate(stack):
            blk.register_forward_pre_hook(lambda *_, key=(s, i): calls.update([key]))
    loss, grads = loss_and_grads(model)
    assert torch.equal(loss, plain_loss) and grads.keys() == plain.keys()
    for name, g in grads.items():
        assert torch.equal(g, plain[name]), name
    expected = {(s, i): 2 if recomputed(i, every) else 1
                for s, stack in enumerate(block_stacks(model)) for i in range(len(stack))}
    assert dict(calls) == expected


@pytest.fixture
def sdpa_calls(monkeypatch):
    """Every F.scaled_dot_product_attention call as (calling function, attn_mask), calling through."""
    calls = []

    def recorder(*args, **kwargs):
        calls.append((sys._getframe(1).f_code.co_name, Path(sys._getframe(1).f_code.co_filename).name,
                      kwargs.get("attn_mask", args[3] if len(args) > 3 else None)))
        return SDPA(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recorder)
    return calls


def test_encoder_never_passes_a_mask_to_sdpa(sdpa_calls):
    torch.manual_seed(0)
    loss_and_grads(ssast())
    loss_and_grads(audiomae("explicit"))
    encoder = [c for c in sdpa_calls if c[1] == "encoder.py"]
    assert len(encoder) == 3 + 2 and all(mask is None for *_, mask in encoder)  # 3 SSAST + 2 Audio-MAE blocks
    assert not [c for c in sdpa_calls if c[1] != "encoder.py"]  # the explicit decoder calls no SDPA


def test_folded_swin_decoder_passes_no_mask_and_equals_the_released_maths(sdpa_calls):
    """Folded: every decoder block (unshifted and shifted) calls SDPA without attn_mask; loss and gradients equal
    the explicit (released) maths to float64 rounding."""
    torch.manual_seed(0)
    model = audiomae("folded").double()
    model.cfg.meta_drop = 0.0
    loss, grads = loss_and_grads(model.eval().requires_grad_(True))
    decoder = [c for c in sdpa_calls if c[1] == "swin.py"]
    assert [c[0] for c in decoder] == ["folded_bias_attention"] * 4 and all(mask is None for *_, mask in decoder)
    for blk in model.decoder_blocks:
        blk.attn.attention = "explicit"
    ref_loss, ref = loss_and_grads(model)
    assert len(sdpa_calls) == len(decoder) + 2 * 2  # explicit: only the encoder's SDPA calls were added
    assert torch.allclose(loss, ref_loss, rtol=1e-12, atol=0)
    for name, g in grads.items():
        assert torch.allclose(g, ref[name], rtol=1e-9, atol=1e-12), name


@pytest.mark.parametrize("item,expected", [
    (["ssast.activation_checkpointing=-1"], "ssast.activation_checkpointing=-1: expected 0 (off) or k >= 1"),
    (["method=audiomae", "audiomae.window_attention=fast"], "audiomae.window_attention='fast': expected one of"),
    (["ssast.compile=true", "deepspeed.zero_stage=3"], "ssast.compile=True: expected false with deepspeed.zero_stage"),
])
def test_block_execution_options_are_checked_in_one_line(item, expected):
    with pytest.raises(BadInput) as e:
        load_pretrain_config(item)
    assert expected in str(e.value) and "\n" not in str(e.value)
