"""The distillation maths: soft targets with temperature, the T^2-scaled loss, ensembles, per-clip targets."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from finetune.distill import (
    DistillConfig,
    align_by_key,
    clip_teachers,
    distillation_targets,
    ensemble_probs,
    kl_distillation,
    soft_cross_entropy,
    soften,
)

torch.manual_seed(0)


def logits(b: int = 6, c: int = 5, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(b, c, dtype=torch.float64) * scale


def test_soft_cross_entropy_is_the_cross_entropy_for_one_hot_targets_at_t1():
    s, labels = logits(), torch.tensor([0, 4, 2, 2, 1, 3])
    ours = soft_cross_entropy(s, F.one_hot(labels, 5).double())
    assert torch.allclose(ours, F.cross_entropy(s, labels, reduction="none"), atol=1e-9)
    t = logits().softmax(-1)  # and torch's soft-target cross-entropy, T^2-scaled at T = 3
    assert torch.allclose(soft_cross_entropy(s, t, 3.0), 9 * F.cross_entropy(s / 3, t, reduction="none"),
                          atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_the_gradient_vanishes_when_the_student_matches_the_teacher(temperature):
    z = logits()
    teacher = z.softmax(-1)  # stored teacher probabilities (T = 1); softened to softmax(z / T) by the loss
    s = z.clone().requires_grad_(True)
    kl = kl_distillation(s, teacher, temperature)
    assert torch.allclose(kl, torch.zeros_like(kl), atol=1e-6)
    soft_cross_entropy(s, soften(teacher, temperature), temperature).sum().backward()
    assert s.grad.abs().max() < 1e-6
    other = logits().requires_grad_(True)  # any other student: the gradient is T (softmax(s / T) - p_T)
    soft_cross_entropy(other, soften(teacher, temperature), temperature).sum().backward()
    expected = temperature * ((other.detach() / temperature).softmax(-1) - (z / temperature).softmax(-1))
    assert torch.allclose(other.grad, expected, atol=1e-6) and other.grad.abs().max() > 1e-3


def test_kl_is_the_soft_cross_entropy_less_the_teachers_entropy_times_t_squared():
    s, teacher, t = logits(), logits().softmax(-1), 2.5
    target = soften(teacher, t)
    entropy = -(target * target.log()).sum(-1)
    assert torch.allclose(kl_distillation(s, teacher, t), soft_cross_entropy(s, target, t) - t**2 * entropy, atol=1e-6)


def test_t_squared_keeps_the_gradient_scale_as_hinton_derives():
    """Hinton et al. 2015, eq. 3-4: for large T and zero-mean logits, the gradient of the soft loss w.r.t. a student
    logit is (s_i - z_i) / (N T^2); multiplied by T^2 it no longer depends on T (without T^2 it would vanish)."""
    z, s = logits(c=8, scale=0.5), logits(c=8, scale=0.5)
    z, s = z - z.mean(-1, keepdim=True), (s - s.mean(-1, keepdim=True)).requires_grad_(True)
    grads = {}
    for t in (50.0, 200.0):
        s.grad = None
        kl_distillation(s, z.softmax(-1), t).sum().backward()
        grads[t] = s.grad.clone()
        assert torch.allclose(grads[t], (s.detach() - z) / 8, atol=0.02 * (s.detach() - z).abs().max().item())
    assert (grads[50.0] - grads[200.0]).abs().max() < 0.02 * grads[200.0].abs().max()  # 16x apart without T^2


def test_soften_is_softmax_of_logits_over_t_and_the_identity_at_t1():
    z = logits()
    assert torch.allclose(soften(z.softmax(-1), 3.0), (z / 3).softmax(-1), atol=1e-9)
    assert torch.allclose(soften(z.softmax(-1), 1.0), z.softmax(-1), atol=1e-12)
    rounded = torch.tensor([[0.999999, 0.000001, 0.0]], dtype=torch.float64)  # pseudo shards round to 6 decimals
    assert torch.isfinite(soften(rounded, 2.0)).all() and soften(rounded, 2.0).sum().item() == pytest.approx(1.0)


def test_ensembles_average_probabilities_or_logits():
    rng = np.random.default_rng(0)
    z = [rng.normal(size=(7, 4)) * 2 for _ in range(3)]
    p = [np.exp(x) / np.exp(x).sum(1, keepdims=True) for x in z]
    assert np.allclose(ensemble_probs(p, "probs"), (p[0] + p[1] + p[2]) / 3)
    mean_logit = (z[0] + z[1] + z[2]) / 3
    assert np.allclose(ensemble_probs(p, "logits"), np.exp(mean_logit) / np.exp(mean_logit).sum(1, keepdims=True))
    shifted = [np.exp(x + 5.0) / np.exp(x + 5.0).sum(1, keepdims=True) for x in z]  # logits known up to a constant
    assert np.allclose(ensemble_probs(shifted, "logits"), ensemble_probs(p, "logits"))
    assert np.array_equal(ensemble_probs([p[0]], "logits"), p[0]) and np.allclose(ensemble_probs(p).sum(1), 1)
    with pytest.raises(ValueError, match="ensemble mode 'max'"):
        ensemble_probs(p, "max")


def test_teachers_are_aligned_by_clip_key():
    keys = [["a", "b", "c", "d"], ["d", "c", "a"], ["c", "a", "d", "b"]]  # teacher 2 could not read "b"
    probs = [np.array([[i, 0.0] for i in range(len(k))]) + 10 * t for t, k in enumerate(keys)]
    kept, rows, first = align_by_key(keys, probs)
    assert kept == ["a", "c", "d"] and first == [0, 2, 3]
    for t, (k, p) in enumerate(zip(keys, rows)):
        assert [int(v) for v in p[:, 0] - 10 * t] == [k.index(x) for x in kept]


def test_per_clip_targets_split_labels_and_teachers():
    """A labelled clip keeps its label (and gets a teacher where one is known by key); a soft pseudo-labelled clip
    trains on its teacher only; a hard pseudo-labelled clip (no probs) on its pseudo label."""
    keys = ["lab-0", "lab-1", "pseudo-soft", "pseudo-hard"]
    meta = [{}, {}, {"pseudo_label": True, "probs": [0.7, 0.2, 0.1]}, {"pseudo_label": True}]
    by_key = {"lab-1": np.array([0.1, 0.8, 0.1])}
    teacher, has, counts = clip_teachers(keys, meta, by_key, 3)
    assert has.tolist() == [False, True, True, False] and counts.tolist() == [True, True, False, True]
    assert torch.allclose(teacher[2], torch.tensor([0.7, 0.2, 0.1])) and torch.allclose(teacher[1], torch.tensor(
        [0.1, 0.8, 0.1]))
    labels = torch.tensor([2, 1, 0, 1])
    hard, soft = distillation_targets(labels, teacher, has, counts, 3, temperature=2.0, label_weight=0.5,
                                      distill_weight=3.0)
    assert hard.tolist() == [[0, 0, 0.5], [0, 0.5, 0], [0, 0, 0], [0, 0.5, 0]]
    assert soft[0].abs().sum() == 0 and soft[3].abs().sum() == 0
    assert torch.allclose(soft[2], 3.0 * soften(teacher[2:3], 2.0)[0]) and soft[2].sum().item() == pytest.approx(3.0)
    # linear in the targets: mixup of two clips' targets gives the mixed loss
    s, lam = logits(b=1, c=3), 0.3
    mixed = soft_cross_entropy(s, lam * soft[1:2] + (1 - lam) * soft[2:3], 2.0)
    assert torch.allclose(mixed, lam * soft_cross_entropy(s, soft[1:2], 2.0) + (1 - lam) * soft_cross_entropy(
        s, soft[2:3], 2.0))


@pytest.mark.parametrize("kw, message", [({"targets": "both"}, "distill.targets"), ({"temperature": 0}, "temperature"),
                                          ({"weight": -1}, "distill.weight"), ({"teacher_probs": "x.npz"}, "unless")])
def test_config_refuses_in_one_line(kw, message):
    with pytest.raises(ValueError, match=message):
        DistillConfig(**kw)
