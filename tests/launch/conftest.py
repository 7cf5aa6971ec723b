"""Fixtures for the launch tests: a real local SLURM cluster and a fresh submitit folder per test.

``slurm_cluster`` (session) brings up the cluster of ``tests/launch/slurm_local.sh`` (4 emulated nodes n1..n4 with
2 CPUs each, partition ``debug``, accounting on) unless one is already up, and yields a :class:`SlurmCluster`::

    def test_x(slurm_cluster, submitit_folder):
        ex = slurm_cluster.executor(submitit_folder, nodes=2, tasks_per_node=2)
        job = ex.submit(jobs.all_reduce_rank, 1.0)
        slurm_cluster.wait(job, timeout_s=60)
        slurm_cluster.final_state(job.job_id)        # "COMPLETED", from sacct
        slurm_cluster.scontrol("show", "job", job.job_id)

It stops the cluster at the end only when a ``slurm_cluster`` fixture started it, and only once no other test session
on this machine still uses it (each session holds a lease file). A cluster started by hand is left running.

When the environment variable CI is set, a cluster that does not come up fails the tests; elsewhere they are skipped
with the reason (no root, no apt-get, ...).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().with_name("slurm_local.sh")
REPO_ROOT = SCRIPT.parents[2]
RUN_DIR = Path("/run/slurm-local")  # the script's run folder; the fixture keeps its lock and leases there
SETTINGS = {"NODES": "4", "CPUS_PER_NODE": "2", "ACCOUNTING": "1", "PARTITION": "debug"}
START_TIMEOUT_S = 900  # a cold start installs packages: ~15 s here, minutes on a slow mirror


@dataclass
class SlurmCluster:
    """The running test cluster, as the tests see it."""

    partition: str
    nodes: list[str]
    accounting: bool
    started_here: bool
    job_setup: list[str] = field(default_factory=list)
    """Shell lines run in every job before its tasks start (submitit's ``slurm_setup``)."""

    def run(self, *cmd: str, timeout_s: float = 30, check: bool = True) -> str:
        """Run a SLURM command (``sacct``, ``squeue``, ``scontrol``, ``scancel``, ...) and return its stdout."""
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed (rc {proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def sacct(self, *args: str) -> str:
        return self.run("sacct", *args)

    def squeue(self, *args: str) -> str:
        return self.run("squeue", *args)

    def scontrol(self, *args: str) -> str:
        return self.run("scontrol", *args)

    def scancel(self, *args: str) -> str:
        return self.run("scancel", *args)

    def job_state(self, job_id: str) -> str:
        """The job's state from accounting (``COMPLETED``, ``FAILED``, ``RUNNING``, ...; "" when sacct has no record)."""
        out = self.sacct("-n", "-X", "-P", "-o", "State", "-j", str(job_id))
        return out.split("\n", 1)[0].split(" ", 1)[0].strip()  # "CANCELLED by 0" -> "CANCELLED"

    def final_state(self, job_id: str, timeout_s: float = 30) -> str:
        """The job's state once it has ended. Its results can be there a second or two before SLURM sees the end."""
        deadline = time.monotonic() + timeout_s
        while (state := self.job_state(job_id)) in ("", "PENDING", "RUNNING", "REQUEUED", "COMPLETING"):
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        return state

    def executor(self, folder: str | Path, **params):
        """A submitit executor for this cluster (``cluster="slurm"`` explicitly, logs in ``folder/<job id>``).

        ``params`` are submitit's (``nodes``, ``tasks_per_node``, ``timeout_min``, ``slurm_*``); the defaults are one
        CPU per task, 5 minutes, this partition and :attr:`job_setup`.
        """
        import submitit

        ex = submitit.AutoExecutor(folder=Path(folder) / "%j", cluster="slurm")
        setup = list(self.job_setup) + list(params.pop("slurm_setup", []))
        ex.update_parameters(
            **{"cpus_per_task": 1, "timeout_min": 5, "slurm_partition": self.partition, "slurm_setup": setup, **params}
        )
        return ex

    def wait(self, job, timeout_s: float) -> None:
        """Wait until ``job.done()`` (result file or final sacct state); cancel it and fail after ``timeout_s``.

        ``job.wait()``/``job.results()`` have no timeout: a job that never starts, or dies unseen, would hang the run.
        """
        deadline = time.monotonic() + timeout_s
        while not job.done():
            if time.monotonic() > deadline:
                queue = self.run("squeue", "-j", str(job.job_id), check=False)
                self.run("scancel", str(job.job_id), check=False)
                pytest.fail(
                    f"job {job.job_id} not done after {timeout_s:.0f} s (cancelled). squeue:\n{queue}\n"
                    f"sacct: {self.job_state(job.job_id)}\nstdout: {job.paths.stdout}\nstderr: {job.paths.stderr}"
                )
            time.sleep(0.5)

    def require(self, nodes: int = 1, accounting: bool = False) -> None:
        """Fail (skip outside CI) when the running cluster is smaller than a test needs."""
        if len(self.nodes) < nodes or (accounting and not self.accounting):
            _unavailable(
                f"the running SLURM cluster has {len(self.nodes)} nodes, accounting={self.accounting}; this test needs "
                f"{nodes} nodes, accounting={accounting}. Restart it: {SCRIPT} stop; {SCRIPT} start"
            )


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"SLURM unavailable and CI is set, so this is a failure, not a skip: {reason}", pytrace=False)
    pytest.skip(reason)


def _script(cmd: str, timeout_s: float) -> tuple[int, str]:
    """Run ``slurm_local.sh cmd``; returns (exit code, output).

    The output goes to a file, not a pipe: a daemon that kept a pipe's write end open would make us wait forever.
    """
    env = {**os.environ, **SETTINGS}
    with tempfile.TemporaryFile("w+") as out:
        try:
            rc = subprocess.run(["bash", str(SCRIPT), cmd], stdout=out, stderr=subprocess.STDOUT, env=env,
                                timeout=timeout_s, stdin=subprocess.DEVNULL).returncode
        except subprocess.TimeoutExpired:
            rc = 124
        out.seek(0)
        return rc, out.read()


def _is_up() -> bool:
    return _script("status", 60)[0] == 0


@contextlib.contextmanager
def _fixture_lock():
    """Serialise the up/down decisions of test sessions that share this machine."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    with open(RUN_DIR / "fixture.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _proc_start(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, from /proc), or None when it has exited.

    A lease names a pid and its start time, so a recycled pid does not keep a dead session's lease alive.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None if fields[0] == "Z" else fields[19]  # a zombie has exited (slurm.md P5)


def _lease_alive(lease: Path) -> bool:
    try:
        return lease.name.isdigit() and _proc_start(int(lease.name)) == lease.read_text().strip()
    except FileNotFoundError:
        return False


def _describe(started_here: bool) -> SlurmCluster:
    run = lambda *c: subprocess.run(c, capture_output=True, text=True, timeout=30, check=True).stdout  # noqa: E731
    partition = next(p.rstrip("*") for p in run("sinfo", "-h", "-o", "%P").split() if p.endswith("*"))
    nodes = sorted(set(run("sinfo", "-h", "-N", "-p", partition, "-o", "%N").split()))
    accounting = "accounting_storage/slurmdbd" in run("scontrol", "show", "config")
    job_setup = [
        # submitit pickles functions by reference (tests.launch.jobs.f): the job must import them from this checkout
        f"export PYTHONPATH={REPO_ROOT}${{PYTHONPATH:+:$PYTHONPATH}}",
        # sbatch exports the submitting environment; values left by other tests would break submitit's export()
        "unset MASTER_ADDR MASTER_PORT RANK WORLD_SIZE LOCAL_RANK LOCAL_WORLD_SIZE",
        # several tasks share each real core: one thread each
        "export OMP_NUM_THREADS=1",
    ]
    return SlurmCluster(partition, nodes, accounting, started_here, job_setup)


@pytest.fixture(scope="session")
def slurm_cluster():
    """The local SLURM cluster (see the module docstring); started here unless it is already up."""
    if not sys.platform.startswith("linux"):
        _unavailable("the local SLURM cluster needs Linux")
    up = shutil.which("sinfo") is not None and _is_up()
    if os.geteuid() != 0:  # may use a cluster that root started, never start or stop one
        if not up:
            _unavailable(f"no SLURM cluster is up and starting one needs root: sudo bash {SCRIPT} start")
        yield _describe(started_here=False)
        return
    if not up and shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        _unavailable("SLURM is not installed and there is no apt-get to install it (Debian/Ubuntu only)")

    lease = RUN_DIR / "leases" / str(os.getpid())
    with _fixture_lock():
        started_here = False
        if not _is_up():
            t0 = time.monotonic()
            rc, out = _script("start", START_TIMEOUT_S)
            if rc != 0:
                _script("stop", 120)  # leave no half-started daemons behind
                _unavailable(f"{SCRIPT} start failed (exit {rc}):\n{out[-4000:]}")
            started_here = True
            # A fixture started it: the last session to leave stops it. (`slurm_local.sh stop` removes the marker.)
            (RUN_DIR / "fixture-owned").write_text(f"pid {os.getpid()}\n")
            sys.stderr.write(f"\nslurm_cluster: started in {time.monotonic() - t0:.1f} s\n")
        lease.parent.mkdir(parents=True, exist_ok=True)
        lease.write_text(f"{_proc_start(os.getpid())}\n")
    try:
        yield _describe(started_here)
    finally:
        with _fixture_lock():
            lease.unlink(missing_ok=True)
            others = [p for p in lease.parent.iterdir() if _lease_alive(p)]
            for p in lease.parent.iterdir():  # leases of sessions that died without cleaning up
                if p not in others:
                    p.unlink(missing_ok=True)
            if (RUN_DIR / "fixture-owned").exists() and not others:
                rc, out = _script("stop", 120)
                if rc != 0:
                    sys.stderr.write(f"\nslurm_cluster: {SCRIPT} stop failed (exit {rc}):\n{out}\n")


@pytest.fixture
def submitit_folder(tmp_path: Path) -> Path:
    """A fresh folder for one test's submitit jobs.

    Never share one across tests or runs: job ids start again at 1 after ``slurm_local.sh reset``, and submitit would
    return the old result pickle of a reused ``<folder>/<job id>`` at once (slurm.md P2).
    """
    folder = tmp_path / "submitit"
    folder.mkdir()
    return folder
