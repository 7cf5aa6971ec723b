"""launch/pretrain.py and finetune/layerwise.py through sbatch on the local 4-node SLURM (CPU, gloo, tiny models)."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import submitit

from finetune.layerwise import ENTRY as FINETUNE
from launch.common.errors import BadInput
from launch.pretrain import ENTRY as PRETRAIN
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


class _Reference:
    """The same run, uninterrupted, as 2 local processes (same seed and world size: the same numbers). Started while
    the preempted job waits to be requeued (its credential must expire first), finished with :meth:`wait`."""

    def __init__(self, module: str, overrides: list[str], run: Path, logs: Path):
        from tests.integration.conftest import start_ranks

        self.run, self.logs = run, logs
        self.procs = start_ranks(2, [o if not o.startswith("run_dir=") else f"run_dir={run}" for o in overrides],
                                 logs, module)

    def wait(self) -> Path:
        from tests.integration.conftest import wait_ok

        wait_ok(self.procs, self.logs)
        return self.run


def _losses(run: Path) -> dict[int, dict]:
    """step -> loss and validation values (rates and timings left out); every step logged once."""
    out: dict[int, dict] = {}
    for m in read_metrics(run):
        assert m["step"] not in out, f"step {m['step']} logged twice"
        out[m["step"]] = {k: v for k, v in m.items() if k in ("loss", "nce", "mse", "acc") or k.startswith("val_")}
    return out


def _same_run(run: Path, ref: Path) -> None:
    got, expected = _losses(run), _losses(ref)
    assert sorted(got) == sorted(expected)
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step


def _rank0_log(run: Path, job) -> str:
    return "".join(p.read_text() for p in (run / "submitit" / str(job.job_id)).glob("*_0_log.err"))


def test_requeued_job_resumes_from_its_checkpoint_and_repeats_the_uninterrupted_losses(slurm_cluster, tone_shards,
                                                                                      tmp_path):
    """``scontrol requeue`` (no warning: SIGTERM, then SIGKILL after KillWait = 5 s, so the run must outlast that):
    the job restarts from its last periodic checkpoint, and every loss it logs is the uninterrupted run's."""
    run = tmp_path / "run"
    steps = 150
    overrides = tiny_overrides("ssast", tone_shards, run, steps=steps, extra=["checkpoint.every_steps=5"])
    job = _submit(PRETRAIN, slurm_cluster, ["--nodes", "2", *overrides])
    _wait_for(lambda: (run / "checkpoints" / "step_00000005" / "COMPLETE").exists(), 240, "the first checkpoint")
    assert not job.done(), "the job finished before it could be requeued"
    slurm_cluster.scontrol("requeue", str(job.job_id))
    reference = _Reference("pretrain.train", overrides, tmp_path / "ref", tmp_path / "ref-logs")
    slurm_cluster.wait(job, timeout_s=300)
    ref = reference.wait()
    _same_run(run, ref)  # every step logged exactly once, with the uninterrupted losses
    assert (run / "checkpoints" / f"step_{steps:08d}" / "COMPLETE").exists()
    assert "resumed from" in _rank0_log(run, job)


def _preempt(slurm_cluster, job, run: Path, after_lines: int) -> None:
    """SLURM's warning before the time limit (``--signal=USR2``), once ``after_lines`` steps are logged."""
    _wait_for(lambda: (run / "metrics.jsonl").exists() and len(read_metrics(run)) >= after_lines, 240,
              f"{after_lines} logged steps")
    assert not job.done(), "the job finished before it could be preempted"
    slurm_cluster.scancel("--signal=USR2", str(job.job_id))


def _equal_files(a: Path, b: Path, key: str = "state_dict") -> None:
    import torch

    x, y = (torch.load(p, weights_only=False)[key] for p in (a, b))
    assert sorted(x) == sorted(y)
    for name in x:
        assert torch.allclose(x[name].float(), y[name].float(), rtol=1e-5, atol=1e-6), name


def test_sigusr2_checkpoints_requeues_and_pretraining_ends_as_if_uninterrupted(slurm_cluster, tone_shards, tmp_path):
    """The warned preemption (``--signal=USR2``) of an Audio-MAE run; SSAST takes the same loop and job wrapper (its
    requeue is the test above), so one method is enough here."""
    method = "audiomae"
    run = tmp_path / "run"
    overrides = tiny_overrides(method, tone_shards, run, steps=40,
                               extra=["checkpoint.every_steps=1000", "checkpoint.keep_last=3", "eval_every=10",
                                      f"data.val={{path: {tone_shards}, split: train}}",
                                      "checkpoint.resume=never"])  # a fresh start, once: the requeued job resumes
    job = _submit(PRETRAIN, slurm_cluster, ["--nodes", "2", *overrides])
    _preempt(slurm_cluster, job, run, after_lines=4)
    reference = _Reference("pretrain.train", overrides, tmp_path / "ref", tmp_path / "ref-logs")
    slurm_cluster.wait(job, timeout_s=300)
    ref = reference.wait()
    log = _rank0_log(run, job)
    assert "stopping at step" in log and "resumed from" in log and not (run / "previous").exists()
    stopped = [p for p in (run / "checkpoints").iterdir() if p.name.startswith("step_") and p.name != "step_00000040"]
    assert len(stopped) == 1 and (stopped[0] / "COMPLETE").exists()  # the checkpoint saved at the signal
    _same_run(run, ref)
    _equal_files(run / "encoder.pt", ref / "encoder.pt")
    assert slurm_cluster.final_state(job.job_id) == "COMPLETED"


