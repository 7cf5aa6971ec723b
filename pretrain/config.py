"""The typed configuration tree of pretraining, from the command line to the code.

Layers, later wins: the dataclass defaults below (the embedded default: a tiny model on the synthetic corpus) <-
``pretrain/configs/<method>.yaml`` (what differs between SSAST and Audio-MAE) <- an optional
``recipe=<name>`` from ``pretrain/configs/recipes/`` (the papers' full-size recipes) <- an optional ``config=FILE.yaml``
<- ``key=value`` overrides (:func:`launch.runtime.config.merge_config`). The merge is checked by OmegaConf against the
schema and every field's range is checked, so ``optim.lrr=1``, ``optim.lr=fast`` or ``steps=0`` fail with one line
before any process group or GPU starts. The runtime's groups (optim, deepspeed, checkpoint, log) are the loop's
(:mod:`launch.runtime.config`); the rest is pretraining's own.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from launch.runtime.config import CheckpointConfig, DeepSpeedConfig, LogConfig, OptimConfig, check, merge_config
from pretrain.audiomae import AudioMAEConfig
from pretrain.ssast import SSASTConfig
from shards.default import SyntheticDataConfig
from shards.features import FeatureConfig
from shards.stream import ShardSetConfig, StreamConfig

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
METHODS = ("ssast", "audiomae")


@dataclass
class DataConfig:
    """Where batches come from and how waveforms become features."""

    train: list[ShardSetConfig] = field(default_factory=list)
    """Shard sets mixed by weight; empty: the synthetic corpus' unlabelled + labelled splits."""
    val: Optional[ShardSetConfig] = None
    """Optional validation split (masked-prediction loss on an exact pass)."""
    stream: StreamConfig = field(default_factory=StreamConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)


@dataclass
class PretrainConfig:
    """Everything a pretraining run needs. ``method`` picks the model subtree that is used."""

    method: str = "ssast"
    """"ssast" (masked spectrogram patch modelling) or "audiomae" (masked autoencoder)."""
    recipe: Optional[str] = None
    """A full-size recipe from pretrain/configs/recipes/ (e.g. ssast_base_patch400, audiomae_base_as2m)."""
    run_dir: str = ""
    """Run folder (checkpoints, metrics, resolved config); empty: runs/pretrain/<method>-<config hash>."""
    seed: int = 0
    steps: int = 300
    """Optimizer steps."""
    eval_every: int = 0
    """Validate on ``data.val`` every this many steps (0: with every log line; SSAST: 800 tiny, 4000 base)."""
    data: DataConfig = field(default_factory=DataConfig)
    ssast: SSASTConfig = field(default_factory=SSASTConfig)
    audiomae: AudioMAEConfig = field(default_factory=AudioMAEConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        check("method", repr(self.method), self.method in METHODS, f"one of {', '.join(METHODS)}")
        check("steps", self.steps, self.steps >= 1, "at least 1 optimizer step")
        check("eval_every", self.eval_every, self.eval_every >= 0, ">= 0 (0: with every log line)")
        check(f"{self.method}.compile", self.model.compile, not (self.model.compile and self.deepspeed.zero_stage == 3),
              "false with deepspeed.zero_stage=3 (ZeRO-3 swaps the parameters the compiled blocks read; use 0-2)")

    @property
    def model(self):
        """The config of the selected method."""
        return self.ssast if self.method == "ssast" else self.audiomae

    @property
    def unused_subtrees(self) -> tuple[str, ...]:
        """The other method's model subtree, left out of the resolved config.yaml."""
        return ("audiomae",) if self.method == "ssast" else ("ssast",)


def load_pretrain_config(argv: Sequence[str] = ()) -> PretrainConfig:
    """The pretraining config for ``key=value`` overrides (``method=`` picks configs/<method>.yaml)."""
    return merge_config(PretrainConfig, argv, CONFIG_DIR, selector="method", default_selector="ssast")


__all__ = ["PretrainConfig", "DataConfig", "load_pretrain_config"]
