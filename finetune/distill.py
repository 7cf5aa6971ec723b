"""Knowledge distillation, the pure part: teacher ensembles, temperature-softened targets and the distillation loss.

Hinton, Vinyals & Dean 2015 ("Distilling the Knowledge in a Neural Network", sec. 2): the student matches the
teacher's probabilities softened by a temperature T, ``p_T = softmax(z / T)``, through the cross-entropy (equivalently
the KL divergence, which differs by the teacher's entropy, a constant) with its own ``softmax(s / T)``; the loss is
multiplied by T^2 because the gradients of the soft term scale as 1/T^2 (sec. 2.1), so changing T does not change
the balance against the hard-label loss. CP-JKU's DCASE 2023 student does the same (``run_training.py``:
``KLDivLoss(log_softmax(s / T), log_softmax(z_teacher / T)) * T**2``, T = 2).

Our teachers are stored as probabilities (the exact prediction pass gives ``softmax(z)``; pseudo-labelled shards keep
them in each clip's json), so a temperature is applied as ``softmax(log p / T)``: for one teacher ``log p = z - c``
with a per-clip constant c, which the softmax ignores, so this is exactly ``softmax(z / T)``. Ensembles
(:func:`ensemble_probs`) average either the probabilities (the issue's "averaged probabilities") or the logits
(CP-JKU release the ensembled logits of 3 PaSST + 3 CP-ResNet teachers as one logit tensor, ``ensemble_logits.pt``,
which their student softens with ``log_softmax(z / T)``: the ensemble is formed before the softmax). The logit mean is
computed from probabilities as the mean of ``log p`` (the per-teacher constants only shift each row), i.e. the
normalised geometric mean of the probabilities.

Everything here works on tensors or arrays and draws no random number; the training step (:mod:`finetune.train`)
builds the per-clip targets and weights and calls :func:`soft_cross_entropy`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from launch.common.errors import check

ENSEMBLE_MODES = ("probs", "logits")
"""How a teacher ensemble is averaged: the mean of the probabilities, or the mean of the logits before the softmax."""

EPS = 1e-12
"""Floor of a probability before its log (pseudo-label shards round probabilities to 6 decimals: zeros occur)."""


@dataclass
class DistillConfig:
    """What a clip that carries teacher probabilities trains on (soft pseudo-labels, knowledge distillation)."""

    targets: str = "hard"
    """"hard": every clip trains on its label with the cross-entropy (a pseudo-labelled clip on the teacher's argmax,
    as before 0.2); "soft": a pseudo-labelled clip that carries the teacher's probabilities (``probs`` in its json:
    ``python finetune/pseudolabel.py distill.targets=soft`` writes them) trains on them with the distillation loss
    only, and a labelled clip keeps its label loss, plus the distillation loss where ``teacher_probs`` has it."""
    temperature: float = 2.0
    """Hinton's T: targets softmax(z / T) against the student's softmax(s / T), loss x T^2 (CP-JKU DCASE 2023: 2)."""
    weight: float = 1.0
    """Weight of the distillation loss of a clip (next to ``label_weight`` of its label loss)."""
    label_weight: float = 1.0
    """Weight of the label (cross-entropy) loss of a clip whose label counts (CP-JKU DCASE 2023: 0.02 next to 0.98)."""
    teacher_probs: str = ""
    """A ``.npz`` of teacher probabilities by clip key (``keys``, ``probs``, ``classes``) for labelled clips, which then
    also get the distillation loss; the semi-supervised pipeline writes it (``pseudo.distill_labelled=true``)."""

    def __post_init__(self) -> None:
        check("distill.targets", repr(self.targets), self.targets in ("hard", "soft"), "'hard' or 'soft'")
        check("distill.temperature", self.temperature, 0.1 <= self.temperature <= 100, "0.1 <= T <= 100")
        check("distill.weight", self.weight, self.weight >= 0, ">= 0")
        check("distill.label_weight", self.label_weight, self.label_weight >= 0, ">= 0")
        check("distill.teacher_probs", self.teacher_probs, not self.teacher_probs or self.targets == "soft",
              "empty unless distill.targets=soft (teacher probabilities are only used as soft targets)")


def ensemble_probs(members: Sequence[np.ndarray], mode: str = "probs") -> np.ndarray:
    """Average ``K`` teachers' probabilities ``[N, C]`` (rows aligned: the same clip in every member) -> ``[N, C]``.

    ``mode="probs"``: ``mean_k p_k``; ``mode="logits"``: ``softmax(mean_k z_k) = softmax(mean_k log p_k)`` (CP-JKU).
    One member is returned unchanged (as float64) by both.
    """
    if mode not in ENSEMBLE_MODES:
        raise ValueError(f"ensemble mode {mode!r}: expected one of {', '.join(ENSEMBLE_MODES)}")
    if not members:
        raise ValueError("ensemble of no teacher")
    stack = np.stack([np.asarray(m, dtype=np.float64) for m in members])  # [K, N, C]
    if stack.ndim != 3:
        raise ValueError(f"teacher probabilities: expected K arrays [N, C], got {list(stack.shape)}")
    if len(members) == 1:
        return stack[0]
    if mode == "probs":
        return stack.mean(0)
    log_mean = np.log(np.maximum(stack, EPS)).mean(0)  # [N, C]: mean logit up to a per-row constant
    log_mean -= log_mean.max(1, keepdims=True)
    out = np.exp(log_mean)
    return out / out.sum(1, keepdims=True)


def align_by_key(keys: Sequence[Sequence[str]], probs: Sequence[np.ndarray]) -> tuple[list[str], list[np.ndarray],
                                                                                     list[int]]:
    """Teachers' predictions of the same clips, each in its own order -> (keys, per-teacher rows in that order, rows of
    the first teacher): the clips every teacher predicted (one that could not read a clip leaves it out), in the
    first teacher's order."""
    rows = [{k: i for i, k in enumerate(ks)} for ks in keys]
    common = [i for i, k in enumerate(keys[0]) if all(k in r for r in rows[1:])]
    kept = [keys[0][i] for i in common]
    return kept, [np.asarray(p)[[r[k] for k in kept]] for p, r in zip(probs, rows)], common


