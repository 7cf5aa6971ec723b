"""The DCASE-size CNN student: its parameter and MAC counts against a hand count, the limits, its best.pt."""
from __future__ import annotations

import pytest
import torch

from finetune.cnn import DCASE_MAX_MACS, DCASE_MAX_PARAMS, CNNClassifier, CNNConfig, count_complexity, make_divisible
from finetune.config import load_finetune_config
from finetune.model import cnn_payload, load_classifier
from finetune.train import cnn_complexity
from launch.common.errors import BadInput
from launch.runtime import checkpoints
from shards.features import build_features


def conv(cin: int, cout: int, k: int, out_hw: int, groups: int = 1) -> tuple[int, int]:
    """(parameters incl. its BatchNorm's 2 per channel, MACs) of a bias-free convolution by hand."""
    return cout * cin // groups * k * k + 2 * cout, out_hw * cout * cin // groups * k * k


def test_counts_match_a_hand_count_of_a_tiny_student():
    """Base 8, multiplier 1, expansion 1, blocks [1, 1], 3 classes, on 8 frames x 16 mel bins (layout F x T):
    stem 16x8 -> 8x4 -> 4x2; block 1 at 4x2; block 2 strides (2, 2) -> 2x1; classifier at 2x1."""
    layers = [conv(1, 2, 3, 8 * 4), conv(2, 8, 3, 4 * 2),  # stem (c/4 = 2 channels, then 8)
              conv(8, 8, 1, 4 * 2), conv(8, 8, 3, 4 * 2, groups=8), conv(8, 8, 1, 4 * 2),  # block 1
              conv(8, 8, 1, 4 * 2), conv(8, 8, 3, 2 * 1, groups=8), conv(8, 8, 1, 2 * 1),  # block 2 (strided dw)
              conv(8, 3, 1, 2 * 1)]  # classifier
    params, macs = sum(p for p, _ in layers), sum(m for _, m in layers)
    assert (params, macs) == (708, 4160)  # the arithmetic above, written out once
    model = CNNClassifier(CNNConfig(base_channels=8, channels_multiplier=1.0, expansion_rate=1.0, blocks=[1, 1]), 3)
    assert count_complexity(model, torch.randn(1, 8, 16)) == (params, macs)
    assert model(torch.randn(5, 8, 16)).shape == (5, 3)


def test_the_default_student_is_cp_mobile_within_the_dcase_limits():
    """torch.utils.flop_counter.FlopCounterMode gives 2 x these MACs (46,133,760 FLOPs; checked once by hand: its first
    use imports torch._dynamo, 5 s of this suite's budget)."""
    model = CNNClassifier(CNNConfig(), 10)
    fbank = torch.randn(1, 100, 128)  # the embedded default: 1 s -> 100 frames x 128 mel bins
    counted = count_complexity(model, fbank)
    assert counted == (126_940, 23_066_880)  # the figures the module docstring and the README quote
    assert counted.params <= DCASE_MAX_PARAMS and counted.macs <= DCASE_MAX_MACS and not counted.over_limits()
    assert "within the DCASE 2022 limits" in counted.describe()
    assert [make_divisible(v) for v in (32, 73.6, 169.28, 4, 12)] == [32, 72, 168, 8, 16]


def test_limits_are_enforced_only_when_asked():
    big = ["model=cnn", "cnn.base_channels=64"]
    cfg = load_finetune_config(big)
    features = build_features(cfg.data.features)
    over = cnn_complexity(CNNClassifier(cfg.cnn, 10), features, cfg)
    assert over.over_limits() and "OVER" in over.describe()
    enforced = load_finetune_config([*big, "cnn.enforce_dcase_limits=true"])
    with pytest.raises(BadInput, match=r"cnn: parameters .* > 128,000.*enforce_dcase_limits=true") as e:
        cnn_complexity(CNNClassifier(enforced.cnn, 10), features, enforced)
    assert "\n" not in str(e.value)
    ok = load_finetune_config(["model=cnn", "cnn.enforce_dcase_limits=true"])
    assert cnn_complexity(CNNClassifier(ok.cnn, 10), features, ok) == (126_940, 23_066_880)
    half = load_finetune_config(["model=cnn", "data.stream.clip_seconds=2", "data.features.target_frames=200"])
    assert cnn_complexity(CNNClassifier(half.cnn, 10), features.__class__(half.data.features), half).macs == \
        pytest.approx(23_066_880, rel=0.03)  # per 1 s of audio (frames round per stride)


def test_best_pt_of_a_cnn_student_loads_back_as_the_same_model(tmp_path):
    model = CNNClassifier(CNNConfig(base_channels=16, blocks=[1, 1, 1]), 4).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # weights unlike a fresh model's
    encoder, head = cnn_payload(model)
    checkpoints.write_classifier(tmp_path / "best.pt", model.state_dict(), encoder=encoder, head=head,
                                 classes=list("abcd"), step=3, val={}, pretrained={"source": "scratch"})
    loaded, payload = load_classifier(tmp_path / "best.pt")
    x = torch.randn(2, 100, 128)
    assert isinstance(loaded, CNNClassifier) and payload["classes"] == list("abcd")
    assert torch.equal(loaded.eval()(x), model(x))
    broken = {**payload, "encoder": {**encoder, "base_channels": 24}}
    torch.save(broken, tmp_path / "bad.pt")
    with pytest.raises(BadInput, match="bad.pt: not a usable CNN classifier"):
        load_classifier(tmp_path / "bad.pt")
    from finetune.conversion import load_export_config, run  # the export formats hold transformers only: one line

    with pytest.raises(BadInput, match="best.pt: the CNN student has no transformer encoder"):
        run(load_export_config([f"ckpt={tmp_path / 'best.pt'}", f"out={tmp_path / 'hf'}"]))
    assert not (tmp_path / "hf").exists()
