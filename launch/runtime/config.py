"""The runtime's config groups and the layered merge that turns a command line into a typed config tree.

Every job's tree (pretraining, fine-tuning, semi-supervised) holds the groups below, read by the step loop, next to
its own task groups. Layers, later wins: the dataclass defaults <- a per-method or preset YAML <- ``recipe=`` <-
``config=FILE.yaml`` <- ``key=value``. OmegaConf checks the merge against the schema and every dataclass checks its
ranges in ``__post_init__``, so ``optim.lrr=1``, ``optim.lr=fast`` and ``optim.lr=-1`` each fail in one line before
any process group or GPU starts. Code receives plain dataclasses (``OmegaConf.to_object``), never a DictConfig.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from launch.common.errors import BadInput, check
from launch.common.fields import HOW_NOT_WHAT, SINCE, since  # noqa: F401 - re-exported (shards declares fields without the runtime)

T = TypeVar("T")


@dataclass
class OptimConfig:
    """AdamW with linear warm-up, then cosine decay (or constant, or SSAST's plateau rule), stepped per optimizer
    step."""

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
        check("optim.lr", self.lr, self.lr > 0, "a learning rate > 0")
        check("optim.min_lr", self.min_lr, 0 <= self.min_lr <= self.lr, f"0 <= min_lr <= optim.lr ({self.lr})")
        check("optim.weight_decay", self.weight_decay, self.weight_decay >= 0, ">= 0")
        check("optim.betas", list(self.betas), len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
              "two values in [0, 1)")
        check("optim.eps", self.eps, self.eps > 0, "> 0")
        check("optim.warmup_steps", self.warmup_steps, self.warmup_steps >= 0, ">= 0")
        check("optim.clip_grad", self.clip_grad, self.clip_grad >= 0, ">= 0 (0: off)")
        check("optim.schedule", repr(self.schedule), self.schedule in ("cosine", "constant", "plateau"),
              "'cosine', 'constant' or 'plateau'")
        check("optim.plateau_mode", repr(self.plateau_mode), self.plateau_mode in ("max", "min"), "'max' or 'min'")
        check("optim.plateau_factor", self.plateau_factor, 0 < self.plateau_factor < 1, "0 < factor < 1")
        check("optim.plateau_patience", self.plateau_patience, self.plateau_patience >= 0, ">= 0")


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
        check("deepspeed.zero_stage", self.zero_stage, self.zero_stage in (0, 1, 2, 3), "0, 1, 2 or 3")
        check("deepspeed.precision", repr(self.precision), self.precision in ("fp32", "bf16", "fp16"),
              "fp32, bf16 or fp16")
        check("deepspeed.grad_accum", self.grad_accum, self.grad_accum >= 1, ">= 1")
        check("deepspeed.backend", repr(self.backend), self.backend in ("auto", "nccl", "gloo"), "auto, nccl or gloo")


@dataclass
class CheckpointConfig:
    """DeepSpeed checkpoints in ``<run_dir>/checkpoints``, plus the run's export (encoder.pt / best.pt)."""

    every_steps: int = 100
    """Save every this many optimizer steps (and always at the end)."""
    keep_last: int = 2
    """Complete checkpoints kept (older ones are deleted once a newer one is complete); 0 keeps all."""
    resume: str = "auto"
    """"auto": continue from the newest complete checkpoint in the run folder, if any; a path: that checkpoint;
    "never": start afresh (what the folder held is moved to ``<run>/previous/<time>/``, never deleted)."""

    def __post_init__(self) -> None:
        check("checkpoint.every_steps", self.every_steps, self.every_steps >= 1, ">= 1")
        check("checkpoint.keep_last", self.keep_last, self.keep_last >= 0, ">= 0 (0 keeps every checkpoint)")
        check("checkpoint.resume", repr(self.resume), bool(self.resume), "auto, never or a checkpoint path")


@dataclass
class LogConfig:
    """Where every record of the loop goes (each record is emitted once to every sink that is on)."""

    every_steps: int = 10
    """Training metrics (losses, rate, throughput) every this many optimizer steps."""
    progress: bool = True
    """Show a rich progress bar on rank 0 (a log file gets metric lines instead)."""
    tensorboard: bool = True
    """TensorBoard event files in ``<run>/tensorboard`` (``tensorboard --logdir runs/``)."""
    wandb: bool = False
    """Weights & Biases (``pip install 'tessera-audio[wandb]'``); offline mode when no API key is set."""
    wandb_project: str = "tessera"
    """W&B project name."""
    wandb_entity: Optional[str] = None
    """W&B entity (team or user); None: the account's default."""

    def __post_init__(self) -> None:
        check("log.every_steps", self.every_steps, self.every_steps >= 1, ">= 1")


# ---------------------------------------------------------------------------------------------- the layered merge


def _load_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise BadInput(f"{path}: no such config file")
    try:
        tree = OmegaConf.load(path)
    except Exception as e:  # noqa: BLE001 - yaml.YAMLError, UnicodeDecodeError and friends: one line each
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BadInput(f"{path}: not valid YAML ({first})") from None
    if not isinstance(tree, DictConfig):
        raise BadInput(f"{path}: expected a mapping of config keys (key: value), got a {type(tree).__name__[:-6].lower()}")
    return tree


def _one_line(e: Exception) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    key = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("full_key:")), None)
    msg = lines[0] if lines else type(e).__name__
    return f"{key}: {msg}" if key and key not in msg else msg