def _full(x: Tensor) -> Tensor:
    """fp16 / bf16 logits (a half-precision engine) to fp32 for the softmax; fp32 and fp64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def soften(probs: Tensor, temperature: float) -> Tensor:
    """Teacher probabilities ``[B, C]`` at temperature T: ``softmax(log p / T)`` (= ``softmax(z / T)``, see above)."""
    if temperature == 1.0:
        return probs / probs.sum(-1, keepdim=True)
    return (probs.clamp_min(EPS).log() / temperature).softmax(-1)


def soft_cross_entropy(logits: Tensor, targets: Tensor, temperature: float = 1.0) -> Tensor:
    """``T^2 * -sum_c t_c log softmax(s / T)_c`` per clip, ``[B, C], [B, C] -> [B]`` (Hinton et al. 2015, sec. 2).

    At T = 1 with one-hot targets this is the ordinary cross-entropy. It is linear in ``targets``, so rows may carry
    a weight (scaled targets) and mixup may mix them. Its gradient w.r.t. ``s`` is ``T (softmax(s / T) sum t - t)``:
    zero when the student's softened probabilities equal the targets. It differs from :func:`kl_distillation` by
    ``T^2 * H(t)``, which does not depend on the student.
    """
    return -(targets * (_full(logits) / temperature).log_softmax(-1)).sum(-1) * temperature**2


def kl_distillation(logits: Tensor, teacher_probs: Tensor, temperature: float = 1.0) -> Tensor:
    """``T^2 * KL(p_T || softmax(s / T))`` per clip, ``[B, C], [B, C] -> [B]``, with ``p_T`` = :func:`soften`\\ (p, T):
    the distillation loss as CP-JKU log it (zero when student and teacher agree; what training minimises up to a
    constant, see :func:`soft_cross_entropy`)."""
    target = soften(_full(teacher_probs), temperature)
    log_q = (_full(logits) / temperature).log_softmax(-1)
    return (target * (target.clamp_min(EPS).log() - log_q)).sum(-1) * temperature**2


def distillation_targets(labels: Tensor, teacher: Tensor, has_teacher: Tensor, label_counts: Tensor,
                         num_classes: int, temperature: float, label_weight: float,
                         distill_weight: float) -> tuple[Tensor, Tensor]:
    """Per-clip targets of a batch that mixes labelled and pseudo-labelled clips -> ``(hard [B, C], soft [B, C])``.

    ``labels [B]`` (-1: none), ``teacher [B, C]`` teacher probabilities (rows without one: anything),
    ``has_teacher [B]`` bool, ``label_counts [B]`` bool: whether the clip's label takes part in the hard loss (a
    labelled clip's true label; not the teacher's argmax of a soft-labelled clip). ``hard`` = label_weight x one-hot
    (zero rows where the label does not count), ``soft`` = distill_weight x ``soften(teacher, T)`` (zero rows without
    a teacher). The loss is ``soft_cross_entropy(s, hard, 1) + soft_cross_entropy(s, soft, T)``; both are linear in
    their targets, so mixup mixes ``hard`` and ``soft`` as it mixes one-hot targets.
    """
    counts = label_counts & (labels >= 0)
    hard = torch.nn.functional.one_hot(labels.clamp(min=0), num_classes).float() * counts[:, None] * label_weight
    soft = soften(teacher.float().clamp_min(0), temperature) * has_teacher[:, None] * distill_weight
    return hard, soft


def clip_teachers(keys: Sequence[str], meta: Sequence[Mapping[str, Any]], by_key: Mapping[str, np.ndarray],
                  num_classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Which clips of a batch have teacher probabilities, and whose label counts -> ``(teacher [B, C], has [B],
    label_counts [B])``: a pseudo-labelled clip that carries ``probs`` (its json) trains on them and not on the
    teacher's argmax label; any other clip keeps its label and has a teacher where ``by_key`` (labelled clips'
    teacher probabilities) holds its key."""
    teacher = torch.zeros(len(keys), num_classes)
    has = torch.zeros(len(keys), dtype=torch.bool)
    counts = torch.ones(len(keys), dtype=torch.bool)
    for i, (key, m) in enumerate(zip(keys, meta)):
        probs = m.get("probs") if m.get("pseudo_label") else None
        if probs is None and key in by_key:
            probs = by_key[key]
        elif probs is not None:
            counts[i] = False
        if probs is not None:
            if len(probs) != num_classes:
                raise ValueError(f"clip {key}: teacher probabilities for {len(probs)} classes, expected {num_classes}")
            teacher[i], has[i] = torch.as_tensor(np.asarray(probs, dtype=np.float32)), True
    return teacher, has, counts


__all__ = ["ENSEMBLE_MODES", "DistillConfig", "align_by_key", "clip_teachers", "distillation_targets", "ensemble_probs",
           "kl_distillation", "soft_cross_entropy", "soften"]
