"""Clips -> WebDataset shards: deterministic, parallel, resumable, and never half-visible.

A split's clip list (in the source's fixed order) is cut into consecutive chunks of ``shard_size`` clips; chunk ``i``
becomes ``{split}-{i:06d}.tar``. Because the assignment depends only on the list, shards can be built by any number of
worker processes in any order, and an interrupted build (even ``kill -9``) resumes by building only the chunks whose
record is missing:

1. the tar is written to ``.partial/`` and fsynced,
2. its record (keys written, skipped inputs, label counts, seconds) is written to ``.partial/`` and fsynced,
3. the tar is renamed to its final name, then the record to ``.build/``.

A shard counts as done when its record exists in ``.build/`` and the tar it names still has the recorded size and
sha1 (a final tar without a record, or one deleted, truncated or replaced since, is rebuilt with the same bytes).
``manifest.json`` is written last, atomically, so a manifest means a complete build; it holds no timestamp, so the
same input gives the same manifest bytes too. An output folder that cannot be written (a file, read-only, a full
disk) stops the build with one line; a rerun after the fix resumes.

Worker processes die with the build process (:mod:`shards.pool`), so a ``kill -9`` leaves no orphan behind.

The steps are public so that :mod:`shards.cluster` can run them as a job array: :func:`list_shards` (the plan),
:func:`check_shards` (which are done), :func:`write_shards` (some of them), :func:`merge_manifest` (once all are).
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import multiprocessing as mp
import os
import threading
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from launch.common.errors import BadInput
from launch.common.files import atomic_write
from shards import audio
from shards.clip import Clip, Corpus
from shards.manifest import MANIFEST, read_manifest
from shards.pool import die_with_parent

__all__ = ["MANIFEST", "FORMAT", "BuildInputs", "BuildOptions", "Plan", "build", "build_signature", "check_shards",
           "list_shards", "merge_manifest", "open_output", "shard_name", "tar_writer", "write_manifest", "write_shard",
           "write_shards"]
FORMAT = "tessera-shards/1"
# A fixed member mtime makes tars byte-identical across rebuilds (TarWriter would stamp time.time() otherwise).
TAR_MTIME = 1_600_000_000


@dataclass(frozen=True)
class BuildOptions:
    """How clips are written; recorded in the manifest and checked when a build resumes."""

    sample_rate: int = 16000
    """Every clip is resampled once to this rate (Hz)."""
    shard_size: int = 1000
    """Clips per shard (the last shard of a split holds the rest)."""
    workers: int = 1
    """Worker processes encoding shards in parallel (does not change the output)."""
    flac_subtype: str = "PCM_16"
    """FLAC sample format: PCM_16 or PCM_24."""

    def signature(self) -> dict[str, Any]:
        """What must match for a build to resume (``workers`` does not change any byte)."""
        return {"sample_rate": self.sample_rate, "shard_size": self.shard_size, "flac_subtype": self.flac_subtype}


@dataclass(frozen=True)
class BuildInputs:
    """One build as the command line gives it: which splits of which corpus go to which folder, and how."""

    corpus: Corpus
    out: Path
    splits: tuple[str, ...]
    options: BuildOptions
    root: Path | None
    """The raw corpus root (absolute): shard ``.json`` holds clip paths relative to it."""
    source_args: dict[str, Any]
    """The source's own flags, recorded in the manifest and checked on resume."""

    def signature(self) -> dict[str, Any]:
        return build_signature(self.corpus, self.root, self.options, self.source_args)


def tar_writer(fileobj):
    """A WebDataset TarWriter over an open file that gives the same bytes for the same samples (fixed member
    mtime and owner, no re-encoding: fields must already be bytes)."""
    import webdataset as wds

    return wds.TarWriter(fileobj, encoder=False, mtime=TAR_MTIME, user="tessera", group="tessera")


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


# ----------------------------------------------------------------------------------------------------------------------
# One shard (runs in a worker process)


@dataclass(frozen=True)
class ShardTask:
    corpus: str
    classes: tuple[str, ...]
    multi_label: bool
    split: str
    index: int
    clips: tuple[Clip, ...]
    out: str
    root: str | None
    options: BuildOptions

    @property
    def name(self) -> str:
        return shard_name(self.split, self.index)

    def keys_digest(self) -> str:
        """sha1 of the clip keys this shard must hold, in order: a record of another clip list is never reused."""
        return keys_digest(self.clips)


