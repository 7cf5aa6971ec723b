"""Corpus readers on fixture trees laid out like the real downloads: splits, counts, labels, keys, meta, order, and a
one-line ``path:line`` error for every kind of bad input."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import soundfile as sf

from launch.common.errors import BadInput
from shards.sources import get_source
from shards.sources._csv import read_csv
from shards.sources.audioset import parse_audio_name
from tests.fixtures.raw_trees import (
    TREES,
    RawTree,
    audioset_tree,
    cas2023_tree,
    folder_tree,
    librispeech_tree,
    tau20_tree,
    tau22_eval_tree,
    tau22_tree,
)


def listed(corpus) -> dict[str, list]:
    return {split: list(clips()) for split, clips in corpus.splits.items()}


def bad(fn, *expected: str) -> str:
    """Run ``fn``, expect a one-line BadInput containing every ``expected`` string; return the message."""
    with pytest.raises(BadInput) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message, message
    for text in expected:
        assert text in message, f"{text!r} not in {message!r}"
    return message


def replace_line(path: Path, old: str, new: str) -> None:
    text = path.read_bytes().decode("utf-8")
    assert old in text, (old, text)
    path.write_bytes(text.replace(old, new, 1).encode("utf-8"))


# ----------------------------------------------------------------------------------------------------------------------
# every source: the contract


@pytest.mark.parametrize("name", sorted(TREES))
def test_contract_on_every_fixture(tmp_path, name):
    tree = TREES[name](tmp_path)
    corpus = tree.load()
    clips = listed(corpus)
    assert corpus.classes == tree.classes
    assert list(clips) == list(tree.splits)
    for split, got in clips.items():
        keys = [c.key for c in got]
        assert keys == tree.splits[split]                      # count and fixed order
        assert len(set(keys)) == len(keys) and not any("." in k or " " in k for k in keys)
        for clip in got:
            assert clip.labels == tree.labels[clip.key]
            assert set(clip.labels) <= set(corpus.classes)
            json.dumps(clip.meta)                               # goes into the shard's .json as is
            if clip.key in tree.missing.get(split, []):
                assert clip.path is None and clip.meta["missing"]
            else:
                assert clip.path == tree.files[clip.key] and "missing" not in clip.meta
    assert [[c.key for c in v] for v in listed(tree.load()).values()] == [tree.splits[s] for s in clips]  # stable


@pytest.mark.parametrize("source", ["tau22", "tau20", "cas2023", "audioset", "librispeech", "folder"])
def test_flags_fit_the_build_command(source):
    """Flags go into an argument group next to the build command's own; no option string may clash."""
    parser = argparse.ArgumentParser()
    for flag in ("--root", "--out", "--split", "--sample-rate", "--workers", "--shard-size", "--bits"):
        parser.add_argument(flag)
    module = get_source(source)
    if hasattr(module, "add_arguments"):
        module.add_arguments(parser.add_argument_group(source))
    parser.parse_args([])


@pytest.mark.parametrize("source", ["tau22", "tau20", "cas2023", "audioset", "librispeech", "folder"])
def test_missing_root(tmp_path, source):
    args = argparse.Namespace(source=source)
    bad(lambda: get_source(source).load(tmp_path / "nowhere", args), str(tmp_path / "nowhere"), "no such directory")


# ----------------------------------------------------------------------------------------------------------------------
# TAU


