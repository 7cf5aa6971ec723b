"""The typed configuration tree of pretraining, from the command line to the code.

Layers, later wins: the dataclass defaults below (the embedded default: a tiny model on the synthetic corpus) <-
``pretrain/configs/<method>.yaml`` (what differs between SSAST and Audio-MAE) <- an optional
``recipe=<name>`` from ``pretrain/configs/recipes/`` (the papers' full-size recipes) <- an optional ``config=FILE.yaml``
<- ``key=value`` overrides. The merge is checked by OmegaConf against the schema, so ``optim.lrr=1`` or
``optim.lr=fast`` fail with one line before any process group or GPU starts. Code receives plain dataclasses
(``OmegaConf.to_object``), never a DictConfig.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, TypeVar

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from launch.common.errors import BadInput
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
class OptimConfig:
    """AdamW with linear warm-up, then cosine decay (or constant), stepped per optimizer step."""

    lr: float = 5e-4
    """Peak learning rate (absolute; see ``lr_batch_scale``)."""
    lr_batch_scale: bool = False
    """MAE rule: multiply ``lr`` by effective_batch / 256 (Audio-MAE: blr 2e-4 at 512 clips -> 4e-4)."""
    min_lr: float = 0.0
    """Floor of the cosine decay."""
    weight_decay: float = 0.05
    """Decoupled weight decay, not applied to biases, norms, tokens and positional embeddings (MAE's rule)."""
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup_steps: int = 50
    """Linear warm-up from 0 over this many optimizer steps."""
    schedule: str = "cosine"
    """After warm-up: "cosine" (to min_lr at the last step), "constant", or "plateau" (SSAST: constant, times
    ``plateau_factor`` whenever ``plateau_metric`` has not improved for ``plateau_patience`` validations)."""
    plateau_metric: str = "val_acc"
    """The validation value the plateau schedule watches (SSAST: the masked-patch accuracy, val_acc)."""
    plateau_mode: str = "max"
    """"max" (an accuracy) or "min" (a loss)."""
    plateau_factor: float = 0.5
    """SSAST halves the rate (ReduceLROnPlateau factor 0.5)."""
    plateau_patience: int = 2
    """Validations without improvement before a cut (SSAST ``--lr_patience 2``)."""
    clip_grad: float = 0.0
    """Global gradient-norm clipping (0: off; Audio-MAE and SSAST use none)."""

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "constant", "plateau"):
            raise ValueError(f"optim.schedule={self.schedule!r}: expected 'cosine', 'constant' or 'plateau'")
        if self.plateau_mode not in ("max", "min"):
            raise ValueError(f"optim.plateau_mode={self.plateau_mode!r}: expected 'max' or 'min'")
        if not 0 < self.plateau_factor < 1 or self.plateau_patience < 0:
            raise ValueError(f"optim.plateau_factor={self.plateau_factor}, optim.plateau_patience="
                             f"{self.plateau_patience}: expected 0 < factor < 1 and patience >= 0")


