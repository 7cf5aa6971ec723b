"""Evaluation of a single-label classifier: exact metrics, per-clip predictions, metrics.json, a confusion-matrix PNG
and rich console reports.

Conventions: ``probs`` are [N, C] class probabilities (softmax outputs), ``labels`` and ``preds`` are [N] integer class
indices, numpy arrays or torch tensors (converted once, in float64, so the rank statistics are exact). Metrics that are
undefined (a class with no positives, an empty group) are NaN in Python and ``null`` in metrics.json.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from launch.common.files import atomic_write, replacing

GROUP_KEYS = ("device", "city", "domain")


def to_numpy(x: Any, dtype: Any = None) -> np.ndarray:
    """A tensor (any device, with or without grad) or array-like as a numpy array."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _check(probs: np.ndarray, labels: np.ndarray) -> None:
    if probs.ndim != 2 or labels.ndim != 1 or probs.shape[0] != labels.shape[0]:
        raise ValueError(f"expected probs [N, C] and labels [N], got {probs.shape} and {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ValueError(f"labels must lie in [0, {probs.shape[1]}), got [{labels.min()}, {labels.max()}]")


# ----------------------------------------------------------------------------------------------------------------------
# Exact metrics


def accuracy(probs: Any, labels: Any) -> float:
    """Top-1 accuracy: probs [N, C], labels [N] -> fraction of clips whose argmax is the label (NaN when N = 0)."""
    probs, labels = to_numpy(probs), to_numpy(labels).astype(np.int64)
    _check(probs, labels)
    return float(np.mean(probs.argmax(axis=1) == labels)) if labels.size else math.nan


def average_ranks(x: Any) -> np.ndarray:
    """1-based ranks of x [N], tied values sharing the mean of their ranks (``scipy.stats.rankdata('average')``)."""
    _, inverse, counts = np.unique(to_numpy(x), return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # rank of the last member of each tie group
    return (ends - (counts - 1) / 2.0)[inverse.reshape(-1)]


def binary_auc(scores: Any, positive: Any) -> float:
    """ROC AUC by the Mann-Whitney rank statistic: P(score_pos > score_neg) + 1/2 P(equal).

    scores [N], positive [N] bool -> AUC, NaN when there are no positives or no negatives.
    """
    scores, positive = to_numpy(scores, np.float64), to_numpy(positive).astype(bool)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    # Sum of the positives' ranks minus its minimum n_pos(n_pos+1)/2 counts the (pos > neg) pairs, ties as 1/2.
    u = average_ranks(scores)[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def auc_ovr_per_class(probs: Any, labels: Any) -> np.ndarray:
    """One-vs-rest AUC of each class: probs [N, C], labels [N] -> [C] (NaN for a class without positives or
    without negatives)."""
    probs, labels = to_numpy(probs, np.float64), to_numpy(labels).astype(np.int64)
    _check(probs, labels)
    return np.array([binary_auc(probs[:, c], labels == c) for c in range(probs.shape[1])], dtype=np.float64)


def macro_auc_ovr(probs: Any, labels: Any) -> float:
    """Macro average of the one-vs-rest AUCs over the classes where AUC is defined (NaN when none is)."""
    aucs = auc_ovr_per_class(probs, labels)
    defined = aucs[~np.isnan(aucs)]
    return float(defined.mean()) if defined.size else math.nan


def log_loss(probs: Any, labels: Any, eps: float = 1e-15) -> float:
    """Multi-class cross-entropy -mean(log p[label]), natural log.

    Like scikit-learn before 1.5 (what DCASE baselines reported with): probs are clipped to [eps, 1 - eps] and each row
    is renormalised, so a zero probability on the true class costs -log(eps) instead of infinity.
    """
    probs, labels = to_numpy(probs, np.float64), to_numpy(labels).astype(np.int64)
    _check(probs, labels)
    if not labels.size:
        return math.nan
    p = np.clip(probs, eps, 1.0 - eps)
    p = p / p.sum(axis=1, keepdims=True)
    return float(-np.mean(np.log(p[np.arange(labels.size), labels])))


def confusion_matrix(preds: Any, labels: Any, num_classes: int) -> np.ndarray:
    """Counts [C, C] int64: row = true class, column = predicted class (scikit-learn's orientation)."""
    preds, labels = to_numpy(preds).astype(np.int64), to_numpy(labels).astype(np.int64)
    if preds.shape != labels.shape or preds.ndim != 1:
        raise ValueError(f"expected preds [N] and labels [N], got {preds.shape} and {labels.shape}")
    for name, v in (("preds", preds), ("labels", labels)):
        if v.size and (v.min() < 0 or v.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes})")
    return np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes).reshape(num_classes,
                                                                                                   num_classes)


def per_class_accuracy(preds: Any, labels: Any, num_classes: int) -> np.ndarray:
    """Accuracy within each true class (the confusion matrix' row-normalised diagonal, i.e. recall): [C], NaN for a
    class with no clips."""
    cm = confusion_matrix(preds, labels, num_classes)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / support, np.nan)