def keys_digest(clips: Sequence[Clip]) -> str:
    return hashlib.sha1("\n".join(c.key for c in clips).encode()).hexdigest()


def _sample(task: ShardTask, clip: Clip, class_index: dict[str, int]) -> tuple[dict[str, bytes], float]:
    """Decode/render, resample, check and encode one clip; raises :class:`audio.UnusableAudio` for bad audio."""
    rate = task.options.sample_rate
    if clip.meta.get("missing"):
        raise audio.UnusableAudio(f"missing: {clip.meta['missing']}")
    if clip.render is not None:
        x, orig = clip.render()
        x = audio.to_mono(x) if x.ndim == 2 else x
        audio.check(x)
        x = audio.resample(x, orig, rate)
    else:
        x, orig = audio.load_mono(clip.path, rate)
    seconds = len(x) / rate
    meta = {k: v for k, v in clip.meta.items() if k != "missing"}
    source_path = None
    if clip.path is not None:
        p = Path(clip.path)
        source_path = str(p.relative_to(task.root)) if task.root and p.is_relative_to(task.root) else str(p)
    info: dict[str, Any] = {
        "dataset": task.corpus,
        "split": task.split,
        **meta,
        "original_sample_rate": orig,
        "sample_rate": rate,
        "duration": round(seconds, 6),
        "source_path": source_path,
    }
    indices = [class_index[name] for name in clip.labels]
    sample = {"__key__": clip.key, "flac": audio.encode_flac(x, rate, task.options.flac_subtype)}
    if task.multi_label:
        info.update(labels=list(clip.labels), label_indices=indices)
    else:
        info.update(label=clip.labels[0] if clip.labels else None, label_index=indices[0] if indices else None)
        if indices:
            sample["cls"] = str(indices[0]).encode()
    sample["json"] = json.dumps(info, sort_keys=True, ensure_ascii=False, default=str).encode()
    return sample, seconds


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


_progress_counter = None  # a shared mp.Value in worker processes (set by the pool initializer)


def _init_worker(counter, parent: int | None = None) -> None:
    """Set up a process that writes shards: the shared progress counter, one torch thread, and (pool workers, given
    the build's pid) an end together with the build."""
    global _progress_counter
    if parent is not None:
        die_with_parent(parent)
    _progress_counter = counter
    import torch

    torch.set_num_threads(1)  # one process per core; resampling must not oversubscribe


