"""Shards -> batches of waveforms, on any number of nodes x workers.

Two readers, both built from WebDataset stages:

**Training** (:func:`train_loader`): endless, seeded, resumable, mixed by weight.
  Every rank draws shards with replacement from the whole list (WebDataset's ``resampled`` idea, so uneven shard
  counts can never leave one rank waiting in an all-reduce), shuffles samples in a buffer, mixes several shard sets by
  weight, crops or zero-pads each clip and batches it inside the worker. Every random choice comes from an RNG seeded by
  ``(seed, rank, slot, segment)``, so the stream is a pure function of the step:

  * DataLoader workers are served round-robin, so global batch ``g`` of a rank comes from *slot* ``g % W``
    (``W`` = workers), as that slot's batch ``g // W``. A loader started at step ``s`` gives worker ``w`` the slot
    ``(s + w) % W``, and the rank's batches continue exactly where an uninterrupted run would be.
  * Each slot re-seeds every ``segment_batches`` of its batches. To resume mid-segment a worker replays the segment
    up to the step *without decoding audio* (tar reading only), so a resume costs at most one segment of reading.

**Evaluation** (:func:`eval_loader`): every clip exactly once across all ranks.
  The manifest's per-shard counts give each clip a global index; rank ``r`` of ``R`` takes the contiguous range
  ``[r*N//R, (r+1)*N//R)``, split again between its workers. Batches are formed on the rank and padded, so every rank
  runs the same number of batches (ZeRO-3 gathers parameters in every forward: unequal counts would hang); padded rows
  have ``valid == False``.

A sample whose audio cannot be decoded is skipped with a warning and counted (``Batch.corrupt``); a truncated tar ends
that shard early. Neither stops training, but a shard set none of whose drawn shards gives a sample (every tar
deleted, empty or damaged) stops it with one line instead of waiting forever. In evaluation a damaged sample or the
clips lost to a truncated tar stay as invalid rows at their own index (``Batch.index``), so the pass stays exact.

**Remote shard sets.** A shard set ``path`` may be a URL (``http(s)://``, ``s3://``, ``gs://``) or WebDataset's
``pipe:`` form (:mod:`shards.remote`): the manifest is fetched from the same base and the shards are streamed, each
opened inside the worker that reads it. A transient error is retried from the byte reached (``read_retries``,
``retry_backoff_s``, ``read_timeout_s`` of :class:`StreamConfig`), so both readers give exactly what they give on a
local copy; past the retries the shard ends like a truncated tar and is counted.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from launch.common.errors import BadInput, check
from launch.common.fields import since
from launch.common.seeds import derive_seed
from shards import remote
from shards.audio import SAMPLE_RATES, decode_flac
from shards.manifest import MANIFEST, read_manifest

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class ShardSetConfig:
    """One shard set: a folder written by ``shards/build.py`` (with manifest.json) and one of its splits."""

    path: str = "???"
    """Folder holding manifest.json and the {split}-NNNNNN.tar shards, or the same folder as a URL: http(s)://,
    s3://, gs:// (fsspec or the aws / gsutil command line), or ``pipe:CMD`` with ``{}`` for the file name
    (``pipe:curl -s -f https://host/set/{}``)."""
    split: str = "train"
    """Which split of that folder."""
    weight: float = 1.0
    """Relative sampling weight when several sets are mixed (e.g. AudioSet 2.0 + LibriSpeech 1.0)."""


@dataclass
class StreamConfig:
    """How shards become batches of waveforms (features are computed later, on the batch's device)."""

    clip_seconds: float = 1.0
    """Length of every clip in a batch: longer clips are cropped (random offset in training, from the start in
    evaluation), shorter ones zero-padded at the tail (as SSAST pads)."""
    sample_rate: int = 16000
    """Expected sample rate of the shards (Hz); a shard set built at another rate is refused."""
    batch_size: int = 8
    """Clips per batch per rank (DeepSpeed's micro batch)."""
    num_workers: int = 2
    """DataLoader worker processes per rank (0: read in the training process)."""
    shuffle_buffer: int = 1000
    """Samples held in each worker's shuffle buffer."""
    segment_batches: int = 1000
    """A worker's stream is re-seeded every this many of its batches; a resume replays at most one segment."""
    seed: int = 0
    """Seed of every random choice in the stream."""
    read_retries: int = since("0.2", 5, how_not_what=True)
    """Remote shard sets: retries of one shard or manifest after transient errors (connection reset, HTTP 5xx, a
    truncated body, a timeout), each resuming at the byte reached; past them the shard is skipped and counted like a
    damaged one."""
    retry_backoff_s: float = since("0.2", 0.5, how_not_what=True)
    """Remote shard sets: wait before the first retry (s), doubled for each next one (capped at 60 s)."""
    read_timeout_s: float = since("0.2", 60.0, how_not_what=True)
    """Remote shard sets: seconds a connect or a read may wait for data before it counts as a failure."""

    def __post_init__(self) -> None:
        check("data.stream.clip_seconds", self.clip_seconds, 0 < self.clip_seconds <= 3600, "0 < seconds <= 3600")
        low, high = SAMPLE_RATES
        check("data.stream.sample_rate", self.sample_rate, low <= self.sample_rate <= high, f"{low}..{high} Hz")
        check("data.stream.batch_size", self.batch_size, self.batch_size >= 1, ">= 1 clip per rank")
        check("data.stream.num_workers", self.num_workers, self.num_workers >= 0, ">= 0 (0: read in the process)")
        check("data.stream.shuffle_buffer", self.shuffle_buffer, self.shuffle_buffer >= 1, ">= 1")
        check("data.stream.segment_batches", self.segment_batches, self.segment_batches >= 1, ">= 1")
        check("data.stream.read_retries", self.read_retries, 0 <= self.read_retries <= 100, "0..100 retries")
        check("data.stream.retry_backoff_s", self.retry_backoff_s, 0 <= self.retry_backoff_s <= 600, "0..600 s")
        check("data.stream.read_timeout_s", self.read_timeout_s, 0 < self.read_timeout_s <= 3600, "0 < s <= 3600")

    @property
    def retry(self) -> remote.RetryPolicy:
        """How remote shards and manifests are read."""
        return remote.RetryPolicy(self.read_retries, self.retry_backoff_s, self.read_timeout_s)


# ----------------------------------------------------------------------------------------------------------------------
# Batches


@dataclass
class Batch:
    """A batch of equal-length waveforms with labels and metadata."""

    wave: torch.Tensor  # [B, n_samples] float32
    label: torch.Tensor  # [B] int64 (-1: unlabelled) or [B, C] float32 multi-hot for multi-label sets
    valid: torch.Tensor  # [B] bool; False for evaluation padding
    keys: list[str]
    meta: list[dict[str, Any]]
    corrupt: int = 0
    """Samples skipped so far by the worker that made this batch (cumulative)."""
    index: torch.Tensor | None = None
    """[B] int64: each row's global clip index in its split (manifest order; evaluation), -1 for padding rows and
    in training. ``None`` when constructing means all -1."""

    def __post_init__(self) -> None:
        if self.index is None:
            self.index = torch.full((len(self.keys),), -1, dtype=torch.long)

    def pin_memory(self) -> "Batch":
        return Batch(self.wave.pin_memory(), self.label.pin_memory(), self.valid.pin_memory(), self.keys, self.meta,
                     self.corrupt, self.index.pin_memory())

    def to(self, device, non_blocking: bool = True) -> "Batch":
        return Batch(self.wave.to(device, non_blocking=non_blocking), self.label.to(device, non_blocking=non_blocking),
                     self.valid.to(device, non_blocking=non_blocking), self.keys, self.meta, self.corrupt,
                     self.index.to(device, non_blocking=non_blocking))

    def __len__(self) -> int:
        return len(self.keys)


@dataclass
class ShardSet:
    """A resolved shard set: shard paths, per-shard counts and the class list, read from the manifest."""

    urls: list[str]
    counts: list[int]
    classes: list[str]
    multi_label: bool
    sample_rate: int
    weight: float = 1.0
    name: str = ""
    labelled: bool = False
    """Whether the split carries labels (its manifest label histogram is not empty)."""
    test_only_devices: list[str] = field(default_factory=list)
    """Devices the corpus keeps out of training (manifest ``info``: TAU22's s4-s6, the synthetic corpus's)."""
    where: str = ""
    """The folder or URL the shards are in (for messages)."""

    @property
    def num_clips(self) -> int:
        return sum(self.counts)


def open_shard_set(cfg: ShardSetConfig, stream: StreamConfig | None = None) -> ShardSet:
    """Read a shard folder's (or URL's) manifest, fetched with ``stream``'s retries; raises :class:`BadInput` naming
    the folder/split when unusable."""
    base = cfg.path if remote.is_remote(cfg.path) else str(Path(remote.local_path(cfg.path)))
    manifest_path = remote.join(base, MANIFEST)
    manifest = read_manifest(manifest_path, (stream or StreamConfig()).retry)
    splits = manifest["splits"]
    if cfg.split not in splits:
        raise BadInput(f"{manifest_path}: no split {cfg.split!r}; it has {', '.join(splits) or 'none'}")
    entry = splits[cfg.split]
    shards = [s for s in entry["shards"] if s["count"] > 0]
    if not shards:
        raise BadInput(f"{manifest_path}: split {cfg.split!r} holds no clips")
    return ShardSet(
        urls=[remote.join(base, s["file"]) for s in shards],
        counts=[s["count"] for s in shards],
        classes=list(manifest.get("classes", [])),
        multi_label=bool(manifest.get("multi_label", False)),
        sample_rate=int(entry.get("sample_rate", manifest.get("sample_rate"))),
        weight=cfg.weight,
        name=f"{remote.base_name(base)}/{cfg.split}",
        labelled=bool(entry.get("label_histogram")),
        test_only_devices=[str(d) for d in (manifest.get("info") or {}).get("test_only_devices") or []],
        where=base,
    )


def unreadable_shards(s: ShardSet, stream: StreamConfig | None = None) -> list[str]:
    """The shards of ``s`` that cannot be opened or hold no readable first member (one tar header each: cheap; a
    remote shard is read up to its first header, with ``stream``'s retries, then closed)."""
    import tarfile

    retry = (stream or StreamConfig()).retry
    bad = []
    for url in s.urls:
        try:
            if remote.is_remote(url):
                with remote.open_stream(url, retry) as f, tarfile.open(fileobj=f, mode="r|") as tar:
                    first = tar.next()
            else:
                with tarfile.open(url, "r:") as tar:
                    first = tar.next()
            if first is None:
                bad.append(url)
        except (OSError, tarfile.TarError, EOFError):
            bad.append(url)
    return bad


def open_eval_split(cfg: ShardSetConfig, role: str, labelled: bool = False,
                    stream: StreamConfig | None = None) -> ShardSet:
    """A split to evaluate on (``role``: the config key, e.g. ``data.test``), checked before any training: labels
    when ``labelled``, and at least one readable shard (a wholly damaged split is refused; a partly damaged one is
    evaluated on what can be read, its lost clips counted). ``stream``: how remote files are retried."""
    s = open_shard_set(cfg, stream)
    if labelled and not s.labelled:
        raise BadInput(f"{role}: {cfg.path} split {cfg.split!r} has no labels; it cannot score a classifier")
    bad = unreadable_shards(s, stream)
    if len(bad) == len(s.urls):
        raise BadInput(f"{role}: {cfg.path} split {cfg.split!r}: none of its {len(bad)} shards can be read (e.g. "
                       f"{bad[0]}: missing, empty or damaged); expected the tars its {MANIFEST} lists")
    if bad:
        log.warning("%s: %d of %d shards of %s cannot be read (e.g. %s); their clips count as lost", role, len(bad),
                    len(s.urls), s.name, bad[0])
    return s


# ----------------------------------------------------------------------------------------------------------------------
# Pipeline stages (pure generators; composed with wds.DataPipeline)


class _Counter:
    """Per-worker count of skipped samples, with a warning for each."""

    def __init__(self) -> None:
        self.corrupt = 0

    def skip(self, what: str, exc: BaseException) -> bool:
        self.corrupt += 1
        log.warning("skipping %s: %s: %s", what, type(exc).__name__, exc)
        return True  # tells WebDataset's handler protocol to continue


def failure_limit(num_shards: int) -> int:
    """Shards in a row without a sample after which a training set counts as unreadable. Large enough that a set
    with a fraction ``f`` of bad shards trips it only with probability ``f ** limit`` per run of bad draws, small
    enough to stop within seconds (a missing or empty tar fails in microseconds)."""
    return max(50, 4 * num_shards)


def shard_samples(url: str, retry: remote.RetryPolicy, counter: _Counter) -> Iterator[dict]:
    """The samples of one tar shard, local or remote (WebDataset's ``tarfile_to_samples`` on our own stream, so a
    remote read resumes after transient errors). A shard that cannot be opened or read ends early, counted. The
    stream is opened here, in the process that reads it (a DataLoader worker opens its own connections), and closed
    when the generator ends or is dropped (an evaluation range that stops mid-shard)."""
    handler = functools.partial(_skip_shard, url, counter)
    try:
        stream = remote.open_stream(url, retry)
    except Exception as e:  # noqa: BLE001 - a missing shard is skipped and counted, never fatal
        handler(e)
        return
    with stream:
        files = wds.tariterators.tar_file_expander([{"url": url, "stream": stream}], handler=handler)
        yield from wds.tariterators.group_by_keys(files, handler=handler)


def _skip_shard(url: str, counter: _Counter, exc: BaseException) -> bool:
    return counter.skip(url, exc)


def _resampled_samples(s: ShardSet, rng: random.Random, counter: _Counter,
                       retry: remote.RetryPolicy) -> Iterator[dict]:
    """The samples of shards drawn with replacement, forever (the ``resampled=True`` stage with our own RNG).

    A tar that cannot be opened or read ends early with one warning. When :func:`failure_limit` draws in a row give
    no sample, the set is taken as unreadable (missing or emptied tars): that is bad input, where the stream would
    otherwise wait forever for a sample.
    """
    limit, failures = failure_limit(len(s.urls)), 0
    while True:
        url = s.urls[rng.randrange(len(s.urls))]
        got = False
        for sample in shard_samples(url, retry, counter):
            got = True
            yield sample
        failures = 0 if got else failures + 1
        if failures >= limit:
            raise BadInput(f"{s.name} (shards in {s.where or Path(s.urls[0]).parent}): the last {failures} shards drawn gave no "
                           f"sample (missing, empty or damaged tars; see the warnings); expected the readable tars "
                           f"its {MANIFEST} lists ({len(s.urls)} shards, {s.num_clips} clips)")


@dataclass
class _WorkerFailure:
    """Bad input met in a DataLoader worker, sent to the main process as an item (torch would re-raise the exception
    there wrapped in a multi-line "Caught BadInput in DataLoader worker process 0 ... Original Traceback")."""

    message: str


def _send_failures(batches: Iterator[Batch]) -> Iterator[Batch | _WorkerFailure]:
    try:
        yield from batches
    except BadInput as e:
        yield _WorkerFailure(str(e))


def _raise_failures(batches: Iterator[Batch | _WorkerFailure]) -> Iterator[Batch]:
    while True:
        batch = next(batches)  # the training stream is endless
        if isinstance(batch, _WorkerFailure):
            # drop the DataLoader iterator now, so its workers are told to stop at once: kept alive by the traceback,
            # it would only be shut down by the cycle collector, whose queue finalizers run first (workers then wait
            # out torch's 5 s join timeout each)
            del batches
            raise BadInput(batch.message)
        yield batch


def _shuffle(samples: Iterator[dict], bufsize: int, rng: random.Random) -> Iterator[dict]:
    """Reservoir shuffle with an explicit RNG (``wds.shuffle`` semantics, deterministic)."""
    buf: list[dict] = []
    for sample in samples:
        if len(buf) < bufsize:
            buf.append(sample)
            continue
        i = rng.randrange(bufsize)
        buf[i], sample = sample, buf[i]
        yield sample
    rng.shuffle(buf)
    yield from buf


def _mix(streams: list[Iterator[dict]], weights: list[float], rng: random.Random) -> Iterator[dict]:
    """Interleave endless streams, drawing the source of every sample by weight."""
    if len(streams) == 1:
        yield from streams[0]
        return
    while True:
        (i,) = rng.choices(range(len(streams)), weights=weights)
        yield next(streams[i])


def _fit(x: np.ndarray, n: int, offset: int) -> np.ndarray:
    """Crop ``x`` to ``n`` samples from ``offset``, or zero-pad its tail."""
    if len(x) >= n:
        return x[offset : offset + n]
    return np.pad(x, (0, n - len(x)))


def _labels(meta: dict, s: ShardSet, classes: list[str]) -> Any:
    if s.classes != classes:
        return None  # a set with another class list contributes no labels
    if s.multi_label:
        return meta.get("label_indices") or []
    index = meta.get("label_index")
    return -1 if index is None else int(index)


def _collate(rows: list[tuple], num_classes: int, multi_label: bool, corrupt: int, valid: list[bool] | None = None,
             index: list[int] | None = None) -> Batch:
    wave = torch.from_numpy(np.stack([r[0] for r in rows]))
    if multi_label:
        label = torch.zeros(len(rows), num_classes)
        for i, r in enumerate(rows):
            if r[1]:
                label[i, r[1]] = 1.0
    else:
        label = torch.tensor([-1 if r[1] is None else r[1] for r in rows], dtype=torch.long)
    valid_t = torch.ones(len(rows), dtype=torch.bool) if valid is None else torch.tensor(valid)
    index_t = None if index is None else torch.tensor(index, dtype=torch.long)
    return Batch(wave, label, valid_t, [r[2] for r in rows], [r[3] for r in rows], corrupt, index_t)


def _decode(sample: dict, counter: _Counter) -> tuple[np.ndarray, dict] | None:
    try:
        x, rate = decode_flac(sample["flac"])
        meta = json.loads(sample["json"])
        if not np.isfinite(x).all() or x.size == 0:
            raise ValueError("empty or non-finite audio")
        return x, meta
    except Exception as e:  # noqa: BLE001 - any damage to one sample is skipped, never fatal
        counter.skip(f"{sample.get('__url__')}:{sample.get('__key__')}", e)
        return None


# ----------------------------------------------------------------------------------------------------------------------
# Training stream


class TrainStream(IterableDataset):
    """The endless training stream of one rank (see the module docstring). Yields :class:`Batch` objects."""

    def __init__(self, sets: list[ShardSet], cfg: StreamConfig, rank: int = 0, start_step: int = 0):
        super().__init__()
        if not sets:
            raise BadInput("data: no shard set given for training")
        for s in sets:
            if s.sample_rate != cfg.sample_rate:
                raise BadInput(f"{s.name}: shards are at {s.sample_rate} Hz but data.sample_rate is {cfg.sample_rate}")
        self.sets, self.cfg, self.rank, self.start_step = sets, cfg, rank, start_step
        self.classes = sets[0].classes
        self.multi_label = sets[0].multi_label
        self.clip_samples = int(round(cfg.clip_seconds * cfg.sample_rate))

    def _slot_samples(self, slot: int, segment: int, counter: _Counter) -> Iterator[tuple[dict, ShardSet]]:
        """The shuffled, mixed (undecoded) samples of one slot's segment."""
        rng = random.Random(derive_seed(self.cfg.seed, self.rank, slot, segment))
        streams = []
        for k, s in enumerate(self.sets):
            set_rng = random.Random(derive_seed(self.cfg.seed, self.rank, slot, segment, k + 1))
            pipeline = wds.DataPipeline(
                # shards drawn with replacement (no rank runs dry) -> samples; a bad tar ends, an unreadable set stops
                functools.partial(_resampled_samples, s, set_rng, counter, self.cfg.retry),
                lambda it, r=set_rng: _shuffle(it, self.cfg.shuffle_buffer, r),  # sample-level shuffle buffer
                lambda it, s=s: ((x, s) for x in it),  # remember which set a sample came from
            )
            streams.append(iter(pipeline))
        return _mix(streams, [s.weight for s in self.sets], rng)  # weighted mixture of the sets

    def _slot_batches(self, slot: int, first_batch: int) -> Iterator[Batch]:
        """Batches ``first_batch, first_batch + 1, ...`` of one slot."""
        cfg, b = self.cfg, self.cfg.batch_size
        counter = _Counter()
        num_classes = len(self.classes)
        segment, within = divmod(first_batch, cfg.segment_batches)
        while True:
            samples = self._slot_samples(slot, segment, counter)
            for _ in range(within * b):  # resume mid-segment: replay without decoding
                next(samples)
            for batch_index in range(within, cfg.segment_batches):
                rows = []
                n = 0
                while len(rows) < b:
                    sample, s = next(samples)
                    n += 1
                    decoded = _decode(sample, counter)
                    if decoded is None:
                        continue
                    x, meta = decoded
                    meta["shard_set"] = s.name
                    crop_rng = np.random.default_rng(derive_seed(cfg.seed, self.rank, slot, segment, batch_index, n))
                    offset = int(crop_rng.integers(0, len(x) - self.clip_samples + 1)) if len(x) > self.clip_samples else 0
                    rows.append((_fit(x, self.clip_samples, offset), _labels(meta, s, self.classes), sample["__key__"], meta))
                yield _collate(rows, num_classes, self.multi_label, counter.corrupt)
            segment, within = segment + 1, 0

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        slot = (self.start_step + worker) % workers
        batches = self._slot_batches(slot, (self.start_step + worker) // workers)
        return batches if info is None else _send_failures(batches)


def train_loader(sets: list[ShardSetConfig] | list[ShardSet], cfg: StreamConfig, *, rank: int = 0,
                 start_step: int = 0, pin_memory: bool = False) -> Iterator[Batch]:
    """An endless iterator of this rank's training batches, continuing at ``start_step``."""
    resolved = [s if isinstance(s, ShardSet) else open_shard_set(s, cfg) for s in sets]
    dataset = TrainStream(resolved, cfg, rank=rank, start_step=start_step)
    if cfg.num_workers == 0:
        return iter(dataset)
    loader = DataLoader(dataset, batch_size=None, num_workers=cfg.num_workers, pin_memory=pin_memory,
                        persistent_workers=False, prefetch_factor=4)
    return _raise_failures(iter(loader))  # a worker's BadInput arrives as an item and is raised here, in one line


# ----------------------------------------------------------------------------------------------------------------------
# Exact evaluation pass


def _ranges(total: int, parts: int) -> list[tuple[int, int]]:
    return [(p * total // parts, (p + 1) * total // parts) for p in range(parts)]


class _EvalSamples(IterableDataset):
    """Decoded samples with global indices in ``[start, stop)``, split between DataLoader workers."""

    def __init__(self, s: ShardSet, start: int, stop: int, clip_samples: int, retry: remote.RetryPolicy):
        super().__init__()
        self.s, self.start, self.stop, self.clip_samples, self.retry = s, start, stop, clip_samples, retry

    def __iter__(self):
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        lo, hi = _ranges(self.stop - self.start, workers)[worker]
        lo, hi = lo + self.start, hi + self.start
        counter = _Counter()
        first = 0  # global index of the first clip of the current shard
        for url, count in zip(self.s.urls, self.s.counts):
            if lo < hi and first < hi and first + count > lo:  # this shard holds clips of this worker's range
                yield from self._shard_rows(url, first, count, lo, hi, counter)
            first += count

    def _invalid(self, key: str, index: int) -> tuple:
        return np.zeros(self.clip_samples, np.float32), None, key, {}, False, index

    def _shard_rows(self, url: str, first: int, count: int, lo: int, hi: int, counter: _Counter) -> Iterator[tuple]:
        """Rows ``(wave, label, key, meta, valid, index)`` of the clips of one shard whose index is in ``[lo, hi)``.

        A sample that cannot be decoded stays as an invalid row (counts stay exact and the clip is reported); the clips
        a truncated tar lost become invalid rows at their own index, so no later row moves.
        """
        index = first
        for sample in shard_samples(url, self.retry, counter):
            if index >= min(hi, first + count):
                break  # past this worker's range (or a tar holding more than its manifest count)
            if index >= lo:
                decoded = _decode(sample, counter)
                if decoded is None:
                    yield self._invalid(sample.get("__key__") or "", index)
                else:
                    x, meta = decoded
                    yield (_fit(x, self.clip_samples, 0), _labels(meta, self.s, self.s.classes), sample["__key__"],
                           meta, True, index)
            index += 1
        lost = range(max(index, lo), min(first + count, hi))
        if lost:
            log.error("%s: %s ended after %d of its %d clips (truncated or damaged); clips %d..%d of the split are "
                      "invalid rows", self.s.name, url, index - first, count, lost.start, lost.stop - 1)
            for i in lost:
                yield self._invalid("", i)


def eval_batches(s: ShardSet | ShardSetConfig, cfg: StreamConfig, *, rank: int = 0, world: int = 1,
                 num_workers: int | None = None) -> Iterator[Batch]:
    """This rank's share of one exact pass: ``ceil(ceil(N / world) / batch)`` batches on every rank."""
    s = s if isinstance(s, ShardSet) else open_shard_set(s, cfg)
    if s.sample_rate != cfg.sample_rate:
        raise BadInput(f"{s.name}: shards are at {s.sample_rate} Hz but data.sample_rate is {cfg.sample_rate}")
    clip_samples = int(round(cfg.clip_seconds * cfg.sample_rate))
    start, stop = _ranges(s.num_clips, world)[rank]
    per_rank = math.ceil(s.num_clips / world)
    n_batches = math.ceil(per_rank / cfg.batch_size)
    workers = cfg.num_workers if num_workers is None else num_workers
    dataset = _EvalSamples(s, start, stop, clip_samples, cfg.retry)
    samples = iter(dataset) if workers == 0 else iter(DataLoader(dataset, batch_size=None, num_workers=workers))
    num_classes = len(s.classes)
    pad = (np.zeros(clip_samples, np.float32), [] if s.multi_label else -1, "", {}, False, -1)
    produced = 0
    for _ in range(n_batches):
        rows = []
        for _ in range(cfg.batch_size):
            row = next(samples, None)
            rows.append(pad if row is None else row)
        produced += sum(1 for r in rows if r[5] >= 0)
        yield _collate([r[:4] for r in rows], num_classes, s.multi_label, 0, [bool(r[4]) for r in rows],
                       [int(r[5]) for r in rows])
    if produced != stop - start:  # rows are made even for lost clips: this would be a bug, say so loudly
        log.error("%s: rank %d made %d rows, expected %d", s.name, rank, produced, stop - start)


__all__ = [
    "Batch", "ShardSet", "ShardSetConfig", "StreamConfig", "TrainStream", "eval_batches", "open_eval_split",
    "open_shard_set", "shard_samples", "train_loader", "unreadable_shards",
]
