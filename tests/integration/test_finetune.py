"""Fine-tuning and the semi-supervised pipeline on real shards, in this process (a world of one)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from finetune.config import load_finetune_config
from finetune.model import load_classifier
from finetune.teacher_student import load_semisup_config
from finetune.teacher_student import run as semisup_run
from finetune.train import run as finetune_run
from launch.common.errors import BadInput
from launch.runtime import checkpoints
from tests.fixtures.pretrain_runs import tiny_overrides
from tests.fixtures.tiny_corpus import build_tiny

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, tone_shards) -> Path:
    """A 3-step tiny SSAST pretraining run (its encoder.pt is what fine-tuning loads)."""
    from launch.pretrain import ENTRY as PRETRAIN
    from launch.submit import submit

    run = tmp_path_factory.mktemp("pre") / "run"
    submit(PRETRAIN, ["--cluster", "debug", *tiny_overrides("ssast", tone_shards, run, steps=3)])
    return run / "encoder.pt"


def _data(path: Path, split: str = "train") -> str:
    return f"{{path: {path}, split: {split}}}"


def _ft_args(ckpt, run, shards, steps=24, extra=()):
    return [f"ckpt={ckpt}", f"run_dir={run}", f"steps={steps}", "eval_every=8", f"data.train=[{_data(shards)}]",
            f"data.val={_data(shards)}", f"data.test={_data(shards)}", "data.stream.clip_seconds=0.5",
            "data.stream.batch_size=8", "data.stream.num_workers=0", "data.features.target_frames=48",
            "log.every_steps=8", "optim.lr=5e-4", "optim.warmup_steps=4", *extra]


def test_finetune_learns_far_above_chance_and_writes_its_report(pretrained, tone_shards, tmp_path):
    run = tmp_path / "ft"
    summary = finetune_run(load_finetune_config(_ft_args(pretrained, run, tone_shards, extra=["head.kind=double_norm"])))
    assert summary["test"]["accuracy"] > 0.6  # 3 classes: chance is 1/3
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["layer_weights"]) == 2 and abs(sum(metrics["layer_weights"]) - 1) < 1e-5
    assert set(metrics["groups"]["device"]) == {"d0", "d1"}
    rows = (run / "predictions.csv").read_text().splitlines()
    assert len(rows) == 65 and (run / "confusion_matrix.png").stat().st_size > 5000 and (run / "best.pt").exists()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/lr", "val/accuracy"} <= set(events.Tags()["scalars"])
    assert {"test/confusion_matrix", "test/layer_weights"} <= set(events.Tags()["images"])
    assert [e.step for e in events.Scalars("val/accuracy")] == [8, 16, 24]


def test_from_scratch_on_the_synthetic_scenes_far_above_chance(scene_shards, tmp_path):
    """The embedded default's corpus: 10 scenes (chance 10%), 400 labelled clips, 200 steps of a 2-block encoder.

    Frame tokens (SSAST's frame model: 128 x 2 patches, each token a whole spectrum slice) learn the scenes' spectral
    shapes from scratch within CI time; 16 x 16 patch tokens need pretraining for that (see the README's results).
    Measured here: 46% on validation, 33% on test (which adds unseen devices and cities).
    """
    run = tmp_path / "scenes"
    summary = finetune_run(load_finetune_config([
        "ckpt=none", f"run_dir={run}", "steps=200", "eval_every=100", f"data.train=[{_data(scene_shards, 'labelled')}]",
        f"data.val={_data(scene_shards, 'val')}", f"data.test={_data(scene_shards, 'test')}",
        "data.stream.num_workers=0", "optim.lr=5e-4", "scratch_encoder.depth=2", "scratch_encoder.patch_freq=128",
        "scratch_encoder.patch_time=2", "encoder.stride_freq=128", "encoder.stride_time=2",
        "data.features.freq_mask=0", "data.features.time_mask=0", "data.features.noise=false"]))
    assert summary["best_val_accuracy"] > 0.3 and summary["test"]["accuracy"] > 0.2
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_clips"] == 100 and len(metrics["classes"]) == 10
    seen, unseen = metrics["seen_unseen"]["seen"], metrics["seen_unseen"]["unseen"]
    assert unseen["devices"] == ["s4", "s5", "s6"] and seen["n"] + unseen["n"] == 100  # test-only from the manifest
    assert {"seoul", "montreal"} <= set(metrics["groups"]["city"])


def test_frozen_backbone_run_keeps_the_encoder(pretrained, tone_shards, tmp_path):
    import torch

    run = tmp_path / "frozen"
    finetune_run(load_finetune_config(_ft_args(pretrained, run, tone_shards, steps=8,
                                               extra=["freeze_backbone=true", "head.kind=post_norm"])))
    best = torch.load(run / "best.pt", weights_only=False)["state_dict"]
    start = torch.load(pretrained, weights_only=False)["state_dict"]
    for name in ("blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.weight", "patch_embed.proj.weight"):
        assert torch.equal(best[f"encoder.{name}"], start[name])


def test_bad_data_is_refused_in_one_line(pretrained, tone_shards, tmp_path):
    with pytest.raises(BadInput, match="num_classes=5 but .* has 3 classes"):
        finetune_run(load_finetune_config(_ft_args(pretrained, tmp_path / "a", tone_shards, extra=["num_classes=5"])))
    unlabelled = tmp_path / "u"
    build_tiny(unlabelled, n=4, shard_size=4, seconds=0.5)
    manifest = json.loads((unlabelled / "manifest.json").read_text())
    manifest["splits"]["train"]["label_histogram"] = {}
    (unlabelled / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BadInput, match="has no labels"):
        finetune_run(load_finetune_config(_ft_args(pretrained, tmp_path / "b", unlabelled)))


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_pseudo_labelling_writes_a_new_set_and_the_student_trains_on_both(pretrained, tone_shards, tmp_path):
    labelled = tmp_path / "labelled"
    build_tiny(labelled, n=24, shard_size=8, seconds=0.5)
    before = _hashes(tone_shards)
    run = tmp_path / "semi"
    args = _ft_args(pretrained, run, labelled, steps=16, extra=[f"data.test={_data(tone_shards)}",
                    f"unlabelled={_data(tone_shards)}", "pseudo.threshold=0.0", "pseudo.top_k_per_class=10"])
    summary = semisup_run(load_semisup_config(args))
    assert _hashes(tone_shards) == before  # the inputs are only read
    pseudo = json.loads((run / "round1-pseudo" / "manifest.json").read_text())
    selected = pseudo["splits"]["pseudo"]["count"]
    assert 10 <= selected <= 30  # 10 per predicted class (at most 3 classes predicted)
    student_cfg = (run / "round1-student" / "config.yaml").read_text()
    assert str(labelled) in student_cfg and "round1-pseudo" in student_cfg
    teacher, student = summary["rows"]
    assert student["pseudo_selected"] == selected and 0 <= student["pseudo_accuracy"] <= 1
    assert "accuracy" in teacher and "accuracy" in student
    # a finished fine-tuning run serves as the teacher of another run: nothing is trained for round 0 there
    again = tmp_path / "again"
    reuse = _ft_args(pretrained, again, labelled, steps=8, extra=[f"data.test={_data(tone_shards)}",
                     f"unlabelled={_data(tone_shards)}", f"teacher={run / 'round0-teacher'}"])
    rows = semisup_run(load_semisup_config(reuse))["rows"]
    assert rows[0] == teacher and not (again / "round0-teacher").exists() and (again / "round1-student" / "best.pt").exists()
    # the student of an ensemble starts from its first teacher's encoder (refused before 0.2's ensembles took it)
    first, second = again / "round1-student", run / "round0-teacher"
    both = tmp_path / "both"
    rows = semisup_run(load_semisup_config([*reuse[:1], f"run_dir={both}", *reuse[2:-1], "steps=2",
                                            f"teacher=[{first},{second}]", "pseudo.student_init=teacher",
                                            "pseudo.threshold=null"]))["rows"]
    assert [r["role"] for r in rows] == ["teacher", "teacher", "ensemble", "student"]
    start = checkpoints.read_encoder(both / "round1-teacher-encoder.pt")["state_dict"]
    for teacher_dir, same in ((first, True), (second, False)):
        weights = load_classifier(teacher_dir / "best.pt")[0].encoder.state_dict()
        assert start.keys() == weights.keys()
        assert all(torch.equal(start[k], weights[k]) for k in weights) is same
    assert f"ckpt: {both / 'round1-teacher-encoder.pt'}" in (both / "round1-student" / "config.yaml").read_text()
    with pytest.raises(BadInput, match="teacher=.*no best.pt"):
        semisup_run(load_semisup_config([*reuse[:1], f"run_dir={tmp_path / 'y'}", *reuse[2:-1], f"teacher={tmp_path}"]))
    empty = tmp_path / "empty"
    with pytest.raises(BadInput, match="no manifest"):
        semisup_run(load_semisup_config(_ft_args(pretrained, tmp_path / "x", labelled,
                                                 extra=[f"unlabelled={_data(empty)}"])))


def _records(run: Path) -> dict[int, dict]:
    """step -> the loss / validation values of metrics.jsonl (timings and rates left out)."""
    out: dict[int, dict] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        assert r["step"] not in out, f"step {r['step']} logged twice"
        out[r["step"]] = {k: r[k] for k in ("loss", "val_accuracy") if k in r}
    return out


def _same_records(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for step, values in expected.items():
        assert got[step] == pytest.approx(values, rel=1e-5, abs=1e-6), step


def test_two_ranks_killed_mid_run_resume_to_the_uninterrupted_result(pretrained, tone_shards, tmp_path):
    """kill -9 of both ranks after a checkpoint, then the same command: every logged loss and validation value, the
    best checkpoint and the test report are those of the run that was never interrupted (exact eval over 2 ranks)."""
    import os
    import signal
    import time

    from tests.integration.conftest import start_ranks, wait_ok

    steps = 24
    extra = ["log.every_steps=1", "eval_every=4", "checkpoint.every_steps=4", "checkpoint.keep_last=8",
             "head.kind=pre_norm", "augment.mixup=0.5", "augment.mixup_alpha=1.0"]
    ref = tmp_path / "ref"
    wait_ok(start_ranks(2, _ft_args(pretrained, ref, tone_shards, steps, extra), tmp_path / "l1", "finetune.train"),
            tmp_path / "l1")
    run = tmp_path / "run"
    args = _ft_args(pretrained, run, tone_shards, steps, extra)
    procs = start_ranks(2, args, tmp_path / "l2", "finetune.train")
    deadline = time.time() + 240
    while time.time() < deadline:  # kill both once step 8 is checkpointed and step 10 has run
        if (run / "checkpoints" / "step_00000008" / "COMPLETE").exists() and len(_lines(run)) >= 10:
            break
        time.sleep(0.02)
    for p in procs:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    assert not (run / "metrics.json").exists(), "the run finished before it could be killed"

    wait_ok(start_ranks(2, args, tmp_path / "l3", "finetune.train"), tmp_path / "l3")
    assert "resumed from" in (tmp_path / "l3" / "rank0.log").read_text()
    _same_records(_records(run), _records(ref))
    got, expected = (json.loads((d / "metrics.json").read_text()) for d in (run, ref))
    assert got["num_clips"] == expected["num_clips"] == 64  # every test clip once over the 2 ranks
    for key in ("accuracy", "macro_auc", "log_loss"):
        assert got[key] == pytest.approx(expected[key], rel=1e-5), key
    assert len(_keys(run)) == 64 and sorted(_keys(run)) == sorted(_keys(ref))


def _lines(run: Path) -> list[str]:
    path = run / "metrics.jsonl"
    return path.read_text().splitlines() if path.exists() else []


def _keys(run: Path) -> list[str]:
    return [row.split(",", 1)[0] for row in (run / "predictions.csv").read_text().splitlines()[1:]]


def test_stop_request_checkpoints_the_current_step_and_the_rerun_finishes_it(pretrained, tone_shards, tmp_path):
    """What the launcher does on SIGUSR2: the loop saves at the current step and returns; the requeued run resumes."""
    import threading

    extra = ["log.every_steps=1", "eval_every=4", "checkpoint.every_steps=100"]
    ref = tmp_path / "ref"
    finetune_run(load_finetune_config(_ft_args(pretrained, ref, tone_shards, 10, extra)))
    run = tmp_path / "run"
    stop = threading.Event()
    stop.set()  # already asked: the loop stops after its first step
    cfg = load_finetune_config(_ft_args(pretrained, run, tone_shards, 10, extra))
    summary = finetune_run(cfg, stop=stop)
    assert summary["stopped_at"] == 1 and (run / "checkpoints" / "step_00000001" / "COMPLETE").exists()
    assert not (run / "metrics.json").exists()
    again = finetune_run(cfg)
    assert again["steps"] == 10 and "stopped_at" not in again
    _same_records(_records(run), _records(ref))
    assert again["test"]["accuracy"] == pytest.approx(json.loads((ref / "metrics.json").read_text())["accuracy"])


def test_semisup_on_the_embedded_default_compares_teacher_and_student_on_its_test_split(pretrained, tmp_path):
    """No data given: the synthetic corpus's labelled, unlabelled, val and test splits, for teacher and student alike
    (the student's training data is given, so it must not lose the default val / test splits)."""
    run = tmp_path / "semi"
    summary = semisup_run(load_semisup_config([
        f"ckpt={pretrained}", f"run_dir={run}", "steps=8", "eval_every=4", "log.every_steps=4",
        f"data.synthetic.root={tmp_path / 'data'}", "data.synthetic.labelled=40", "data.synthetic.unlabelled=30",
        "data.synthetic.val=20", "data.synthetic.test=20", "data.stream.clip_seconds=0.5", "data.stream.batch_size=8",
        "data.stream.num_workers=0", "data.features.target_frames=48", "pseudo.threshold=null",
        "pseudo.top_k_per_class=2"]))
    teacher, student = summary["rows"]
    assert teacher["num_clips"] == student["num_clips"] == 20
    assert 0 <= student["pseudo_accuracy"] <= 1  # the unlabelled clips keep their true labels
    for row in (teacher, student):  # the shift is reported: every test clip is on a seen or an unseen device
        assert row["seen_unseen"]["seen"]["n"] + row["seen_unseen"]["unseen"]["n"] == 20, row
    for name in ("round0-teacher", "round1-student"):
        assert (run / name / "best.pt").exists() and (run / name / "metrics.json").exists(), name
        assert any("val_accuracy" in json.loads(line) for line in (run / name / "metrics.jsonl").read_text().splitlines())


def _copy_with(src: Path, dst: Path, damage) -> Path:
    """A copy of a shard set with ``damage(tar_path)`` applied to every tar."""
    import shutil

    shutil.copytree(src, dst)
    for tar in sorted(dst.glob("*.tar")):
        damage(tar)
    return dst


def _garbage_audio(tar_path: Path) -> None:
    """Every sample keeps its key and metadata, but its FLAC bytes are not audio."""
    import io
    import tarfile

    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(tar_path, "w") as tar:
        for m, data in members:
            data = b"not audio" * 10 if m.name.endswith(".flac") else data
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))


def test_unlabelled_or_unreadable_val_and_test_splits_are_refused_before_training(pretrained, tone_shards, tmp_path):
    unlabelled = _copy_with(tone_shards, tmp_path / "unlabelled", lambda tar: None)
    manifest = json.loads((unlabelled / "manifest.json").read_text())
    manifest["splits"]["train"]["label_histogram"] = {}
    (unlabelled / "manifest.json").write_text(json.dumps(manifest))
    emptied = _copy_with(tone_shards, tmp_path / "emptied", lambda tar: tar.write_bytes(b""))
    cases = [(f"data.test={_data(unlabelled)}", "data.test: .* has no labels; it cannot score a classifier"),
             (f"data.val={_data(unlabelled)}", "data.val: .* has no labels"),
             (f"data.test={_data(emptied)}", "data.test: .*: none of its 8 shards can be read"),
             (f"data.val={_data(emptied)}", "data.val: .*: none of its 8 shards can be read")]
    for i, (item, message) in enumerate(cases):
        run = tmp_path / f"run{i}"
        with pytest.raises(BadInput, match=message) as e:
            finetune_run(load_finetune_config(_ft_args(pretrained, run, tone_shards, extra=[item])))
        assert "\n" not in str(e.value) and not (run / "checkpoints").exists()


def test_a_validation_split_that_yields_nothing_stops_the_run_in_one_line(pretrained, tone_shards, tmp_path):
    garbage = _copy_with(tone_shards, tmp_path / "garbage", _garbage_audio)  # readable tars, no decodable clip
    run = tmp_path / "run"
    with pytest.raises(BadInput, match="data.val .*: no clip of the validation split could be read") as e:
        finetune_run(load_finetune_config(_ft_args(pretrained, run, tone_shards, extra=[f"data.val={_data(garbage)}"])))
    assert "\n" not in str(e.value) and not (run / "best.pt").exists() and not (run / "metrics.json").exists()


def test_a_teacher_whose_best_pt_is_junk_is_one_line(pretrained, tone_shards, tmp_path):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "best.pt").write_bytes(b"\x80\x04 not a checkpoint" * 20)
    (junk / "metrics.json").write_text("{}")
    args = _ft_args(pretrained, tmp_path / "semi", tone_shards, extra=[f"unlabelled={_data(tone_shards)}",
                                                                        f"teacher={junk}"])
    with pytest.raises(BadInput, match=r"junk/best.pt: cannot be read as a torch checkpoint") as e:
        semisup_run(load_semisup_config(args))
    assert "\n" not in str(e.value)


