"""shards/build.py --nodes N on the local 4-node SLURM: one shard set built by a job array of disjoint ranges."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from shards.cli import make_parser, run
from shards.manifest import MANIFEST

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SYNTHETIC = ["synthetic", "--labelled", "12", "--val", "4", "--test", "0", "--unlabelled", "0", "--duration", "0.25",
             "--shard-size", "2"]
"""8 shards: labelled-000000..000005, val-000000..000001; with --nodes 2, task 0 builds the first 4."""


def _args(out: Path, *flags: str):
    return make_parser("synthetic").parse_args([*SYNTHETIC, "--out", str(out), *flags])


def _submit(out: Path, cluster, *flags: str):
    return run(_args(out, "--cluster", "slurm", "--partition", cluster.partition, "--time", "0:05:00",
                     "--cpus-per-task", "1", *flags))


def _visible(out: Path) -> dict[str, bytes]:
    """What readers see of a shard set: the tars and the manifest."""
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


def _when_running(cluster, job_id: str, timeout_s: float = 60) -> None:
    """Wait until SLURM runs ``job_id`` (a cancelled task that never ran leaves no accounting record: submitit would
    never see it end)."""
    deadline = time.monotonic() + timeout_s
    while cluster.squeue("-h", "-j", job_id, "-o", "%T").strip() != "RUNNING":
        assert time.monotonic() < deadline, f"{job_id} not running after {timeout_s} s"
        time.sleep(0.1)


def _when_gone(cluster, array: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while cluster.squeue("-h", "-j", array).strip():
        assert time.monotonic() < deadline, f"array {array} still queued after {timeout_s} s"
        time.sleep(0.2)


def _stamps(out: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.tar")}


def test_array_gives_the_one_machine_bytes_and_a_rerun_after_a_cancelled_task_builds_only_what_is_missing(
        slurm_cluster, tmp_path):
    slurm_cluster.require(nodes=2, accounting=True)
    run(_args(tmp_path / "one", "--workers", "1"))
    reference = _visible(tmp_path / "one")
    names = sorted(n for n in reference if n.endswith(".tar"))
    out = tmp_path / "array"

    jobs = _submit(out, slurm_cluster, "--nodes", "2")
    assert [str(j.job_id) for j in jobs] == [f"{str(jobs[0].job_id).split('_')[0]}_{i}" for i in (0, 1)]
    _when_running(slurm_cluster, str(jobs[1].job_id))
    slurm_cluster.scancel(str(jobs[1].job_id))  # task 1 is killed as it starts its range (python, torch, listing)
    for job in jobs:
        slurm_cluster.wait(job, timeout_s=120)
    first = jobs[0].result()
    assert first["built"] == names[:4] and not first["complete"]
    assert slurm_cluster.final_state(jobs[1].job_id) == "CANCELLED"
    assert slurm_cluster.final_state(jobs[0].job_id) == "COMPLETED"
    _when_gone(slurm_cluster, str(jobs[0].job_id).split("_")[0])  # a rerun while the array lingers is refused
    assert not (out / MANIFEST).exists(), "a set with a range missing must not look complete"
    kept = _stamps(out)
    done = {p.name.removesuffix(".json") for p in (out / ".build").glob("*.tar.json")}
    assert set(names[:4]) <= done != set(names) and set(kept) == done  # (task 1 may have finished a shard or two)

    rerun = _submit(out, slurm_cluster, "--nodes", "2")  # the same command again
    for job in rerun:
        slurm_cluster.wait(job, timeout_s=120)
    results = [job.result() for job in rerun]
    assert sorted(n for r in results for n in r["built"]) == sorted(set(names) - done)  # only what was missing
    assert any(r["complete"] for r in results)
    assert {n: s for n, s in _stamps(out).items() if n in kept} == kept  # the finished shards were not rewritten
    assert _visible(out) == reference  # every tar and manifest.json, byte for byte


def test_dry_run_takes_whole_nodes_unless_told_and_never_more_tasks_than_shards(slurm_cluster, tmp_path, capsys):
    slurm_cluster.require(nodes=1)
    out = tmp_path / "o"
    assert run(_args(out, "--cluster", "slurm", "--partition", slurm_cluster.partition, "--nodes", "9",
                     "--dry-run")) is None
    err = capsys.readouterr().err
    assert "--nodes 9: 8 shard(s) to build, so 8 task(s)" in err and "slurm_exclusive=True" in err
    assert "slurm_array_parallelism=8" in err and not out.exists()
