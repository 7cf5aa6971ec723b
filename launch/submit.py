"""Submit a job to SLURM (or run it locally) through submitit: cluster flags here, everything else is config.

``python launch/pretrain.py [--nodes N] [--gpus-per-node G] ... [key=value ...]``. The ``key=value`` overrides are
merged and validated against the config schema on the login node, before anything is queued, and so is the run
folder: a folder another run holds, or that holds a run of another config, is refused here, not in the job. The run
folder is named by a hash of the config, so submitting the same config again resumes the same run.

Each entry script declares its :class:`Entry` (the task package says how to read its config, where its run folder
is and what every task of the job calls); this module imports no task package.
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from launch.common.errors import BadInput, cli
from launch.common.files import atomic_write

CLUSTERS = ("slurm", "local", "debug")
JOBS_FILE = "jobs.txt"
"""The run folder's record of the jobs submitted for it (job id, cluster, time)."""


def resolve(ref: str) -> Callable[..., Any]:
    """``"module:function"`` -> the function (imported only when a command needs it: ``--help`` stays instant)."""
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Entry:
    """One command, as its entry script declares it: each field but ``script`` is a ``"module:function"`` reference
    into the task package, imported when the command runs (this module imports no task package)."""

    script: str
    """The entry script, relative to the repository root (``finetune/layerwise.py``): usage lines and job names."""
    config: str
    """``function(argv) -> cfg``: reads the ``key=value`` items into the typed config."""
    run_dir: str
    """``function(cfg) -> Path``: the run folder."""
    target: str
    """``function(cfg, stop=event)``, called in every task of the job."""
    prepare: str | None = None
    """``function(cfg)``, run once on the submitting machine before queueing (checks data, builds the default)."""

    def load_config(self, argv: list[str]) -> Any:
        return resolve(self.config)(argv)

    def folder(self, cfg: Any) -> Path:
        return resolve(self.run_dir)(cfg)

    def main(self, argv: list[str] | None = None) -> int:
        """The command: ``python <script> [flags] [key=value ...]`` (and its console script)."""
        return cli(submit, self, argv)


def make_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Cluster options as flags; anything else is key=value config.",
                                epilog="Example: --nodes 4 --gpus-per-node 8 --partition gpu --time 24:00:00 "
                                       "method=audiomae \"data.train=[{path: /data/as2m, split: unbalanced}]\"")
    p.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    p.add_argument("--gpus-per-node", type=int, default=None, help="GPUs per node; one task per GPU (default: 0 on CPU)")
    p.add_argument("--tasks-per-node", type=int, default=None, help="tasks per node (default: GPUs per node, or 1)")
    p.add_argument("--cpus-per-task", type=int, default=None, help="CPU cores per task (default: 8 per GPU; on CPU 1 on SLURM, this machine's cores / tasks "
                   "locally)")
    p.add_argument("--mem-gb", type=int, default=None, help="memory per node in GB (default: the cluster's)")
    p.add_argument("--partition", default=None, help="SLURM partition (default: the cluster's default)")
    p.add_argument("--time", default="24:00:00", help="time limit HH:MM:SS or D-HH:MM:SS (default 24:00:00)")
    p.add_argument("--account", default=None, help="SLURM account")
    p.add_argument("--qos", default=None, help="SLURM QOS")
    p.add_argument("--cluster", choices=CLUSTERS, default=None,
                   help="slurm when a SLURM controller answers, else local; debug runs in this process")
    p.add_argument("--dry-run", action="store_true", help="print the sbatch parameters and the config, submit nothing")
    p.add_argument("--no-wait", action="store_true", help="return after submitting (default: wait for local runs)")
    return p


def parse_time(text: str) -> int:
    """``HH:MM:SS``, ``MM:SS``, ``D-HH:MM:SS`` or minutes -> minutes (rounded up)."""
    m = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)|(\d+)", text)
    if not m:
        raise BadInput(f"--time {text!r}: expected HH:MM:SS, D-HH:MM:SS or minutes")
    if m.group(5):
        return int(m.group(5))
    days, hours, minutes, seconds = (int(g) if g else 0 for g in m.groups()[:4])
    if m.group(2) is None:  # MM:SS
        hours, minutes, seconds = 0, int(m.group(3)), int(m.group(4))
    return days * 1440 + hours * 60 + minutes + (1 if seconds else 0)


def slurm_answers() -> bool:
    """True when a SLURM controller answers (``scontrol ping``)."""
    if shutil.which("scontrol") is None:
        return False
    try:
        r = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and "UP" in r.stdout