def file_sha1(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha1").hexdigest()


def write_shard(task: ShardTask) -> dict[str, Any]:
    """Write one shard and its record; returns the record."""

    out = Path(task.out)
    name = shard_name(task.split, task.index)
    partial = out / ".partial"
    tar_tmp, rec_tmp = partial / name, partial / (name + ".json")
    class_index = {c: i for i, c in enumerate(task.classes)}
    written: list[str] = []
    skipped: list[dict[str, str]] = []
    labels: dict[str, int] = {}
    seconds = 0.0
    with open(tar_tmp, "wb") as f:
        with tar_writer(f) as sink:
            for clip in task.clips:
                try:
                    sample, secs = _sample(task, clip, class_index)
                except audio.UnusableAudio as e:
                    skipped.append({"key": clip.key, "path": str(clip.path) if clip.path else None, "reason": str(e)})
                else:
                    sink.write(sample)
                    written.append(clip.key)
                    seconds += secs
                    for name_ in clip.labels:
                        labels[name_] = labels.get(name_, 0) + 1
                if _progress_counter is not None:
                    with _progress_counter.get_lock():
                        _progress_counter.value += 1
        f.flush()
        os.fsync(f.fileno())
    record = {
        "file": name if written else None,
        "index": task.index,
        "expected_keys": task.keys_digest(),
        "count": len(written),
        "seconds": round(seconds, 3),
        "labels": dict(sorted(labels.items())),
        "skipped": skipped,
    }
    if written:  # what a rerun checks the tar against (records from before this field only check existence)
        record.update(bytes=tar_tmp.stat().st_size, sha1=file_sha1(tar_tmp))
    _fsync_write(rec_tmp, json.dumps(record, sort_keys=True).encode())
    if written:
        os.replace(tar_tmp, out / name)
    else:
        tar_tmp.unlink()  # an empty tar would only trip readers' empty-shard checks
    os.replace(rec_tmp, out / ".build" / (name + ".json"))
    return record


# ----------------------------------------------------------------------------------------------------------------------
# A whole build


def _check_keys(split: str, clips: Sequence[Clip]) -> None:
    seen: set[str] = set()
    for clip in clips:
        if "." in clip.key or not clip.key:
            raise BadInput(f"{split}: clip key {clip.key!r} (from {clip.path}) is empty or contains a dot")
        if clip.key in seen:
            raise BadInput(f"{split}: duplicate clip key {clip.key!r} (from {clip.path}); keys must be unique")
        seen.add(clip.key)


def _check_signature(out: Path, signature: dict[str, Any], *, record: bool = True) -> None:
    """Refuse to mix shards built with other arguments into ``out`` (nothing already written is touched)."""
    path = out / ".build" / "args.json"
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:  # UnicodeDecodeError and JSONDecodeError
            old = f"{type(e).__name__}: {e}"
        if not isinstance(old, dict):
            raise BadInput(f"{path}: not a JSON object ({old!r:.80}); expected the arguments of the build that wrote "
                           f"{out} (use another --out)")
        if old != signature:
            diff = ", ".join(f"{k}: {old.get(k)!r} -> {signature.get(k)!r}" for k in signature
                             if old.get(k) != signature.get(k))
            raise BadInput(f"{out}: already holds shards built with other arguments ({diff}); use another --out")
    elif record:
        atomic_write(path, json.dumps(signature, sort_keys=True, indent=1))


def _prepare_out(out: Path) -> None:
    """Make ``out`` with its ``.build/`` and ``.partial/`` folders, or say in one line why it cannot be."""
    if out.exists() and not out.is_dir():
        raise BadInput(f"{out}: is a file; expected a folder for the shards (new, or one an earlier build wrote)")
    blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise BadInput(f"{out}: {blocker} is a file, not a folder; expected a path whose parents are folders")
    for folder in (out, out / ".build", out / ".partial"):
        folder.mkdir(parents=True, exist_ok=True)


def build_signature(corpus: Corpus, root: Path | None, options: BuildOptions, source_args: dict[str, Any]
                    ) -> dict[str, Any]:
    """What a build into an existing folder must share with the build that started it (``.build/args.json``)."""
    return {"source": corpus.name, "root": str(root) if root else None, **options.signature(),
            "source_args": source_args}


def open_output(out: Path, signature: dict[str, Any], *, create: bool = True) -> dict[str, Any]:
    """Make ``out`` ready for shards of the build ``signature`` (``create=False``: only check, write nothing) and
    return the manifest an earlier build left there ({} if none). Raises :class:`BadInput` for a file in the way, a
    folder of another build, or a broken manifest (checked before any work, never overwritten)."""
    if create:
        _prepare_out(out)
    elif out.exists() and not out.is_dir():
        raise BadInput(f"{out}: is a file; expected a folder for the shards (new, or one an earlier build wrote)")
    _check_signature(out, signature, record=create)
    return read_manifest(out / MANIFEST) if (out / MANIFEST).exists() else {}


def output_error(out: Path, e: OSError) -> BadInput:
    """One line for an OSError met while building into ``out``: a full disk, a folder that cannot be written, or an
    input that cannot be read (named by the file it is about)."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return BadInput(f"{out}: the disk is full ({e.strerror}) while writing {e.filename or 'a shard'}; free space "
                        "and run the same command again: it resumes where it stopped")
    target = Path(e.filename) if e.filename else out
    if target == out or out in target.parents or not e.filename:
        return BadInput(f"{out}: cannot write {target} ({e.strerror}); expected a folder this user can write to")
    return BadInput(f"{target}: {e.strerror}")


def _read_record(path: Path) -> dict[str, Any] | None:
    """A shard's record, or None when it cannot be read (then the shard is rebuilt, as if it had none)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    fields = {"file", "index", "expected_keys", "count", "seconds", "labels", "skipped"}
    return record if isinstance(record, dict) and fields <= set(record) else None


def shard_damage(out: Path, record: dict[str, Any], *, checksum: bool = True) -> str | None:
    """Why the tar a record calls done can no longer be trusted (None: it is intact). Records written before sizes and
    checksums were recorded only have the tar's existence checked; ``checksum=False`` checks the size only (a stat,
    not a read of every byte: what a login node can afford over a whole AudioSet build)."""
    if not record["file"]:
        return None  # every clip of the shard was skipped: there is no tar
    path = out / record["file"]
    if not path.is_file():
        return "missing"
    if "bytes" in record and path.stat().st_size != record["bytes"]:
        return f"{path.stat().st_size} bytes, built with {record['bytes']}"
    if checksum and "sha1" in record and file_sha1(path) != record["sha1"]:
        return "content changed since it was built (sha1)"
    return None


def list_shards(corpus: Corpus, out: Path, splits: Sequence[str], options: BuildOptions, root: Path | None
                ) -> tuple[list[ShardTask], dict[str, int]]:
    """Every shard of ``splits`` in build order (split by split, then by index) and each split's clip count.

    Shard ``i`` of a split holds clips ``i * shard_size`` to ``(i + 1) * shard_size - 1`` of the source's fixed order,
    so the list is the same on every machine that lists the same corpus."""
    unknown = [s for s in splits if s not in corpus.splits]
    if unknown:
        raise BadInput(f"{corpus.name}: unknown split {unknown[0]!r}; this source has {', '.join(corpus.splits)}")
    shards: list[ShardTask] = []
    clip_counts: dict[str, int] = {}
    for split in splits:
        clips = list(corpus.splits[split]())
        _check_keys(split, clips)
        clip_counts[split] = len(clips)
        for i in range(0, len(clips), options.shard_size):
            shards.append(ShardTask(corpus.name, tuple(corpus.classes), corpus.multi_label, split,
                                    i // options.shard_size, tuple(clips[i : i + options.shard_size]), str(out),
                                    str(root) if root else None, options))
    if not any(clip_counts.values()):
        listed = ", ".join(repr(s) for s in splits) or "no split"
        raise BadInput(f"{corpus.name}: nothing to build: {listed} of this source list(s) no clips; expected at least "
                       "one clip in the requested splits")
    return shards, clip_counts


@dataclass
class Plan:
    """Which shards are done and intact (their records), and the tasks that build the rest."""

    tasks: list[ShardTask]
    done: dict[tuple[str, int], dict[str, Any]]
    damaged: list[str]


def check_shards(out: Path, shards: Sequence[ShardTask], *, checksum: bool = True) -> Plan:
    """Split ``shards`` into those done (a readable record for the same clips, an intact tar) and those to build."""
    plan = Plan([], {}, [])
    for task in shards:
        rec_path = out / ".build" / (task.name + ".json")
        record = _read_record(rec_path) if rec_path.exists() else None
        if record is not None:
            if record["expected_keys"] != task.keys_digest():
                raise BadInput(f"{rec_path}: the clips of this shard changed since it was built; use another --out")
            damage = shard_damage(out, record, checksum=checksum)
            if damage is None:
                plan.done[(task.split, task.index)] = record
                continue
            plan.damaged.append(f"{record['file']} ({damage})")
        plan.tasks.append(task)
    return plan


def _write_shards(tasks: list[ShardTask], workers: int, counter, done: dict[tuple[str, int], dict[str, Any]],
                  stop: threading.Event | None = None) -> None:
    """Run ``tasks`` in this process or in a pool of ``workers`` processes that die with this one. Once ``stop`` is
    set, no further shard starts (those under way are finished: a record is never left half-written)."""
    if workers <= 1:
        import torch

        threads = torch.get_num_threads()
        try:
            _init_worker(counter)
            for task in tasks:
                if stop is not None and stop.is_set():
                    return
                done[(task.split, task.index)] = write_shard(task)
        finally:
            torch.set_num_threads(threads)
        return
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"), initializer=_init_worker,
                               initargs=(counter, os.getpid()))
    try:
        futures = {pool.submit(write_shard, t): t for t in tasks}
        for fut in as_completed(futures):
            t = futures[fut]
            done[(t.split, t.index)] = fut.result()
            if stop is not None and stop.is_set():
                break
    finally:  # on an error (or a stop), drop the shards not started: they would meet the same full disk or folder
        pool.shutdown(wait=True, cancel_futures=True)


