"""launch/pretrain.py and finetune/layerwise.py through sbatch on the local 4-node SLURM (CPU, gloo, tiny models)."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import submitit

from launch.common.errors import BadInput
from finetune.train import ENTRY as FINETUNE
from pretrain.train import ENTRY as PRETRAIN
from launch.submit import submit
from tests.fixtures.pretrain_runs import read_metrics, tiny_overrides

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _submit(entry, cluster, argv):
    cluster.require(nodes=4, accounting=True)
    return submit(entry, ["--cluster", "slurm", "--partition", cluster.partition, "--time", "0:15:00", *argv])


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _task_pids(job_id) -> list[int]:
    """The python processes running tasks of SLURM job ``job_id`` (found through their environment)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if f"SLURM_JOB_ID={job_id}".encode() in environ and b"submitit.core._submit" in cmdline:
            pids.append(int(proc.name))
    return pids


def test_pretrain_on_4_nodes_zero2(slurm_cluster, tone_shards, tmp_path):
    run = tmp_path / "run"
    job = _submit(PRETRAIN, slurm_cluster, ["--nodes", "4", *tiny_overrides("ssast", tone_shards, run, steps=4,
                                                                         extra=["deepspeed.zero_stage=2"])])
    slurm_cluster.wait(job, timeout_s=240)
    results = job.results()
    assert sorted(r["rank"] for r in results) == [0, 1, 2, 3] and {r["world_size"] for r in results} == {4}
    assert [m["step"] for m in read_metrics(run)] == [1, 2, 3, 4]
    assert (run / "checkpoints" / "step_00000004" / "COMPLETE").exists() and (run / "encoder.pt").exists()
    logs = list((run / "submitit" / str(job.job_id)).glob("*_log.err"))
    assert len(logs) == 4
    assert slurm_cluster.final_state(job.job_id) == "COMPLETED"


def test_pretrain_2_nodes_x_2_tasks(slurm_cluster, tone_shards, tmp_path):
    run = tmp_path / "run"
    job = _submit(PRETRAIN, slurm_cluster, ["--nodes", "2", "--tasks-per-node", "2",
                                            *tiny_overrides("audiomae", tone_shards, run, steps=3)])
    slurm_cluster.wait(job, timeout_s=240)
    assert sorted(r["rank"] for r in job.results()) == [0, 1, 2, 3]
    assert [m["step"] for m in read_metrics(run)] == [1, 2, 3]


def test_requeued_job_resumes_from_its_checkpoint_and_finishes(slurm_cluster, tone_shards, tmp_path):
    run = tmp_path / "run"
    steps = 150
    overrides = tiny_overrides("ssast", tone_shards, run, steps=steps, extra=["checkpoint.every_steps=5"])
    job = _submit(PRETRAIN, slurm_cluster, ["--nodes", "2", *overrides])
    _wait_for(lambda: (run / "checkpoints" / "step_00000005" / "COMPLETE").exists(), 240, "the first checkpoint")
    assert not job.done(), "the job finished before it could be requeued"
    slurm_cluster.scontrol("requeue", str(job.job_id))
    slurm_cluster.wait(job, timeout_s=300)
    assert [m["step"] for m in read_metrics(run)] == list(range(1, steps + 1))  # every step logged exactly once
    assert (run / "checkpoints" / f"step_{steps:08d}" / "COMPLETE").exists()
    rank0 = "".join(p.read_text() for p in (run / "submitit" / str(job.job_id)).glob("*_0_log.err"))
    assert "resumed from" in rank0


def test_a_task_killed_with_sigkill_fails_the_job_instead_of_hanging(slurm_cluster, tone_shards, tmp_path):
    run = tmp_path / "run"
    job = _submit(PRETRAIN, slurm_cluster, ["--nodes", "2", *tiny_overrides("ssast", tone_shards, run, steps=2000)])
    _wait_for(lambda: (run / "metrics.jsonl").exists(), 240, "training to start")
    victims = _task_pids(job.job_id)
    assert victims, "no task process found"
    os.kill(victims[-1], signal.SIGKILL)
    job._results_timeout_s = 5
    slurm_cluster.wait(job, timeout_s=180)
    with pytest.raises(submitit.core.utils.UncompletedJobError):
        job.result()
    assert slurm_cluster.final_state(job.job_id) in ("FAILED", "CANCELLED", "NODE_FAIL")


def test_unknown_partition_and_too_many_gpus_are_refused_before_queueing(slurm_cluster, tone_shards, tmp_path):
    overrides = tiny_overrides("ssast", tone_shards, tmp_path / "run", steps=2)
    with pytest.raises(BadInput, match="--partition nope: SLURM has no such partition"):
        submit(PRETRAIN, ["--cluster", "slurm", "--partition", "nope", *overrides])
    with pytest.raises(BadInput, match="--gpus-per-node 8: nodes of partition"):
        submit(PRETRAIN, ["--cluster", "slurm", "--gpus-per-node", "8", *overrides])
    assert not (tmp_path / "run").exists()


def test_finetune_through_slurm(slurm_cluster, tone_shards, tmp_path):
    pre = tmp_path / "pre"
    job = _submit(PRETRAIN, slurm_cluster, tiny_overrides("ssast", tone_shards, pre, steps=3))
    slurm_cluster.wait(job, timeout_s=240)
    run = tmp_path / "ft"
    data = f"{{path: {tone_shards}, split: train}}"
    job = _submit(FINETUNE, slurm_cluster, [
        "--nodes", "2", f"ckpt={pre / 'encoder.pt'}", f"run_dir={run}", "steps=6", "eval_every=3",
        f"data.train=[{data}]", f"data.val={data}", f"data.test={data}", "data.stream.clip_seconds=0.5",
        "data.stream.batch_size=4", "data.stream.num_workers=0", "data.features.target_frames=48",
        "log.every_steps=3", "head.kind=post_norm"])
    slurm_cluster.wait(job, timeout_s=240)
    results = job.results()
    assert sorted(r["rank"] for r in results) == [0, 1]
    test = next(r for r in results if r["rank"] == 0)["test"]
    assert test["num_clips"] == 64
    assert (run / "metrics.json").exists() and (run / "confusion_matrix.png").exists() and (run / "best.pt").exists()