def check_slurm_request(partition: str | None, nodes: int, gpus_per_node: int, cpus: int) -> None:
    """Refuse in one line what SLURM would refuse or leave pending forever: unknown partition, too many GPUs/nodes."""
    r = subprocess.run(["sinfo", "-h", "-o", "%P|%D|%G|%c"], capture_output=True, text=True, timeout=20)
    rows = [line.split("|") for line in r.stdout.split() if line.count("|") == 3]
    parts = {row[0].rstrip("*"): row for row in rows}
    default = next((row[0].rstrip("*") for row in rows if row[0].endswith("*")), None)
    name = partition or default
    if name not in parts:
        raise BadInput(f"--partition {partition}: SLURM has no such partition; it has {', '.join(parts) or 'none'}")
    _, node_count, gres, cpus_per_node = parts[name]
    if nodes > int(node_count):
        raise BadInput(f"--nodes {nodes}: partition {name} has {node_count} nodes")
    gpus_here = sum(int(n) for n in re.findall(r"gpu(?::[^:,()]+)?:(\d+)", gres)) if gres != "(null)" else 0
    if gpus_per_node > gpus_here:
        raise BadInput(f"--gpus-per-node {gpus_per_node}: nodes of partition {name} have {gpus_here} GPUs")
    if cpus > int(cpus_per_node.rstrip("+")):
        raise BadInput(f"--cpus-per-task x tasks = {cpus}: nodes of partition {name} have {cpus_per_node} CPUs")


