"""Fixtures shared by every test tier."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fixtures.tiny_corpus import build_tiny

# One thread per process: the machines that run the suite have 2 cores, and tests start several processes.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tone_shards(tmp_path_factory) -> Path:
    """A small labelled shard set of 0.5 s tones (no dependency on the synthetic corpus)."""
    out = tmp_path_factory.mktemp("tones")
    build_tiny(out, n=64, shard_size=8, seconds=0.5)
    return out


@pytest.fixture(scope="session")
def scene_shards(tmp_path_factory) -> Path:
    """A small build of the synthetic acoustic-scene corpus (the embedded default), 1 s clips at 16 kHz."""
    from shards.default import SyntheticDataConfig, ensure_synthetic

    cfg = SyntheticDataConfig(root=str(tmp_path_factory.mktemp("scenes")), labelled=400, val=100, test=100,
                              unlabelled=160)
    return ensure_synthetic(cfg, 16000, workers=2)
