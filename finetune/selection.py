"""Pseudo-labels: the pure middle of the semi-supervised loop (teacher predictions -> selected clips -> new shards).

The ICME 2024 Audio-MAE recipe (CAS 2023, 20 % labelled): a teacher fine-tuned on the labelled part predicts every
unlabelled clip in one exact pass (``probs [N, C]`` with the clips' ``keys [N]``); :func:`select` keeps the confident
ones (threshold and/or the k most confident per predicted class, plus an optional floor of m per class so rare classes
are not starved); :func:`write_pseudo_shards` copies those clips, FLAC bytes unchanged, into a NEW shard folder as split
``pseudo``, which ``shards.stream.open_shard_set(ShardSetConfig(path=out, split="pseudo"))`` reads, and which the
fine-tune config's ``data.train`` list mixes with the labelled set by weight. The inputs are only ever read.
"""
from __future__ import annotations

import dataclasses
import errno
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from launch.common.errors import BadInput, check
from launch.common.files import atomic_write
from launch.runtime.config import since
from shards.manifest import MANIFEST, read_manifest
from shards.writer import FORMAT, tar_writer

log = logging.getLogger(__name__)

SPLIT = "pseudo"


@dataclass
class PseudoLabelConfig:
    """Which teacher predictions become training labels, and how the student starts."""

    threshold: Optional[float] = 0.9
    """Keep clips whose max probability >= this (0..1); None: no threshold (top_k_per_class alone, or every clip)."""
    top_k_per_class: Optional[int] = None
    """Keep at most this many of the most confident clips per predicted class (class balance); None: no cap."""
    min_per_class: int = 0
    """Always keep the m most confident clips of each predicted class, even below the threshold (rare classes)."""
    rounds: int = 1
    """Teacher -> student rounds; each later round's teacher is the previous student."""
    student_init: str = "pretrained"
    """Student starts from the "pretrained" encoder or from the "teacher"'s encoder (of an ensemble: the first listed
    teacher's; its head is new either way)."""
    soft: bool = False
    """Also store the full probability vector (``probs`` in each clip's json) for soft-label training (always stored
    with ``distill.targets=soft``, which trains on it)."""
    ensemble: str = since("0.2", "probs")
    """How the teachers of ``teacher=[RUN, RUN, ...]`` are averaged: "probs" (mean probability) or "logits" (mean
    logit before the softmax, as CP-JKU's ensemble_logits.pt)."""
    distill_labelled: bool = since("0.2", False)
    """With ``distill.targets=soft``: the teachers also predict the labelled clips, which then get the distillation
    loss next to their label loss (as CP-JKU distil on their labelled training set); off: only pseudo-labelled clips."""

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"pseudo.threshold={self.threshold}: expected 0 <= threshold <= 1, or None")
        if self.top_k_per_class is not None and self.top_k_per_class < 1:
            raise ValueError(f"pseudo.top_k_per_class={self.top_k_per_class}: expected >= 1, or None")
        if self.min_per_class < 0:
            raise ValueError(f"pseudo.min_per_class={self.min_per_class}: expected >= 0")
        if self.top_k_per_class is not None and self.min_per_class > self.top_k_per_class:
            raise ValueError(f"pseudo.min_per_class={self.min_per_class}: exceeds pseudo.top_k_per_class="
                             f"{self.top_k_per_class}")
        if self.rounds < 1:
            raise ValueError(f"pseudo.rounds={self.rounds}: expected >= 1")
        if self.student_init not in ("pretrained", "teacher"):
            raise ValueError(f"pseudo.student_init={self.student_init!r}: expected 'pretrained' or 'teacher'")
        check("pseudo.ensemble", repr(self.ensemble), self.ensemble in ("probs", "logits"), "'probs' or 'logits'")


@dataclass(frozen=True)
class Selection:
    """The selected clips: rows of ``probs``, their pseudo labels (argmax) and confidences (max probability)."""

    indices: np.ndarray  # [K] int64, ascending
    labels: np.ndarray  # [K] int64 class indices
    confidence: np.ndarray  # [K] float64

    def __len__(self) -> int:
        return len(self.indices)


