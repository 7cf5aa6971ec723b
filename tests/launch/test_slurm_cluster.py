"""Smoke tests of the local SLURM cluster with submitit: multi-node gloo groups and a job that dies.

They need the ``slurm_cluster`` fixture (tests/launch/conftest.py): 4 emulated nodes with accounting. Each waits with
an explicit timeout, since submitit's own waits have none. Requeues and preemption signals are tested where they
matter, on the real entry points (tests/launch/test_slurm_launch.py).
"""
from __future__ import annotations

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
