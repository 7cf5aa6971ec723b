"""Smoke tests of the local SLURM cluster with submitit: multi-node gloo groups, a job that dies, requeue.

They need the ``slurm_cluster`` fixture (tests/launch/conftest.py): 4 emulated nodes with accounting. Each waits with
an explicit timeout, since submitit's own waits have none. About a minute in all on 2 cores.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from submitit.core.utils import UncompletedJobError

from tests.launch import jobs

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _check_group(results: list[dict], x: float, nodes: int, tasks_per_node: int) -> None:
    """One result per rank; every rank saw the full sum; ranks fill the job's nodes in order."""
    world = nodes * tasks_per_node
    expected = world * x + world * (world - 1) / 2
    assert sorted(r["rank"] for r in results) == list(range(world))
    for r in results:
        assert (r["world_size"], r["sum"]) == (world, expected), r
        assert r["local_rank"] == r["rank"] % tasks_per_node, r
    node_of = {r["rank"]: r["node"] for r in results}
    assert len(set(node_of.values())) == nodes, node_of
    for rank in range(world):  # ranks of one node are consecutive
        assert node_of[rank] == node_of[rank - rank % tasks_per_node], node_of
    assert {r["master_addr"] for r in results} == {node_of[0]}


def _wait_for_steps(cluster, job, progress: Path, steps: int, timeout_s: float) -> None:
    """Wait until the CountingTask has written ``steps`` steps, i.e. it runs and submitit's handlers are set."""
    deadline = time.monotonic() + timeout_s
    while sum(line.startswith("step ") for line in jobs.read_progress(progress)) < steps:
        if job.done() or time.monotonic() > deadline:
            cluster.run("scancel", str(job.job_id), check=False)
            pytest.fail(f"job {job.job_id} did not reach step {steps} (state {cluster.job_state(job.job_id)!r}, "
                        f"progress {jobs.read_progress(progress)}, stderr {job.paths.stderr})")
        time.sleep(0.2)


def test_four_nodes_one_task_each_form_a_gloo_group(slurm_cluster, submitit_folder):
    slurm_cluster.require(nodes=4)
    ex = slurm_cluster.executor(submitit_folder, nodes=4, tasks_per_node=1)
    job = ex.submit(jobs.all_reduce_rank, 10.0)
    slurm_cluster.wait(job, timeout_s=120)
    _check_group(job.results(), x=10.0, nodes=4, tasks_per_node=1)
    assert slurm_cluster.final_state(job.job_id) == "COMPLETED"


def test_two_nodes_two_tasks_each_form_a_gloo_group(slurm_cluster, submitit_folder):
    slurm_cluster.require(nodes=2)
    ex = slurm_cluster.executor(submitit_folder, nodes=2, tasks_per_node=2)
    job = ex.submit(jobs.all_reduce_rank, 1.5)
    slurm_cluster.wait(job, timeout_s=120)
    _check_group(job.results(), x=1.5, nodes=2, tasks_per_node=2)


def test_sigkilled_task_makes_result_raise(slurm_cluster, submitit_folder):
    # No result pickle is ever written: only accounting tells submitit the job is over (slurm.md P1).
    slurm_cluster.require(accounting=True)
    ex = slurm_cluster.executor(submitit_folder, nodes=1, tasks_per_node=1)
    job = ex.submit(jobs.die_by_sigkill)
    slurm_cluster.wait(job, timeout_s=60)
    # After done(), result() still looks for a late pickle for 15 s (meant for slow network filesystems); this is a
    # local disk.
    job._results_timeout_s = 2
    with pytest.raises(UncompletedJobError, match="has not produced any output"):
        job.result()
    assert slurm_cluster.final_state(job.job_id) == "FAILED"


def test_scontrol_requeue_reruns_the_job_which_resumes(slurm_cluster, submitit_folder):
    """A requeue without warning (as a preemption): SIGTERM, then SIGKILL after KillWait, then the same job again.

    submitit ignores SIGTERM (it logs "Bypassing signal SIGTERM"), so ``checkpoint()`` is not called: the rerun is
    the submitted task again, and it must resume from what it saved itself (here the progress file).
    """
    progress = submitit_folder / "progress.txt"
    ex = slurm_cluster.executor(submitit_folder, nodes=1, tasks_per_node=1)
    # 20 steps of 0.5 s: the task keeps counting during KillWait (5 s) and must not finish before the SIGKILL
    job = ex.submit(jobs.CountingTask(str(progress), steps=20, step_s=0.5))
    _wait_for_steps(slurm_cluster, job, progress, 2, timeout_s=60)
    slurm_cluster.scontrol("requeue", job.job_id)
    slurm_cluster.wait(job, timeout_s=120)  # ~5 s KillWait + ~11 s until a requeued job may start (cred_expire=10)
    assert job.result() == 20
    lines = jobs.read_progress(progress)
    starts = [line for line in lines if line.startswith("start ")]
    assert len(starts) == 2, lines
    assert starts[0] == "start 0 from file restart=0", lines
    resumed_at = int(starts[1].split()[1])
    assert 2 <= resumed_at < 20 and starts[1].endswith("from file restart=1"), lines
    assert [line for line in lines if line.startswith("step ")] == [f"step {i}" for i in range(20)], lines
    assert not any(line.startswith("checkpoint") for line in lines), lines
    assert lines[-1] == "end"
    assert slurm_cluster.final_state(job.job_id) == "COMPLETED"


def test_preemption_signal_checkpoints_and_requeues(slurm_cluster, submitit_folder):
    """The warned preemption: SIGUSR2 (what ``--signal=USR2@90`` sends before the time limit) makes submitit call
    ``checkpoint()`` on rank 0, save the DelayedSubmission it returns and run ``scontrol requeue``; the rerun starts
    from the checkpointed state."""
    progress = submitit_folder / "progress.txt"
    # submitit counts the signal as a timeout unless the job has run < 80% of its time and > 10 min are left
    ex = slurm_cluster.executor(submitit_folder, nodes=1, tasks_per_node=1, timeout_min=60)
    job = ex.submit(jobs.CountingTask(str(progress), steps=8, step_s=0.5))
    _wait_for_steps(slurm_cluster, job, progress, 2, timeout_s=60)
    slurm_cluster.scancel("--signal=USR2", job.job_id)
    slurm_cluster.wait(job, timeout_s=120)
    assert job.result() == 8
    lines = jobs.read_progress(progress)
    checkpoints = [line for line in lines if line.startswith("checkpoint ")]
    starts = [line for line in lines if line.startswith("start ")]
    assert len(checkpoints) == 1 and len(starts) == 2, lines
    saved = int(checkpoints[0].split()[1])
    assert 2 <= saved < 8, lines
    assert starts == ["start 0 from file restart=0", f"start {saved} from checkpoint restart=1"], lines
    assert [line for line in lines if line.startswith("step ")] == [f"step {i}" for i in range(8)], lines
    assert lines[-1] == "end"