def test_tau22_meta_devices_and_grouping(tmp_path):
    tree = tau22_tree(tmp_path)
    corpus = tree.load()
    assert corpus.name == "tau22" and corpus.info["test_only_devices"] == ["s4", "s5", "s6"]
    assert corpus.info["devices"]["train"] == {"a": 3, "b": 1, "c": 1, "s1": 1, "s2": 1, "s3": 1}
    assert list(corpus.info["devices"]["test"]) == ["a", "b", "s4", "s5", "s6"]
    train = listed(corpus)["train"]
    first, second = train[0], train[1]
    assert first.key == "airport-lisbon-1000-40000-0-a"
    assert first.meta == {"device": "a", "city": "lisbon", "location": "lisbon-1000", "domain": "a",
                          "recording": "airport-lisbon-1000-40000-a", "piece": 0}
    assert second.meta["recording"] == first.meta["recording"] and second.meta["piece"] == 1
    test = listed(corpus)["test"]
    assert [c.labels for c in test] == [tree.labels[c.key] for c in test]  # labels of fold1_test come from meta.csv
    assert {c.meta["device"] for c in test} >= {"s4", "s5", "s6"}
    info = sf.info(str(first.path))
    assert (info.samplerate, info.subtype, info.channels, info.duration) == (44100, "PCM_24", 1, 1.0)


def test_tau22_root_may_be_the_parent(tmp_path):
    tree = tau22_tree(tmp_path, parent=True)
    assert tree.root == tmp_path
    assert [c.key for c in listed(tree.load())["train"]] == tree.splits["train"]


def test_tau22_missing_audio_is_a_listed_clip(tmp_path):
    tree = tau22_tree(tmp_path, missing=1)
    gone = listed(tree.load())["train"][-1]
    assert gone.key == tree.missing["train"][0] and gone.path is None
    assert "no such file" in gone.meta["missing"] and gone.meta["device"]


def test_tau20_names_and_duration(tmp_path):
    tree = tau20_tree(tmp_path)
    train = listed(tree.load())["train"]
    assert train[0].key == "airport-lisbon-1000-40000-a" and "piece" not in train[0].meta
    assert sf.info(str(train[0].path)).duration == 10.0


def test_tau_wrong_variant_is_named(tmp_path):
    tree = tau20_tree(tmp_path, seconds=0.1)
    bad(lambda: tree.load(source="tau22"), "fold1_train.csv:2:", "tau20 file name", "use source tau20")


def test_tau_train_csv_override(tmp_path):
    tree = tau22_tree(tmp_path)
    subset = tmp_path / "split25.csv"
    subset.write_text("filename\tscene_label\n" + "".join(f"audio/{k}.wav\t{tree.labels[k][0]}\n"
                                                         for k in tree.splits["train"][:3]))
    assert [c.key for c in listed(tree.load(train_csv=subset))["train"]] == tree.splits["train"][:3]


def test_tau_evaluation_set_is_unlabelled(tmp_path):
    tree = tau22_eval_tree(tmp_path)
    corpus = tree.load()
    assert list(corpus.splits) == ["test"] and corpus.info["test_only_devices"] == []
    assert [(c.key, c.labels) for c in listed(corpus)["test"]] == [("0", ()), ("1", ()), ("2", ())]


@pytest.mark.parametrize("damage, expected", [
    (lambda d: (d / "meta.csv").unlink(), ["meta.csv", "no such file"]),
    (lambda d: (d / "evaluation_setup" / "fold1_evaluate.csv").unlink(), ["fold1_evaluate.csv", "no such file"]),
    (lambda d: replace_line(d / "meta.csv", "\tlisbon-1000\ta\n", "\tlisbon-1000\n"),
     ["meta.csv:2:", "expected 4 tab-separated fields", "got 3"]),
    (lambda d: replace_line(d / "evaluation_setup" / "fold1_train.csv", "\tbus\n", "\tbuss\n"),
     ["fold1_train.csv:4:", "unknown scene_label 'buss'"]),
    (lambda d: replace_line(d / "evaluation_setup" / "fold1_train.csv", "audio/bus-lyon-1045-40765-3-b.wav", ""),
     ["fold1_train.csv:4:", "blank filename"]),
    (lambda d: replace_line(d / "evaluation_setup" / "fold1_test.csv", "filename\n", "file\n"),
     ["fold1_test.csv:1:", "lacks filename"]),
])
def test_tau_bad_input(tmp_path, damage, expected):
    tree = tau22_tree(tmp_path, seconds=0.01)
    damage(tree.extra["dataset_dir"])
    bad(tree.load, *expected)