# ----------------------------------------------------------------------------------------------------------------------
# Selection (pure numpy)


def _check_probs(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 1:
        raise ValueError(f"probs: expected shape [N, C] with C >= 1, got {list(probs.shape)}")
    if not np.isfinite(probs).all():
        raise ValueError(f"probs: row {int(np.flatnonzero(~np.isfinite(probs).all(1))[0])} is not finite")
    sums = probs.sum(1)
    bad = np.flatnonzero((probs.min(1, initial=0) < -1e-6) | (np.abs(sums - 1) > 1e-2))
    if bad.size:  # thresholds mean nothing on logits
        raise ValueError(f"probs: row {int(bad[0])} (sum {sums[bad[0]]:.4g}) is not a probability vector; "
                         "pass softmax outputs, not logits")
    return probs


def select(probs: np.ndarray, cfg: PseudoLabelConfig) -> Selection:
    """Pick pseudo-labelled clips from teacher probabilities ``probs [N, C]``.

    Per predicted class c (argmax, lowest class on ties), clips ranked by confidence (descending, then row index
    ascending, so ties are deterministic): keep those >= ``cfg.threshold``, at most ``cfg.top_k_per_class`` of them,
    and at least the top ``cfg.min_per_class`` of the class whatever their confidence. Since the ranking is by
    confidence, each rule keeps a prefix of it: class c keeps ``max(min(passed, k), min(m, n_c))`` clips.
    """
    probs = _check_probs(probs)
    pred, conf = probs.argmax(1), probs.max(1, initial=0.0)  # [N], [N]
    keep: list[np.ndarray] = []
    for c in range(probs.shape[1]):
        rows = np.flatnonzero(pred == c)  # ascending: the stable sort below breaks ties by row
        ranked = rows[np.argsort(-conf[rows], kind="stable")]
        n = len(ranked) if cfg.threshold is None else int((conf[ranked] >= cfg.threshold).sum())
        if cfg.top_k_per_class is not None:
            n = min(n, cfg.top_k_per_class)
        keep.append(ranked[: max(n, min(cfg.min_per_class, len(ranked)))])
    indices = np.sort(np.concatenate(keep)).astype(np.int64)
    return Selection(indices, pred[indices].astype(np.int64), conf[indices])


# ----------------------------------------------------------------------------------------------------------------------
# Report


def _acc(pred: np.ndarray, truth: np.ndarray) -> Optional[float]:
    """Accuracy over rows with a true label (truth >= 0); None when there is none."""
    known = truth >= 0
    return round(float((pred[known] == truth[known]).mean()), 6) if known.any() else None


def selection_report(selection: Selection, probs: np.ndarray, true_labels: Optional[Sequence[Optional[int]]],
                     classes: Sequence[str]) -> dict[str, Any]:
    """Counts, confidences and (where ``true_labels [N]`` are known, None elsewhere) pseudo-label accuracy.

    ``accuracy`` is over the selected clips; ``teacher_accuracy_all`` is the teacher's argmax over all N clips, i.e.
    what taking every prediction would give. Per class, both are precisions: among clips labelled c, the share truly c.
    """
    probs = _check_probs(probs)
    pred_all, conf_all = probs.argmax(1), probs.max(1, initial=0.0)
    truth_all = np.full(len(probs), -1, np.int64)
    if true_labels is not None:
        if len(true_labels) != len(probs):
            raise ValueError(f"true_labels: {len(true_labels)} labels for {len(probs)} rows of probs")
        truth_all[:] = [-1 if t is None else int(t) for t in true_labels]
    idx, pred, conf = selection.indices, selection.labels, selection.confidence
    truth = truth_all[idx]
    mean = lambda x: round(float(x.mean()), 6) if x.size else None  # noqa: E731
    per_class = {}
    for c, name in enumerate(classes):
        sel, all_ = pred == c, pred_all == c
        per_class[name] = {
            "predicted": int(all_.sum()), "selected": int(sel.sum()), "mean_confidence": mean(conf[sel]),
            "accuracy": _acc(pred[sel], truth[sel]), "teacher_accuracy_all": _acc(pred_all[all_], truth_all[all_]),
        }
    return {
        "num_clips": len(probs), "num_selected": len(idx),
        "selected_fraction": round(len(idx) / len(probs), 6) if len(probs) else None,
        "mean_confidence": mean(conf), "mean_confidence_all": mean(conf_all),
        "num_with_truth": int((truth >= 0).sum()), "num_with_truth_all": int((truth_all >= 0).sum()),
        "accuracy": _acc(pred, truth), "teacher_accuracy_all": _acc(pred_all, truth_all),
        "per_class": per_class,
    }


def print_selection(report: dict[str, Any], classes: Sequence[str], console: Any = None) -> None:
    """One rich table of a :func:`selection_report`: per class, then all classes."""
    from rich.console import Console
    from rich.table import Table

    from finetune.metrics import fmt_number, fmt_percent

    console = console or Console()
    table = Table(title=f"Pseudo-labels: {report['num_selected']} of {report['num_clips']} clips selected")
    for col, justify in (("Class", "left"), ("Predicted", "right"), ("Selected", "right"), ("Mean conf", "right"),
                         ("Pseudo acc %", "right"), ("Teacher acc % (all)", "right")):
        table.add_column(col, justify=justify)
    for name in classes:
        m = report["per_class"].get(name, {})
        table.add_row(name, str(m.get("predicted", "")), str(m.get("selected", "")), fmt_number(m.get("mean_confidence")),
                      fmt_percent(m.get("accuracy")), fmt_percent(m.get("teacher_accuracy_all")))
    table.add_section()
    table.add_row("all", str(report["num_clips"]), str(report["num_selected"]), fmt_number(report["mean_confidence"]),
                  fmt_percent(report["accuracy"]), fmt_percent(report["teacher_accuracy_all"]))
    console.print(table)


# ----------------------------------------------------------------------------------------------------------------------
# Pseudo-labelled shards


def true_index(meta: dict[str, Any], classes: Sequence[str]) -> Optional[int]:
    """A clip's known class: ``true_label`` (synthetic corpus) or the label of a held-out labelled split."""
    name = meta.get("true_label")
    if name is not None:
        return classes.index(name) if name in classes else None
    return None if meta.get("label_index") is None else int(meta["label_index"])


def _check_inputs(source_dir: Path, split: str, keys: Sequence[str], selection: Selection, probs: np.ndarray,
                  classes: Sequence[str], out_dir: Path, cfg: PseudoLabelConfig) -> dict[str, Any]:
    """Every refusal that needs no audio; returns the source manifest."""
    src, out = source_dir.resolve(), out_dir.resolve()
    if out == src or out.is_relative_to(src):
        raise BadInput(f"{out_dir}: is inside the source shard folder {source_dir}; write pseudo-labels elsewhere")
    if (out_dir / MANIFEST).exists():
        raise BadInput(f"{out_dir / MANIFEST}: already a complete shard set (never overwritten); pick a new folder")
    path = source_dir / MANIFEST
    manifest = read_manifest(path)
    if split not in manifest.get("splits", {}):
        raise BadInput(f"{path}: no split {split!r}; it has {', '.join(manifest.get('splits', {})) or 'none'}")
    if list(manifest.get("classes", [])) != list(classes) or manifest.get("multi_label"):
        raise BadInput(f"{path}: classes {manifest.get('classes')} (multi_label={manifest.get('multi_label')}) differ "
                       f"from the teacher's {list(classes)}")
    if not keys or not manifest["splits"][split]["count"]:
        raise BadInput(f"{path}: the unlabelled set ({split!r}, {len(keys)} predicted clips) is empty")
    if probs.shape != (len(keys), len(classes)):
        raise BadInput(f"probs: shape {list(probs.shape)}, expected [{len(keys)} keys, {len(classes)} classes]")
    if len(set(keys)) != len(keys):
        raise BadInput(f"keys: {len(keys) - len(set(keys))} duplicate keys; predict every clip exactly once")
    if not len(selection):
        threshold = "no threshold" if cfg.threshold is None else f"threshold {cfg.threshold}"
        raise BadInput(f"no clip passed {threshold}; lower pseudo.threshold or set pseudo.top_k_per_class")
    if selection.indices.max() >= len(keys):
        raise BadInput(f"selection: row {int(selection.indices.max())} is beyond the {len(keys)} keys")
    return manifest


def _shard_urls(source_dir: Path, entry: dict[str, Any]) -> list[str]:
    return [str(source_dir / s["file"]) for s in entry["shards"] if s.get("file") and s["count"] > 0]


def _readable(url: str, damaged: list[str]) -> Iterator[dict[str, Any]]:
    """The samples of one source shard; a tar that is cut short ends there, noted in ``damaged`` (its remaining clips
    were not predicted either: the prediction pass kept them as invalid rows)."""
    import webdataset as wds

    def note(e: BaseException) -> bool:
        damaged.append(f"{url}: {type(e).__name__}: {e}")
        log.warning("pseudo-labels: %s is damaged (%s: %s); its remaining clips are left out", url, type(e).__name__, e)
        return False  # stop reading this tar

    yield from wds.tarfile_to_samples(handler=note)([{"url": url}])


def _source_keys(urls: Sequence[str]) -> set[str]:
    """Keys of the split read from tar headers only (cheap: member data is skipped), to refuse before writing; a tar
    cut short gives the keys before the damage."""
    import tarfile

    keys: set[str] = set()
    for url in urls:
        try:
            with tarfile.open(url, "r:") as tar:
                for member in tar:
                    if member.isfile():
                        keys.add(Path(member.name).name.split(".", 1)[0])
        except (OSError, tarfile.TarError, EOFError):
            continue  # a damaged tar: the keys before the damage are in, the rest were not predicted
    return keys


class _ShardSink:
    """Selected samples -> ``pseudo-NNNNNN.tar`` files of ``shard_size`` samples in ``partial``; every tar is closed
    before its file (a TarWriter left to the garbage collector would write its end blocks into a closed file)."""

    def __init__(self, partial: Path, shard_size: int):
        self.partial, self.shard_size = partial, shard_size
        self.files: list[str] = []
        self.shards: list[dict[str, Any]] = []
        self.file = self.writer = None
        self.count, self.seconds = 0, 0.0

    def write(self, sample: dict[str, bytes], seconds: float) -> None:
        if self.writer is None:
            self.files.append(f"{SPLIT}-{len(self.shards):06d}.tar")
            self.file = open(self.partial / self.files[-1], "wb")
            self.writer = tar_writer(self.file)
            self.count, self.seconds = 0, 0.0
        self.writer.write(sample)
        self.count, self.seconds = self.count + 1, self.seconds + seconds
        if self.count == self.shard_size:
            self.close()

    def close(self) -> None:
        """Finish the current tar (end blocks, fsync) and record it."""
        if self.writer is not None:
            self.writer.close()
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            self.shards.append({"file": self.files[-1], "count": self.count, "seconds": round(self.seconds, 3)})
            self.file = self.writer = None

    def discard(self) -> None:
        """After a failure: close what is open and delete every tar written so far (nothing half-done is left)."""
        try:
            if self.writer is not None:
                self.writer.close()  # marks the tar closed, so the garbage collector writes nothing later
        except OSError:
            pass  # its end blocks cannot be written either (a full disk): the file is deleted below anyway
        finally:
            if self.file is not None:
                self.file.close()
            self.file = self.writer = None
            for name in self.files:
                (self.partial / name).unlink(missing_ok=True)


def _pseudo_sample(sample: dict[str, Any], meta: dict[str, Any], label: int, confidence: float, probs: np.ndarray,
                   classes: Sequence[str], teacher: str, soft: bool) -> dict[str, bytes]:
    """A source sample relabelled: FLAC bytes unchanged, the pseudo label in ``.cls`` and the metadata."""
    if "true_label" not in meta and meta.get("label") is not None:
        meta["true_label"] = meta["label"]  # a labelled held-out split: keep its label as the truth
    meta.update(label=classes[label], label_index=label, pseudo_label=True, confidence=round(float(confidence), 6),
                teacher=str(teacher))
    if soft:
        meta["probs"] = [round(float(p), 6) for p in probs]
    return {"__key__": sample["__key__"], "flac": sample["flac"], "cls": str(label).encode(),
            "json": json.dumps(meta, sort_keys=True, ensure_ascii=False).encode()}


def write_pseudo_shards(source_dir: Path, split: str, keys: Sequence[str], selection: Selection, probs: np.ndarray,
                        classes: Sequence[str], out_dir: Path, teacher: str, cfg: PseudoLabelConfig, *,
                        shard_size: int = 1000) -> dict[str, Any]:
    """Copy the selected clips of ``source_dir``/``split`` into ``out_dir`` as split ``pseudo``; returns the manifest.

    ``keys [N]`` name the rows of ``probs [N, C]``; ``selection`` indexes them. Clips are written in the source's
    manifest order, ``shard_size`` per ``pseudo-NNNNNN.tar`` (FLAC bytes unchanged; ``.cls`` = pseudo label; ``.json``
    = source metadata + ``label``, ``label_index``, ``pseudo_label``, ``confidence``, ``teacher`` [+ ``probs``]; a
    source label moves to ``true_label``). Keys are checked against the tar headers before anything is written; tars
    go to ``.partial/`` and are renamed once all are written; ``manifest.json`` comes last (not resumable: a rerun into
    a folder without manifest starts over). Source clips the teacher did not predict (damaged ones the prediction
    pass kept as invalid rows: audio missing or undecodable, lost to a truncated tar) are counted in
    ``pseudo.unpredicted`` and never copied; a predicted key missing from the source is refused.
    """
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    probs = _check_probs(probs)
    src = _check_inputs(source_dir, split, keys, selection, probs, classes, out_dir, cfg)
    entry = src["splits"][split]
    urls = _shard_urls(source_dir, entry)
    present = _source_keys(urls)
    missing = [k for k in keys if k not in present]
    if missing:
        raise BadInput(f"{source_dir / MANIFEST}: split {split!r} has no clip {missing[0]!r} ({len(missing)} of "
                       f"{len(keys)} predicted keys missing); predictions are from another split or build")
    row_of = {k: i for i, k in enumerate(keys)}
    chosen = {int(i): j for j, i in enumerate(selection.indices)}  # row -> position in the selection
    partial = out_dir / ".partial"
    partial.mkdir(parents=True, exist_ok=True)
    sink, truth, histogram, damaged = _ShardSink(partial, shard_size), {}, {}, []
    try:
        for sample in (x for url in urls for x in _readable(url, damaged)):
            key = sample["__key__"]
            if key not in row_of or "json" not in sample or "flac" not in sample:
                continue  # not predicted (damaged or missing audio): counted in pseudo.unpredicted
            try:
                meta = json.loads(sample["json"])
            except ValueError:
                log.warning("pseudo-labels: %s has unreadable metadata; left out", key)
                continue
            truth[key] = true_index(meta, classes)
            j = chosen.get(row_of[key])
            if j is None:
                continue
            label = int(selection.labels[j])
            sink.write(_pseudo_sample(sample, meta, label, selection.confidence[j], probs[row_of[key]], classes,
                                      teacher, cfg.soft), float(meta.get("duration") or 0.0))
            histogram[classes[label]] = histogram.get(classes[label], 0) + 1
        sink.close()
    except BaseException as e:
        sink.discard()
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise BadInput(f"{out_dir}: the disk is full ({e.strerror}) while writing pseudo-labels; nothing was kept; "
                           "free space and run the same command again") from None
        raise
    for name in sink.files:
        os.replace(partial / name, out_dir / name)
    if not any(partial.iterdir()):
        partial.rmdir()
    return _write_manifest(out_dir, src, entry, split, sink.shards, histogram, selection, probs,
                           [truth.get(k) for k in keys], keys, classes, teacher, source_dir, cfg, damaged)


def _write_manifest(out_dir: Path, src: dict[str, Any], entry: dict[str, Any], split: str, shards: list[dict],
                    histogram: dict[str, int], selection: Selection, probs: np.ndarray, truth: list,
                    keys: Sequence[str], classes: Sequence[str], teacher: str, source_dir: Path,
                    cfg: PseudoLabelConfig, damaged: list[str]) -> dict[str, Any]:
    report = selection_report(selection, probs, truth, classes)
    rate = int(entry.get("sample_rate", src.get("sample_rate")))
    manifest = {
        "format": FORMAT, "source": src.get("source"), "classes": list(classes), "multi_label": False,
        "sample_rate": rate, "info": src.get("info"),
        "splits": {SPLIT: {
            "shards": shards, "count": sum(s["count"] for s in shards), "listed": len(selection),
            "hours": round(sum(s["seconds"] for s in shards) / 3600, 4),
            "label_histogram": {c: histogram[c] for c in classes if c in histogram},
            "classes": list(classes), "sample_rate": rate, "skipped": [],
        }},
        "pseudo": {"config": dataclasses.asdict(cfg), "teacher": str(teacher), "source_dir": str(source_dir),
                   "source_split": split, "unpredicted": max(0, int(entry.get("count", len(keys))) - len(keys)),
                   "damaged_shards": damaged, "report": report},
    }
    atomic_write(out_dir / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False))
    return manifest


