"""Pseudo-labels: selection vs a brute-force reference, the report's counts, pseudo shards round trip, refusals."""
from __future__ import annotations

import functools
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from omegaconf import OmegaConf
from rich.console import Console

from finetune.distill import clip_teachers
from finetune.selection import (
    PseudoLabelConfig,
    Selection,
    print_selection,
    read_teacher_probs,
    select,
    selection_report,
    write_pseudo_shards,
    write_teacher_probs,
)
from launch.common.errors import BadInput
from shards.clip import Clip
from shards.stream import ShardSetConfig, StreamConfig, eval_batches, open_shard_set, train_loader
from tests.fixtures.tiny_corpus import CLASSES, build_tiny, render

C = len(CLASSES)


def cfg(**kw) -> PseudoLabelConfig:
    return PseudoLabelConfig(**kw)


def rows(*confs_and_classes: tuple[float, int], c: int = 3) -> np.ndarray:
    """Probability rows [N, c]: ``conf`` on ``cls``, the rest spread evenly."""
    out = np.zeros((len(confs_and_classes), c))
    for i, (p, k) in enumerate(confs_and_classes):
        out[i] = (1 - p) / (c - 1)
        out[i, k] = p
    return out


def reference(probs: np.ndarray, cfg: PseudoLabelConfig) -> list[int]:
    """The rules written out the slow way, one class at a time, with Python's sort."""
    kept = []
    for c in range(probs.shape[1]):
        ranked = sorted((-max(r), i) for i, r in enumerate(probs.tolist()) if int(np.argmax(r)) == c)
        ranked = [i for _, i in ranked]
        passed = [i for i in ranked if cfg.threshold is None or probs[i].max() >= cfg.threshold]
        if cfg.top_k_per_class is not None:
            passed = passed[: cfg.top_k_per_class]
        floor = ranked[: cfg.min_per_class]
        kept += sorted(set(passed) | set(floor))
    return sorted(kept)


# ----------------------------------------------------------------------------------------------------------------------
# Config and selection


@pytest.mark.parametrize("kw, field", [
    ({"threshold": 1.5}, "pseudo.threshold"), ({"top_k_per_class": 0}, "pseudo.top_k_per_class"),
    ({"min_per_class": -1}, "pseudo.min_per_class"), ({"rounds": 0}, "pseudo.rounds"),
    ({"student_init": "random"}, "pseudo.student_init"), ({"top_k_per_class": 2, "min_per_class": 3}, "min_per_class"),
    ({"ensemble": "median"}, "pseudo.ensemble"),
])
def test_config_refuses_naming_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        PseudoLabelConfig(**kw)


def test_config_is_omegaconf_structured():
    dotlist = OmegaConf.from_dotlist(["threshold=null", "soft=true"])
    merged = OmegaConf.merge(OmegaConf.structured(PseudoLabelConfig), dotlist)
    assert OmegaConf.to_object(merged) == PseudoLabelConfig(threshold=None, soft=True)


def test_threshold_keeps_confident_clips_with_argmax_labels():
    probs = rows((0.95, 0), (0.5, 1), (0.9, 2), (0.89, 0))
    s = select(probs, cfg(threshold=0.9))
    assert s.indices.tolist() == [0, 2] and s.labels.tolist() == [0, 2]
    assert np.allclose(s.confidence, [0.95, 0.9])


def test_top_k_per_class_balances_and_combines_with_threshold():
    probs = rows((0.6, 0), (0.99, 0), (0.7, 0), (0.95, 1), (0.4, 2), (0.8, 0))
    assert select(probs, cfg(threshold=None, top_k_per_class=2)).indices.tolist() == [1, 3, 4, 5]
    assert select(probs, cfg(threshold=0.75, top_k_per_class=2)).indices.tolist() == [1, 3, 5]
    assert select(probs, cfg(threshold=0.75, top_k_per_class=1)).indices.tolist() == [1, 3]
    assert select(probs, cfg(threshold=None)).indices.tolist() == list(range(6))  # no rule: every clip


def test_min_per_class_rescues_rare_classes_below_threshold():
    probs = rows((0.99, 0), (0.98, 0), (0.5, 2), (0.45, 2), (0.4, 2))
    assert select(probs, cfg(threshold=0.9)).indices.tolist() == [0, 1]
    s = select(probs, cfg(threshold=0.9, min_per_class=2))
    assert s.indices.tolist() == [0, 1, 2, 3] and s.labels.tolist() == [0, 0, 2, 2]
    assert select(probs, cfg(threshold=0.9, min_per_class=9)).indices.tolist() == [0, 1, 2, 3, 4]