def test_tau_no_dataset_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    bad(lambda: get_source("tau22").load(tmp_path / "empty", argparse.Namespace(source="tau22")),
        "no evaluation_setup/", "TAU-urban-acoustic-scenes-2022-mobile-development")


# ----------------------------------------------------------------------------------------------------------------------
# CAS 2023


def test_cas2023_icme(tmp_path):
    tree = cas2023_tree(tmp_path)
    corpus = tree.load()
    clips = listed(corpus)
    assert [len(v) for v in clips.values()] == [2, 8, 3]
    assert [c.labels for c in clips["labelled"]] == [("Bus",), ("Public square",)]  # quoted label, name with .wav
    assert clips["unlabelled"][3].path.parent.name == "part2"                       # found at any depth
    assert sf.info(str(tree.files[tree.splits["unlabelled"][2]])).channels == 2
    assert corpus.info["labelled"] == 2 and corpus.info["unlabelled"] == 8
    assert all(c.meta == {} for v in clips.values() for c in v)


def test_cas2023_apsipa_bom_and_meta(tmp_path):
    tree = cas2023_tree(tmp_path, variant="apsipa")
    assert tree.extra["labels_csv"].read_bytes().startswith(b"\xef\xbb\xbf")
    clips = listed(tree.load())
    for clip in clips["labelled"] + clips["unlabelled"] + clips["eval"]:
        city = tree.extra["cities"][clip.key]
        assert clip.meta["city"] == city == clip.meta["domain"] and clip.meta["record_time"].startswith("2023-")


def test_cas2023_flags_and_dev_folder_as_root(tmp_path):
    tree = cas2023_tree(tmp_path, variant="apsipa", missing=1)
    root = tmp_path / "ICME2024_GC_ASC_dev"
    corpus = get_source("cas2023").load(root, tree.namespace(labels_csv=tree.extra["labels_csv"],
                                                                eval_csv=tree.extra["eval_csv"]))
    clips = listed(corpus)
    assert [c.key for c in clips["eval"]] == tree.splits["eval"]   # the eval folder is found next to the dev folder
    assert clips["unlabelled"][-1].path is None and "no " in clips["unlabelled"][-1].meta["missing"]


def test_cas2023_eval_without_csv_lists_the_folder(tmp_path):
    tree = cas2023_tree(tmp_path)
    tree.extra["eval_csv"].unlink()
    assert [c.key for c in listed(tree.load())["eval"]] == sorted(tree.splits["eval"])


def test_cas2023_bad_input(tmp_path):
    tree = cas2023_tree(tmp_path, seconds=0.01)
    csv = tree.extra["labels_csv"]
    shutil.copy(csv, tmp_path / "dev_copy.csv")
    bad(tree.load, "several *dev*.csv", "--labels-csv")
    (tmp_path / "dev_copy.csv").unlink()
    bad(lambda: tree.load(labels_csv=tmp_path / "nope.csv"), "nope.csv", "no such file")
    first = tree.splits["labelled"][0]
    replace_line(csv, f"{first},Bus", f"{first},Busy")
    bad(tree.load, "ICME2024_ASC_dev_label.csv:2:", "unknown scene_label 'Busy'", "Bus, Airport")
    replace_line(csv, f"{first},Busy", f"{first},Bus,extra")
    bad(tree.load, "ICME2024_ASC_dev_label.csv:2:", "expected 2 comma-separated fields")
    replace_line(csv, f"{first},Bus,extra", ",Bus")
    bad(tree.load, "ICME2024_ASC_dev_label.csv:2:", "blank filename")
    csv.unlink()
    bad(tree.load, "no *dev*.csv", "--labels-csv")


# ----------------------------------------------------------------------------------------------------------------------
# AudioSet