# ----------------------------------------------------------------------------------------------------------------------
# Teacher probabilities of labelled clips (distillation targets by key, next to the pseudo-labelled shards)


def write_teacher_probs(path: Path, keys: Sequence[str], probs: np.ndarray, classes: Sequence[str],
                        teacher: str) -> Path:
    """``keys [N]`` and ``probs [N, C]`` as an .npz (atomic), with the class list and the teacher that made them."""
    probs = _check_probs(probs)
    if len(keys) != len(probs) or len(set(keys)) != len(keys):
        raise BadInput(f"{path}: {len(keys)} keys ({len(set(keys))} distinct) for {len(probs)} rows of probabilities")
    buf = io.BytesIO()
    np.savez(buf, keys=np.array(list(keys), dtype=str), probs=probs.astype(np.float32),
             classes=np.array(list(classes), dtype=str), teacher=np.array(str(teacher)))
    return atomic_write(path, buf.getvalue())


def read_teacher_probs(path: str | Path, classes: Sequence[str]) -> dict[str, np.ndarray]:
    """An .npz of :func:`write_teacher_probs` -> key -> probabilities [C]; one line when it does not fit ``classes``."""
    try:
        with np.load(path, allow_pickle=False) as f:
            keys, probs, names = f["keys"], f["probs"], [str(c) for c in f["classes"]]
    except FileNotFoundError:
        raise BadInput(f"distill.teacher_probs={path}: no such file") from None
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file of any kind: one line
        raise BadInput(f"distill.teacher_probs={path}: not a teacher-probabilities .npz (keys, probs, classes: "
                       f"{type(e).__name__})") from None
    if names != list(classes) or probs.shape != (len(keys), len(classes)):
        raise BadInput(f"distill.teacher_probs={path}: probabilities {list(probs.shape)} over classes {names}, "
                       f"expected {len(keys)} x {len(classes)} over the training data's {list(classes)}")
    return {str(k): p for k, p in zip(keys, probs)}


__all__ = ["PseudoLabelConfig", "Selection", "print_selection", "read_teacher_probs", "select", "selection_report",
           "write_pseudo_shards", "write_teacher_probs"]
