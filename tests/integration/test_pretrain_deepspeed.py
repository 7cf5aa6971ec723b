"""The real pretraining loop: 2 gloo processes, DeepSpeed ZeRO-2/3, real shards; resume and damaged checkpoints."""
from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from tests.fixtures.pretrain_runs import read_metrics, tiny_overrides
from tests.integration.conftest import start_ranks, wait_ok

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("method,stage,precision", [("ssast", 2, "fp32"), ("audiomae", 3, "bf16")])
def test_two_ranks_train_and_loss_decreases(tmp_path, scene_shards, method, stage, precision):
    """On the synthetic scene corpus's unlabelled split (what pretraining uses by default)."""
    run = tmp_path / "run"
    overrides = tiny_overrides(method, scene_shards, run, steps=12, split="unlabelled",
                               extra=[f"deepspeed.zero_stage={stage}", f"deepspeed.precision={precision}"])
    wait_ok(start_ranks(2, overrides, tmp_path / "logs"), tmp_path / "logs")
    metrics = read_metrics(run)
    assert [m["step"] for m in metrics] == list(range(1, 13))
    first, last = sum(m["loss"] for m in metrics[:3]) / 3, sum(m["loss"] for m in metrics[-3:]) / 3
    assert last < first, f"loss did not decrease: {first:.4f} -> {last:.4f}"
    assert (run / "checkpoints" / "step_00000012" / "COMPLETE").exists()
    assert len([p for p in (run / "checkpoints").iterdir() if p.is_dir()]) == 2  # keep_last
    exported = torch.load(run / "encoder.pt", weights_only=False)
    assert exported["format"] == "tessera-encoder/1" and exported["method"] == method
    assert any(k.startswith("blocks.1.") for k in exported["state_dict"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))  # `tensorboard --logdir runs/` shows these curves
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 13))
    assert {"train/lr", "throughput/clips_per_s", "throughput/data_wait"} <= set(events.Tags()["scalars"])


# The resume matrix: each value of each axis appears once (method, ZeRO stage, precision, data workers), 2 ranks.
RESUME_MATRIX = [("ssast", 0, "fp32", 0), ("audiomae", 2, "bf16", 2), ("ssast", 3, "fp32", 0)]


@pytest.mark.parametrize("method,stage,precision,workers", RESUME_MATRIX)
def test_kill_mid_run_then_resume_matches_uninterrupted_losses(tmp_path, tone_shards, method, stage, precision,
                                                               workers):
    steps = 9
    extra = [f"deepspeed.zero_stage={stage}", f"deepspeed.precision={precision}",
             f"data.stream.num_workers={workers}"]
    ref = tmp_path / "ref"
    wait_ok(start_ranks(2, tiny_overrides(method, tone_shards, ref, steps, extra=extra), tmp_path / "l1"),
            tmp_path / "l1")
    expected = {m["step"]: m["loss"] for m in read_metrics(ref)}

    run = tmp_path / "run"
    overrides = tiny_overrides(method, tone_shards, run, steps, extra=[*extra, "checkpoint.keep_last=5"])
    procs = start_ranks(2, overrides, tmp_path / "l2")
    deadline = time.time() + 240
    while time.time() < deadline:  # kill both ranks once step 3 is checkpointed and step 5 has run
        done = (run / "checkpoints" / "step_00000003" / "COMPLETE").exists()
        if done and (run / "metrics.jsonl").exists() and len(read_metrics(run)) >= 5:
            break
        time.sleep(0.05)
    for p in procs:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    killed_at = len(read_metrics(run))
    assert killed_at < steps, "the run finished before it could be killed"

    wait_ok(start_ranks(2, overrides, tmp_path / "l3"), tmp_path / "l3")
    log = (tmp_path / "l3" / "rank0.log").read_text()
    assert "resumed from" in log
    metrics = read_metrics(run)
    assert [m["step"] for m in metrics] == list(range(1, steps + 1))  # each step logged once
    for m in metrics:
        assert m["loss"] == pytest.approx(expected[m["step"]], rel=1e-5, abs=1e-6), m["step"]
    got, want = (torch.load(d / "encoder.pt", weights_only=False)["state_dict"] for d in (run, ref))
    for name in want:  # the exported weights too
        assert torch.allclose(got[name], want[name], rtol=1e-5, atol=1e-6), name


