"""The synthetic default corpus: determinism, shapes, what is seen where, flags, and the shard round trip."""
from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from launch.common.errors import BadInput
from shards.cli import make_parser
from shards.sources import get_source
from shards.sources.synthetic import CITIES, DEVICES, SCENES, clip_plan, load, render_clip
from shards.writer import BuildOptions, build

REPO = Path(__file__).resolve().parents[2]
SEEN_DEVICES = {k for k, d in DEVICES.items() if not d.test_only}
SEEN_CITIES = {k for k, c in CITIES.items() if c.where == "all"}


def args(**kw) -> argparse.Namespace:
    base = dict(source="synthetic", seed=0, labelled=100, val=20, test=200, unlabelled=300, duration=1.0,
                sample_rate=16000)
    return argparse.Namespace(**{**base, **kw})


@pytest.fixture(scope="module")
def clips() -> dict[str, list]:
    corpus = load(None, args())
    return {split: list(listing()) for split, listing in corpus.splits.items()}


def test_same_arguments_give_identical_audio_whatever_was_rendered_before():
    first, rate = render_clip(7, "test", 12)
    render_clip(7, "test", 13)  # no state may leak from one clip into the next
    render_clip(7, "unlabelled", 12, 32000, 0.5)
    again, _ = render_clip(7, "test", 12)
    assert rate == 16000 and first.dtype == np.float32
    np.testing.assert_array_equal(first, again)


def test_a_fresh_process_renders_the_same_bytes():
    """Kernel banks and caches built in another order, in another process, must not change a single bit."""
    code = ("import hashlib; from shards.sources.synthetic import render_clip; render_clip(3, 'val', 1, 32000, 0.2); "
            "print(hashlib.sha1(render_clip(0, 'unlabelled', 5)[0].tobytes()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == hashlib.sha1(render_clip(0, "unlabelled", 5)[0].tobytes()).hexdigest()


@pytest.mark.parametrize("other", [(7, "test", 13), (8, "test", 12), (7, "val", 12)])
def test_index_seed_and_split_each_change_the_audio(other):
    a, _ = render_clip(7, "test", 12)
    b, _ = render_clip(*other)
    assert not np.allclose(a, b)


@pytest.mark.parametrize("rate,duration", [(16000, 1.0), (32000, 1.0), (16000, 10.0), (22050, 0.37)])
def test_shape_rate_and_range(rate, duration):
    for index in range(3):
        x, r = render_clip(0, "test", index, rate, duration)
        assert r == rate and x.shape == (round(rate * duration),) and x.dtype == np.float32
        assert np.isfinite(x).all() and np.abs(x).max() <= 1.0
        assert np.sqrt(np.mean(x**2)) > 1e-4  # not silence


def test_loudness_alone_does_not_separate_any_two_scenes():
    rms: dict[str, list[float]] = {}
    for i in range(12 * len(SCENES)):  # labelled is balanced: 12 clips per scene
        x, _ = render_clip(0, "labelled", i, 16000, 0.5)
        rms.setdefault(clip_plan(0, "labelled", i)["scene"], []).append(20 * np.log10(np.sqrt(np.mean(x**2))))
    ranges = {s: (min(v), max(v)) for s, v in rms.items()}
    for a, (lo_a, hi_a) in ranges.items():
        for b, (lo_b, hi_b) in ranges.items():
            assert max(lo_a, lo_b) < min(hi_a, hi_b), f"{a} {ranges[a]} and {b} {ranges[b]} do not overlap in RMS dB"


def test_split_sizes_keys_and_balance(clips):
    assert {s: len(c) for s, c in clips.items()} == {"labelled": 100, "val": 20, "test": 200, "unlabelled": 300}
    for split, listed in clips.items():
        keys = [c.key for c in listed]
        assert len(set(keys)) == len(keys) and not any("." in k for k in keys)
        assert keys[0] == f"syn-{split}-000000"
    for split in ("labelled", "val", "test"):
        counts = Counter(c.labels[0] for c in clips[split])
        assert set(counts) == set(SCENES) and len(set(counts.values())) == 1, counts


def test_devices_and_cities_are_seen_where_the_design_says(clips):
    for split in ("labelled", "val", "unlabelled"):
        assert {c.meta["device"] for c in clips[split]} <= SEEN_DEVICES
    assert {c.meta["city"] for c in clips["labelled"] + clips["val"]} == SEEN_CITIES
    assert {c.meta["city"] for c in clips["unlabelled"]} == {k for k, c in CITIES.items() if c.where != "test"}
    assert {c.meta["device"] for c in clips["test"]} == set(DEVICES)
    assert {c.meta["city"] for c in clips["test"]} == set(CITIES)


def test_unlabelled_clips_keep_the_truth_only_in_meta(clips):
    for c in clips["unlabelled"]:
        assert c.labels == () and c.meta["true_label"] in SCENES
    assert len({c.meta["true_label"] for c in clips["unlabelled"]}) == len(SCENES)
    for c in clips["labelled"]:
        assert c.labels == (c.meta["true_label"],)


def test_meta_matches_the_rendered_plan_and_render_pickles(clips):
    clip = clips["test"][17]
    plan = clip_plan(0, "test", 17)
    assert (clip.meta["device"], clip.meta["city"], clip.meta["domain"], clip.meta["true_label"]) == (
        plan["device"], plan["city"], plan["city"], plan["scene"])
    assert clip.meta["seed"] == 0 and clip.meta["index"] == 17
    x, rate = pickle.loads(pickle.dumps(clip.render))()
    np.testing.assert_array_equal(x, render_clip(0, "test", 17)[0])


def test_flags_defaults_and_bad_values():
    parsed = make_parser("synthetic").parse_args(["synthetic", "--out", "x", "--labelled", "30"])
    assert (parsed.seed, parsed.labelled, parsed.val, parsed.test, parsed.unlabelled, parsed.duration) == (
        0, 30, 400, 800, 6000, 1.0)
    corpus = get_source("synthetic").load(None, parsed)
    assert corpus.classes == list(SCENES) and set(corpus.info["test_only_devices"]) == {"s4", "s5", "s6"}
    with pytest.raises(BadInput, match="--test"):
        load(None, args(test=-1))
    with pytest.raises(BadInput, match="--duration"):
        load(None, args(duration=0))


def test_shard_round_trip(tmp_path):
    corpus = load(None, args(labelled=3, val=0, test=0, unlabelled=2, duration=0.25))
    manifest = build(corpus, tmp_path, ["labelled", "unlabelled"], BuildOptions(shard_size=10), root=None,
                     source_args={})
    assert manifest["splits"]["labelled"]["count"] == 3 and manifest["info"]["test_only_cities"] == ["montreal"]
    with tarfile.open(tmp_path / "unlabelled-000000.tar") as tar:
        names = tar.getnames()
        info = json.loads(tar.extractfile("syn-unlabelled-000000.json").read())
    assert not any(n.endswith(".cls") for n in names)
    assert info["label"] is None and info["true_label"] in SCENES and info["original_sample_rate"] == 16000


def test_the_module_docstring_lists_each_scene_recipe():
    import re

    import shards.sources.synthetic as synthetic

    rows = {}
    for line in synthetic.__doc__.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] in SCENES:
            rows[cells[0]] = (cells[1].split(), cells[2].split())
    assert rows == {k: (list(s.textures), list(s.events)) for k, s in SCENES.items()}