def _overrides(items: Sequence[str]) -> DictConfig:
    """``key=value`` items as one tree; a broken YAML value is one line naming the item."""
    trees = []
    for item in items:
        try:
            trees.append(OmegaConf.from_dotlist([item]))
        except Exception as e:  # noqa: BLE001 - yaml.ScannerError etc. from a broken value
            raise BadInput(f"argument {item!r}: the value is not valid YAML ({_one_line(e)})") from None
    return OmegaConf.merge(*trees) if trees else OmegaConf.create({})


def merge_config(schema: type[T], argv: Sequence[str], config_dir: Path, selector: str | None = None,
                 default_selector: str | None = None) -> T:
    """Schema defaults <- ``config_dir/<selector value>.yaml`` <- ``recipes/<recipe>.yaml`` <- ``config=FILE`` <- argv.

    ``argv`` holds ``key=value`` items; ``selector`` names the key that picks the per-method or preset YAML.
    Raises :class:`BadInput` with one line for an unknown key, a wrong type, a value out of range or a malformed item.
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
    layers.append(_overrides([f"{k}={v}" for k, v in overrides.items()]))
    try:
        return OmegaConf.to_object(OmegaConf.merge(*layers))
    except (OmegaConfBaseException, ValueError, TypeError) as e:
        raise BadInput(f"config: {_one_line(e)}") from None


def config_tree(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain containers, without the subtrees the config says it does not use
    (``unused_subtrees``: e.g. the other method's model of a pretraining config)."""
    tree = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    for key in getattr(cfg, "unused_subtrees", ()):
        tree.pop(key, None)
    return tree


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML (what the run folder's ``config.yaml`` holds)."""
    return OmegaConf.to_yaml(config_tree(cfg))


HASH_IGNORED = ("run_dir", "checkpoint", "log")
"""Groups that never change a result (where to write, how often to save and log): left out of the run's hash."""


def _default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _drop_new_defaults(obj: Any, tree: Any) -> None:
    """Remove from ``tree`` (the container of dataclass ``obj``) every :func:`since` field that holds its default,
    and every ``how_not_what`` field, recursing into nested dataclasses and lists of them."""
    if not dataclasses.is_dataclass(obj) or not isinstance(tree, dict):
        return
    for f in dataclasses.fields(obj):
        if f.name not in tree:
            continue
        value = getattr(obj, f.name)
        if f.metadata.get(HOW_NOT_WHAT) or (SINCE in f.metadata and _plain(value) == _plain(_default_of(f))):
            del tree[f.name]
        elif isinstance(value, (list, tuple)) and isinstance(tree[f.name], list):
            for item, sub in zip(value, tree[f.name]):
                _drop_new_defaults(item, sub)
        else:
            _drop_new_defaults(value, tree[f.name])


def how_not_what_keys(cfg: Any, prefix: str = "") -> set[str]:
    """The dotted keys of ``cfg``'s ``how_not_what`` fields (nested dataclasses included; not inside lists): what a
    resumed run may change (:func:`launch.runtime.run_folder.check_same_config`)."""
    keys: set[str] = set()
    if not dataclasses.is_dataclass(cfg):
        return keys
    for f in dataclasses.fields(cfg):
        if f.metadata.get(HOW_NOT_WHAT):
            keys.add(prefix + f.name)
        else:
            keys |= how_not_what_keys(getattr(cfg, f.name), f"{prefix}{f.name}.")
    return keys


def _plain(value: Any) -> Any:
    """Compare configs by content: dataclasses as dicts, tuples as lists."""
    if dataclasses.is_dataclass(value):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_hash(cfg: Any, ignore: Sequence[str] = HASH_IGNORED) -> str:
    """A short signature of everything that changes the result (dora's idea): same config, same run folder.

    Fields added later (:func:`since`) count only once they differ from their default."""
    tree = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    if not isinstance(cfg, DictConfig):
        _drop_new_defaults(cfg, tree)
    for key in ignore:
        tree.pop(key, None)
    return hashlib.sha1(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:8]
