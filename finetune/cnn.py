"""A DCASE-size student: a small CP-Mobile-style CNN on the log-mel features, and its counted complexity.

DCASE Task 1 (low-complexity acoustic scene classification) caps a system at 128 K parameters and 30 M
multiply-accumulates (MACs) per 1 s clip (2022 rules; 2023-2025 keep the MAC cap and count the parameter memory).
The winners of 2022-2023 (CP-JKU) distil transformer ensembles into CNNs built for that budget: in 2022 a
receptive-field-regularised ResNet (CP-ResNet, Koutini et al., IEEE/ACM TASLP 2021: the receptive field, kept small in
frequency and time, is what generalises across devices), in 2023 CP-Mobile (fschmid56/cpjku_dcase23,
``models/cp_mobile_clean.py``), which keeps CP-ResNet's shape control but factorises every 3x3 convolution into
MobileNetV2's inverted bottleneck. This student follows CP-Mobile:

    fbank [B, T, F] -> [B, 1, F, T]                                   CP-JKU's layout: mel bins x frames
    stem   conv3x3/2 (1 -> c/4) BN ReLU, conv3x3/2 (c/4 -> c) BN ReLU   both axes / 4
    stages inverted-bottleneck blocks: 1x1 expand (x e) BN ReLU -> 3x3 depthwise (stride) BN ReLU -> 1x1 project BN,
           + identity (average-pooled when strided) when the width does not change, then ReLU
           widths c, c m, c m^2 (rounded to multiples of 8); strides as CP-Mobile: block 2 (2, 2), block 4 (2, 1)
    head   1x1 conv (-> classes) BN, global average pool -> logits [B, classes]

What we left out of CP-Mobile, and why: GRN after each block (2 scalars per block, a refinement of their full-TAU22
training that 2,000 synthetic clips cannot measure), the quantisation stubs (we count parameters, whatever their
precision; the rules' 128 KB assume 8-bit ones) and frequency-wise MixStyle (an augmentation of the fine-tuning step,
``augment.*``, not part of the model). The receptive field is controlled the CP-ResNet way, by 3x3 kernels only and
where the strides sit: a last-stage unit sees 119 mel bins x 87 frames through its block path, so on a 1 s clip
(128 x 100) it spans most of the input; the regularisation bites on the longer inputs CP-ResNet was made for.

The defaults are CP-Mobile's own (base 32, multiplier 2.3, expansion 3, blocks 3-2-1): on the embedded default's 1 s
input (100 frames x 128 mel bins) and 10 classes they give 126,940 parameters and 23.07 M MACs per clip, within both
limits. :func:`count_complexity` counts them by running the model: forward hooks on every Conv2d / Linear, MACs =
output elements x (input channels / groups) x kernel area; BatchNorm folds into the convolution at inference and
pooling / ReLU are no MACs, as in the DCASE complexity calculators that count a fused model. torch's
``FlopCounterMode`` gives exactly 2 x these MACs (46,133,760 FLOPs); ``tests/unit/test_cnn.py`` checks both counts
against a hand count.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import torch
from torch import Tensor, nn

from launch.common.errors import check

ARCH = "cnn"
"""``encoder["arch"]`` of a best.pt that holds this student (a transformer's has no ``arch``)."""

DCASE_MAX_PARAMS = 128_000
"""DCASE 2022 Task 1: at most 128 K parameters (the rules' "128 KB" at 8 bits per parameter)."""
DCASE_MAX_MACS = 30_000_000
"""DCASE 2022 Task 1: at most 30 M multiply-accumulates per 1 s of audio."""


@dataclass
class CNNConfig:
    """The DCASE-size CNN student (``model=cnn``): CP-Mobile's three width knobs plus its stage depths."""

    base_channels: int = 32
    """Channels after the stem (CP-Mobile: 32), rounded to a multiple of 8."""
    channels_multiplier: float = 2.3
    """Width growth per stage: stage s has base x multiplier^s channels (CP-Mobile: 2.3)."""
    expansion_rate: float = 3.0
    """Inverted-bottleneck expansion of the 1x1 convolution (CP-Mobile: 3)."""
    blocks: list[int] = field(default_factory=lambda: [3, 2, 1])
    """Blocks per stage (CP-Mobile: 3, 2, 1); block 2 strides (2, 2) and block 4 (2, 1) (frequency, time)."""
    dropout: float = 0.0
    """Dropout before the classifier convolution (0: none, as CP-Mobile)."""
    enforce_dcase_limits: bool = False
    """Refuse (one line, before training) a configuration over the DCASE 2022 limits (128 K parameters, 30 M MACs per
    1 s clip); off: the report only says where it stands."""

    def __post_init__(self) -> None:
        check("cnn.base_channels", self.base_channels, 4 <= self.base_channels <= 1024, "4..1024 channels")
        check("cnn.channels_multiplier", self.channels_multiplier, 0.5 <= self.channels_multiplier <= 4,
              "0.5..4 (width growth per stage)")
        check("cnn.expansion_rate", self.expansion_rate, 1 <= self.expansion_rate <= 8, "1..8")
        check("cnn.blocks", list(self.blocks), len(self.blocks) >= 1 and all(0 <= b <= 16 for b in self.blocks)
              and sum(self.blocks) >= 1, "a list of 0..16 blocks per stage, at least one block in all")
        check("cnn.dropout", self.dropout, 0 <= self.dropout < 1, "0 <= dropout < 1")


STRIDES = {2: (2, 2), 4: (2, 1)}
"""CP-Mobile's strided blocks (1-based over all stages): block 2 halves frequency and time, block 4 frequency."""


def make_divisible(value: float, divisor: int = 8) -> int:
    """The nearest multiple of ``divisor`` at least 90% of ``value`` (MobileNet's ``_make_divisible``, as CP-Mobile)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _conv_bn(cin: int, cout: int, kernel: int, stride: tuple[int, int] | int = 1, groups: int = 1,
             relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


class Block(nn.Module):
    """CP-Mobile's block: 1x1 expand -> 3x3 depthwise (stride) -> 1x1 project, + shortcut when widths match, ReLU."""

    def __init__(self, cin: int, cout: int, expansion: float, stride: tuple[int, int]):
        super().__init__()
        hidden = make_divisible(cin * expansion, 8)
        self.block = nn.Sequential(_conv_bn(cin, hidden, 1), _conv_bn(hidden, hidden, 3, stride, groups=hidden),
                                   _conv_bn(hidden, cout, 1, relu=False))
        strided = stride != (1, 1)
        self.shortcut = None if cin != cout else (nn.AvgPool2d(3, stride, 1) if strided else nn.Identity())
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        y = self.block(x)
        return self.act(y if self.shortcut is None else y + self.shortcut(x))


class CNNClassifier(nn.Module):
    """log-mel ``[B, T, F]`` -> logits ``[B, C]``, called as a :class:`~finetune.model.Classifier` is."""

    def __init__(self, cfg: CNNConfig, num_classes: int):
        super().__init__()
        self.cfg = cfg
        stages = len(cfg.blocks)
        base = make_divisible(cfg.base_channels, 8)
        widths = [base] + [make_divisible(base * cfg.channels_multiplier**s, 8) for s in range(stages)]
        self.stem = nn.Sequential(_conv_bn(1, base // 4, 3, 2), _conv_bn(base // 4, base, 3, 2))
        blocks, width = [], base
        for s, depth in enumerate(cfg.blocks):
            for _ in range(depth):
                blocks.append(Block(width, widths[s + 1], cfg.expansion_rate, STRIDES.get(len(blocks) + 1, (1, 1))))
                width = widths[s + 1]
        self.blocks = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Sequential(nn.Conv2d(width, num_classes, 1, bias=False), nn.BatchNorm2d(num_classes))
        self.apply(_init)

    def forward(self, fbank: Tensor, ids_keep: Tensor | None = None) -> Tensor:
        """``ids_keep`` is a transformer's token masking; a CNN has no tokens (the loop never passes it here)."""
        x = fbank.transpose(1, 2).unsqueeze(1)  # [B, 1, F, T]
        x = self.blocks(self.stem(x))
        return self.classifier(self.dropout(x)).mean((2, 3))  # [B, C]


def _init(m: nn.Module) -> None:
    """CP-Mobile's initialisation: Kaiming (fan-out) convolutions, unit BatchNorm."""
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out")
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------------------------------------------------
# Complexity


class Complexity(NamedTuple):
    """What a model costs: parameters and multiply-accumulates of one forward pass over one clip."""

    params: int
    macs: int

    def over_limits(self) -> list[str]:
        """The DCASE 2022 limits this exceeds, as phrases (empty: within both)."""
        return [f"{what} {value:,} > {limit:,}" for what, value, limit in
                (("parameters", self.params, DCASE_MAX_PARAMS), ("MACs per 1 s clip", self.macs, DCASE_MAX_MACS))
                if value > limit]

    def describe(self) -> str:
        """e.g. ``126,940 parameters (99.2% of 128 K), 23.07 M MACs per 1 s clip (76.9% of 30 M): within ...``."""
        verdict = "within the DCASE 2022 limits" if not self.over_limits() else "OVER the DCASE 2022 limits"
        return (f"{self.params:,} parameters ({100 * self.params / DCASE_MAX_PARAMS:.1f}% of 128 K), "
                f"{self.macs / 1e6:.2f} M MACs per 1 s clip ({100 * self.macs / DCASE_MAX_MACS:.1f}% of 30 M): "
                f"{verdict}")

    def as_dict(self) -> dict[str, int]:
        return {"params": self.params, "macs": self.macs, "max_params": DCASE_MAX_PARAMS, "max_macs": DCASE_MAX_MACS}


def layer_macs(module: nn.Module, output: Tensor) -> int:
    """Multiply-accumulates of one Conv / Linear call per batch element, from its output: every output element of a
    convolution is (input channels / groups) x kernel area products; of a linear layer, ``in_features``."""
    per_item = output[0].numel()
    if isinstance(module, nn.modules.conv._ConvNd):
        kernel = 1
        for k in module.kernel_size:
            kernel *= k
        return per_item * (module.in_channels // module.groups) * kernel
    if isinstance(module, nn.Linear):
        return per_item * module.in_features
    return 0


def count_complexity(model: nn.Module, example: Tensor) -> Complexity:
    """Parameters and MACs of ``model`` on one clip ``example [1, ...]`` (run once, eval mode, no gradient)."""
    if example.shape[0] != 1:
        raise ValueError(f"count_complexity: expected one clip (batch 1), got a batch of {example.shape[0]}")
    macs = [0]

    def hook(module: nn.Module, _inputs: Sequence[Tensor], output: Tensor) -> None:
        macs[0] += layer_macs(module, output)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return Complexity(sum(p.numel() for p in model.parameters()), macs[0])


__all__ = ["ARCH", "CNNClassifier", "CNNConfig", "Complexity", "DCASE_MAX_MACS", "DCASE_MAX_PARAMS",
           "count_complexity", "make_divisible"]