def test_fine_tuning_validation_is_the_same_for_any_batch_size_rank_count_and_workers(pretrained, tmp_path):
    """The validation accuracy (and the test report) is over real clips only: 20 clips in batches of 16 on one rank
    (12 padded rows), or 5 per batch on 2 ranks with 2 workers each (none padded), give the same numbers."""
    from tests.integration.conftest import start_ranks, wait_ok

    val = tmp_path / "val"
    build_tiny(val, n=20, shard_size=6, seconds=0.5)
    found = {}
    for world, batch, workers in ((1, 16, 0), (2, 5, 2)):
        run = tmp_path / f"w{world}"
        args = _ft_args(pretrained, run, val, steps=1, extra=[
            "eval_every=1", "optim.lr=1e-12", "optim.min_lr=0", "optim.warmup_steps=0", f"data.stream.batch_size={batch}",
            f"data.stream.num_workers={workers}"])
        wait_ok(start_ranks(world, args, tmp_path / f"l{world}", "finetune.train"), tmp_path / f"l{world}")
        (record,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        report = json.loads((run / "metrics.json").read_text())
        found[world] = (record["val_accuracy"], report["num_clips"], report["accuracy"], report["log_loss"])
    assert found[1][1] == 20 and found[1][:3] == found[2][:3]
    assert found[1][3] == pytest.approx(found[2][3], rel=1e-5)


def test_freq_mixstyle_and_device_irs_train_on_the_synthetic_scenes(scene_shards, tmp_path):
    """Both device-robust augmentations on, the corpus's own stand-in IR collection (written by its build), only
    device a's clips convolved (CP-JKU's rule): the run trains, logs how much of each batch was augmented, reports."""
    run = tmp_path / "robust"
    irs = scene_shards / "device_irs"
    assert len(list(irs.glob("ir*.wav"))) == 16
    summary = finetune_run(load_finetune_config([
        "ckpt=none", f"run_dir={run}", "steps=6", "eval_every=6", f"data.train=[{_data(scene_shards, 'labelled')}]",
        f"data.val={_data(scene_shards, 'val')}", f"data.test={_data(scene_shards, 'test')}",
        "data.stream.num_workers=0", "data.stream.batch_size=32", "log.every_steps=3", "scratch_encoder.depth=1",
        "scratch_encoder.patch_freq=128", "scratch_encoder.patch_time=2", "encoder.stride_freq=128",
        "encoder.stride_time=2", "augment.freq_mixstyle=1.0", f"augment.device_ir.path={irs}",
        "augment.device_ir.p=1.0", "augment.device_ir.devices=[a]"]))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "loss" in r]
    assert len(logged) == 2 and all(r["mixstyle_share"] == 1.0 for r in logged)
    # device a is 4/9 of the training draws: every a clip and no other got an IR
    assert all(0.2 < r["device_ir_share"] < 0.7 for r in logged)
    assert summary["test"]["accuracy"] >= 0 and (run / "metrics.json").exists()
    import yaml

    saved = yaml.safe_load((run / "config.yaml").read_text())["augment"]
    assert saved["freq_mixstyle"] == 1.0 and saved["device_ir"]["path"] == str(irs)


