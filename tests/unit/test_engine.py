"""DeepSpeed arithmetic, parameter groups and the LR schedule (pure functions, no process group)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from pretrain.config import DeepSpeedConfig, OptimConfig
from launch.runtime.engine import deepspeed_config, lr_lambda, param_groups


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


def test_plateau_schedule_cuts_as_torch_reduce_lr_on_plateau():
    """SSAST's ReduceLROnPlateau(max, factor 0.5, patience 2) replayed on the same validation values (few enough cuts
    that torch's eps=1e-8, below which it stops cutting, never matters)."""
    rng = np.random.default_rng(0)
    values = np.concatenate([np.linspace(0.1, 0.5, 5), 0.5 + 0.01 * rng.standard_normal(12)]).tolist()
    for mode, patience in (("max", 2), ("min", 0), ("max", 4)):
        ours = lr_lambda(OptimConfig(lr=1.0, warmup_steps=3, schedule="plateau", plateau_mode=mode,
                                     plateau_patience=patience), total_steps=100)
        assert [ours(s) for s in range(3)] == pytest.approx([1 / 3, 2 / 3, 1.0])
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        reference = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=mode, factor=0.5, patience=patience)
        cuts = 0
        for v in values:
            cuts += ours.observe(v)
            reference.step(v)
            assert ours(50) == pytest.approx(opt.param_groups[0]["lr"])
        assert cuts >= 1


def test_plateau_state_travels_with_the_scheduler_state_dict():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    cfg = OptimConfig(lr=1.0, warmup_steps=0, schedule="plateau", plateau_patience=0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, 10))
    for v in (0.5, 0.4, 0.3):
        sched.lr_lambdas[0].observe(v)
    opt.step()  # torch's order: the optimizer steps before its scheduler
    sched.step()
    fresh = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0),
                                              lr_lambda(cfg, 10))
    fresh.load_state_dict(sched.state_dict())
    assert fresh.lr_lambdas[0].scale == 0.25 and fresh.lr_lambdas[0].best == 0.5
    assert fresh.lr_lambdas[0](5) == 0.25