@pytest.mark.parametrize("stem, expected", [
    ("Y--PJHxphWEs", ("--PJHxphWEs", None, None)),
    ("YYzQ8fAd3xk0", ("YzQ8fAd3xk0", None, None)),
    ("--4gqARaEJE_0.000", ("--4gqARaEJE", 0.0, None)),
    ("X7kq9_2Qs0c_10.000", ("X7kq9_2Qs0c", 10.0, None)),
    ("Ya_b-cdEFgh1_0.000_10.000", ("a_b-cdEFgh1", 0.0, 10.0)),
    ("-1nilez17Dg", ("-1nilez17Dg", None, None)),
    ("--4gqARaEJE_0", ("--4gqARaEJE", 0.0, None)),
    ("Y--PJHxphWE", ("Y--PJHxphWE", None, None)),  # 11 characters: a bare YTID that happens to start with Y
    ("notes", None), ("Y--PJHxph", None), ("--4gqARaEJE_0.000_x", None),
])
def test_audioset_names_parse_by_fixed_length(stem, expected):
    assert parse_audio_name(stem) == expected


def test_audioset_segments(tmp_path):
    tree = audioset_tree(tmp_path)
    corpus = tree.load()
    assert corpus.multi_label and corpus.classes[1] == "Male speech, man speaking"
    clips = listed(corpus)
    first = clips["balanced"][0]
    assert first.key == "--PJHxphWEs_30_000" and first.labels == ("Speech", "Gush")
    assert first.meta == {"ytid": "--PJHxphWEs", "start": 30.0, "end": 40.0, "mids": ["/m/09x0r", "/t/dd00088"]}
    never = clips["balanced"][-1]
    assert never.path is None and never.meta["missing"].startswith("no audio file for YTID 3X8ugsm3hOc")
    other_start = clips["unbalanced"][-1]
    assert other_start.path is None and "only for start 10.000" in other_start.meta["missing"]
    short = clips["eval"][-1]
    assert short.meta["end"] - short.meta["start"] == 6.0 and sf.info(str(short.path)).samplerate == 16000


def test_audioset_panns_metadata_folder(tmp_path):
    tree = audioset_tree(tmp_path)
    (tmp_path / "metadata").mkdir()
    for p in tmp_path.glob("*.csv"):
        p.rename(tmp_path / "metadata" / p.name)
    assert [c.key for c in listed(tree.load())["eval"]] == tree.splits["eval"]


def test_audioset_datafile(tmp_path):
    tree = audioset_tree(tmp_path)
    corpus = tree.load(datafile=[tree.extra["datafile"]])
    assert list(corpus.splits) == ["train"]
    clips = listed(corpus)["train"]
    assert [c.key for c in clips] == tree.extra["datafile_keys"]
    assert {c.key: c.labels for c in clips} == tree.extra["datafile_labels"]
    assert clips[0].meta["ytid"] == "-0DdlOuIFUI" and clips[0].meta["start"] == 50.0
    assert clips[2].path == tree.files["--PJHxphWEs_30_000"]                   # relative to --root
    assert [c.key for c in clips if c.path is None] == tree.extra["datafile_missing"]
    assert list(tree.load(datafile=[tree.extra["datafile"]], split_name="as20k").splits) == ["as20k"]
    renamed = shutil.copy(tree.extra["datafile"], tmp_path / "eval.v2.json")
    assert list(tree.load(datafile=[str(tree.extra["datafile"]), str(renamed)]).splits) == ["train", "eval_v2"]
    bad(lambda: tree.load(datafile=[tree.extra["datafile"], renamed], split_name="x"), "--split-name 'x'",
        "one --datafile")