def build(
    corpus: Corpus,
    out: Path,
    splits: Sequence[str],
    options: BuildOptions,
    *,
    root: Path | None,
    source_args: dict[str, Any],
    console=None,
) -> dict[str, Any]:
    """Build (or resume) ``splits`` of ``corpus`` into ``out`` and write the manifest. Returns the manifest."""
    from rich.console import Console

    console = console or Console(stderr=True)
    unknown = [s for s in splits if s not in corpus.splits]
    if unknown:
        raise BadInput(f"{corpus.name}: unknown split {unknown[0]!r}; this source has {', '.join(corpus.splits)}")
    try:
        signature = build_signature(corpus, root, options, source_args)
        # an earlier build's manifest (its other splits are kept): checked before any work, never overwritten if broken
        previous = open_output(out, signature)
        shards, clip_counts = list_shards(corpus, out, splits, options, root)
        plan = check_shards(out, shards)
        write_shards(corpus, out, plan, options.workers, console)
        manifest = merge_manifest(previous, corpus, splits, plan.done, options, signature, clip_counts)
        write_manifest(out, manifest)
    except OSError as e:
        raise output_error(out, e) from None
    return manifest


def write_shards(corpus: Corpus, out: Path, plan: Plan, workers: int, console,
                 stop: threading.Event | None = None) -> bool:
    """Build ``plan.tasks`` (records go into ``plan.done``) with a progress bar; False when ``stop`` ended it early."""
    if plan.damaged:
        console.print(f"[yellow]rebuilding {len(plan.damaged)} shard(s) changed since they were built[/]: "
                      + ", ".join(plan.damaged[:5]) + (" ..." if len(plan.damaged) > 5 else ""))
    resumed = sum(r["count"] + len(r["skipped"]) for r in plan.done.values())
    if resumed:
        console.print(f"[bold]resuming[/]: {len(plan.done)} shards ({resumed} clips) already built in {out}")
    _run_with_progress(corpus, out, plan, workers, console, stop)
    return not plan.tasks or all((t.split, t.index) in plan.done for t in plan.tasks)


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """The last step of a build: the manifest appears whole, and only once every shard it lists is in place."""
    atomic_write(out / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False))


