"""Where the loop's records go: each record is emitted once, to every sink that is on.

    metrics.jsonl         one JSON object per record (``step`` plus values), cut back to the resume step on start
    <run>/tensorboard/    TensorBoard event files (``log.tensorboard``, on by default): train/*, val/*, throughput/*
                          scalars and the images a task adds (a fine-tuning run's confusion matrix and layer weights);
                          a resumed run purges the events after its checkpoint, so curves never double back
    Weights & Biases      ``log.wandb=true`` (an optional extra): online with an API key, else offline files in
                          ``<run>/wandb`` (``wandb sync`` uploads them later)

A sink that fails (disk full, W&B unreachable, a TensorBoard folder that cannot be made) warns once, naming the sink
and the error, and is switched off; training goes on. Only rank 0 writes; every rank keeps the records in memory
(they are the same on every rank: the loop averages them across ranks first).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

from launch.common.files import atomic_write
from launch.runtime.config import LogConfig

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
THROUGHPUT_KEYS = ("clips_per_s", "data_wait", "corrupt")


def scalar_tag(key: str) -> str:
    """The TensorBoard / W&B name of a record key: ``val_acc`` -> ``val/acc``, ``clips_per_s`` ->
    ``throughput/clips_per_s``, ``loss`` -> ``train/loss``."""
    if key.startswith("val_"):
        return f"val/{key[4:]}"
    return f"throughput/{key}" if key in THROUGHPUT_KEYS else f"train/{key}"


def truncate_records(path: Path, step: int) -> None:
    """Keep only the records up to ``step`` (a resumed run repeats the steps after its checkpoint; a run that
    restarts from nothing keeps none)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if line and json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:  # a line cut by a kill mid-write: it belongs to a step that runs again
            continue
    atomic_write(path, "".join(line + "\n" for line in kept))


class JsonlSink:
    name = "metrics.jsonl"

    def __init__(self, run_dir: Path, start_step: int):
        self.path = run_dir / METRICS_FILE
        truncate_records(self.path, start_step)

    def record(self, step: int, values: Mapping[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(dict(values)) + "\n")

    def image(self, tag: str, step: int, png: Path) -> None:
        pass  # the PNG itself is in the run folder

    def close(self) -> None:
        pass


class TensorBoardSink:
    name = "TensorBoard"

    def __init__(self, run_dir: Path, start_step: int):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events written after the checkpoint by a run that was killed before its next one
        self.writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=start_step or None, flush_secs=30)

    def record(self, step: int, values: Mapping[str, Any]) -> None:
        for key, value in values.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(scalar_tag(key), value, step)

    def image(self, tag: str, step: int, png: Path) -> None:
        from matplotlib.image import imread

        self.writer.add_image(tag, imread(str(png))[..., :3], step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    name = "Weights & Biases"

    def __init__(self, run_dir: Path, start_step: int, cfg: LogConfig, config: Mapping[str, Any]):
        try:
            import wandb
        except ImportError:
            raise RuntimeError("log.wandb=true needs the wandb package: pip install 'tessera-audio[wandb]'") from None
        self.wandb = wandb
        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        run_id = f"{run_dir.name}-{hashlib.sha1(str(run_dir).encode()).hexdigest()[:8]}"  # one W&B run per folder
        self.run = wandb.init(project=cfg.wandb_project, entity=cfg.wandb_entity, dir=str(run_dir), id=run_id,
                              name=run_dir.name, resume="allow", mode=mode, config=dict(config),
                              settings=wandb.Settings(init_timeout=60, silent=True))

    def record(self, step: int, values: Mapping[str, Any]) -> None:
        numbers = {scalar_tag(k): v for k, v in values.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.run.log(numbers, step=step)

    def image(self, tag: str, step: int, png: Path) -> None:
        self.run.log({tag: self.wandb.Image(str(png))}, step=step)

    def close(self) -> None:
        self.run.finish()


class Tracker:
    """The loop's one logging path: ``record(step, values)`` and ``image(tag, step, png)`` go to every live sink."""

    def __init__(self, run_dir: Path, cfg: LogConfig, *, start_step: int, is_main: bool,
                 config: Mapping[str, Any] | None = None):
        self.records: list[dict[str, Any]] = []
        self.sinks: list[Any] = []
        if not is_main:
            return
        makers = [("metrics.jsonl", lambda: JsonlSink(run_dir, start_step))]
        if cfg.tensorboard:
            makers.append(("TensorBoard", lambda: TensorBoardSink(run_dir, start_step)))
        if cfg.wandb:
            makers.append(("Weights & Biases", lambda: WandbSink(run_dir, start_step, cfg, config or {})))
        for name, make in makers:
            try:
                self.sinks.append(make())
            except Exception as e:  # noqa: BLE001 - a sink must never stop training
                self._warn(name, e)

    @staticmethod
    def _warn(name: str, e: BaseException) -> None:
        log.warning("%s: switched off, training goes on (%s: %s)", name, type(e).__name__,
                    str(e).splitlines()[0] if str(e) else "")

    def _each(self, call) -> None:
        for sink in list(self.sinks):
            try:
                call(sink)
            except Exception as e:  # noqa: BLE001 - warn once, then stop using the sink
                self.sinks.remove(sink)
                self._warn(sink.name, e)

    def record(self, step: int, values: Mapping[str, Any]) -> dict[str, Any]:
        """Emit one record (``step`` first in it); returns it."""
        rec = {"step": step, **{k: v for k, v in values.items() if k != "step"}}
        self.records.append(rec)
        self._each(lambda s: s.record(step, rec))
        return rec

    def image(self, tag: str, step: int, png: Path) -> None:
        """An image file (PNG) of the run, e.g. the confusion matrix."""
        self._each(lambda s: s.image(tag, step, png))

    def close(self) -> None:
        self._each(lambda s: s.close())
        self.sinks = []