def test_audioset_bad_input(tmp_path):
    tree = audioset_tree(tmp_path)
    csv = tmp_path / "eval_segments.csv"
    replace_line(csv, '"/m/0k4j"', '"/m/0k4j,/m/nope"')
    bad(tree.load, "eval_segments.csv:5:", "unknown label MID '/m/nope'")
    replace_line(csv, '0.000, 6.000, "/m/0k4j,/m/nope"', '0.000, six, "/m/0k4j"')
    bad(tree.load, "eval_segments.csv:5:", "not numbers")
    replace_line(csv, '-1nilez17Dg, 0.000, six, "/m/0k4j"', '-1nilez17Dg, 0.000, "/m/0k4j"')
    bad(tree.load, "eval_segments.csv:5:", "3 fields", "expected YTID, start_seconds")
    replace_line(csv, '-1nilez17Dg, 0.000, "/m/0k4j"', 'short, 0.000, 6.000, "/m/0k4j"')
    bad(tree.load, "eval_segments.csv:5:", "YTID 'short'")
    data = json.loads(tree.extra["datafile"].read_text())
    data["data"][1]["labels"] = "/m/04rlf,/m/what"
    tree.extra["datafile"].write_text(json.dumps(data))
    bad(lambda: tree.load(datafile=[tree.extra["datafile"]]), "train.json: entry 1", "unknown label MID '/m/what'")
    replace_line(tmp_path / "class_labels_indices.csv", "1,/m/05zppz", "one,/m/05zppz")
    bad(tree.load, "class_labels_indices.csv:3:", "not an integer")
    (tmp_path / "class_labels_indices.csv").unlink()
    bad(tree.load, "class_labels_indices.csv", "no such file")


def test_audioset_without_segment_csvs(tmp_path):
    (tmp_path / "class_labels_indices.csv").write_text('index,mid,display_name\n0,/m/09x0r,"Speech"\n')
    bad(RawTree(tmp_path, "audioset", [], {}, {}).load, "no segment CSVs", "--datafile")


# ----------------------------------------------------------------------------------------------------------------------
# LibriSpeech


def test_librispeech(tmp_path):
    tree = librispeech_tree(tmp_path)
    corpus = tree.load()
    assert corpus.classes == [] and list(corpus.splits) == ["dev-clean", "train-clean-100"]
    clips = listed(corpus)
    assert [c.meta["speaker"] for c in clips["train-clean-100"]] == ["60", "60", "103", "103"]  # numeric order
    for clip in clips["dev-clean"] + clips["train-clean-100"]:
        assert clip.meta["transcript"] == tree.extra["transcripts"][clip.key]
        assert clip.meta.get("sex") == tree.extra["sex"].get(clip.key)
        assert clip.key == f"{clip.meta['speaker']}-{clip.meta['chapter']}-{clip.key[-4:]}"
    assert clips["train-clean-100"][0].meta["sex"] == "M"                      # the "|CBW|Simon" row
    info = sf.info(str(clips["dev-clean"][0].path))
    assert (info.samplerate, info.subtype, info.format) == (16000, "PCM_16", "FLAC")


def test_librispeech_root_is_the_librispeech_folder_and_speakers_optional(tmp_path):
    tree = librispeech_tree(tmp_path, parent=False)
    (tree.extra["base"] / "SPEAKERS.TXT").unlink()
    clips = listed(tree.load())
    assert [c.key for c in clips["dev-clean"]] == tree.splits["dev-clean"]
    assert not any("sex" in c.meta for v in clips.values() for c in v)


def test_librispeech_missing_flac_is_listed(tmp_path):
    tree = librispeech_tree(tmp_path, missing_flac=1)
    last = listed(tree.load())["dev-clean"][-1]
    assert last.path is None and "84-121123.trans.txt:2 lists 84-121123-0001" in last.meta["missing"]