def test_ties_are_broken_by_row_then_class():
    probs = rows((0.8, 1), (0.8, 1), (0.8, 1), (0.9, 1))
    assert select(probs, cfg(threshold=None, top_k_per_class=2)).indices.tolist() == [0, 3]
    tie = np.array([[0.4, 0.4, 0.2], [0.2, 0.4, 0.4]])  # equal top probabilities: the lower class wins
    assert select(tie, cfg(threshold=None)).labels.tolist() == [0, 1]


def test_matches_brute_force_and_is_deterministic():
    rng = np.random.default_rng(0)
    for trial in range(60):
        n, c = int(rng.integers(0, 40)), int(rng.integers(1, 6))
        logits = rng.normal(size=(n, c)) * 2
        if trial % 3 == 0:
            logits = np.round(logits)  # many exact ties
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        k = [None, 1, 3][trial % 3]
        conf = cfg(threshold=[None, 0.5, 0.8][trial % 4 % 3], top_k_per_class=k, min_per_class=trial % 2 if k else 2)
        s = select(probs, conf)
        assert s.indices.tolist() == reference(probs, conf)
        assert np.array_equal(s.labels, probs.argmax(1)[s.indices])
        assert np.array_equal(s.confidence, probs.max(1)[s.indices])
        again = select(probs.copy(), conf)
        assert all(np.array_equal(a, b) for a, b in zip((s.indices, s.labels, s.confidence),
                                                         (again.indices, again.labels, again.confidence)))


def test_empty_inputs_and_logits():
    empty = select(np.zeros((0, 3)), cfg())
    assert len(empty) == 0 and empty.indices.dtype == np.int64
    assert len(select(rows((0.5, 0), (0.6, 1)), cfg(threshold=0.9))) == 0
    with pytest.raises(ValueError, match="logits"):
        select(np.array([[2.0, -1.0, 0.5]]), cfg())


# ----------------------------------------------------------------------------------------------------------------------
# Report


def test_report_accuracy_matches_a_brute_force_count():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(C) * 0.3, size=50)
    truth = [None if i % 7 == 0 else int(rng.integers(0, C)) for i in range(50)]
    s = select(probs, cfg(threshold=0.6, min_per_class=1))
    report = selection_report(s, probs, truth, CLASSES)
    json.dumps(report)  # serialisable as is

    pred = probs.argmax(1)
    pairs = [(int(pred[i]), truth[i]) for i in s.indices if truth[i] is not None]
    assert report["num_with_truth"] == len(pairs)
    assert report["accuracy"] == pytest.approx(sum(p == t for p, t in pairs) / len(pairs), abs=1e-6)
    everyone = [(int(pred[i]), truth[i]) for i in range(50) if truth[i] is not None]
    assert report["teacher_accuracy_all"] == pytest.approx(sum(p == t for p, t in everyone) / len(everyone), abs=1e-6)
    for c, name in enumerate(CLASSES):
        m = report["per_class"][name]
        mine = [(p, t) for p, t in pairs if p == c]
        assert m["selected"] == int((s.labels == c).sum()) and m["predicted"] == int((pred == c).sum())
        assert m["accuracy"] == (pytest.approx(sum(p == t for p, t in mine) / len(mine), abs=1e-6) if mine else None)
    assert report["num_selected"] == len(s) == sum(m["selected"] for m in report["per_class"].values())

    blind = selection_report(s, probs, None, CLASSES)
    assert blind["accuracy"] is None and blind["teacher_accuracy_all"] is None and blind["num_with_truth"] == 0
    console = Console(record=True, width=140)
    print_selection(report, CLASSES, console)
    text = console.export_text()
    assert all(name in text for name in CLASSES) and f"{len(s)} of 50" in text


# ----------------------------------------------------------------------------------------------------------------------
# Pseudo shards


