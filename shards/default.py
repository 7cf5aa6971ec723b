"""The embedded default data: the synthetic acoustic-scene corpus, built into shards on first use."""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import logging
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from launch.common.errors import check
from shards.manifest import read_manifest
from shards.writer import MANIFEST, BuildOptions, build

log = logging.getLogger(__name__)


@dataclass
class SyntheticDataConfig:
    """The synthetic corpus used when no shard set is given."""

    root: str = "runs/data"
    """Folder under which ``synthetic-<hash>/`` shard sets are built (made absolute at launch)."""
    seed: int = 0
    """Corpus seed (the same seed gives the same clips on any machine)."""
    labelled: int = 2000
    """Clips in the labelled split (balanced over scenes)."""
    unlabelled: int = 6000
    """Clips in the unlabelled split (pretraining and pseudo-labelling; true labels kept in the metadata only)."""
    val: int = 400
    """Clips in the validation split."""
    test: int = 800
    """Clips in the test split (includes devices and cities never seen in training)."""
    duration: float = 1.0
    """Clip length in seconds."""

    def __post_init__(self) -> None:
        for name in ("labelled", "unlabelled", "val", "test"):
            check(f"data.synthetic.{name}", getattr(self, name), getattr(self, name) >= 0, ">= 0 clips")
        check("data.synthetic.labelled", self.labelled, self.labelled >= 1, ">= 1 clip (the corpus' class list)")
        check("data.synthetic.duration", self.duration, 0 < self.duration <= 60, "0 < seconds <= 60")


def synthetic_dir(cfg: SyntheticDataConfig, sample_rate: int) -> Path:
    """Where the shards of this corpus configuration live (a hash of the configuration names the folder)."""
    key = json.dumps({**asdict(cfg), "root": None, "sample_rate": sample_rate}, sort_keys=True)
    return Path(cfg.root).resolve() / f"synthetic-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def ensure_synthetic(cfg: SyntheticDataConfig, sample_rate: int, workers: int = 2, console=None) -> Path:
    """Build the synthetic shards (and the stand-in device IRs) unless a complete build exists; returns the folder.
    Safe to call concurrently."""
    from shards.sources import synthetic

    out = synthetic_dir(cfg, sample_rate)
    if (out / MANIFEST).exists():
        read_manifest(out / MANIFEST)  # a damaged manifest stops here in one line, not in a DataLoader worker
        ensure_device_irs(cfg, sample_rate)  # builds made before the IRs existed get them now
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with _locked(out):  # another process may be building it right now: wait, then reuse
        synthetic.write_device_irs(out / synthetic.IR_FOLDER, sample_rate)
        if not (out / MANIFEST).exists():
            log.info("building the synthetic corpus into %s (first use)", out)
            args = argparse.Namespace(source="synthetic", seed=cfg.seed, labelled=cfg.labelled,
                                      unlabelled=cfg.unlabelled, val=cfg.val, test=cfg.test, duration=cfg.duration,
                                      sample_rate=sample_rate)
            corpus = synthetic.load(None, args)
            build(corpus, out, list(corpus.splits), BuildOptions(sample_rate=sample_rate, shard_size=500,
                                                                  workers=workers),
                  root=None, source_args={k: v for k, v in vars(args).items() if k != "sample_rate"}, console=console)
    return out


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Hold the build lock of corpus folder ``out`` (a lock file beside it) for the block."""
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure_device_irs(cfg: SyntheticDataConfig, sample_rate: int) -> Path:
    """The synthetic corpus's stand-in device impulse responses (``<corpus>/device_irs/ir*.wav``, what
    ``augment.device_ir.path=synthetic`` reads), written if missing; the shards need not be built. Returns the folder.

    They sit beside the shards but are no part of them: the manifest and every shard stay byte for byte as before.
    """
    from shards.sources import synthetic

    folder = synthetic_dir(cfg, sample_rate) / synthetic.IR_FOLDER
    expected = [folder / f"{name}.wav" for name in synthetic.ir_devices()]
    if not all(p.exists() for p in expected):
        folder.parent.mkdir(parents=True, exist_ok=True)
        with _locked(folder.parent):
            synthetic.write_device_irs(folder, sample_rate)
    return folder