def test_librispeech_bad_input(tmp_path):
    tree = librispeech_tree(tmp_path)
    trans = tree.extra["base"] / "dev-clean" / "19" / "198" / "19-198.trans.txt"
    replace_line(trans, "19-198-0001 ", "19-198-0001")
    text = trans.read_text().replace("19-198-0001", "19_198_0001")
    trans.write_text(text)
    bad(lambda: listed(tree.load()), "19-198.trans.txt:2:", "expected 19-198-NNNN")
    trans.write_text("".join(line for line in text.splitlines(keepends=True) if "19_198_0001" not in line))
    bad(lambda: listed(tree.load()), "19-198-0001.flac", "no transcript line for 19-198-0001")
    trans.unlink()
    bad(lambda: listed(tree.load()), "19-198-0000.flac", "19-198.trans.txt is missing")
    replace_line(tree.extra["base"] / "SPEAKERS.TXT", "19   | F |", "19   | X |")
    bad(tree.load, "SPEAKERS.TXT:4:", "expected ID | SEX")
    for sub in tree.splits:
        shutil.rmtree(tree.extra["base"] / sub)
    bad(tree.load, "no subset folders")


# ----------------------------------------------------------------------------------------------------------------------
# folder


def test_folder_labels_splits_and_meta(tmp_path):
    tree = folder_tree(tmp_path)
    corpus = tree.load()
    assert corpus.classes == ["bird", "cat", "dog"] and list(corpus.splits) == ["train", "test"]
    for clip in listed(corpus)["train"] + listed(corpus)["test"]:
        assert clip.meta.get("fold") == tree.extra["meta"][clip.key]["fold"]
        assert clip.meta.get("note") == tree.extra["meta"][clip.key]["note"]
    assert tree.load(classes="dog,cat,bird").classes == ["dog", "cat", "bird"]


@pytest.mark.parametrize("delimiter, bom", [("\t", True), (";", False)])
def test_folder_dialects(tmp_path, delimiter, bom):
    tree = folder_tree(tmp_path, delimiter=delimiter, bom=bom)
    clips = listed(tree.load())
    assert [c.key for c in clips["train"]] == tree.splits["train"] and clips["train"][0].meta["note"] == "loud, close"


def test_folder_without_split_column_or_labels(tmp_path):
    tree = folder_tree(tmp_path, with_split=False)
    assert list(tree.load().splits) == ["all"]
    assert list(tree.load(split_name="pool").splits) == ["pool"]
    everything = listed(tree.load(labels=None))["all"]
    assert sorted(c.key for c in everything) == sorted(tree.files) and all(c.labels == () for c in everything)


def test_folder_bad_input(tmp_path):
    tree = folder_tree(tmp_path)
    csv = tree.extra["labels_csv"]
    bad(lambda: tree.load(classes="dog,cat"), "labels.csv:4:", "unknown label 'bird'", "dog,cat")
    bad(lambda: tree.load(labels=tmp_path / "none.csv"), "none.csv", "no such file")
    replace_line(csv, "cats/meow.flac,cat,train,1,", "cats/meow.flac,cat,train,1")
    bad(tree.load, "labels.csv:3:", "expected 5 comma-separated fields", "got 4")
    replace_line(csv, "cats/meow.flac,cat,train,1", ",cat,train,1,")
    bad(tree.load, "labels.csv:3:", "blank path")
    replace_line(csv, ",cat,train,1,", "cats/meow.flac,cat,tr ain,1,")
    bad(tree.load, "labels.csv:3:", "split 'tr ain'")
    replace_line(csv, "cats/meow.flac,cat,tr ain,1,", "cats/meow.flac,cat,train,1,")
    (tmp_path / "clips" / "other").mkdir()
    shutil.copy(tree.files["weather/rain"], tmp_path / "clips" / "other" / "rain.wav")
    bad(tree.load, "labels.csv:6:", "stem 'rain' matches 2 files")
    replace_line(csv, "path,label", "file,label")
    bad(tree.load, "labels.csv:1:", "lacks path")


def test_csv_helper_line_numbers_across_quoted_newlines(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes('\ufeffa,b\n1,"two\nlines"\n\n3,4\n'.encode())
    assert list(read_csv(path, ["a", "b"])) == [(2, {"a": "1", "b": "two\nlines"}), (5, {"a": "3", "b": "4"})]