def grouped_accuracy(preds: Any, labels: Any, groups: Sequence[Any]) -> dict[str, tuple[float, int]]:
    """Accuracy per group (device, city, domain, ...): groups [N] -> {group: (accuracy, clips)}, sorted by name."""
    preds, labels = to_numpy(preds).astype(np.int64), to_numpy(labels).astype(np.int64)
    groups = np.asarray([str(g) for g in groups])
    if not (preds.shape == labels.shape == groups.shape):
        raise ValueError(f"preds {preds.shape}, labels {labels.shape} and groups {groups.shape} differ in length")
    correct = preds == labels
    return {str(g): (float(correct[groups == g].mean()), int((groups == g).sum())) for g in np.unique(groups)}


# ----------------------------------------------------------------------------------------------------------------------
# metrics.json


def _jsonable(x: Any) -> Any:
    """numpy scalars/arrays -> Python, NaN/inf -> None (JSON has no NaN), recursively."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in (x.tolist() if isinstance(x, np.ndarray) else x)]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _subset_metrics(probs: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    p, y = probs[mask], labels[mask]
    return {"accuracy": accuracy(p, y), "log_loss": log_loss(p, y), "n": int(mask.sum())}


def evaluate_predictions(probs: Any, labels: Any, classes: Sequence[str], meta: Sequence[Mapping] | None = None,
                         group_keys: Iterable[str] = GROUP_KEYS,
                         seen_devices: Iterable[str] | None = None) -> dict[str, Any]:
    """Every metric of one evaluation pass as a JSON-ready dict (the content of metrics.json).

    probs [N, C], labels [N], classes [C] names, meta [N] per-clip dicts (e.g. the shard's ``.json``). For each key in
    ``group_keys`` that some clip's meta has, accuracy / log loss / count per value (clips without it are skipped).
    ``seen_devices`` (e.g. TAU22's a, b, c, s1-s3) adds the seen vs unseen device split; device names are compared
    case-insensitively.
    """
    probs, labels = to_numpy(probs, np.float64), to_numpy(labels).astype(np.int64)
    _check(probs, labels)
    num_classes = len(classes)
    if probs.shape[1] != num_classes:
        raise ValueError(f"probs have {probs.shape[1]} classes but {num_classes} class names were given")
    preds = probs.argmax(axis=1)
    cm = confusion_matrix(preds, labels, num_classes)
    class_acc, class_auc = per_class_accuracy(preds, labels, num_classes), auc_ovr_per_class(probs, labels)
    out: dict[str, Any] = {
        "num_clips": int(labels.size),
        "accuracy": accuracy(probs, labels),
        "macro_auc": macro_auc_ovr(probs, labels),
        "log_loss": log_loss(probs, labels),
        "classes": list(classes),
        "per_class": {name: {"accuracy": class_acc[c], "auc": class_auc[c], "n": int(cm[c].sum())}
                      for c, name in enumerate(classes)},
        "confusion_matrix": cm,
        "groups": {},
    }
    if meta is not None:
        if len(meta) != labels.size:
            raise ValueError(f"{len(meta)} meta entries for {labels.size} clips")
        for key in group_keys:
            has = np.array([key in m and m[key] is not None for m in meta])
            if not has.any():
                continue
            values = np.array([str(m[key]) if h else "" for m, h in zip(meta, has)])
            out["groups"][key] = {v: _subset_metrics(probs, labels, has & (values == v))
                                  for v in np.unique(values[has])}
        if seen_devices is not None:
            seen = {str(d).lower() for d in seen_devices}
            device = np.array([str(m.get("device", "")).lower() for m in meta])
            has = np.array(["device" in m and m["device"] is not None for m in meta])
            is_seen = has & np.isin(device, sorted(seen))
            out["seen_unseen"] = {
                name: {**_subset_metrics(probs, labels, mask), "devices": sorted(set(device[mask].tolist()))}
                for name, mask in (("seen", is_seen), ("unseen", has & ~is_seen))}
    return _jsonable(out)


def headline(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The figures a run is compared by: accuracy, macro AUC, log loss, clip count and, under a device shift,
    accuracy on the seen and the unseen devices (``seen_unseen.{seen,unseen}.accuracy``)."""
    out: dict[str, Any] = {k: metrics[k] for k in ("accuracy", "macro_auc", "log_loss", "num_clips") if k in metrics}
    if "seen_unseen" in metrics:
        out["seen_unseen"] = {name: {k: part[k] for k in ("accuracy", "n") if k in part}
                              for name, part in metrics["seen_unseen"].items()}
    return out


def write_metrics(path: str | os.PathLike, metrics: Mapping[str, Any]) -> Path:
    """metrics.json, atomically; NaN becomes null so any JSON reader can load it."""
    return atomic_write(path, json.dumps(_jsonable(metrics), indent=2, allow_nan=False) + "\n")


# ----------------------------------------------------------------------------------------------------------------------
# Per-clip predictions


class Predictions(NamedTuple):
    keys: list[str]
    probs: np.ndarray  # [N, C] float64
    labels: np.ndarray  # [N] int64, -1 where the clip had no label
    classes: list[str]


_FIXED_COLUMNS = ("key", "label", "predicted")


def write_predictions(path: str | os.PathLike, keys: Sequence[str], probs: Any, labels: Any | None,
                      classes: Sequence[str]) -> Path:
    """One row per clip: key, label and predicted class names, then one probability per class.

    ``.jsonl`` gives one JSON object per line (``probs`` as a {class: p} dict); anything else a CSV whose header is
    ``key,label,predicted,<class 1>,...`` (DCASE's submission layout). Labels may be None or -1 (unlabelled: empty).
    Probabilities are written with ``repr`` so a round trip is exact. The file is written atomically.
    """
    probs = to_numpy(probs, np.float64)
    labels = np.full(len(keys), -1, np.int64) if labels is None else to_numpy(labels).astype(np.int64)
    if not (len(keys) == probs.shape[0] == labels.shape[0]) or probs.shape[1] != len(classes):
        raise ValueError(f"{len(keys)} keys, probs {probs.shape}, labels {labels.shape}, {len(classes)} classes")
    if set(classes) & set(_FIXED_COLUMNS):
        raise ValueError(f"class names may not be any of {_FIXED_COLUMNS}")
    preds = probs.argmax(axis=1)
    rows = [(k, classes[y] if y >= 0 else "", classes[p], row) for k, y, p, row in zip(keys, labels, preds, probs)]
    if Path(path).suffix == ".jsonl":
        text = "".join(json.dumps({"key": k, "label": y or None, "predicted": p,
                                   "probs": {c: float(v) for c, v in zip(classes, row)}}) + "\n"
                       for k, y, p, row in rows)
    else:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([*_FIXED_COLUMNS, *classes])
        writer.writerows([k, y, p, *(repr(float(v)) for v in row)] for k, y, p, row in rows)
        text = buf.getvalue()
    return atomic_write(path, text)


def read_predictions(path: str | os.PathLike) -> Predictions:
    """Inverse of :func:`write_predictions` (re-scoring, ensembling seeds)."""
    path = Path(path)
    with path.open(encoding="utf-8", newline="") as f:
        if path.suffix == ".jsonl":
            records = [json.loads(line) for line in f if line.strip()]
            classes = list(records[0]["probs"]) if records else []
            rows = [(r["key"], r["label"] or "", [r["probs"][c] for c in classes]) for r in records]
        else:
            reader = csv.reader(f)
            header = next(reader)
            classes = header[len(_FIXED_COLUMNS):]
            rows = [(r[0], r[1], [float(v) for v in r[3:]]) for r in reader]
    index = {c: i for i, c in enumerate(classes)}
    return Predictions(keys=[k for k, _, _ in rows],
                       probs=np.array([p for _, _, p in rows], dtype=np.float64).reshape(len(rows), len(classes)),
                       labels=np.array([index[y] if y else -1 for _, y, _ in rows], dtype=np.int64),
                       classes=classes)


# ----------------------------------------------------------------------------------------------------------------------
# Confusion-matrix figure


def row_normalised_percent(cm: Any) -> np.ndarray:
    """[C, C] counts -> percent of each true class (rows sum to 100; an empty row stays 0)."""
    cm = to_numpy(cm, np.float64)
    support = cm.sum(axis=1, keepdims=True)
    return np.divide(100.0 * cm, support, out=np.zeros_like(cm), where=support > 0)


def plot_confusion_matrix(cm: Any, classes: Sequence[str], path: str | os.PathLike, title: str = "") -> Path:
    """A PNG of the row-normalised confusion matrix (percent per cell, colour bar, rotated class names).

    Uses matplotlib's object API on an Agg canvas, not pyplot: no global backend switch, no display needed and no
    figure left registered in pyplot's state on long runs. Cell numbers are dropped past 30 classes (unreadable).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pct = row_normalised_percent(cm)
    n = len(classes)
    size = max(5.0, 0.55 * n + 2.5)
    fig = Figure(figsize=(size + 1.2, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(pct, cmap="Blues", vmin=0.0, vmax=100.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).set_label("% of true class")
    ax.set_xticks(range(n), labels=list(classes), rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), labels=list(classes))
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    if title:
        ax.set_title(title)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                # White text on dark cells keeps every number readable.
                ax.text(j, i, f"{pct[i, j]:.1f}", ha="center", va="center", fontsize=8,
                        color="white" if pct[i, j] > 55.0 else "black")
    return save_figure(fig, path)


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Write a matplotlib figure as a PNG atomically (a half-written picture never appears under its name)."""
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return Path(path)


def plot_layer_weights(weights: Sequence[float], path: str | os.PathLike) -> Path:
    """A bar chart of the learned layer weights ``W = softmax(w)`` of a layer-wise head, with the uniform 1/L line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(weights)
    fig = Figure(figsize=(max(4.0, 0.4 * n + 2.0), 3.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.bar(range(1, n + 1), weights, color="tab:blue")
    ax.axhline(1.0 / n, color="grey", linestyle="--", linewidth=1, label=f"uniform 1/{n}")
    ax.set_xlabel("block")
    ax.set_ylabel("weight")
    ax.set_xticks(range(1, n + 1))
    ax.legend(loc="upper left", fontsize=8)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------------------------------
# Console reports (rich)


def fmt_number(x: Any, digits: int = 4) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def fmt_percent(x: Any) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100.0 * x:.2f}"


def print_report(metrics: Mapping[str, Any], classes: Sequence[str] | None = None, console: Any = None) -> None:
    """Overall, per-class and per-group tables of an :func:`evaluate_predictions` dict on a rich console."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    overall = Table(title=f"Evaluation ({metrics.get('num_clips', '?')} clips)")
    for col in ("Acc %", "AUC", "Log loss"):
        overall.add_column(col, justify="right")
    overall.add_row(fmt_percent(metrics.get("accuracy")), fmt_number(metrics.get("macro_auc")),
                    fmt_number(metrics.get("log_loss")))
    console.print(overall)

    per_class = Table(title="Per class")
    for col, justify in (("Class", "left"), ("Acc %", "right"), ("AUC", "right"), ("Clips", "right")):
        per_class.add_column(col, justify=justify)
    for name in classes or metrics.get("classes", []):
        m = metrics.get("per_class", {}).get(name, {})
        per_class.add_row(name, fmt_percent(m.get("accuracy")), fmt_number(m.get("auc")), str(m.get("n", "")))
    console.print(per_class)

    splits = dict(metrics.get("groups", {}))
    if "seen_unseen" in metrics:
        splits["seen/unseen device"] = metrics["seen_unseen"]
    shown: list[Mapping] = []
    for key, values in splits.items():
        if values in shown:  # the same grouping under another name (the synthetic corpus's domain is its city)
            continue
        shown.append(values)
        table = Table(title=f"Per {key}")
        for col, justify in ((key, "left"), ("Acc %", "right"), ("Log loss", "right"), ("Clips", "right")):
            table.add_column(col, justify=justify)
        for value, m in values.items():
            table.add_row(value, fmt_percent(m.get("accuracy")), fmt_number(m.get("log_loss")), str(m.get("n", "")))
        console.print(table)


_BAR_WIDTH = 30
_EIGHTHS = " ▏▎▍▌▋▊▉"


def text_bar(fraction: float, width: int = _BAR_WIDTH) -> str:
    """A horizontal bar of ``fraction`` (0..1) of ``width`` characters, in eighths of a character."""
    eighths = int(round(max(0.0, min(1.0, fraction)) * width * 8))
    full, rest = divmod(eighths, 8)
    return "█" * full + (_EIGHTHS[rest] if rest else "")


def format_layer_weights(weights: Any, title: str = "Layer weights W = softmax(w)") -> Any:
    """A rich Table of the learned layer weights [L]: layer (1-based), weight, a bar scaled to the largest weight.

    The uniform start 1/L is in the title, so layers that gained or lost weight stand out.
    """
    from rich.table import Table

    w = to_numpy(weights, np.float64).reshape(-1)
    table = Table(title=f"{title}, uniform = {1.0 / max(len(w), 1):.4f}")
    table.add_column("Layer", justify="right")
    table.add_column("Weight", justify="right")
    table.add_column("", justify="left", no_wrap=True)
    top = float(w.max()) if w.size and w.max() > 0 else 1.0
    for i, v in enumerate(w, start=1):
        table.add_row(str(i), f"{v:.4f}", text_bar(v / top))
    return table


# ----------------------------------------------------------------------------------------------------------------------
# Over seeds (Table I)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested metrics dict under dotted keys (``groups.device.a.accuracy``); lists are skipped."""
    out: dict[str, float] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float, np.number)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def summarise_seeds(runs: Sequence[Mapping[str, Any]], ddof: int = 1) -> dict[str, dict[str, float]]:
    """Mean and standard deviation of every numeric metric over seeds: {metric: {"mean", "std", "n"}}.

    Nested metrics get dotted names. ``std`` is the sample standard deviation (``ddof=1``), NaN for a single seed;
    NaN/None values of a seed are left out of that metric's ``n``.
    """
    values: dict[str, list[float]] = {}
    for run in runs:
        for k, v in _flatten(run).items():
            if not math.isnan(v):
                values.setdefault(k, []).append(v)
    out = {}
    for k, vs in values.items():
        a = np.asarray(vs, dtype=np.float64)
        out[k] = {"mean": float(a.mean()),
                  "std": float(a.std(ddof=ddof)) if a.size > ddof else math.nan,
                  "n": int(a.size)}
    return out


RESULT_COLUMNS = (("Acc", "accuracy", 100.0), ("AUC", "macro_auc", 100.0))


def results_cells(rows: Mapping[str, Sequence[Mapping[str, Any]]],
                  columns: Sequence[tuple[str, str, float]] = RESULT_COLUMNS) -> list[tuple[str, list[str], int]]:
    """(row name, "mean ± std" per column, seeds) for each row; a metric no seed has is "–"."""
    out = []
    for name, runs in rows.items():
        summary = summarise_seeds(runs)
        cells = []
        for _, key, scale in columns:
            s = summary.get(key)
            if s is None:
                cells.append("–")
            else:
                std = "–" if math.isnan(s["std"]) else f"{scale * s['std']:.2f}"
                cells.append(f"{scale * s['mean']:.2f} ± {std}")
        out.append((name, cells, len(runs)))
    return out


def results_table(rows: Mapping[str, Sequence[Mapping[str, Any]]],
                  columns: Sequence[tuple[str, str, float]] = RESULT_COLUMNS,
                  title: str = "Results (mean ± std over seeds)") -> Any:
    """The paper's Table I: one row per system (baseline, frozen backbone, pre-norm, ...), "mean ± std" over seeds.

    ``columns`` are (header, metric key, scale); the defaults show accuracy and macro AUC in percent.
    """
    from rich.table import Table

    table = Table(title=title)
    table.add_column("System")
    for header, _, _ in columns:
        table.add_column(header, justify="right")
    table.add_column("Seeds", justify="right")
    for name, cells, n in results_cells(rows, columns):
        table.add_row(name, *cells, str(n))
    return table
