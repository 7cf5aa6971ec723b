"""One shard set built by a job array: ``python shards/build.py SOURCE --root RAW --out OUT --nodes N [...]``.

Why an array of independent tasks, not one N-node job: shard ranges never talk to each other. Array tasks start as
nodes free up (an N-node job waits until N are free at once), one task that fails or is preempted does not end the
others (a training job must end all its tasks: ``--kill-on-bad-exit``), and a rerun can submit only what is missing.

1. The submitting machine lists the corpus (as the one-machine build does), plans the shards
   (:func:`shards.writer.list_shards`), keeps those not done yet, and cuts them into at most N contiguous ranges
   (:func:`plan_ranges`). "Done" here is a record plus a tar of the recorded size: a stat per shard, not a read of
   every byte on the login node; each task checks the sha1 of its own range before it builds.
2. Each array task lists the corpus again, checks it sees the same plan (:func:`plan_digest`: a ``--root`` mounted
   elsewhere on a node would otherwise build other clips) and builds its range with ``--workers`` processes, through
   the writer's resume (a requeued task skips the shards it finished).
3. Then, under a lock on ``OUT/.build/manifest.lock``, it checks whether every shard of the set is done; the task that
   finds the set complete writes ``manifest.json`` (:func:`finish`). Nothing waits on the submitting process, which
   may log out. The manifest is merged from the shards' records, which do not depend on who built them, and holds no
   timestamp: tars and manifest are byte-identical to a one-machine build. Two tasks writing it would write the same
   bytes (atomically), so a file system without working locks can at worst leave it to the rerun.

A rerun of the same command submits only the missing shards (spread over up to N tasks again); when none is missing it
writes the manifest itself and submits nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from launch.common.errors import BadInput
from shards.manifest import MANIFEST, read_manifest
from shards.writer import (
    BuildInputs,
    ShardTask,
    check_shards,
    list_shards,
    merge_manifest,
    open_output,
    output_error,
    write_manifest,
    write_shards,
)

DEFAULT_TIME = "24:00:00"
JOBS_FILE = "jobs.txt"
"""``OUT/.build/jobs.txt``: the arrays submitted for this folder (cluster, time, job ids)."""
LOCK_FILE = "manifest.lock"


# ----------------------------------------------------------------------------------------------------------------------
# The plan (pure)


def plan_ranges(count: int, tasks: int) -> list[range]:
    """``count`` shards cut into at most ``tasks`` contiguous, non-empty ranges whose sizes differ by at most one
    (the first ranges take the remainder). More tasks than shards leaves the extra tasks out: they would idle."""
    if tasks < 1 or count < 0:
        raise ValueError(f"plan_ranges({count}, {tasks}): expected count >= 0 and tasks >= 1")
    used = min(tasks, count)
    size, extra = divmod(count, used) if used else (0, 0)
    ranges, start = [], 0
    for i in range(used):
        stop = start + size + (1 if i < extra else 0)
        ranges.append(range(start, stop))
        start = stop
    return ranges


def compact(names: Sequence[str]) -> str:
    """Shard names as runs: ``labelled-000000..000003, val-000000`` (names ``{split}-{index:06d}.tar``)."""
    runs: list[list[Any]] = []  # [split, first, last]
    for name in names:
        split, index = name.removesuffix(".tar").rsplit("-", 1)
        if runs and runs[-1][0] == split and runs[-1][2] + 1 == int(index):
            runs[-1][2] = int(index)
        else:
            runs.append([split, int(index), int(index)])
    return ", ".join(f"{s}-{a:06d}" + (f"..{b:06d}" if b != a else "") for s, a, b in runs)


def plan_digest(shards: Sequence[ShardTask]) -> str:
    """sha1 over every shard's name and clip keys: equal on two machines when they would build the same set."""
    h = hashlib.sha1()
    for task in shards:
        h.update(f"{task.name} {task.keys_digest()}\n".encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------------------
# One array task


@dataclass(frozen=True)
class RangeRequest:
    """What one array task builds: its shards of the set the submitting machine planned."""

    args: argparse.Namespace
    """The command line (``--out``, ``--root`` absolute): each task loads the corpus from it, as a one-machine build
    does."""
    shards: tuple[str, ...]
    """Shard file names of this task's range, in build order."""
    digest: str
    """:func:`plan_digest` of the whole set on the submitting machine."""
    task: int
    tasks: int
    workers: int | None
    """Worker processes; None: every CPU SLURM gave this task (``SLURM_CPUS_ON_NODE``)."""


def node_cpus() -> int:
    return int(os.environ.get("SLURM_CPUS_ON_NODE") or 0) or len(os.sched_getaffinity(0))


def run_range(inputs: BuildInputs, request: RangeRequest, console, stop=None) -> dict[str, Any]:
    """Build ``request.shards`` (those not already done and intact), then write the manifest if the set is complete.

    Returns ``{"task", "built", "kept", "complete"}``, or ``{"task", "stopped_at"}`` when ``stop`` (SLURM's warning
    before the time limit) ended it early: the launcher's :class:`launch.job.Job` then requeues the task."""
    out = inputs.out
    try:
        open_output(out, inputs.signature())
        shards, clip_counts = list_shards(inputs.corpus, out, inputs.splits, inputs.options, inputs.root)
        digest = plan_digest(shards)
        if digest != request.digest:
            raise BadInput(f"{inputs.root or inputs.corpus.name}: this node lists other clips than the submitting "
                           f"machine did (plan {digest[:12]} != {request.digest[:12]}); expected the same corpus at "
                           "the same path on every node (or the raw tree changed since: submit again)")
        mine = set(request.shards)
        plan = check_shards(out, [t for t in shards if t.name in mine])
        kept = sorted(t.name for t in shards if t.name in mine and (t.split, t.index) in plan.done)
        workers = request.workers or node_cpus()
        console.print(f"task {request.task + 1}/{request.tasks}: {compact(request.shards)} "
                      f"({len(plan.tasks)} to build, {len(kept)} done) with {workers} worker(s)")
        if not write_shards(inputs.corpus, out, plan, workers, console, stop):
            return {"task": request.task, "stopped_at": sum(1 for t in plan.tasks if (t.split, t.index) in plan.done)}
        manifest = finish(inputs, shards, clip_counts)
    except OSError as e:
        raise output_error(out, e) from None
    console.print(f"task {request.task + 1}/{request.tasks}: " + (
        f"the set is complete, wrote {out / MANIFEST}" if manifest else "range done; other ranges still missing"))
    return {"task": request.task, "built": [t.name for t in plan.tasks], "kept": kept, "complete": manifest is not None}


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive POSIX lock on ``path`` (NFS carries these between hosts). Where the file system has no locks,
    go on unlocked: the manifest writes are idempotent, so the worst case is a set the rerun has to finish."""
    with open(path, "a") as f:
        try:
            fcntl.lockf(f, fcntl.LOCK_EX)
        except OSError as e:
            if e.errno not in (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK, errno.EINVAL):
                raise
        yield


def finish(inputs: BuildInputs, shards: Sequence[ShardTask], clip_counts: dict[str, int]) -> dict[str, Any] | None:
    """Under the build's lock: if every shard of the set has its record and its tar, write and return the manifest
    (the same :func:`shards.writer.merge_manifest` as a one-machine build); else None."""
    out = inputs.out
    with _locked(out / ".build" / LOCK_FILE):
        plan = check_shards(out, shards, checksum=False)
        if plan.tasks:
            return None
        previous = read_manifest(out / MANIFEST) if (out / MANIFEST).exists() else {}
        manifest = merge_manifest(previous, inputs.corpus, inputs.splits, plan.done, inputs.options,
                                  inputs.signature(), clip_counts)
        write_manifest(out, manifest)
    return manifest


# ----------------------------------------------------------------------------------------------------------------------
# The submitting machine


def check_flags(args: argparse.Namespace) -> None:
    """The launcher flags' ranges, checked before the corpus is listed (one line each)."""
    for flag, value in (("--nodes", args.nodes), ("--cpus-per-task", args.cpus_per_task), ("--mem-gb", args.mem_gb)):
        if value is not None and value < 1:
            raise BadInput(f"{flag} {value}: expected an integer >= 1")


def _array_active(out: Path) -> str | None:
    """The SLURM array last submitted for ``out`` when any of its tasks is still queued or running."""
    import subprocess

    jobs = out / ".build" / JOBS_FILE
    lines = [line.split() for line in jobs.read_text().splitlines() if line.strip()] if jobs.is_file() else []
    if not lines or lines[-1][0] != "slurm":
        return None
    array = lines[-1][2].split("_")[0]
    try:
        r = subprocess.run(["squeue", "-h", "-j", array, "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    active = {"RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "PENDING", "REQUEUED", "RESIZING"}
    return array if r.returncode == 0 and active & set(r.stdout.split()) else None


def _parameters(args, cluster: str, tasks: int, out: Path) -> tuple[dict[str, Any], int | None]:
    """submitit parameters of the array, and each task's worker count (None: the node's CPUs, known only there)."""
    from launch.submit import check_slurm_request, parse_time

    params: dict[str, Any] = dict(nodes=1, tasks_per_node=1, timeout_min=parse_time(args.time or DEFAULT_TIME),
                                  name=f"shards-{out.name}")
    cpus = args.cpus_per_task
    if cluster == "slurm":
        check_slurm_request(args.partition, 1, 0, cpus or 1)
        params.update(slurm_array_parallelism=tasks, **{f"slurm_{k}": v for k, v in
                      (("partition", args.partition), ("account", args.account), ("qos", args.qos)) if v})
        if cpus is None:  # "--nodes N" means N nodes: take each whole, and use the cores found there
            params["slurm_exclusive"] = True
    elif cpus is None:  # local tasks share this machine's cores (debug runs them one after another, here)
        cpus = max(1, (os.cpu_count() or 1) // (tasks if cluster == "local" else 1))
    if cpus is not None:
        params["cpus_per_task"] = cpus
    if args.mem_gb:
        params["mem_gb"] = args.mem_gb
    return params, args.workers or cpus


def submit(args: argparse.Namespace, inputs: BuildInputs, console) -> Any:
    """Plan, submit the array (or nothing: a complete set gets its manifest here) and, for local runs, wait.

    Returns the manifest when the set is complete on return, the submitit jobs when they run on (SLURM, --no-wait),
    None for --dry-run."""
    from launch.submit import slurm_answers

    check_flags(args)
    cluster = args.cluster or ("slurm" if slurm_answers() else "local")
    if cluster == "local" and args.partition:
        raise BadInput(f"--partition {args.partition}: no SLURM controller answers here; expected --cluster slurm on "
                       "a machine that reaches one (or no --partition for a local build)")
    out = inputs.out
    try:
        open_output(out, inputs.signature(), create=not args.dry_run)
        shards, clip_counts = list_shards(inputs.corpus, out, inputs.splits, inputs.options, inputs.root)
        missing = check_shards(out, shards, checksum=False).tasks
    except OSError as e:
        raise output_error(out, e) from None
    done = len(shards) - len(missing)
    console.print(f"[bold]{inputs.corpus.name}[/]: {len(shards)} shards, {done} done, {len(missing)} to build")
    if not missing:
        if args.dry_run:
            return None
        return finish(inputs, shards, clip_counts)
    nodes = args.nodes or 1
    ranges = plan_ranges(len(missing), nodes)
    if len(ranges) < nodes:
        console.print(f"--nodes {nodes}: {len(missing)} shard(s) to build, so {len(ranges)} task(s)")
    params, workers = _parameters(args, cluster, len(ranges), out)
    # tasks may start in another folder than this shell: absolute --out and --root (the signature holds neither
    # as typed)
    absolute = {"out": out.resolve(), "root": inputs.root}
    request = dict(args=argparse.Namespace(**{**vars(args), **absolute}), digest=plan_digest(shards),
                   tasks=len(ranges), workers=workers)
    requests = [RangeRequest(shards=tuple(missing[i].name for i in r), task=k, **request)
                for k, r in enumerate(ranges)]
    _print_plan(console, requests, missing, cluster, params)
    if args.dry_run:
        return None
    active = _array_active(out)
    if active:
        raise BadInput(f"{out}: SLURM job array {active} of this build is still queued or running; wait for it or "
                       f"scancel {active}")
    return _submit(args, requests, cluster, params, out, console)


def _submit(args, requests: list[RangeRequest], cluster: str, params: dict[str, Any], out: Path, console) -> Any:
    from launch.submit import submit_array

    # one thread per task process: its worker processes each take one (shards.writer)
    jobs = submit_array("shards.cli:build_range", requests, out / ".build" / "submitit", cluster, params, threads=1)
    with open(out / ".build" / JOBS_FILE, "a") as f:
        f.write(f"{cluster} {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(str(j.job_id) for j in jobs)}\n")
    first = str(jobs[0].job_id).split("_")[0]
    ids = first if cluster == "slurm" else " ".join(str(j.job_id) for j in jobs)
    console.print(f"[bold]{cluster}[/] array [bold]{ids}[/]: {len(jobs)} task(s); logs in "
                  f"{out / '.build' / 'submitit'}/<job id>/")
    if cluster == "slurm":
        console.print(f"  follow  squeue -j {first}\n  resume  run the same command again: it builds only what is "
                      "missing, and the manifest appears once the whole set is built")
    if cluster == "slurm" or args.no_wait:
        return jobs
    for job in jobs:
        try:
            job.result()
        except Exception as e:  # submitit re-raises the task's error as FailedJobError with its traceback
            last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise BadInput(f"array task {job.job_id} failed ({last}); its log: {job.paths.stderr}") from None
    return read_manifest(out / MANIFEST) if (out / MANIFEST).exists() else None


def _print_plan(console, requests: list[RangeRequest], missing: Sequence[ShardTask], cluster: str,
                params: dict[str, Any]) -> None:
    from rich.table import Table

    clips = {t.name: len(t.clips) for t in missing}
    table = Table(title=f"{cluster} job array: {len(requests)} task(s)")
    for col in ("task", "shards", "count", "clips"):
        table.add_column(col, justify="left" if col == "shards" else "right")
    for r in requests:
        table.add_row(str(r.task), compact(r.shards), str(len(r.shards)), str(sum(clips[n] for n in r.shards)))
    console.print(table)
    console.print("  " + ", ".join(f"{k}={v}" for k, v in params.items())
                  + f", workers per task={requests[0].workers or 'the node’s CPUs'}")
