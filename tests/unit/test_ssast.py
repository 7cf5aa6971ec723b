"""SSAST: the InfoNCE / MSE losses by hand, the official loop-based forward, one pass == two passes."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from pretrain.encoder import EncoderConfig
from pretrain.ssast import SSAST, SSASTConfig, infonce, masked_mse


def tiny_cfg(**kw) -> SSASTConfig:
    enc = EncoderConfig(size="tiny", depth=kw.pop("depth", 2), target_frames=128, cls_tokens=2)  # 8x8 = 64 patches
    return SSASTConfig(encoder=enc, mask_patches=kw.pop("mask_patches", 40), **kw)


def test_infonce_by_hand_2x2():
    # identity: total = I, every row log_softmax([1, 0]) at its own index
    eye = torch.eye(2).unsqueeze(0)
    nce, acc = infonce(eye, eye)
    assert math.isclose(nce.item(), math.log(1 + math.exp(-1)), rel_tol=1e-6) and acc.item() == 1.0
    # asymmetric: total[i, j] = target_i . pred_j = [[2, 1], [0, 0]]
    pred = torch.tensor([[[2.0, 0.0], [1.0, 0.0]]])
    nce, acc = infonce(pred, eye)
    want = -0.5 * ((2 - math.log(math.exp(2) + math.exp(1))) + (0 - math.log(2)))  # softmax over dim -1 (preds)
    assert math.isclose(nce.item(), want, rel_tol=1e-6)
    # acc = argmax over dim 0 of softmax(total, dim=-1) = [[.73, .27], [.5, .5]]: column 0 -> 0, column 1 -> 1,
    # both right; argmax over dim 0 of the raw total would say 0 for column 1 (acc 0.5).
    assert acc.item() == 1.0


def test_infonce_detaches_the_target_and_mse():
    pred = torch.randn(2, 5, 3, requires_grad=True)
    target = torch.randn(2, 5, 3, requires_grad=True)
    infonce(pred, target)[0].backward()
    assert pred.grad is not None and target.grad is None
    p, t = torch.tensor([[[1.0, 2.0]], [[0.0, 0.0]]]), torch.tensor([[[0.0, 0.0]], [[3.0, 1.0]]])
    assert masked_mse(p, t).item() == pytest.approx((1 + 4 + 9 + 1) / 4)


def test_config_defaults_cluster_auto_and_checks():
    assert SSASTConfig().use_cluster and SSASTConfig().encoder.cls_tokens == 2
    frame = EncoderConfig(patch_freq=128, patch_time=2, stride_freq=128, stride_time=2)
    assert not SSASTConfig(encoder=frame).use_cluster and SSASTConfig(encoder=frame, cluster=True).use_cluster
    with pytest.raises(ValueError, match="mask_patches=400.*64 patches"):
        SSASTConfig(encoder=EncoderConfig(target_frames=128))
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SSASTConfig),
                                              OmegaConf.from_dotlist(["cluster_range=[2,4]", "encoder.size=small"])))
    assert cfg.cluster_range == (2, 4) and cfg.encoder.embed_dim == 384


def test_draw_masks():
    model = SSAST(tiny_cfg())
    c, g = model.draw_masks(3, torch.Generator().manual_seed(0))
    assert c.shape == g.shape == (3, 40) and not torch.equal(c, g) and c.min() > 0
    frame = SSAST(SSASTConfig(encoder=EncoderConfig(depth=1, target_frames=64, patch_freq=128, patch_time=2,
                                                    stride_freq=128, stride_time=2, cls_tokens=2), mask_patches=20))
    ids, _ = frame.draw_masks(2, torch.Generator().manual_seed(0))
    assert ids.shape == (2, 20) and ids.max() < 32
    assert "clustered" in model.describe_masking() and "uniform" in frame.describe_masking()


def test_forward_backward_tiny():
    torch.manual_seed(0)
    model = SSAST(tiny_cfg())
    x = 0.5 * torch.randn(2, 128, 128)
    out = model(x, *model.draw_masks(2, torch.Generator().manual_seed(1)))
    assert torch.isfinite(out.loss) and 0.0 <= out.acc.item() <= 1.0
    torch.testing.assert_close(out.loss, out.nce + 10.0 * out.mse)
    assert out.nce.item() == pytest.approx(math.log(40), rel=0.5)  # near chance at init
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_one_pass_equals_two_passes():
    torch.manual_seed(0)
    one = SSAST(tiny_cfg(one_pass=True, depth=1)).double()
    two = SSAST(tiny_cfg(one_pass=False, depth=1)).double()
    two.load_state_dict(one.state_dict())
    x = 0.5 * torch.randn(2, 128, 128, dtype=torch.float64)
    masks = one.draw_masks(2, torch.Generator().manual_seed(2))
    a, b = one(x, *masks), two(x, *masks)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v)
    a.loss.backward()
    b.loss.backward()
    for (n, p), q in zip(one.named_parameters(), two.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=n)


def _official_mpc_mpg(model: SSAST, x: torch.Tensor, ids_c: torch.Tensor, ids_g: torch.Tensor):
    """ast_models.py ``mpc`` and ``mpg`` with their per-sample loops (and two passes), on our modules."""
    enc, v_cls = model.encoder, model.encoder.num_cls
    inp = F.unfold(x.unsqueeze(1).transpose(2, 3), kernel_size=(16, 16), stride=(16, 16)).transpose(1, 2)
    b, m = x.shape[0], ids_c.shape[1]

    def encode(ids):
        h = enc.patch_embed.proj(x.unsqueeze(1).transpose(2, 3)).flatten(2).transpose(1, 2)
        mask_dense = torch.ones_like(h)
        for i in range(b):
            mask_dense[i, ids[i], :] = 0
        h = h * mask_dense + (1 - mask_dense) * model.mask_embed.expand(b, h.shape[1], -1)
        h = torch.cat([enc.cls_tokens.expand(b, -1, -1), h], dim=1) + enc.pos_embed
        for blk in enc.blocks:
            h = blk(h)
        return enc.norm(h)

    h = encode(ids_c)
    nce, correct = 0.0, 0.0
    for i in range(b):
        target = inp[i, ids_c[i], :].clone().detach()
        pred = model.cpredlayer(h[i, ids_c[i] + v_cls, :])
        total = torch.mm(target, pred.T)
        correct += torch.sum(torch.eq(torch.argmax(torch.softmax(total, dim=-1), dim=0), torch.arange(m)))
        nce += torch.sum(torch.diag(torch.log_softmax(total, dim=-1)))
    h = encode(ids_g)
    pred = torch.stack([model.gpredlayer(h[i, ids_g[i] + v_cls, :]) for i in range(b)])
    target = torch.stack([inp[i, ids_g[i], :] for i in range(b)])
    return nce / (-1.0 * b * m), correct / (b * m), torch.mean((pred - target) ** 2)


def test_matches_the_official_loop_implementation():
    torch.manual_seed(0)
    model = SSAST(tiny_cfg()).double()
    x = 0.5 * torch.randn(2, 128, 128, dtype=torch.float64)
    ids_c, ids_g = model.draw_masks(2, torch.Generator().manual_seed(3))
    out = model(x, ids_c, ids_g)
    nce, acc, mse = _official_mpc_mpg(model, x, ids_c, ids_g)
    torch.testing.assert_close(out.nce, nce.float())
    torch.testing.assert_close(out.mse, mse.float())
    assert out.acc.item() == pytest.approx(float(acc))


def test_masked_patch_contents_do_not_reach_the_encoder():
    """The embedding of a masked patch is replaced (not added to): changing its pixels changes nothing."""
    torch.manual_seed(0)
    model = SSAST(tiny_cfg()).eval()
    x = torch.randn(1, 128, 128)
    ids = torch.tensor([[0, 9, 63]])  # freq-major (f, t): (0,0), (1,1), (7,7)
    y = x.clone()
    for k in ids[0].tolist():
        f, t = divmod(k, 8)
        y[0, 16 * t:16 * t + 16, 16 * f:16 * f + 16] += 5.0  # fbank is [B, T, F]
    enc = model.encoder
    torch.testing.assert_close(model.forward_encoder(enc.embed(x), ids), model.forward_encoder(enc.embed(y), ids))
    assert not torch.allclose(enc.patches(x), enc.patches(y))
