"""The one loop on its own, through a third task written without changing it (tests/fixtures/toy_task.py): logging
to every sink, resume, the run folder's lock and config check, fresh starts and checkpoint rotation; and no step
outside logging, validation and checkpoints reads a tensor back to the host (toy task and a pretraining run)."""
from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from launch.common.errors import BadInput
from launch.runtime import checkpoints, loop
from tests.fixtures import toy_task
from tests.fixtures.pretrain_runs import tiny_overrides

REPO = Path(__file__).resolve().parents[2]


def _run(run_dir: Path, *argv: str, stop=None) -> dict:
    return toy_task.run(toy_task.load([f"run_dir={run_dir}", *argv]), stop=stop)


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _values(run_dir: Path) -> dict[int, dict]:
    """step -> loss / validation values (timings left out); each step must be logged once."""
    out: dict[int, dict] = {}
    for r in _records(run_dir):
        assert r["step"] not in out, f"step {r['step']} logged twice"
        out[r["step"]] = {k: r[k] for k in ("loss", "val_loss", "abs_weight") if k in r}
    return out


def _same(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for step, values in expected.items():
        assert got[step] == pytest.approx(values, rel=1e-5, abs=1e-7), step


def _start(run_dir: Path, *argv: str, sleep: float = 0.4) -> subprocess.Popen:
    """The toy task as its own process, ``sleep`` seconds per step (so that it can be killed with SIGKILL)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "TOY_SLEEP": str(sleep)}
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    log = open(run_dir.parent / f"{run_dir.name}.log", "a")
    return subprocess.Popen([sys.executable, "-m", "tests.fixtures.toy_task", f"run_dir={run_dir}", *argv], cwd=REPO,
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for(check, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not check():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _lines(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_a_third_task_trains_on_the_loop_and_logs_to_every_sink(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "toy"
    summary = _run(run, "steps=8")
    values = _values(run)
    assert sorted(values) == list(range(1, 9)) and values[8]["loss"] < values[1]["loss"] / 2
    assert [s for s, v in values.items() if "val_loss" in v] == [2, 4, 6, 8]
    assert json.loads((run / "best.json").read_text())["step"] == 8  # the falling validation loss picked the last
    assert [p.name for p in checkpoints.complete_checkpoints(run / "checkpoints")] == ["step_00000006",
                                                                                     "step_00000008"]
    assert summary["steps"] == 8 and len(summary["weight"]) == toy_task.WIDTH
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "train/lr", "train/abs_weight", "val/loss", "throughput/clips_per_s"} <= set(tags)
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 9))
    assert [e.value for e in events.Scalars("val/loss")] == pytest.approx([values[s]["val_loss"] for s in (2, 4, 6, 8)])


def test_a_failing_sink_warns_once_and_training_goes_on(tmp_path, caplog):
    run = tmp_path / "toy"
    run.mkdir()
    (run / "tensorboard").write_text("a file where the event folder should be")
    with caplog.at_level("WARNING"):
        _run(run, "steps=4")
    warnings = [r.getMessage() for r in caplog.records if "switched off" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("TensorBoard"), warnings
    assert sorted(_values(run)) == [1, 2, 3, 4]


def test_weights_and_biases_writes_an_offline_run_without_a_key(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run = tmp_path / "toy"
    _run(run, "steps=2", "log.wandb=true", "log.wandb_project=tessera-test")
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb")), list((run / "wandb").iterdir())


def test_a_run_killed_before_its_first_checkpoint_logs_each_step_once_on_rerun(tmp_path):
    """metrics.jsonl is cut back to what the checkpoint holds, and that includes nothing."""
    ref = tmp_path / "ref"
    _run(ref, "steps=6", "checkpoint.every_steps=100")
    run = tmp_path / "run"
    run.mkdir()
    proc = _start(run, "steps=6", "checkpoint.every_steps=100")
    _wait_for(lambda: _lines(run) >= 3)
    _kill(proc)
    assert not (run / "checkpoints").exists() or not checkpoints.complete_checkpoints(run / "checkpoints")
    _run(run, "steps=6", "checkpoint.every_steps=100")
    _same(_values(run), _values(ref))


def test_kill_after_a_checkpoint_resumes_to_the_uninterrupted_records(tmp_path):
    ref = tmp_path / "ref"
    _run(ref, "steps=8")
    run = tmp_path / "run"
    run.mkdir()
    proc = _start(run, "steps=8")
    _wait_for(lambda: (run / "checkpoints" / "step_00000002" / "COMPLETE").exists() and _lines(run) >= 3)
    _kill(proc)
    summary = _run(run, "steps=8")
    assert summary["steps"] == 8
    _same(_values(run), _values(ref))
    assert summary["weight"] == pytest.approx(json.loads((ref / "weights.json").read_text()), rel=1e-5)


def test_a_second_run_in_the_same_folder_is_refused_and_a_killed_holder_leaves_no_stuck_lock(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = _start(run, "steps=200", sleep=0.2)
    _wait_for(lambda: _lines(run) >= 1)
    with pytest.raises(BadInput) as e:
        _run(run, "steps=200")
    message = str(e.value)
    assert "\n" not in message and f"pid {holder.pid}" in message and "another run is using this folder" in message
    _kill(holder)  # kill -9: nothing releases the lock but the kernel
    assert _run(run, "steps=4")["steps"] == 4


def test_a_rerun_with_another_config_is_refused_unless_asked_for_a_fresh_start(tmp_path):
    run = tmp_path / "run"
    _run(run, "steps=4")
    before = (run / "metrics.jsonl").read_text()
    with pytest.raises(BadInput) as e:
        _run(run, "steps=4", "batch=8", "optim.lr=0.01")
    assert "\n" not in str(e.value) and "batch: 4 -> 8" in str(e.value) and "optim.lr: 0.3 -> 0.01" in str(e.value)
    assert "checkpoint.resume=never" in str(e.value) and (run / "metrics.jsonl").read_text() == before
    assert _run(run, "steps=6")["steps"] == 6  # a longer run of the same config continues
    assert [r["step"] for r in _records(run)] == [1, 2, 3, 4, 5, 6]
    _run(run, "steps=3", "batch=8", "checkpoint.resume=never")  # a fresh start keeps the old run
    (previous,) = (run / "previous").iterdir()
    assert [r["step"] for r in _records(previous)] == [1, 2, 3, 4, 5, 6]
    assert (previous / "checkpoints" / "step_00000006" / "COMPLETE").exists()
    assert [r["step"] for r in _records(run)] == [1, 2, 3]


def _damage(ckpt: Path) -> None:
    for f in ckpt.rglob("*model_states.pt"):
        f.write_bytes(f.read_bytes()[:64])


def test_damaged_newest_checkpoints_never_shadow_new_ones_nor_get_them_rotated_away(tmp_path):
    """Every checkpoint damaged: the rerun starts at step 0; its own checkpoints must survive rotation, and the
    damaged ones are kept aside, not deleted."""
    run = tmp_path / "run"
    _run(run, "steps=6")
    for ckpt in checkpoints.complete_checkpoints(run / "checkpoints"):
        _damage(ckpt)
    summary = _run(run, "steps=6")
    assert summary["steps"] == 6 and [r["step"] for r in _records(run)] == [1, 2, 3, 4, 5, 6]
    assert [p.name for p in checkpoints.complete_checkpoints(run / "checkpoints")] == ["step_00000004",
                                                                                     "step_00000006"]
    superseded = sorted(p.name.split("-")[0] for p in (run / "checkpoints" / "superseded").iterdir())
    assert superseded == ["step_00000004", "step_00000006"]
    assert _run(run, "steps=8")["steps"] == 8  # the new ones load


def test_resuming_an_older_checkpoint_moves_the_newer_ones_aside_and_rotation_keeps_what_it_wrote(tmp_path):
    run = tmp_path / "run"
    _run(run, "steps=10", "checkpoint.keep_last=5")
    older = run / "checkpoints" / "step_00000004"
    summary = _run(run, "steps=10", "checkpoint.keep_last=5", f"checkpoint.resume={older}")
    assert summary["steps"] == 10
    moved = sorted(p.name.split("-")[0] for p in (run / "checkpoints" / "superseded").iterdir())
    assert moved == ["step_00000006", "step_00000008", "step_00000010"]
    kept = [p.name for p in checkpoints.complete_checkpoints(run / "checkpoints")]
    assert kept == ["step_00000002", "step_00000004", "step_00000006", "step_00000008", "step_00000010"]


def test_rotation_deletes_only_older_complete_checkpoints(tmp_path):
    folder = tmp_path / "checkpoints"
    for step in (1, 2, 3, 4, 6, 8, 10):
        (folder / checkpoints.tag_for(step)).mkdir(parents=True)
        if step != 4:  # 4: a save that never completed
            (folder / checkpoints.tag_for(step) / checkpoints.COMPLETE).write_text("{}")
    written = folder / checkpoints.tag_for(6)
    deleted = checkpoints.rotate(folder, written, keep_last=2)
    assert [p.name for p in deleted] == ["step_00000001", "step_00000002"]  # kept: 6 (just written) and 3
    assert sorted(p.name for p in folder.iterdir()) == ["step_00000003", "step_00000004", "step_00000006",
                                                        "step_00000008", "step_00000010"]  # 8 and 10 are newer


def test_a_missing_resume_path_is_one_line(tmp_path):
    with pytest.raises(BadInput, match=r"checkpoint.resume=.*nope: not a complete tessera checkpoint \(no such"):
        _run(tmp_path / "run", f"checkpoint.resume={tmp_path / 'nope'}")


def test_stop_request_saves_the_current_step(tmp_path):
    import threading

    stop = threading.Event()
    stop.set()
    run = tmp_path / "run"
    summary = _run(run, "steps=6", "checkpoint.every_steps=100", stop=stop)
    assert summary["stopped_at"] == 1 and (run / "checkpoints" / "step_00000001" / checkpoints.COMPLETE).exists()
    assert torch.load(run / "checkpoints" / "step_00000001" / "mp_rank_00_model_states.pt",
                      weights_only=False)["micro_step"] == 1


# ------------------------------------------------------------------------------------- no host reads between logs
HOST_READS = ("item", "__float__", "__int__", "__bool__", "__index__", "tolist", "numpy", "cpu")
"""The Tensor methods that bring a value to the host: on a GPU each waits for every kernel queued before it."""
HOST_SIDE = (str(REPO / "pretrain" / "masking.py"),)
"""Code that works on host tensors on every machine (masks drawn from a CPU generator): its reads wait for nothing."""


@contextmanager
def counted_host_reads(task: loop.Task):
    """Counts every read of ``HOST_READS`` (they still run) by the optimizer step under way; a micro-step's reads
    run from its ``task.step`` to the next one's (its backward, optimizer step, and the logging that follows)."""
    reads: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    where: dict[tuple[int, str], str] = {}
    micro = [-1]
    inner = task.step

    def step(*args, **kwargs):
        micro[0] += 1
        return inner(*args, **kwargs)

    def counting(name, method):
        def read(self, *args, **kwargs):
            stack = traceback.extract_stack(limit=12)[:-1]
            if micro[0] >= 0 and not any(frame.filename in HOST_SIDE for frame in stack):
                reads[micro[0]][name] += 1
                where.setdefault((micro[0], name), "".join(traceback.format_list(stack[-4:])))
            return method(self, *args, **kwargs)
        return read

    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}
    task.step = step
    try:
        for name, method in originals.items():
            setattr(torch.Tensor, name, counting(name, method))
        yield reads, where
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)
        del task.step