def test_a_teacher_ensemble_distils_soft_labels_into_a_dcase_size_cnn_student(scene_shards, tmp_path):
    """Two tiny transformer teachers that read different inputs (frame tokens on 128 mel bins; 16 x 16 patches on 64)
    -> each predicts with its own features, averaged by clip key -> soft pseudo-labels for every unlabelled clip and
    teacher probabilities for the labelled ones -> a CNN student trained with the distillation loss. The report has
    each teacher, their ensemble and the student with its parameters and MACs."""
    import numpy as np

    from finetune.cnn import CNNClassifier
    from finetune.distill import ensemble_probs
    from finetune.metrics import read_predictions

    common = [f"data.train=[{_data(scene_shards, 'val')}]", f"data.val={_data(scene_shards, 'val')}",  # 100 clips
              f"data.test={_data(scene_shards, 'test')}", "data.stream.num_workers=0", "data.stream.batch_size=25",
              "steps=2", "eval_every=2", "log.every_steps=1", "optim.warmup_steps=0", "ckpt=none",
              "scratch_encoder.depth=1"]
    inputs = {"frames": ["scratch_encoder.patch_freq=128", "scratch_encoder.patch_time=2", "encoder.stride_freq=128",
                         "encoder.stride_time=2"],
              "patches": ["data.features.num_mel_bins=64", "scratch_encoder.num_mel_bins=64", "encoder.stride_freq=16",
                          "encoder.stride_time=16"]}
    teachers = [tmp_path / name for name in inputs]
    for folder, extra in zip(teachers, inputs.values()):
        finetune_run(load_finetune_config([f"run_dir={folder}", *common, *extra]))
    run = tmp_path / "kd"
    rows = semisup_run(load_semisup_config([
        f"run_dir={run}", *common, "steps=3", f"unlabelled={_data(scene_shards, 'unlabelled')}",
        f"teacher=[{teachers[0]},{teachers[1]}]", "pseudo.ensemble=logits", "pseudo.threshold=null",
        "distill.targets=soft", "pseudo.distill_labelled=true", "model=cnn", "cnn.base_channels=8",
        "cnn.enforce_dcase_limits=true", "optim.lr=1e-3"]))["rows"]
    assert [r["role"] for r in rows] == ["teacher", "teacher", "ensemble", "student"]
    ensemble, student = rows[2], rows[3]
    # the ensemble row is the logit mean of the teachers' own test predictions (each read its own input)
    preds = [read_predictions(t / "predictions.csv") for t in teachers]
    assert preds[0].keys == preds[1].keys and len(preds[0].keys) == ensemble["num_clips"] == 100
    mean = ensemble_probs([p.probs for p in preds], "logits")
    assert ensemble["accuracy"] == pytest.approx(float((mean.argmax(1) == preds[0].labels).mean()), abs=1e-9)
    assert ensemble["seen_unseen"]["seen"]["n"] + ensemble["seen_unseen"]["unseen"]["n"] == 100
    # every unlabelled clip is pseudo-labelled, with the ensemble's probabilities; every labelled clip has them too
    manifest = json.loads((run / "round1-pseudo" / "manifest.json").read_text())
    assert manifest["splits"]["pseudo"]["count"] == student["pseudo_selected"] == 160
    labelled = np.load(run / "round1-labelled-teacher-probs.npz")
    assert labelled["probs"].shape == (100, 10) and np.allclose(labelled["probs"].sum(1), 1, atol=1e-5)
    saved = (run / "round1-student" / "config.yaml").read_text()
    assert "targets: soft" in saved and "round1-labelled-teacher-probs.npz" in saved and "model: cnn" in saved
    losses = [json.loads(line)["loss"] for line in (run / "round1-student" / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert len(losses) == 3 and all(np.isfinite(losses))
    model, _ = load_classifier(run / "round1-student" / "best.pt")
    assert isinstance(model, CNNClassifier)
    assert student["complexity"]["params"] == sum(p.numel() for p in model.parameters()) < 128_000
    assert 0 < student["complexity"]["macs"] < 30_000_000 and student["num_clips"] == 100