def _run_with_progress(corpus: Corpus, out: Path, plan: Plan, workers: int, console,
                       stop: threading.Event | None = None) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    counter = mp.get_context("fork").Value("q", 0)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("clips"),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(f"{corpus.name} -> {out.name}", total=sum(len(t.clips) for t in plan.tasks))
        written = threading.Event()  # ends the bar's poller

        def poll() -> None:
            while not written.wait(0.2):
                progress.update(bar, completed=counter.value)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        try:
            _write_shards(plan.tasks, workers, counter, plan.done, stop)
        finally:
            written.set()
            poller.join()
            progress.update(bar, completed=counter.value)


def merge_manifest(previous, corpus, splits, done, options, signature, clip_counts) -> dict[str, Any]:
    """The manifest: the splits just built plus those of an earlier build into the same folder (``previous``)."""
    manifest = dict(previous)
    manifest.update(
        format=FORMAT,
        source=corpus.name,
        classes=list(corpus.classes),
        multi_label=corpus.multi_label,
        sample_rate=options.sample_rate,
        build_args=signature,
        info=corpus.info,
    )
    manifest.setdefault("splits", {})
    for split in splits:
        records = sorted((r for (s, _), r in done.items() if s == split), key=lambda r: r["index"])
        histogram: dict[str, int] = {}
        for r in records:
            for k, v in r["labels"].items():
                histogram[k] = histogram.get(k, 0) + v
        seconds = sum(r["seconds"] for r in records)
        manifest["splits"][split] = {
            "shards": [{"file": r["file"], "count": r["count"], "seconds": r["seconds"]} for r in records if r["file"]],
            "count": sum(r["count"] for r in records),
            "listed": clip_counts[split],
            "hours": round(seconds / 3600, 4),
            "label_histogram": {c: histogram[c] for c in corpus.classes if c in histogram},
            "classes": list(corpus.classes),
            "sample_rate": options.sample_rate,
            "skipped": [s for r in records for s in r["skipped"]],
        }
    return manifest


def asdict(options: BuildOptions) -> dict[str, Any]:
    return dataclasses.asdict(options)