def _reads_by_step(reads: dict, accum: int) -> dict[int, int]:
    """Optimizer step (1-based, as logged) -> reads during its micro-steps."""
    out: dict[int, int] = collections.Counter()
    for micro, names in reads.items():
        out[micro // accum + 1] += sum(names.values())
    return out


def _assert_reads_only_on(reads: dict, where: dict, accum: int, steps: int, allowed: set[int]) -> None:
    per_step = _reads_by_step(reads, accum)
    quiet = [s for s in range(2, steps + 1) if s not in allowed]  # step 1 builds caches once (mel banks)
    bad = {s: n for s, n in per_step.items() if s in quiet and n}
    first = next((where[k] for k in sorted(where) if k[0] // accum + 1 in bad), "")
    assert not bad, f"host reads on steps without logging/validation/checkpoint: {bad}; first at\n{first}"
    assert all(per_step[s] for s in allowed), per_step  # the counters do see the log steps' reads


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_no_step_between_logs_reads_a_tensor_back_to_the_host(tmp_path, stage):
    """Toy task, 2 micro-steps per step, a stop event that is never set (checked every step): only steps 4 and 8
    (log, validation, checkpoint) may read."""
    cfg = toy_task.load([f"run_dir={tmp_path / 'run'}", "steps=8", "deepspeed.grad_accum=2",
                         f"deepspeed.zero_stage={stage}", "log.every_steps=4", "eval_every=4",
                         "checkpoint.every_steps=4"])
    task = toy_task.ToyTask(cfg)
    with counted_host_reads(task) as (reads, where):
        loop.run(task, cfg, threading.Event())
    _assert_reads_only_on(reads, where, accum=2, steps=8, allowed={4, 8})


def test_no_pretraining_step_between_logs_reads_a_tensor_back_to_the_host(tmp_path, tone_shards):
    """SSAST on real shards, bf16 on ZeRO-1 (the recipes' engine), 2 micro-steps per step: features, mask transfer,
    forward, backward and optimizer step read nothing back between the log steps 3 and 6."""
    from pretrain.config import load_pretrain_config
    from pretrain.train import PretrainTask

    cfg = load_pretrain_config(tiny_overrides("ssast", tone_shards, tmp_path / "run", steps=6, split="train", extra=[
        "deepspeed.zero_stage=1", "deepspeed.precision=bf16", "deepspeed.grad_accum=2", "log.every_steps=3",
        "checkpoint.every_steps=3"]))
    task = PretrainTask(cfg)
    with counted_host_reads(task) as (reads, where):
        loop.run(task, cfg)
    _assert_reads_only_on(reads, where, accum=2, steps=6, allowed={3, 6})
