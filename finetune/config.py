"""The typed configuration of fine-tuning (``python finetune/layerwise.py key=value ...``).

Layers, later wins: these dataclass defaults (the embedded default: the latest embedded pretraining run, fine-tuned on
the synthetic labelled split) <- ``finetune/configs/<preset>.yaml`` (``preset=`` picks one; default ``default``) <-
``config=FILE.yaml`` <- ``key=value``. Checked against the schema before anything starts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from finetune.cnn import CNNConfig
from finetune.distill import DistillConfig
from finetune.heads import HeadConfig
from launch.runtime.config import (
    CheckpointConfig,
    DeepSpeedConfig,
    LogConfig,
    OptimConfig,
    check,
    config_hash,
    merge_config,
    since,
)
from pretrain.encoder import EncoderConfig
from shards.default import SyntheticDataConfig
from shards.features import FeatureConfig
from shards.stream import ShardSetConfig, StreamConfig

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class FinetuneDataConfig:
    """Labelled training data, validation (model selection) and test (the reported numbers)."""

    train: list[ShardSetConfig] = field(default_factory=list)
    """Labelled shard sets mixed by weight (pseudo-labelled sets too); empty: the synthetic labelled split."""
    val: Optional[ShardSetConfig] = None
    """Validation split for early stopping / best-checkpoint selection; None with no train data: synthetic val."""
    test: Optional[ShardSetConfig] = None
    """Test split evaluated once with the best checkpoint; None with no train data: synthetic test."""
    stream: StreamConfig = field(default_factory=StreamConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)
    seen_devices: Optional[list[str]] = None
    """Devices seen in training (TAU22: a b c s1 s2 s3), for the seen vs unseen accuracy; None: the test devices that
    the training manifests do not list as test-only (TAU22 and the synthetic corpus list them)."""


@dataclass
class DeviceIRConfig:
    """Device impulse response augmentation (CP-JKU's DCASE 2023 Task 1 system, ``DIRAugmentDataset``): a training
    clip is convolved with an impulse response drawn at random from a folder of measured microphones / devices."""

    path: str = ""
    """Folder of impulse responses, searched recursively; any soundfile format (wav, flac, ogg, aiff ...), any rate
    (resampled once to ``data.stream.sample_rate``), channels averaged. "synthetic": the embedded corpus's stand-in
    collection (``<corpus>/device_irs/``, extra simulated devices). Empty: off."""
    p: float = 0.6
    """Probability that a (chosen) training clip is convolved; CP-JKU ``--dir_prob 0.6``."""
    devices: Optional[list[str]] = None
    """Convolve only clips whose ``meta.device`` is one of these (CP-JKU: ``[a]``, the reference device, so phone
    recordings are not coloured twice); None: every clip."""
    keep_level: bool = True
    """Rescale each convolved clip to its RMS before the convolution. CP-JKU keep the output as it is (MicIRP files are
    peak-normalised, so the level then depends on the IR: about +6 dB for theirs)."""
    max_seconds: float = 2.0
    """Refuse longer impulse responses (a device IR lasts milliseconds; MicIRP's files 0.4-0.5 s; a long file is
    likely a room response or a recording put there by mistake)."""

    def __post_init__(self) -> None:
        check("augment.device_ir.p", self.p, 0.0 <= self.p <= 1.0, "a probability in [0, 1]")
        check("augment.device_ir.max_seconds", self.max_seconds, 0 < self.max_seconds <= 60, "0 < seconds <= 60")
        check("augment.device_ir.devices", self.devices, self.devices is None or len(self.devices) > 0,
              "a non-empty list of device names, or null (every clip)")


@dataclass
class AugmentConfig:
    """The augmentations the layer-wise paper tried (SpecAugment and fbank noise live in ``data.features``), and the
    device-robust ones of CP-JKU's DCASE Task 1 systems (frequency-wise MixStyle, device impulse responses)."""

    mixup: float = 0.0
    """Probability that a clip is mixed with another clip of the batch (waveform mixup, SSAST's loader)."""
    mixup_alpha: float = 10.0
    """lambda ~ Beta(alpha, alpha); SSAST and Audio-MAE use 10."""
    token_mask_time: float = 0.0
    """Fraction of the token grid's time steps dropped while training (Audio-MAE fine-tuning ``mask_t_prob``: 0.2)."""
    token_mask_freq: float = 0.0
    """Fraction of the token grid's frequency bands dropped while training (Audio-MAE ``mask_f_prob``: 0.2)."""
    freq_mixstyle: float = since("0.2", 0.0)
    """Probability that a training batch gets frequency-wise MixStyle (Schmid et al., DCASE 2022: each clip's
    per-mel-band mean and std over time replaced by a mix with another clip's). CP-JKU use 0.4 (DCASE 2023
    ``--mixstyle_p``) and 0.6 (DCASE 2022 submission 2). 0: off."""
    freq_mixstyle_alpha: float = since("0.2", 0.3)
    """lambda ~ Beta(alpha, alpha) per clip; CP-JKU ``mixstyle_alpha`` 0.3 (DCASE 2022 and 2023)."""
    device_ir: DeviceIRConfig = since("0.2", default_factory=DeviceIRConfig)

    def __post_init__(self) -> None:
        check("augment.mixup", self.mixup, 0.0 <= self.mixup <= 1.0, "a probability in [0, 1]")
        check("augment.mixup_alpha", self.mixup_alpha, self.mixup_alpha >= 0, ">= 0 (0: lambda = 1)")
        for name in ("token_mask_time", "token_mask_freq"):
            check(f"augment.{name}", getattr(self, name), 0.0 <= getattr(self, name) < 1.0, "a fraction in [0, 1)")
        check("augment.freq_mixstyle", self.freq_mixstyle, 0.0 <= self.freq_mixstyle <= 1.0, "a probability in [0, 1]")
        check("augment.freq_mixstyle_alpha", self.freq_mixstyle_alpha, self.freq_mixstyle_alpha > 0, "> 0")


@dataclass
class FinetuneOptimConfig(OptimConfig):
    """The pretraining optimizer settings plus separate head / backbone rates and layer-wise decay."""

    lr: float = 1e-4
    """Peak learning rate of the backbone's top block."""
    weight_decay: float = 5e-4
    min_lr: float = 1e-6
    betas: tuple[float, float] = (0.9, 0.999)
    head_lr_scale: float = 10.0
    """Head (and layer weights) rate = lr x this (SSAST's ``head_lr``)."""
    layer_decay: float = 1.0
    """Block i of L gets lr x decay^(L - i); patch embedding and tokens decay^L (Audio-MAE: 0.75; 1 = off)."""
    plateau_metric: str = "val_accuracy"
    """What ``schedule=plateau`` watches while fine-tuning: the validation accuracy (the only value it gives)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check("optim.layer_decay", self.layer_decay, 0 < self.layer_decay <= 1, "0 < decay <= 1")
        check("optim.head_lr_scale", self.head_lr_scale, self.head_lr_scale > 0, "> 0")


@dataclass
class EncoderOverrides:
    """Fine-tune-time changes to the pretrained encoder's input (positional embeddings are adapted as SSAST does)."""

    stride_freq: Optional[int] = 10
    """Overlapping patches (SSAST fine-tunes with stride 10); None keeps the pretraining stride."""
    stride_time: Optional[int] = 10
    drop_path: float = 0.0
    """Stochastic depth while fine-tuning (Audio-MAE: 0.1)."""

    def __post_init__(self) -> None:
        for name in ("stride_freq", "stride_time"):
            value = getattr(self, name)
            check(f"encoder.{name}", value, value is None or value >= 1, ">= 1, or null (the pretraining stride)")
        check("encoder.drop_path", self.drop_path, 0 <= self.drop_path < 1, "0 <= drop_path < 1")


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run needs."""

    ckpt: str = "latest"
    """Pretrained encoder: a path (our encoder.pt or run folder, an official SSAST / Audio-MAE file), "latest" (the
    newest run under runs/pretrain/), or "none" (train from scratch with ``scratch_encoder``)."""
    preset: str = "default"
    """Defaults file from finetune/configs/ (picked before merging)."""
    run_dir: str = ""
    """Run folder; empty: runs/finetune/<head>-<config hash>."""
    seed: int = 0
    steps: int = 600
    """Optimizer steps."""
    eval_every: int = 100
    """Validate (exact pass) every this many steps and keep the best checkpoint."""
    early_stop: int = 0
    """Stop after this many validations without improvement (0: never)."""
    num_classes: Optional[int] = None
    """Optional check: the number of classes the data must have."""
    freeze_backbone: bool = False
    """Train only the head (the paper's frozen-backbone row)."""
    head: HeadConfig = field(default_factory=HeadConfig)
    encoder: EncoderOverrides = field(default_factory=EncoderOverrides)
    scratch_encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig(cls_tokens=2, target_frames=100))
    """The encoder trained from scratch when ``ckpt=none``."""
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: FinetuneOptimConfig = field(default_factory=FinetuneOptimConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    # --- distillation and the DCASE-size student (0.2)
    model: str = since("0.2", "transformer")
    """"transformer": the pretrained encoder (``ckpt``) plus ``head``; "cnn": the DCASE-size CNN student of ``cnn``,
    trained from scratch (``ckpt``, ``head`` and ``encoder`` unused). In the semi-supervised pipeline: the student's."""
    cnn: CNNConfig = since("0.2", default_factory=CNNConfig)
    distill: DistillConfig = since("0.2", default_factory=DistillConfig)

    def __post_init__(self) -> None:
        check("model", repr(self.model), self.model in ("transformer", "cnn"), "'transformer' or 'cnn'")
        check("steps", self.steps, self.steps >= 1, "at least 1 optimizer step")
        check("eval_every", self.eval_every, self.eval_every >= 1, ">= 1 (validate every this many steps)")
        check("early_stop", self.early_stop, self.early_stop >= 0, ">= 0 (0: never)")
        check("num_classes", self.num_classes, self.num_classes is None or self.num_classes >= 2, ">= 2, or null")


def load_finetune_config(argv: Sequence[str] = ()) -> FinetuneConfig:
    return merge_config(FinetuneConfig, argv, CONFIG_DIR, selector="preset", default_selector="default")


def resolve_run_dir(cfg: FinetuneConfig) -> Path:
    name = cfg.head.kind if cfg.model == "transformer" else cfg.model
    return Path(cfg.run_dir or f"runs/finetune/{name}-{config_hash(cfg)}").resolve()