def test_a_task_killed_with_sigkill_fails_the_job_instead_of_hanging(slurm_cluster, tone_shards, tmp_path):
    run = tmp_path / "run"
    job = _submit(PRETRAIN, slurm_cluster, ["--nodes", "2", *tiny_overrides("ssast", tone_shards, run, steps=2000)])
    _wait_for(lambda: (run / "metrics.jsonl").exists(), 240, "training to start")
    victims = _task_pids(job.job_id)
    assert victims, "no task process found"
    os.kill(victims[-1], signal.SIGKILL)
    job._results_timeout_s = 1  # submitit waits this long per missing result file before it raises
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


def _ft_overrides(ckpt: Path, run: Path, shards: Path, steps: int) -> list[str]:
    data = f"{{path: {shards}, split: train}}"
    return [f"ckpt={ckpt}", f"run_dir={run}", f"steps={steps}", "eval_every=5", f"data.train=[{data}]",
            f"data.val={data}", f"data.test={data}", "data.stream.clip_seconds=0.5", "data.stream.batch_size=4",
            "data.stream.num_workers=0", "data.features.target_frames=48", "log.every_steps=1", "log.progress=false",
            "checkpoint.every_steps=1000", "checkpoint.keep_last=3", "head.kind=pre_norm"]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory, tone_shards) -> Path:
    from launch.submit import submit

    run = tmp_path_factory.mktemp("pre") / "run"
    submit(PRETRAIN, ["--cluster", "debug", *tiny_overrides("ssast", tone_shards, run, steps=2)])
    return run / "encoder.pt"


def test_sigusr2_preempted_finetuning_ends_with_the_uninterrupted_checkpoint_and_report(slurm_cluster, tone_shards,
                                                                                      encoder, tmp_path):
    run = tmp_path / "ft"
    overrides = _ft_overrides(encoder, run, tone_shards, steps=30)
    job = _submit(FINETUNE, slurm_cluster, ["--nodes", "2", *overrides])
    _preempt(slurm_cluster, job, run, after_lines=4)
    reference = _Reference("finetune.train", overrides, tmp_path / "ref", tmp_path / "ref-logs")
    slurm_cluster.wait(job, timeout_s=300)
    ref = reference.wait()
    assert "stopping at step" in _rank0_log(run, job)
    assert sorted(r["rank"] for r in job.results()) == [0, 1]
    assert (run / "confusion_matrix.png").exists() and (run / "predictions.csv").exists()
    _same_run(run, ref)
    _equal_files(run / "best.pt", ref / "best.pt")
    got, expected = (json.loads((d / "metrics.json").read_text()) for d in (run, ref))
    assert got["num_clips"] == expected["num_clips"] == 64  # every test clip once over the 2 nodes
    for key in ("accuracy", "macro_auc", "log_loss"):
        assert got[key] == pytest.approx(expected[key], rel=1e-5), key


def test_sigusr2_preempted_teacher_and_student_end_as_if_uninterrupted(slurm_cluster, tone_shards, encoder,
                                                                        tmp_path):
    """A semi-supervised job preempted twice: once while its teacher trains, once while its student does."""
    from finetune.pseudolabel import ENTRY as PSEUDOLABEL

    run = tmp_path / "semi"
    overrides = [*_ft_overrides(encoder, run, tone_shards, steps=20), f"unlabelled={{path: {tone_shards}, split: "
                 "train}", "pseudo.threshold=null", "pseudo.top_k_per_class=8"]
    job = _submit(PSEUDOLABEL, slurm_cluster, ["--nodes", "2", *overrides])
    _preempt(slurm_cluster, job, run / "round0-teacher", after_lines=4)
    _preempt(slurm_cluster, job, run / "round1-student", after_lines=4)
    reference = _Reference("finetune.teacher_student", overrides, tmp_path / "ref", tmp_path / "ref-logs")
    slurm_cluster.wait(job, timeout_s=400)
    ref = reference.wait()
    assert _rank0_log(run, job).count("stopping at step") == 2
    for name in ("round0-teacher", "round1-student"):
        _same_run(run / name, ref / name)
        _equal_files(run / name / "best.pt", ref / name / "best.pt")
    got, expected = (json.loads((d / "semisup.json").read_text()) for d in (run, ref))
    assert [r["accuracy"] for r in got] == pytest.approx([r["accuracy"] for r in expected], rel=1e-5)
    assert [r.get("pseudo_selected") for r in got] == [r.get("pseudo_selected") for r in expected]
