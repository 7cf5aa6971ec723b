"""Streaming: exact evaluation across ranks x workers, deterministic resumable training, mixing, damage."""
from __future__ import annotations

import json
from collections import Counter
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from launch.common.errors import BadInput
from shards.audio import encode_flac
from shards.stream import ShardSetConfig, StreamConfig, eval_batches, open_shard_set, train_loader
from tests.fixtures.tiny_corpus import build_tiny


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    build_tiny(out, n=23, shard_size=4, seconds=0.25, splits=("train", "test"))  # 6 uneven shards
    return out


@pytest.mark.parametrize("world,workers", [(1, 0), (2, 2), (3, 1)])
def test_eval_pass_sees_every_clip_exactly_once(shards, world, workers):
    cfg = StreamConfig(clip_seconds=0.5, batch_size=4, num_workers=workers)
    seen: Counter[str] = Counter()
    counts = []
    for rank in range(world):
        batches = list(eval_batches(ShardSetConfig(str(shards), "test"), cfg, rank=rank, world=world))
        counts.append(len(batches))
        for b in batches:
            assert b.wave.shape == (4, 8000)
            seen.update(k for k, v in zip(b.keys, b.valid.tolist()) if v)
            assert (b.label[~b.valid] == -1).all()
            # clips are 0.25 s: zero-padded at the tail to 0.5 s
            assert torch.all(b.wave[b.valid][:, 4000:] == 0)
    assert len(set(counts)) == 1, "every rank must run the same number of batches"
    assert seen == Counter({f"tiny-{i:04d}": 1 for i in range(23)})


def _take(loader, n):
    return [(b.keys, b.wave.clone()) for b in islice(loader, n)]


@pytest.mark.parametrize("workers", [0, 2])
def test_training_stream_resumes_exactly(shards, workers):
    cfg = StreamConfig(clip_seconds=0.125, batch_size=3, num_workers=workers, shuffle_buffer=5, segment_batches=4, seed=7)
    sets = [ShardSetConfig(str(shards), "train")]
    full = _take(train_loader(sets, cfg, rank=0), 11)
    resumed = _take(train_loader(sets, cfg, rank=0, start_step=6), 5)
    for (k1, w1), (k2, w2) in zip(full[6:], resumed):
        assert k1 == k2 and torch.equal(w1, w2)
    other_rank = _take(train_loader(sets, cfg, rank=1), 11)
    assert [k for k, _ in other_rank] != [k for k, _ in full]
    other_seed = _take(train_loader(sets, StreamConfig(**{**cfg.__dict__, "seed": 8}), rank=0), 11)
    assert [k for k, _ in other_seed] != [k for k, _ in full]


def test_random_crop_and_labels(shards):
    cfg = StreamConfig(clip_seconds=0.1, batch_size=8, num_workers=0, shuffle_buffer=10)
    batch = next(train_loader([ShardSetConfig(str(shards), "train")], cfg))
    assert batch.wave.shape == (8, 1600) and batch.valid.all()
    for key, label, meta in zip(batch.keys, batch.label.tolist(), batch.meta):
        assert label == int(key[-4:]) % 3 == meta["label_index"]


def test_mixing_by_weight(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    build_tiny(a, n=10, shard_size=5, seconds=0.1)
    build_tiny(b, n=10, shard_size=5, seconds=0.1)
    cfg = StreamConfig(clip_seconds=0.1, batch_size=50, num_workers=0, shuffle_buffer=4)
    sets = [ShardSetConfig(str(a), "train", weight=3.0), ShardSetConfig(str(b), "train", weight=1.0)]
    sources = Counter()
    for batch in islice(train_loader(sets, cfg), 8):
        sources.update(m["shard_set"] for m in batch.meta)
    assert sum(sources.values()) == 400
    assert sources["a/train"] / 400 == pytest.approx(0.75, abs=0.08)


def test_corrupt_samples_are_skipped_and_counted(tmp_path):
    out = tmp_path / "s"
    build_tiny(out, n=6, shard_size=6, seconds=0.1)
    with wds.TarWriter(str(out / "train-000000.tar")) as sink:  # rewrite the shard with two damaged samples
        for i in range(6):
            x = np.full(1600, 0.1, np.float32)
            flac = encode_flac(x, 16000) if i not in (2, 4) else b"fLaC garbage"
            sink.write({"__key__": f"k{i}", "flac": flac, "json": json.dumps({"label_index": 0}).encode()})
    cfg = StreamConfig(clip_seconds=0.1, batch_size=4, num_workers=0, shuffle_buffer=1)
    batches = list(islice(train_loader([ShardSetConfig(str(out), "train")], cfg), 3))
    assert all(len(b) == 4 for b in batches)
    assert all("k2" not in b.keys and "k4" not in b.keys for b in batches)
    assert batches[-1].corrupt > 0


def test_bad_shard_sets_are_named(tmp_path, shards):
    with pytest.raises(BadInput, match="no manifest"):
        open_shard_set(ShardSetConfig(str(tmp_path), "train"))
    with pytest.raises(BadInput, match="no split 'nope'; it has train, test"):
        open_shard_set(ShardSetConfig(str(shards), "nope"))
    with pytest.raises(BadInput, match="16000 Hz but data.sample_rate is 32000"):
        next(train_loader([ShardSetConfig(str(shards), "train")], StreamConfig(sample_rate=32000, num_workers=0)))