@dataclass
class DeepSpeedConfig:
    """The DeepSpeed engine: ZeRO stage, precision, micro-batching."""

    zero_stage: int = 0
    """ZeRO stage 0 (plain data parallel), 1, 2 or 3."""
    precision: str = "fp32"
    """"fp32", "bf16" or "fp16" (dynamic loss scaling)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    backend: str = "auto"
    """Process-group backend: "auto" (NCCL on GPU, gloo on CPU), "nccl" or "gloo"."""

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"deepspeed.zero_stage={self.zero_stage}: expected 0, 1, 2 or 3")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"deepspeed.precision={self.precision!r}: expected fp32, bf16 or fp16")
        if self.grad_accum < 1:
            raise ValueError(f"deepspeed.grad_accum={self.grad_accum}: expected >= 1")


@dataclass
class CheckpointConfig:
    """DeepSpeed checkpoints in ``<run_dir>/checkpoints``, plus a plain encoder export."""

    every_steps: int = 100
    """Save every this many optimizer steps (and always at the end)."""
    keep_last: int = 2
    """Complete checkpoints kept (older ones are deleted after a newer one is complete)."""
    resume: str = "auto"
    """"auto": continue from the latest complete checkpoint in the run folder if any; "never"; or a path."""


@dataclass
class LogConfig:
    every_steps: int = 10
    """Metrics (JSONL) and console line every this many optimizer steps."""
    progress: bool = True
    """Show a rich progress bar on rank 0."""


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
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r}: expected one of {', '.join(METHODS)}")

    @property
    def model(self):
        """The config of the selected method."""
        return self.ssast if self.method == "ssast" else self.audiomae


T = TypeVar("T")


def _load_yaml(path: Path) -> Any:
    if not path.exists():
        raise BadInput(f"{path}: no such config file")
    try:
        return OmegaConf.load(path)
    except Exception as e:  # yaml.YAMLError and friends
        raise BadInput(f"{path}: not valid YAML ({str(e).splitlines()[0]})")


def _one_line(e: OmegaConfBaseException | ValueError) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    key = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("full_key:")), None)
    msg = lines[0] if lines else type(e).__name__
    return f"{key}: {msg}" if key and key not in msg else msg


def merge_config(schema: type[T], argv: Sequence[str], config_dir: Path, selector: str | None = None,
                 default_selector: str | None = None) -> T:
    """Schema defaults <- ``config_dir/<selector value>.yaml`` <- ``recipes/<recipe>.yaml`` <- ``config=FILE`` <- argv.

    ``argv`` holds ``key=value`` items; ``selector`` names the key that picks the per-method YAML.
    Raises :class:`BadInput` with one line for an unknown key, a wrong type or a malformed item.
    """
    items = list(argv)
    for item in items:
        if "=" not in item or item.startswith("="):
            raise BadInput(f"argument {item!r}: expected key=value (e.g. optim.lr=1e-4)")
    overrides = dict(item.split("=", 1) for item in items)
    layers = [OmegaConf.structured(schema)]
    if selector is not None:
        choice = overrides.get(selector, default_selector)
        if not (config_dir / f"{choice}.yaml").exists():
            known = ", ".join(sorted(p.stem for p in config_dir.glob("*.yaml")))
            raise BadInput(f"config: {selector}={choice!r}: expected one of {known}")
        layers.append(_load_yaml(config_dir / f"{choice}.yaml"))
    recipe = overrides.get("recipe")
    if recipe and recipe.lower() not in ("null", "none"):
        layers.append(_load_yaml(config_dir / "recipes" / f"{recipe}.yaml"))
    user_file = overrides.pop("config", None)
    if user_file:
        layers.append(_load_yaml(Path(user_file)))
    try:
        layers.append(OmegaConf.from_dotlist([f"{k}={v}" for k, v in overrides.items()]))
        merged = OmegaConf.merge(*layers)
        return OmegaConf.to_object(merged)
    except (OmegaConfBaseException, ValueError) as e:
        raise BadInput(f"config: {_one_line(e)}") from None


def load_pretrain_config(argv: Sequence[str] = ()) -> PretrainConfig:
    """The pretraining config for ``key=value`` overrides (``method=`` picks configs/<method>.yaml)."""
    return merge_config(PretrainConfig, argv, CONFIG_DIR, selector="method", default_selector="ssast")


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML; a pretraining config shows only the model subtree of its method."""
    tree = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    if isinstance(cfg, PretrainConfig):
        tree.pop("audiomae" if cfg.method == "ssast" else "ssast")
    return OmegaConf.to_yaml(tree)


def config_hash(cfg: Any, ignore: Sequence[str] = ("run_dir", "checkpoint", "log")) -> str:
    """A short signature of everything that changes the result (dora's idea): same config, same run folder."""
    tree = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    for key in ignore:
        tree.pop(key, None)
    return hashlib.sha1(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:8]


__all__ = ["MISSING", "PretrainConfig", "load_pretrain_config", "merge_config", "config_hash", "to_yaml"]
