"""Heads: each kind against a hand computation on fixed layer outputs, cls exclusion, layer weights, gradients."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from finetune.heads import (
    HEAD_KINDS,
    HeadConfig,
    LayerwiseHead,
    MLPHead,
    build_head,
    cls_token_pool,
    mean_patch_tokens,
    set_requires_grad,
    weighted_layer_sum,
)

B, C, N, D, L, K = 3, 2, 5, 8, 4, 6  # batch, cls tokens, patch tokens, width, layers, classes


def make_inputs(seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    # Offsets per layer make the layers clearly different, so a wrong layer or a wrong weight shows.
    layers = [torch.randn(B, C + N, D, generator=g) * (i + 1) + i for i in range(L)]
    last = F.layer_norm(layers[-1], (D,), eps=1e-6)  # stands in for the encoder's final norm
    return last, layers


def randomise(module: nn.Module, seed: int = 1) -> nn.Module:
    """Non-trivial LayerNorm affine params and layer logits, so the hand computation checks that they are used."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            # LayerNorm gains around 1, everything else around 0.
            gain = 1.0 if name.endswith("weight") and p.ndim == 1 else 0.0
            p.copy_(gain + 0.5 * torch.randn(p.shape, generator=g))
    return module


def ln(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    return F.layer_norm(x, (D,), norm.weight, norm.bias, norm.eps)


def linear(x: torch.Tensor, lin: nn.Linear) -> torch.Tensor:
    return x @ lin.weight.T + lin.bias


def patch_mean(x: torch.Tensor) -> torch.Tensor:
    return x[:, C:].sum(dim=1) / N


def test_mean_patch_tokens_and_weighted_sum():
    x = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    torch.testing.assert_close(mean_patch_tokens(x, 1), x[:, 1:].sum(1) / 3)
    torch.testing.assert_close(mean_patch_tokens(x, 0), x.mean(1))
    with pytest.raises(ValueError):
        mean_patch_tokens(x, 4)
    means, w = torch.randn(3, 2, 5), torch.tensor([0.2, 0.3, 0.5])
    torch.testing.assert_close(weighted_layer_sum(means, w), 0.2 * means[0] + 0.3 * means[1] + 0.5 * means[2])


def test_mean_head_matches_ssast_ft_avgtok():
    last, layers = make_inputs()
    head = randomise(build_head(HeadConfig(kind="mean"), D, L, K))
    assert head.norm.eps == 1e-5  # SSAST's mlp_head uses nn.LayerNorm's default
    lin = head.mlp[-1]
    expected = linear(ln(patch_mean(last), head.norm), lin)
    torch.testing.assert_close(head(last, layers, C), expected)


def test_cls_head_matches_ssast_ft_cls_with_the_mean_heads_parameters():
    last, layers = make_inputs()
    head = randomise(build_head(HeadConfig(kind="cls"), D, L, K))
    mean = build_head(HeadConfig(kind="mean"), D, L, K)
    assert [(n, p.shape) for n, p in head.named_parameters()] == [(n, p.shape) for n, p in mean.named_parameters()]
    assert head.norm.eps == 1e-5 and not head.needs_layers
    expected = linear(ln((last[:, 0] + last[:, 1]) / 2, head.norm), head.mlp[-1])  # ast_models.py finetuningcls
    torch.testing.assert_close(head(last, [], C), expected)
    torch.testing.assert_close(head(last, layers, 1), linear(ln(last[:, 0], head.norm), head.mlp[-1]))  # one token
    last2 = last.clone()
    last2[:, C:] = 1e3 * torch.randn(B, N, D)  # the patch tokens do not matter
    torch.testing.assert_close(head(last2, layers, C), expected)
    with pytest.raises(ValueError, match="1 or 2 cls tokens"):
        cls_token_pool(last, 0)


def test_mean_fc_norm_head_pools_last_block_without_final_norm():
    last, layers = make_inputs()
    head = randomise(build_head(HeadConfig(kind="mean_fc_norm"), D, L, K))
    assert head.norm.eps == 1e-6
    expected = linear(ln(patch_mean(layers[-1]), head.norm), head.mlp[-1])
    torch.testing.assert_close(head(last, layers, C), expected)
    # `last` is not used at all: the final norm is discarded as in Audio-MAE fine-tuning.
    torch.testing.assert_close(head(torch.zeros_like(last), layers, C), expected)


def hand_layerwise(head: LayerwiseHead, layers: list[torch.Tensor], kind: str) -> torch.Tensor:
    w = torch.exp(head.layer_logits) / torch.exp(head.layer_logits).sum()
    s = torch.zeros(B, D)
    for i, o in enumerate(layers):
        m = patch_mean(ln(o, head.layer_norms[i])) if kind in ("pre_norm", "double_norm") else patch_mean(o)
        s = s + w[i] * m
    if kind in ("post_norm", "double_norm"):
        s = ln(s, head.norm)
    return linear(s, head.mlp[-1])


@pytest.mark.parametrize("kind", ["pre_norm", "post_norm", "double_norm"])
def test_layerwise_heads_match_hand_computation(kind):
    last, layers = make_inputs()
    head = randomise(build_head(HeadConfig(kind=kind), D, L, K))
    assert isinstance(head, LayerwiseHead)
    assert (head.layer_norms is not None) == (kind != "post_norm")
    assert isinstance(head.norm, nn.LayerNorm) == (kind != "pre_norm")
    torch.testing.assert_close(head(last, layers, C), hand_layerwise(head, layers, kind))


def test_mlp_head_hidden_layers():
    cfg = HeadConfig(kind="double_norm", hidden=[16, 12], dropout=0.1)
    head = randomise(build_head(cfg, D, L, K)).eval()  # eval: dropout off
    linears = [m for m in head.mlp if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(D, 16), (16, 12), (12, K)]
    last, layers = make_inputs()
    s = ln(head.pooled(layers, C), head.norm)
    expected = linear(F.gelu(linear(F.gelu(linear(s, linears[0])), linears[1])), linears[2])
    torch.testing.assert_close(head(last, layers, C), expected)
    assert [type(m) for m in MLPHead(D, K)] == [nn.Dropout, nn.Linear]


@pytest.mark.parametrize("kind", [k for k in HEAD_KINDS if k != "cls"])
def test_cls_tokens_do_not_change_the_output(kind):
    last, layers = make_inputs()
    head = randomise(build_head(HeadConfig(kind=kind), D, L, K))
    out = head(last, layers, C)
    noisy = [o.clone() for o in layers]
    last2 = last.clone()
    last2[:, :C] = 1e3 * torch.randn(B, C, D)
    for o in noisy:
        o[:, :C] = 1e3 * torch.randn(B, C, D)
    torch.testing.assert_close(head(last2, noisy, C), out)
    # ... while changing a patch token does change it (not by a constant: every head's LayerNorm would absorb it).
    bump = torch.linspace(-3.0, 3.0, D)
    last2[:, C + 1] += bump
    for o in noisy:
        o[:, C + 1] += bump
    assert not torch.allclose(head(last2, noisy, C), out)


@pytest.mark.parametrize("kind", ["pre_norm", "post_norm", "double_norm"])
def test_layer_weights_start_uniform_sum_to_one_and_get_gradients(kind):
    head = build_head(HeadConfig(kind=kind), D, L, K)
    w = head.layer_weights()
    assert w.shape == (L,)
    torch.testing.assert_close(w, torch.full((L,), 1.0 / L))
    last, layers = make_inputs()
    loss = F.cross_entropy(head(last, layers, C), torch.arange(B) % K)
    loss.backward()
    assert head.layer_logits.grad is not None and head.layer_logits.grad.abs().sum() > 0
    with torch.no_grad():
        head.layer_logits.copy_(torch.randn(L))
    assert torch.isclose(head.layer_weights().sum(), torch.tensor(1.0))
    assert (head.layer_weights() > 0).all()


def test_wrong_layer_count_and_bad_config_fail_loudly():
    head = build_head(HeadConfig(kind="pre_norm"), D, L, K)
    last, layers = make_inputs()
    with pytest.raises(ValueError, match="4 layers got 3"):
        head(last, layers[:3], C)
    with pytest.raises(ValueError, match="return_layers"):
        build_head(HeadConfig(kind="mean_fc_norm"), D, L, K)(last, [], C)
    assert not build_head(HeadConfig(kind="mean"), D, L, K)(last, [], C).isnan().any()  # mean needs no layers
    assert [build_head(HeadConfig(kind=k), D, L, K).needs_layers for k in HEAD_KINDS] == [False, False] + [True] * 4
    for bad in (dict(kind="token"), dict(activation="tanh"), dict(dropout=1.0), dict(hidden=[0])):
        with pytest.raises(ValueError):
            HeadConfig(**bad)


def test_set_requires_grad():
    m = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    assert set_requires_grad(m, False) is m
    assert not any(p.requires_grad for p in m.parameters())
    set_requires_grad(m, True)
    assert all(p.requires_grad for p in m.parameters())
