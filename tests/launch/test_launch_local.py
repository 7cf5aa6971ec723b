"""The launcher without SLURM: submitit's local executor (real subprocesses) and the debug executor (in-process)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from launch.pretrain import ENTRY as PRETRAIN
from launch.submit import submit
from tests.fixtures.pretrain_runs import read_metrics, tiny_overrides

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_local_cluster_two_tasks_zero2(tmp_path, tone_shards):
    run = tmp_path / "run"
    argv = ["--cluster", "local", "--tasks-per-node", "2", "--time", "0:10:00",
            *tiny_overrides("ssast", tone_shards, run, steps=4, extra=["deepspeed.zero_stage=2"])]
    results = submit(PRETRAIN, argv)
    assert sorted(r["rank"] for r in results) == [0, 1] and all(r["world_size"] == 2 for r in results)
    assert [m["step"] for m in read_metrics(run)] == [1, 2, 3, 4]
    assert (run / "checkpoints" / "step_00000004" / "COMPLETE").exists() and (run / "encoder.pt").exists()
    job_id, cluster, _ = (run / "jobs.txt").read_text().split()
    assert cluster == "local" and len(list((run / "submitit" / job_id).glob("*_log.err"))) == 2
    assert "method: ssast" in (run / "config.yaml").read_text()


def test_debug_cluster_runs_in_process_and_resubmitting_resumes(tmp_path, tone_shards):
    run = tmp_path / "run"
    overrides = tiny_overrides("audiomae", tone_shards, run, steps=3)
    (result,) = [submit(PRETRAIN, ["--cluster", "debug", *overrides])][0]
    assert result["world_size"] == 1 and [m["step"] for m in read_metrics(run)] == [1, 2, 3]
    longer = [o if not o.startswith("steps=") else "steps=5" for o in overrides]
    submit(PRETRAIN, ["--cluster", "debug", *longer])  # the same run folder: continues from step 3
    assert [m["step"] for m in read_metrics(run)] == [1, 2, 3, 4, 5]


def test_dry_run_prints_parameters_and_config_without_submitting(tmp_path, tone_shards):
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "launch/pretrain.py", "--cluster", "local", "--dry-run", "--tasks-per-node",
                        "2", *tiny_overrides("ssast", tone_shards, run, steps=4)], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "tasks_per_node = 2" in r.stderr and "method: ssast" in r.stdout and "audiomae:" not in r.stdout
    assert f"cpus_per_task = {max(1, (os.cpu_count() or 1) // 2)}" in r.stderr  # local tasks share this machine's cores
    assert not run.exists()


def test_missing_training_data_and_a_busy_or_mismatched_folder_are_refused_before_queueing(tmp_path, tone_shards):
    from launch.common.errors import BadInput
    from launch.runtime.run_folder import RunLock

    run = tmp_path / "run"
    missing = tiny_overrides("ssast", tmp_path / "nowhere", run, steps=2)
    with pytest.raises(BadInput, match="nowhere/manifest.json: no manifest"):
        submit(PRETRAIN, ["--cluster", "local", *missing])
    assert not run.exists()  # nothing queued, no folder made

    done = tiny_overrides("ssast", tone_shards, run, steps=2)
    submit(PRETRAIN, ["--cluster", "debug", *done])
    with RunLock(run):  # another run holds the folder
        with pytest.raises(BadInput, match="another run is using this folder"):
            submit(PRETRAIN, ["--cluster", "local", *done])
    with pytest.raises(BadInput, match=r"holds a run of another config \(data.stream.batch_size: 4 -> 8\)"):
        submit(PRETRAIN, ["--cluster", "local", *done, "data.stream.batch_size=8"])
    assert len((run / "jobs.txt").read_text().splitlines()) == 1  # only the debug run was submitted