def submit(entry: Entry, argv: list[str] | None = None, prog: str | None = None) -> Any:
    """Parse, validate, prepare and submit; returns the submitit job (or the results for waited runs)."""
    import submitit
    from rich.console import Console

    from launch.job import Job
    from launch.runtime import run_folder
    from launch.runtime.config import to_yaml

    console = Console(stderr=True)
    invoked = Path(sys.argv[0]).name
    prog = prog or (invoked if invoked.startswith("tessera-") else f"python {entry.script}")  # console script or path
    args, rest = make_parser(prog).parse_known_args(argv)
    unknown_flags = [a for a in rest if a.startswith("-")]
    if unknown_flags:
        raise BadInput(f"unknown option {unknown_flags[0]!r}; cluster options are flags, the rest key=value")
    for flag, value, low in (("--nodes", args.nodes, 1), ("--gpus-per-node", args.gpus_per_node, 0),
                             ("--tasks-per-node", args.tasks_per_node, 1), ("--cpus-per-task", args.cpus_per_task, 1),
                             ("--mem-gb", args.mem_gb, 1)):
        if value is not None and value < low:
            raise BadInput(f"{flag} {value}: expected an integer >= {low}")
    cfg = entry.load_config(rest)
    run_dir = entry.folder(cfg)
    cfg.run_dir = str(run_dir)  # every task, on every node, uses the same absolute folder
    cluster = args.cluster or ("slurm" if slurm_answers() else "local")
    gpus = args.gpus_per_node if args.gpus_per_node is not None else 0
    tasks = args.tasks_per_node or max(gpus, 1)
    # On this machine (local, debug) the tasks share its cores; a SLURM CPU task asks for one unless told otherwise.
    cpus = args.cpus_per_task or (8 if gpus else 1 if cluster == "slurm" else max(1, (os.cpu_count() or 1) // tasks))
    if gpus and tasks != gpus:
        raise BadInput(f"--tasks-per-node {tasks} with --gpus-per-node {gpus}: one task per GPU is required")
    if cluster == "debug" and args.nodes * tasks > 1:
        raise BadInput("--cluster debug runs one task in this process; use --cluster local for several tasks")
    params: dict[str, Any] = dict(nodes=args.nodes, tasks_per_node=tasks, cpus_per_task=cpus,
                                  timeout_min=parse_time(args.time), name=f"{Path(entry.script).stem}-{run_dir.name}")
    if gpus:
        params["gpus_per_node"] = gpus
    if args.mem_gb:
        params["mem_gb"] = args.mem_gb
    slurm_only = {"slurm_partition": args.partition, "slurm_account": args.account, "slurm_qos": args.qos}
    if cluster == "slurm":
        check_slurm_request(args.partition, args.nodes, gpus, cpus * tasks)
        params.update({k: v for k, v in slurm_only.items() if v})
        # one task that dies must end the job: the survivors would otherwise wait in a collective forever
        params["slurm_srun_args"] = ["--kill-on-bad-exit=1"]
    elif cluster == "local" and args.nodes > 1:
        raise BadInput(f"--nodes {args.nodes}: the local cluster has one node (use --tasks-per-node)")

    if args.dry_run:
        console.print(f"[bold]{cluster}[/] job, not submitted (--dry-run)")
        for k, v in params.items():
            console.print(f"  {k} = {v}")
        console.print(f"  folder = {run_dir / 'submitit'}")
        print(to_yaml(cfg))
        return None

    preflight(run_dir, cfg, cluster)
    if entry.prepare:
        resolve(entry.prepare)(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not run_folder.holds_run(run_dir):  # for the user to read while the job waits; a run writes its own
        atomic_write(run_dir / run_folder.CONFIG_FILE, to_yaml(cfg))
    executor = submitit.AutoExecutor(folder=run_dir / "submitit" / "%j", cluster=cluster)
    executor.update_parameters(**params)
    job = executor.submit(Job(entry.target, cfg, threads=cpus))
    with open(run_dir / JOBS_FILE, "a") as f:
        f.write(f"{job.job_id} {cluster} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
    console.print(f"[bold]{cluster}[/] job [bold]{job.job_id}[/]: {args.nodes} node(s) x {tasks} task(s)")
    console.print(f"  run folder  {run_dir}")
    console.print(f"  logs        {run_dir / 'submitit' / str(job.job_id)}/*_log.{{out,err}}")
    if cluster == "slurm":
        console.print(f"  follow      squeue -j {job.job_id}; tail -f {run_dir}/submitit/{job.job_id}/*_0_log.err")
        console.print("  resume      submit the same command again (same config -> same run folder)")
    if cluster == "slurm" or args.no_wait:
        return job
    return _follow(job, console)


def submit_array(target: str, cfgs: list[Any], folder: Path, cluster: str, params: dict[str, Any],
                 threads: int = 1) -> list[Any]:
    """Independent tasks (no collective, no shared world): one job array (``sbatch --array`` on SLURM; processes
    here for ``local``; one after another in this process for ``debug``) whose task ``i`` runs
    ``target(cfgs[i], stop=event)`` through :class:`launch.job.Job`, so a task warned of its time limit is requeued
    like a training job. ``params`` are submitit's (``slurm_array_parallelism`` caps the tasks running at once).
    Returns the submitit jobs, one per task, logs in ``folder/<job id>``."""
    import submitit

    from launch.job import Job

    executor = submitit.AutoExecutor(folder=Path(folder) / "%j", cluster=cluster)
    executor.update_parameters(**params)
    with executor.batch():  # one submission for all the tasks, made as the block ends
        jobs = [executor.submit(Job(target, cfg, threads=threads)) for cfg in cfgs]
    return jobs


def preflight(run_dir: Path, cfg: Any, cluster: str) -> None:
    """What the job would refuse, refused before it is queued: a folder in use (a live run, or a SLURM job of this
    folder still queued or running), a run of another config, a checkpoint to resume that is not there."""
    from launch.runtime import run_folder
    from launch.runtime.config import config_tree, how_not_what_keys

    run_folder.check_free(run_dir)
    jobs = run_dir / JOBS_FILE
    submitted = [line.split() for line in jobs.read_text().splitlines() if line.strip()] if jobs.is_file() else []
    if cluster == "slurm" and submitted and submitted[-1][1:2] == ["slurm"]:
        last = submitted[-1][0]
        if run_folder.slurm_job_active(last):
            raise BadInput(f"{run_dir}: SLURM job {last} of this run folder is still queued or running; wait for it, "
                           f"scancel {last}, or give another run_dir")
    checkpoint = getattr(cfg, "checkpoint", None)  # a job without checkpoints (prediction) resumes nothing
    resume = checkpoint.resume if checkpoint is not None else "never"
    if resume not in ("auto", "never") and not Path(resume).is_dir():
        raise BadInput(f"checkpoint.resume={resume}: no such checkpoint folder")
    if resume != "never":
        run_folder.check_same_config(run_dir, config_tree(cfg), how_not_what_keys(cfg))


def _follow(job, console) -> Any:
    """Wait for a local job, echoing rank 0's log as it grows."""
    err = None
    pos = 0
    while not job.done():
        time.sleep(0.5)
        err = err or next(iter(Path(job.paths.folder).glob("*_0_log.err")), None)
        if err and err.exists():
            text = err.read_text(errors="replace")
            sys.stderr.write(text[pos:])
            pos = len(text)
    if err and err.exists():
        sys.stderr.write(err.read_text(errors="replace")[pos:])
    results = job.results()
    console.print(f"[bold green]job {job.job_id} finished[/] ({len(results)} task(s))")
    return results
