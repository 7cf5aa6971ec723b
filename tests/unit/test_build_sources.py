"""Every real reader through the build CLI into shards, read back with plain webdataset and with tar."""
from __future__ import annotations

import json
import subprocess

import pytest
import webdataset as wds

from shards.cli import make_parser, run
from tests.fixtures import raw_trees

TREES = {
    "tau22": lambda tmp: raw_trees.tau22_tree(tmp, missing=1),
    "cas2023": lambda tmp: raw_trees.cas2023_tree(tmp),
    "audioset": lambda tmp: raw_trees.audioset_tree(tmp),
    "librispeech": lambda tmp: raw_trees.librispeech_tree(tmp),
    "folder": lambda tmp: raw_trees.folder_tree(tmp),
}


def _build(tree, out, extra=()):
    args = make_parser(tree.source).parse_args([tree.source, "--root", str(tree.root), "--out", str(out),
                                                "--workers", "1", "--shard-size", "4", *extra])
    for k, v in tree.args.items():
        setattr(args, k, v)
    return run(args)


@pytest.mark.parametrize("name", sorted(TREES))
def test_build_and_read_back(name, tmp_path):
    tree = TREES[name](tmp_path / "raw")
    out = tmp_path / "shards"
    manifest = _build(tree, out)
    for split, keys in tree.splits.items():
        missing = set(tree.missing.get(split, []))
        expected = [k for k in keys if k not in missing]
        entry = manifest["splits"][split]
        urls = [str(out / s["file"]) for s in entry["shards"]]
        samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False)) if urls else []
        assert [s["__key__"] for s in samples] == expected, split
        assert entry["count"] == len(expected) and {s["key"] for s in entry["skipped"]} == missing
        for s in samples:
            meta = json.loads(s["json"])
            labels = tree.labels[s["__key__"]]
            if manifest["multi_label"]:
                assert tuple(meta["labels"]) == labels and "cls" not in s
            else:
                assert meta["label"] == (labels[0] if labels else None)
                if labels:
                    assert int(s["cls"]) == tree.classes.index(labels[0]) == meta["label_index"]
            assert meta["dataset"] == tree.source and meta["split"] == split and meta["sample_rate"] == 16000
            assert "." not in s["__key__"]
        for url in urls:  # the standard tar tool agrees with webdataset
            names = subprocess.run(["tar", "-tf", url], capture_output=True, text=True, check=True).stdout.split()
            assert all(n.split(".", 1)[0] in expected for n in names)


def test_corrupt_files_are_skipped_listed_and_counted(tmp_path, capsys):
    tree = raw_trees.tau22_tree(tmp_path / "raw")
    victims = list(tree.files)[:3]
    for key, kind in zip(victims, ("empty", "garbage", "nan")):
        tree.corrupt(key, kind)
    manifest = _build(tree, tmp_path / "out")
    skipped = {s["key"]: s["reason"] for split in manifest["splits"].values() for s in split["skipped"]}
    assert set(victims) <= set(skipped)
    assert "skipped" in capsys.readouterr().err


def test_32k_target_rate(tmp_path):
    tree = raw_trees.cas2023_tree(tmp_path / "raw")
    manifest = _build(tree, tmp_path / "out", ["--sample-rate", "32000"])
    assert manifest["sample_rate"] == 32000
    first = next(iter(wds.WebDataset(str(tmp_path / "out" / manifest["splits"]["labelled"]["shards"][0]["file"]),
                                     shardshuffle=False)))
    assert json.loads(first["json"])["sample_rate"] == 32000