def unlabelled(i: int) -> Clip:
    """A clip without a label that keeps its true class in the metadata (as the synthetic corpus does)."""
    return Clip(key=f"unl-{i:04d}", labels=(), meta={"true_label": CLASSES[i % 3]},
                render=functools.partial(render, 100 + i, 0.25))


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """12 labelled + 6 unlabelled (true_label in meta) clips in shards of 5: the split the teacher predicts."""
    out = tmp_path_factory.mktemp("source")
    build_tiny(out, n=12, shard_size=5, seconds=0.25, extra=[unlabelled(i) for i in range(6)])
    return out


def source_samples(source: Path) -> list[dict]:
    urls = sorted(str(p) for p in source.glob("train-*.tar"))
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def teacher(samples: list[dict]) -> tuple[list[str], np.ndarray, list[int]]:
    """Keys, probs [N, 3] and true classes: right on 2 of 3 clips (confidence by index), wrong on the rest."""
    keys, probs, truth = [], [], []
    for i, s in enumerate(samples):
        meta = json.loads(s["json"])
        t = CLASSES.index(meta.get("true_label") or meta["label"])
        pred = t if i % 3 else (t + 1) % 3
        keys.append(s["__key__"])
        probs.append(rows((0.6 + 0.02 * i, pred))[0])
        truth.append(t)
    return keys, np.array(probs), truth


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_round_trip_readable_by_the_stream(source, tmp_path):
    before = digest(source)
    samples = source_samples(source)
    keys, probs, truth = teacher(samples)
    conf = cfg(threshold=0.7, min_per_class=1, soft=True)
    s = select(probs, conf)
    manifest = write_pseudo_shards(source, "train", keys, s, probs, CLASSES, tmp_path / "p", "runs/t/best.pt", conf,
                                   shard_size=4)
    assert digest(source) == before  # inputs never modified
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["manifest.json"] + [
        f"pseudo-{i:06d}.tar" for i in range(-(-len(s) // 4))]
    assert manifest == json.loads((tmp_path / "p" / "manifest.json").read_text())
    split = manifest["splits"]["pseudo"]
    assert split["count"] == len(s) and sum(x["count"] for x in split["shards"]) == len(s)
    assert sum(split["label_histogram"].values()) == len(s) and manifest["pseudo"]["teacher"] == "runs/t/best.pt"
    report = manifest["pseudo"]["report"]
    assert report == selection_report(s, probs, truth, CLASSES)  # truth from true_label and from labels alike
    assert 0 < report["teacher_accuracy_all"] < report["accuracy"] <= 1

    shard_set = open_shard_set(ShardSetConfig(path=str(tmp_path / "p"), split="pseudo"))
    assert shard_set.classes == CLASSES and shard_set.num_clips == len(s)
    got = {}
    for batch in eval_batches(shard_set, StreamConfig(clip_seconds=0.25, batch_size=4), num_workers=0):
        for key, label, meta, valid in zip(batch.keys, batch.label.tolist(), batch.meta, batch.valid.tolist()):
            if valid:
                got[key] = (label, meta)
    by_key = {x["__key__"]: x for x in samples}
    assert sorted(got) == sorted(keys[i] for i in s.indices)
    for j, i in enumerate(s.indices):
        label, meta = got[keys[i]]
        assert label == s.labels[j] == meta["label_index"] and meta["label"] == CLASSES[label]
        assert meta["pseudo_label"] is True and meta["confidence"] == pytest.approx(s.confidence[j], abs=1e-6)
        assert meta["true_label"] == CLASSES[truth[i]] and meta["probs"] == pytest.approx(probs[i].tolist(), abs=1e-6)
        original = json.loads(by_key[keys[i]]["json"])
        assert {k: v for k, v in meta.items() if k in original and k not in ("label", "label_index")} == {
            k: v for k, v in original.items() if k not in ("label", "label_index")}  # the source metadata is kept
    for x in wds.WebDataset(str(tmp_path / "p" / "pseudo-{000000..000001}.tar"), shardshuffle=False):
        assert x["flac"] == by_key[x["__key__"]]["flac"] and int(x["cls"]) == got[x["__key__"]][0]

    # mixed with the labelled set by weight: pseudo clips arrive with their pseudo labels
    stream = train_loader([ShardSetConfig(path=str(source)), ShardSetConfig(path=str(tmp_path / "p"), split="pseudo")],
                          StreamConfig(clip_seconds=0.25, batch_size=16, num_workers=0, shuffle_buffer=4))
    batch = next(stream)
    pseudo = [(k, y) for k, y, m in zip(batch.keys, batch.label.tolist(), batch.meta) if m["shard_set"] == "p/pseudo"]
    assert pseudo and all(y == got[k][0] for k, y in pseudo)


def test_output_is_deterministic_and_hard_labels_carry_no_probs(source, tmp_path):
    keys, probs, _ = teacher(source_samples(source))
    conf = cfg(threshold=None, top_k_per_class=3)
    for name in ("a", "b"):
        write_pseudo_shards(source, "train", keys, select(probs, conf), probs, CLASSES, tmp_path / name, "t.pt", conf)
    a, b = digest(tmp_path / "a"), digest(tmp_path / "b")
    assert [k for k in a if k.endswith(".tar")] == ["pseudo-000000.tar"]
    assert all(a[k] == b[k] for k in a if k.endswith(".tar"))
    (sample,) = list(wds.WebDataset(str(tmp_path / "a" / "pseudo-000000.tar"), shardshuffle=False))[:1]
    assert "probs" not in json.loads(sample["json"])


def test_refusals_are_one_line_and_touch_nothing(source, tmp_path):
    before = digest(source)
    keys, probs, _ = teacher(source_samples(source))
    conf = cfg(threshold=0.7)
    s = select(probs, conf)
    write_pseudo_shards(source, "train", keys, s, probs, CLASSES, tmp_path / "done", "t.pt", conf)
    other = ["a", "b", "c"]
    cases = [
        (dict(out_dir=source), "inside the source"),
        (dict(out_dir=source / "pseudo"), "inside the source"),
        (dict(out_dir=tmp_path / "done"), "pick a new folder"),
        (dict(keys=keys[:-1] + ["nope-0001"]), "no clip 'nope-0001'"),
        (dict(keys=[], probs=np.zeros((0, 3)), selection=select(np.zeros((0, 3)), conf)), "is empty"),
        (dict(selection=select(probs, cfg(threshold=0.99))), "no clip passed threshold 0.7; lower pseudo.threshold"),
        (dict(classes=other), "differ from the teacher's"),
        (dict(split="test"), "no split 'test'"),
        (dict(keys=keys[:-1] + keys[:1]), "duplicate"),
    ]
    for change, message in cases:
        args = dict(source_dir=source, split="train", keys=keys, selection=s, probs=probs, classes=CLASSES,
                    out_dir=tmp_path / "new", teacher="t.pt", cfg=conf) | change
        with pytest.raises(BadInput, match=message) as e:
            write_pseudo_shards(**args)
        assert "\n" not in str(e.value)
        assert not list((tmp_path / "new").glob("**/*.tar")) and not (tmp_path / "new" / "manifest.json").exists()
    assert digest(source) == before and not (source / "pseudo").exists()


def test_selection_rows_beyond_keys_are_refused(source, tmp_path):
    keys, probs, _ = teacher(source_samples(source))
    bad = Selection(np.array([len(keys)]), np.array([0]), np.array([0.9]))
    with pytest.raises(BadInput, match="beyond"):
        write_pseudo_shards(source, "train", keys, bad, probs, CLASSES, tmp_path / "x", "t.pt", cfg())


def _damaged_copy(source: Path, out: Path) -> Path:
    """The source split with the audio of one clip removed (its .flac member dropped) and a tar cut in half."""
    import shutil
    import tarfile

    shutil.copytree(source, out)
    first = out / "train-000000.tar"
    with tarfile.open(first) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    dropped = next(m.name for m, _ in members if m.name.endswith(".flac"))
    with tarfile.open(first, "w") as tar:
        for m, data in members:
            if m.name != dropped:
                tar.addfile(m, io.BytesIO(data))
    cut = out / "train-000002.tar"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    return out


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_clips_the_teacher_could_not_read_count_as_unpredicted_and_nothing_writes_to_a_closed_file(source, tmp_path):
    damaged = _damaged_copy(source, tmp_path / "damaged")
    shard_set = open_shard_set(ShardSetConfig(path=str(damaged)))
    keys = [k for b in eval_batches(shard_set, StreamConfig(clip_seconds=0.25, batch_size=4), num_workers=0)
            for k, valid in zip(b.keys, b.valid.tolist()) if valid]  # what a real prediction pass predicts
    assert 0 < len(keys) < shard_set.num_clips - 1  # the missing audio and part of the cut tar are not predicted
    by_key = {x["__key__"]: x for x in source_samples(source)}
    _, probs, _ = teacher([by_key[k] for k in keys])
    conf = cfg(threshold=None)
    manifest = write_pseudo_shards(damaged, "train", keys, select(probs, conf), probs, CLASSES, tmp_path / "p", "t.pt",
                                   conf, shard_size=3)
    assert manifest["pseudo"]["unpredicted"] == shard_set.num_clips - len(keys)
    assert manifest["splits"]["pseudo"]["count"] == len(keys)
    assert [d.split(":")[0] for d in manifest["pseudo"]["damaged_shards"]] == [str(damaged / "train-000002.tar")]


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_a_full_disk_mid_write_is_one_line_and_leaves_no_tar(source, tmp_path):
    from tests.fixtures.mounts import tmpfs

    keys, probs, _ = teacher(source_samples(source))
    conf = cfg(threshold=None)
    with tmpfs(tmp_path / "disk", "40k") as disk:
        with pytest.raises(BadInput) as e:
            write_pseudo_shards(source, "train", keys, select(probs, conf), probs, CLASSES, disk / "p", "t.pt", conf,
                                shard_size=2)
        assert "the disk is full" in str(e.value) and "\n" not in str(e.value)
        assert not list(disk.rglob("*.tar")) and not (disk / "p" / "manifest.json").exists()


# ----------------------------------------------------------------------------------------------------------------------
# Soft targets: in the pseudo shards' json, and by key for labelled clips


def test_soft_pseudo_labels_reach_the_training_batch_as_distillation_targets(source, tmp_path):
    """A labelled set mixed with a soft pseudo-labelled one: each pseudo clip of a batch trains on the teacher
    probabilities written for it (not on its argmax label), each labelled clip on its label and, where the labelled
    clips' teacher file has its key, on that teacher too."""
    keys, probs, _ = teacher(source_samples(source))
    conf = cfg(threshold=None, soft=True)
    write_pseudo_shards(source, "train", keys, select(probs, conf), probs, CLASSES, tmp_path / "p", "t.pt", conf)
    write_teacher_probs(tmp_path / "lab.npz", keys, probs, CLASSES, "t.pt")  # every clip of the "labelled" set
    by_key = read_teacher_probs(tmp_path / "lab.npz", CLASSES)
    stream = train_loader([ShardSetConfig(path=str(source)), ShardSetConfig(path=str(tmp_path / "p"), split="pseudo")],
                          StreamConfig(clip_seconds=0.25, batch_size=16, num_workers=0, shuffle_buffer=4))
    batch = next(stream)
    teacher_probs, has, counts = clip_teachers(batch.keys, batch.meta, by_key, C)
    row = {k: i for i, k in enumerate(keys)}
    pseudo = [m["shard_set"] == "p/pseudo" for m in batch.meta]
    assert any(pseudo) and not all(pseudo) and has.all()
    assert counts.tolist() == [not p for p in pseudo]
    for i, key in enumerate(batch.keys):
        assert teacher_probs[i].tolist() == pytest.approx(probs[row[key]].tolist(), abs=1e-6), key


def test_teacher_probabilities_by_key_round_trip_and_refuse_other_classes(tmp_path):
    probs = rows((0.8, 0), (0.5, 2))
    write_teacher_probs(tmp_path / "t.npz", ["a", "b"], probs, CLASSES, "runs/t")
    got = read_teacher_probs(tmp_path / "t.npz", CLASSES)
    assert sorted(got) == ["a", "b"] and got["b"].tolist() == pytest.approx(probs[1].tolist())
    for path, classes, message in ((tmp_path / "t.npz", CLASSES[::-1], "over classes"),
                                   (tmp_path / "none.npz", CLASSES, "no such file")):
        with pytest.raises(BadInput, match=message):
            read_teacher_probs(path, classes)
    (tmp_path / "junk.npz").write_bytes(b"PK not a zip")
    with pytest.raises(BadInput, match="not a teacher-probabilities .npz"):
        read_teacher_probs(tmp_path / "junk.npz", CLASSES)
    with pytest.raises(BadInput, match="2 keys .1 distinct."):
        write_teacher_probs(tmp_path / "d.npz", ["a", "a"], probs, CLASSES, "t")