def test_a_zero3_export_holds_the_full_tensors_and_fine_tuning_loads_the_zero3_run(tmp_path, tone_shards):
    """ZeRO-3 partitions every parameter across the ranks: encoder.pt must still hold full tensors, equal to those of
    a ZeRO-0 run with the same seed, and ckpt=<the ZeRO-3 run folder> (its DeepSpeed checkpoint) must load as well.
    The rate is ~0: Adam's first steps move every weight by +-lr whatever the gradient's size, so reduction-order
    noise in near-zero gradients would flip signs; what is compared here is what the partitions gather to."""
    from finetune.config import load_finetune_config
    from finetune.train import run as finetune_run
    from pretrain.pretrained import load_encoder

    runs = {}
    for stage in (0, 3):
        run = tmp_path / f"zero{stage}"
        overrides = tiny_overrides("ssast", tone_shards, run, steps=3, extra=[f"deepspeed.zero_stage={stage}",
                                                                              "optim.lr=1e-12"])
        wait_ok(start_ranks(2, overrides, tmp_path / f"l{stage}"), tmp_path / f"l{stage}")
        runs[stage] = torch.load(run / "encoder.pt", weights_only=False)["state_dict"]
    assert sorted(runs[3]) == sorted(runs[0])
    for name, full in runs[0].items():
        assert runs[3][name].shape == full.shape and torch.allclose(runs[3][name], full, rtol=1e-6, atol=1e-8), name
    _, from_folder, info = load_encoder(tmp_path / "zero3")  # the DeepSpeed checkpoint, consolidated
    assert "zero_to_fp32" in " ".join(info["notes"])
    for name, full in runs[3].items():
        assert torch.allclose(from_folder[name], full, rtol=1e-6, atol=1e-7), name
    data = f"{{path: {tone_shards}, split: train}}"
    summary = finetune_run(load_finetune_config([
        f"ckpt={tmp_path / 'zero3'}", f"run_dir={tmp_path / 'ft'}", "steps=2", "eval_every=2", f"data.train=[{data}]",
        "data.stream.clip_seconds=0.5", "data.stream.batch_size=4", "data.stream.num_workers=0",
        "data.features.target_frames=48", "log.progress=false"]))
    assert summary["steps"] == 2


def test_damaged_checkpoint_is_refused_and_the_previous_one_used(tmp_path, tone_shards):
    run = tmp_path / "run"
    overrides = tiny_overrides("ssast", tone_shards, run, 6, extra=["checkpoint.keep_last=3"])
    wait_ok(start_ranks(1, overrides, tmp_path / "l1"), tmp_path / "l1")
    newest = run / "checkpoints" / "step_00000006"
    for f in newest.rglob("*model_states.pt"):
        f.write_bytes(f.read_bytes()[:100])  # truncate the model file of the newest checkpoint
    longer = [o if not o.startswith("steps=") else "steps=8" for o in overrides]
    wait_ok(start_ranks(1, longer, tmp_path / "l2"), tmp_path / "l2")
    log = (tmp_path / "l2" / "rank0.log").read_text()
    assert "step_00000006 cannot be loaded" in log and "resumed from" in log and "at step 3" in log
    assert [m["step"] for m in read_metrics(run)][-5:] == [4, 5, 6, 7, 8]


def test_plateau_schedule_follows_the_validation_values(tmp_path, tone_shards):
    """SSAST's schedule on 2 ranks: the logged rate follows torch's ReduceLROnPlateau replayed on the logged values."""
    run = tmp_path / "run"
    extra = ["optim.schedule=plateau", "optim.warmup_steps=0", "optim.plateau_patience=0", "eval_every=2",
             "optim.plateau_metric=val_mse", "optim.plateau_mode=max",  # a falling mse "never improves": cuts
             f"data.val={{path: {tone_shards}, split: train}}"]
    wait_ok(start_ranks(2, tiny_overrides("ssast", tone_shards, run, steps=8, extra=extra), tmp_path / "logs"),
            tmp_path / "logs")
    metrics = read_metrics(run)
    evals = [(m["step"], m["val_mse"]) for m in metrics if "val_mse" in m]
    assert [s for s, _ in evals] == [2, 4, 6, 8]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    reference = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=0)
    expected = {}
    for step, value in evals:  # a cut after the validation at step s shows from step s + 1 on
        expected.update({s: opt.param_groups[0]["lr"] for s in range(step - 1, step + 1)})
        reference.step(value)
    assert [m["lr"] for m in metrics] == pytest.approx([expected[m["step"]] for m in metrics])
    assert opt.param_groups[0]["lr"] < 1e-3  # the run is deterministic (seeded data and masks): it did cut


@pytest.mark.parametrize("method", ["ssast", "audiomae"])
def test_validation_is_the_mean_over_real_clips_whatever_the_batch_ranks_and_workers(tmp_path, method):
    """20 validation clips: batch 16 pads the last batch with 12 rows that must not count; 2 ranks and 2 workers
    split the clips differently. Each clip's mask comes from its own index, so the value is the same everywhere
    (the learning rate is ~0, so one training step leaves the weights as they were)."""
    from tests.fixtures.tiny_corpus import build_tiny

    val = tmp_path / "val"
    build_tiny(val, n=20, shard_size=6, seconds=0.5)
    values = {}
    for world, batch, workers in ((1, 16, 0), (2, 5, 2)):  # 12 padded rows on one rank; none, split 2 x 2 ways
        run = tmp_path / f"w{world}b{batch}n{workers}"
        extra = [f"data.val={{path: {val}, split: train}}", "eval_every=1", "optim.lr=1e-12", "optim.warmup_steps=0",
                 f"data.stream.batch_size={batch}", f"data.stream.num_workers={workers}"]
        overrides = tiny_overrides(method, val, run, steps=1, extra=extra)
        wait_ok(start_ranks(world, overrides, tmp_path / f"log-{run.name}"), tmp_path / f"log-{run.name}")
        (record,) = read_metrics(run)
        values[run.name] = {k: v for k, v in record.items() if k.startswith("val_")}
    first = next(iter(values.values()))
    assert first and all(v == pytest.approx(first, rel=1e-5) for v in values.values()), values
