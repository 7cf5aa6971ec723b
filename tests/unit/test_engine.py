"""DeepSpeed arithmetic, parameter groups and the LR schedule (pure functions, no process group)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pretrain.config import DeepSpeedConfig, OptimConfig
from pretrain.engine import deepspeed_config, lr_lambda, param_groups


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_deepspeed_config_batch_arithmetic(stage, precision):
    ds = DeepSpeedConfig(zero_stage=stage, precision=precision, grad_accum=3)
    cfg = deepspeed_config(ds, OptimConfig(clip_grad=1.0), micro_batch=8, world=4)
    assert cfg["train_batch_size"] == 8 * 3 * 4
    assert cfg["train_micro_batch_size_per_gpu"] == 8 and cfg["gradient_accumulation_steps"] == 3
    assert cfg["zero_optimization"]["stage"] == stage and cfg["gradient_clipping"] == 1.0
    assert ("bf16" in cfg) == (precision == "bf16") and ("fp16" in cfg) == (precision == "fp16")
    if precision == "fp16":
        assert cfg["fp16"]["loss_scale"] == 0  # dynamic loss scaling


def test_bad_engine_settings_are_named():
    with pytest.raises(ValueError, match="zero_stage=4"):
        DeepSpeedConfig(zero_stage=4)
    with pytest.raises(ValueError, match="precision='fp8'"):
        DeepSpeedConfig(precision="fp8")
    with pytest.raises(ValueError, match="schedule='step'"):
        OptimConfig(schedule="step")


def test_no_weight_decay_on_biases_and_norms_and_on_named_tokens():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
            self.pos_embed = nn.Parameter(torch.zeros(1, 3, 4))
            self.fc = nn.Linear(4, 4)
            self.norm = nn.LayerNorm(4)
            self.fixed = nn.Parameter(torch.zeros(4, 4), requires_grad=False)

    decay, plain = param_groups(M(), 0.05)  # pretraining, as MAE: tokens are decayed, 1-D and biases are not
    assert decay["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [(1, 1, 4), (1, 3, 4), (4, 4)]
    assert len(plain["params"]) == 3  # fc.bias, norm.weight, norm.bias (frozen params are left out)
    decay, plain = param_groups(M(), 0.05, no_decay=("cls_token", "pos_embed"))  # fine-tuning's list
    assert [p.shape for p in decay["params"]] == [(4, 4)] and len(plain["params"]) == 5


def test_warmup_then_cosine_to_min_lr():
    f = lr_lambda(OptimConfig(lr=1e-3, min_lr=1e-5, warmup_steps=10), total_steps=110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(110) == pytest.approx(0.01)
    constant = lr_lambda(OptimConfig(warmup_steps=0, schedule="constant"), total_steps=5)
    assert [constant(s) for s in range(5)] == [1.0] * 5
