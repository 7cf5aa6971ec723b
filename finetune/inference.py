"""Prediction with a fine-tuned classifier (``python finetune/predict.py ckpt=... inputs=... out=...``): audio files
or a shard split -> per-file class probabilities, written as a DCASE Task 1 submission or a plain CSV.

Every file is decoded, mixed to mono and resampled as the shard builder does (:mod:`finetune.recordings`), cut
into windows of the model's clip length ``hop_seconds`` apart (a last window ends where the file ends; only a file
shorter than a window is zero-padded at the end, as training pads a short clip), turned into features as fine-tuning evaluates them (its
:class:`~shards.features.Features` in eval mode), classified in batches on the device and averaged per file: the mean
of the window probabilities. A shard split is read whole, every clip once (the exact evaluation pass's order).

Ranks take contiguous shares of the input list; rank 0 gathers them and writes every file once, in input order.
Labelled inputs (a labelled shard split, or ``labels=CSV``) also get fine-tuning's test report. Prediction keeps no
checkpoint: a stop request (SIGUSR2 before a time limit) is not honoured, and a requeued job starts over.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import logging
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from finetune import metrics as M
from finetune.config import CONFIG_DIR, FinetuneConfig, load_finetune_config
from finetune.model import Classifier, OfficialFileConfig, load_classifier
from finetune.recordings import FileItems, Inputs, Item, LabelTable, ShardItems, is_url, list_inputs, read_labels, share
from launch.common.errors import BadInput, check, cli
from launch.common.files import atomic_write
from launch.runtime import distributed, run_folder
from launch.runtime.checkpoints import CLASSIFIER_FILE
from launch.runtime.config import config_hash, merge_config
from shards import audio
from shards.features import FeatureConfig, build_features
from shards.manifest import MANIFEST

log = logging.getLogger("predict")

FORMATS = ("dcase", "csv")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
FIXED_COLUMNS = ("filename", "path", "scene_label", "window", "start_seconds")


@dataclass
class PredictConfig:
    """Everything a prediction needs (``python finetune/predict.py key=value ...``)."""

    ckpt: str = "latest"
    """The classifier: a fine-tuning run folder, its best.pt (or any file ``finetune.model.load_classifier`` reads),
    or "latest" (the newest best.pt under runs/finetune/)."""
    inputs: str = ""
    """A folder of audio files (searched recursively; every format soundfile reads; hidden files left out), one audio
    file, a text file listing paths (.txt .lst .list .scp: one per line, relative to its folder or absolute; # starts
    a comment), or a shard set folder and its split (``shards/tau22:evaluate``)."""
    out: str = ""
    """The predictions file. Beside it, when there is something to say: <stem>.skipped.csv (files that could not be
    decoded, with the reason), <stem>.report.json and <stem>.confusion_matrix.png (labelled inputs) and
    <stem>.windows<suffix> (``windows=true``)."""
    format: str = "dcase"
    """"dcase": DCASE Task 1 submission (tab-separated ``filename scene_label <class 1> ...``, one probability column
    per class in the model's order, filename relative to the inputs folder); "csv": comma-separated, the same columns
    with ``path`` (the full path) after the filename."""
    labels: Optional[str] = None
    """A CSV mapping filename -> scene_label (DCASE meta.csv or evaluation_setup/*.csv, tab- or comma-separated with a
    header; ``source_label`` and ``identifier`` columns give the device and the city): the predictions are scored
    as fine-tuning's test is. A labelled shard split carries its own labels."""
    classes: Optional[str] = None
    """Class names for a checkpoint that carries none: a text file with one name per line in the model's output order
    (for an official SSAST file also its class_labels_indices.csv; without one its classes are numbered 0..n-1)."""
    official: OfficialFileConfig = field(default_factory=OfficialFileConfig)
    clip_seconds: Optional[float] = None
    """Window length (s); None: the model's (the run's data.stream.clip_seconds; without a run config, the length
    whose fbank fills the encoder's frame count)."""
    hop_seconds: Optional[float] = None
    """From one window's start to the next (s); None: the window length (windows side by side)."""
    sample_rate: Optional[int] = None
    """Rate the audio is resampled to (Hz); None: the run's (16000 without a run config)."""
    norm_mean: Optional[float] = None
    """Log-mel mean of the normalisation; None: the run's (AudioSet's without a run config)."""
    norm_std: Optional[float] = None
    """Log-mel std of the normalisation; None: the run's (AudioSet's without a run config)."""
    windows: bool = False
    """Also write every window's probabilities (<stem>.windows<suffix>: filename, window, start_seconds, ...)."""
    batch_size: int = 64
    """Windows per forward pass."""
    num_workers: int = 2
    """Processes per rank decoding and resampling files (0: in the predicting process)."""
    precision: str = "auto"
    """Autocast dtype of the forward pass: "fp32", "bf16", "fp16", or "auto": the fine-tuning run's precision
    (fp32 without a run config). Features and the softmax stay in fp32."""
    backend: str = "auto"
    """Process-group backend across ranks: "auto" (NCCL on GPU, gloo on CPU), "nccl" or "gloo"."""
    overwrite: bool = False
    """Replace an existing ``out`` (and its reports); otherwise an existing file is refused."""
    progress: bool = True
    """A rich progress bar on rank 0 (files of its share done)."""
    run_dir: str = ""
    """Where the launcher keeps the job's logs; empty: runs/predict/<config hash>."""

    def __post_init__(self) -> None:
        check("inputs", repr(self.inputs), bool(self.inputs),
              "a folder of audio files, an audio file, a list of paths (.txt) or SHARDS_DIR:split")
        check("out", repr(self.out), bool(self.out), "the predictions file to write (e.g. out=submission.csv)")
        check("format", repr(self.format), self.format in FORMATS, "dcase or csv")
        check("precision", repr(self.precision), self.precision in PRECISIONS, "auto, fp32, bf16 or fp16")
        check("backend", repr(self.backend), self.backend in ("auto", "nccl", "gloo"), "auto, nccl or gloo")
        for name in ("clip_seconds", "hop_seconds"):
            value = getattr(self, name)
            check(name, value, value is None or 0 < value <= 3600, "0 < seconds <= 3600, or null")
        low, high = audio.SAMPLE_RATES
        check("sample_rate", self.sample_rate, self.sample_rate is None or low <= self.sample_rate <= high,
              f"{low}..{high} Hz, or null")
        check("norm_std", self.norm_std, self.norm_std is None or self.norm_std > 0, "> 0, or null")
        check("batch_size", self.batch_size, self.batch_size >= 1, ">= 1 window")
        check("num_workers", self.num_workers, self.num_workers >= 0, ">= 0 (0: decode in the process)")


def _absolute(path: str) -> str:
    return path if is_url(path) else str(Path(path).expanduser().resolve())


def load_predict_config(argv: Sequence[str] = ()) -> PredictConfig:
    """``key=value`` items -> the config, its paths made absolute (every task of a job reads the same files)."""
    cfg = merge_config(PredictConfig, argv, CONFIG_DIR)
    head, sep, split = cfg.inputs.rpartition(":")
    shard_spec = sep and not Path(cfg.inputs).expanduser().exists() and (Path(head).expanduser() / MANIFEST).exists()
    shard_spec = shard_spec or (sep and is_url(head))
    cfg.inputs = f"{_absolute(head)}:{split}" if shard_spec else _absolute(cfg.inputs)
    cfg.out = _absolute(cfg.out)
    if cfg.ckpt != "latest":
        cfg.ckpt = _absolute(cfg.ckpt)
    cfg.labels, cfg.classes = (_absolute(p) if p else p for p in (cfg.labels, cfg.classes))
    return cfg


def resolve_run_dir(cfg: PredictConfig) -> Path:
    return Path(cfg.run_dir or f"runs/predict/{config_hash(cfg)}").resolve()


# ----------------------------------------------------------------------------------------------------------- model


@dataclass
class Predictor:
    """A classifier and how its input is made."""

    model: Classifier
    classes: list[str]
    features: FeatureConfig
    clip_seconds: float
    precision: str
    """"fp32", "bf16" or "fp16": the autocast dtype of the forward pass."""
    run_config: FinetuneConfig
    """The fine-tuning run's config (its defaults when the checkpoint has none beside it)."""
    path: Path
    notes: list[str] = field(default_factory=list)

    @property
    def sample_rate(self) -> int:
        return self.features.sample_rate


def resolve_ckpt(ckpt: str, root: Path = Path("runs/finetune")) -> Path:
    """``ckpt=`` -> the classifier file: "latest", a run folder (its best.pt) or a file."""
    if ckpt == "latest":
        found = sorted(root.resolve().glob(f"**/{CLASSIFIER_FILE}"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise BadInput(f"ckpt=latest: no {CLASSIFIER_FILE} under {root.resolve()} (fine-tune first with "
                           "`python finetune/layerwise.py`, or give ckpt=RUN_FOLDER)")
        return found[-1]
    path = Path(ckpt)
    if path.is_dir():
        if not (path / CLASSIFIER_FILE).is_file():
            raise BadInput(f"ckpt={ckpt}: no {CLASSIFIER_FILE} in this folder; expected a fine-tuning run folder "
                           "(one that finished a validation) or a classifier file")
        return path / CLASSIFIER_FILE
    if not path.is_file():
        raise BadInput(f"ckpt={ckpt}: no such file or folder")
    return path


def _output_size(model: nn.Module) -> int | None:
    """Classes out of a transformer's head (its last Linear) or of the CNN student (its last, 1x1, convolution)."""
    layers = [m for m in getattr(model, "head", model).modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not layers:
        return None
    return layers[-1].out_features if isinstance(layers[-1], nn.Linear) else layers[-1].out_channels


def class_names(payload: dict[str, Any], classes_file: str | None, path: Path, outputs: int | None) -> list[str]:
    """The model's class names: ``classes=FILE`` when given, else the checkpoint's; one line when neither has them
    or their count is not the model's output size."""
    if classes_file:
        try:
            names = [line.strip() for line in Path(classes_file).read_text().splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise BadInput(f"classes={classes_file}: cannot be read ({type(e).__name__}: {e})") from None
        where = f"classes={classes_file}"
    else:
        names, where = list(payload.get("classes") or []), str(path)
        if not names:
            raise BadInput(f"{path}: the checkpoint has no class names; give classes=FILE (one name per line, in "
                           "the model's output order)")
    if outputs is not None and len(names) != outputs:
        raise BadInput(f"{where}: {len(names)} class names for a model with {outputs} outputs")
    if len(set(names)) != len(names) or set(names) & set(FIXED_COLUMNS):
        raise BadInput(f"{where}: class names must be unique and none of {', '.join(FIXED_COLUMNS)}")
    return names


def read_run_config(ckpt: Path) -> FinetuneConfig | None:
    """The fine-tuning config beside a best.pt (its run folder's config.yaml), typed; None when there is none."""
    path = ckpt.parent / run_folder.CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return load_finetune_config([f"config={path}"])
    except BadInput as e:
        raise BadInput(f"{path}: not the config of a fine-tuning run ({e}); move the checkpoint out of this folder "
                       "to predict with default features") from None


def kaldi_seconds(frames: int, shift_ms: float = 10.0, length_ms: float = 25.0) -> float:
    """The shortest clip whose Kaldi fbank has ``frames`` frames (snip_edges: 1 + (n - length) // shift)."""
    return ((frames - 1) * shift_ms + length_ms) / 1000.0


def load_predictor(cfg: PredictConfig) -> Predictor:
    """The classifier of ``cfg.ckpt`` with its input settings: the run's, then the ``cfg`` overrides."""
    path = resolve_ckpt(cfg.ckpt)
    model, payload = load_classifier(path, classes=cfg.classes, head=cfg.official.head, encoder=cfg.official.shape())
    official = payload.get("format") == "ssast-official"  # its names came from classes= already (or are numbers)
    classes = class_names(payload, None if official else cfg.classes, path, _output_size(model))
    enc = model.encoder.cfg if hasattr(model, "encoder") else None  # None: the CNN student (any frame count)
    run_cfg = read_run_config(path)
    notes = []
    if run_cfg is None and enc is None:
        raise BadInput(f"{path}: a CNN student's features are in its run folder's {run_folder.CONFIG_FILE}; give the "
                       "run folder (or keep best.pt beside its config.yaml)")
    if run_cfg is not None:
        features, clip, precision = run_cfg.data.features, run_cfg.data.stream.clip_seconds, run_cfg.deepspeed.precision
    else:
        run_cfg = FinetuneConfig()
        features = FeatureConfig(num_mel_bins=enc.num_mel_bins, target_frames=enc.target_frames)
        clip, precision = kaldi_seconds(enc.target_frames), "fp32"
        notes.append(f"no {run_folder.CONFIG_FILE} beside {path.name}: Kaldi fbank, AudioSet normalisation and a "
                     f"{clip:g} s window (the encoder's {enc.target_frames} frames); clip_seconds=, sample_rate=, "
                     "norm_mean= and norm_std= change them")
    overrides = {k: v for k, v in (("sample_rate", cfg.sample_rate), ("norm_mean", cfg.norm_mean),
                                   ("norm_std", cfg.norm_std)) if v is not None}
    try:  # eval mode turns augmentation off; the masks and noise settings are kept only for the record
        features = dataclasses.replace(features, **overrides)
    except ValueError as e:
        raise BadInput(f"features: {e}") from None
    if enc is not None and (features.target_frames, features.num_mel_bins) != (enc.target_frames, enc.num_mel_bins):
        raise BadInput(f"{path}: the encoder reads {enc.target_frames} x {enc.num_mel_bins} fbanks but the features "
                       f"make {features.target_frames} x {features.num_mel_bins}")
    precision = precision if cfg.precision == "auto" else cfg.precision
    return Predictor(model.eval(), classes, features, cfg.clip_seconds or clip, precision, run_cfg, path, notes)


# ------------------------------------------------------------------------------------------------------ classifying


class WindowBatcher:
    """Windows of consecutive items -> batches of ``batch_size`` windows -> each item's window probabilities, in
    the order the items came (an item may span several batches, a batch several items).

    The last, short batch is zero-padded to ``batch_size``: every forward pass has the same shape, so the kernels,
    and the rounding, are the same whichever windows share a batch (1 or N ranks write the same bytes).
    """

    def __init__(self, classify: Callable[[np.ndarray], np.ndarray], batch_size: int):
        self.classify, self.batch_size = classify, batch_size
        self.pending: deque[tuple[Any, int]] = deque()
        self.waves: list[np.ndarray] = []
        self.probs: list[np.ndarray] = []

    def add(self, item: Any, waves: np.ndarray) -> list[tuple[Any, np.ndarray]]:
        self.pending.append((item, len(waves)))
        self.waves.extend(waves)
        while len(self.waves) >= self.batch_size:
            self._run(self.batch_size)
        return self._done()

    def flush(self) -> list[tuple[Any, np.ndarray]]:
        if self.waves:
            self._run(len(self.waves))
        return self._done()

    def _run(self, n: int) -> None:
        batch, self.waves = np.stack(self.waves[:n]), self.waves[n:]
        padded = np.pad(batch, ((0, self.batch_size - n),) + ((0, 0),) * (batch.ndim - 1))
        self.probs.extend(self.classify(padded)[:n])

    def _done(self) -> list[tuple[Any, np.ndarray]]:
        out = []
        while self.pending and len(self.probs) >= self.pending[0][1]:
            item, k = self.pending.popleft()
            out.append((item, np.stack(self.probs[:k])))
            self.probs = self.probs[k:]
        return out


AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def make_classify(p: Predictor, device: torch.device) -> Callable[[np.ndarray], np.ndarray]:
    """``waves [B, n]`` -> softmax probabilities ``[B, C]`` (float64): features in fp32 as fine-tuning evaluates,
    the model under autocast when the precision says so."""
    features = build_features(p.features).eval().to(device)
    model = p.model.to(device).eval()
    dtype = AUTOCAST.get(p.precision)

    def classify(waves: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = features(torch.from_numpy(waves).to(device))
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                logits = model(x)
            return logits.float().softmax(-1).double().cpu().numpy()

    return classify


def _keep(item: Any) -> Any:
    return item


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)  # decoding workers share the rank's cores; resampling must not oversubscribe


def predict_share(p: Predictor, inputs: Inputs, part: range, cfg: PredictConfig, device: torch.device,
                  progress: Callable[[int], None] = lambda n: None) -> list[Item]:
    """Predict items ``part`` of ``inputs`` on this rank; returns them in input order."""
    rate = p.sample_rate
    window, hop = round(p.clip_seconds * rate), max(1, round((cfg.hop_seconds or p.clip_seconds) * rate))
    if inputs.shards is not None:
        data: Any = ShardItems(inputs, part.start, part.stop, rate, window, hop)
    else:
        data = FileItems(inputs.files, part.start, part.stop, rate, window, hop)
    loader = DataLoader(data, batch_size=None, num_workers=cfg.num_workers if len(part) else 0, collate_fn=_keep,
                        worker_init_fn=_one_thread)
    batcher, done = WindowBatcher(make_classify(p, device), cfg.batch_size), []

    def finish(pairs: list[tuple[Item, np.ndarray]]) -> None:
        for item, probs in pairs:
            item.waves, item.probs = None, probs.mean(axis=0)
            item.window_probs = probs if cfg.windows else None
            done.append(item)
        progress(len(pairs))

    for item in loader:
        if item.error is not None:
            done.append(item)
            progress(1)
        else:
            finish(batcher.add(item, item.waves))
    finish(batcher.flush())
    return sorted(done, key=lambda it: it.index)


# --------------------------------------------------------------------------------------------------------- outputs


def sidecar(out: Path, what: str) -> Path:
    """``<stem>.<what>`` beside ``out`` (``sub.csv`` -> ``sub.skipped.csv``)."""
    return out.with_name(f"{out.with_suffix('').name}.{what}")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t" if fmt == "dcase" else ",", lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def predictions_text(items: Sequence[Item], classes: Sequence[str], fmt: str) -> str:
    """The submission: one row per predicted item, the argmax class and one probability per class (``repr``:
    exact round trip)."""
    path = ["path"] if fmt == "csv" else []
    rows = [[it.name, *([it.path] if path else []), classes[int(np.argmax(it.probs))],
             *(repr(float(v)) for v in it.probs)] for it in items]
    return _table(["filename", *path, "scene_label", *classes], rows, fmt)


def windows_text(items: Sequence[Item], classes: Sequence[str], fmt: str, rate: int) -> str:
    path = ["path"] if fmt == "csv" else []
    rows = [[it.name, *([it.path] if path else []), k, f"{it.starts[k] / rate:g}", classes[int(np.argmax(row))],
             *(repr(float(v)) for v in row)] for it in items for k, row in enumerate(it.window_probs)]
    return _table(["filename", *path, "window", "start_seconds", "scene_label", *classes], rows, fmt)


def skipped_text(items: Sequence[Item]) -> str:
    return _table(["path", "reason"], [[it.path, it.error] for it in items], "csv")


def attach_labels(items: Sequence[Item], table: LabelTable) -> int:
    """Labels (and device / city) of ``labels=CSV`` onto the items; returns how many found one."""
    found = 0
    for it in items:
        hit = table.lookup(it.name)
        if hit is not None:
            it.label, it.meta = hit[0], {**it.meta, **hit[1]}
            found += 1
    return found


def score(items: Sequence[Item], p: Predictor, inputs: Inputs) -> dict[str, Any] | None:
    """Fine-tuning's test metrics over the predicted items that have a label of the model's classes."""
    from finetune.train import seen_devices

    scored = [it for it in items if it.label in p.classes]
    if not scored:
        return None
    meta = [it.meta for it in scored]
    sets = [inputs.shards] if inputs.shards is not None else []
    return M.evaluate_predictions(np.stack([it.probs for it in scored]),
                                  np.array([p.classes.index(it.label) for it in scored]), p.classes, meta,
                                  seen_devices=seen_devices(p.run_config, sets, meta))


def class_histogram(items: Sequence[Item], classes: Sequence[str]) -> Any:
    """A rich table: how many files each class was predicted for."""
    from rich.table import Table

    counts = np.bincount([int(np.argmax(it.probs)) for it in items], minlength=len(classes))
    total = max(1, int(counts.sum()))
    table = Table(title=f"Predicted classes ({int(counts.sum())} files)")
    for col, justify in (("Class", "left"), ("Files", "right"), ("%", "right"), ("", "left")):
        table.add_column(col, justify=justify)
    top = max(1, int(counts.max())) if len(counts) else 1
    for name, n in zip(classes, counts):
        table.add_row(name, str(int(n)), f"{100 * n / total:.1f}", M.text_bar(n / top))
    return table


def write_outputs(cfg: PredictConfig, p: Predictor, inputs: Inputs, items: list[Item], labels: LabelTable | None,
                  console: Any) -> dict[str, Any]:
    """Rank 0: the predictions, the skipped list, the report of labelled inputs, the console summary."""
    out = Path(cfg.out)
    done = [it for it in items if it.error is None]
    skipped = [it for it in items if it.error is not None]
    if labels is not None:
        found = attach_labels(done, labels)
        if found < len(done):
            console.print(f"[yellow]{len(done) - found} of {len(done)} predicted files have no row in {labels.path}"
                          " (left out of the report)[/]")
    metrics = score(done, p, inputs) if done and (labels is not None or inputs.labelled) else None
    summary: dict[str, Any] = {"out": str(out), "files": len(done), "skipped": len(skipped)}
    stale = {sidecar(out, "skipped.csv"), sidecar(out, "report.json"), sidecar(out, "confusion_matrix.png"),
             sidecar(out, f"windows{out.suffix or '.csv'}")}
    if skipped:
        stale.discard(atomic_write(sidecar(out, "skipped.csv"), skipped_text(skipped)))
    if cfg.windows and done:
        stale.discard(atomic_write(sidecar(out, f"windows{out.suffix or '.csv'}"),
                                   windows_text(done, p.classes, cfg.format, p.sample_rate)))
    if metrics is not None:
        stale.discard(M.write_metrics(sidecar(out, "report.json"), metrics))
        stale.discard(M.plot_confusion_matrix(np.array(metrics["confusion_matrix"]), p.classes,
                                              sidecar(out, "confusion_matrix.png"),
                                              title=f"{out.name} - accuracy {100 * metrics['accuracy']:.2f}%"))
        summary.update(M.headline(metrics))
    for path in stale:  # an overwritten prediction's reports would otherwise pass for this one's
        path.unlink(missing_ok=True)
    atomic_write(out, predictions_text(done, p.classes, cfg.format))  # last: the file users look for is complete
    if metrics is not None:
        M.print_report(metrics, p.classes, console)
    if done:
        console.print(class_histogram(done, p.classes))
    console.print(f"[bold green]{len(done)} files predicted[/] -> {out}")
    if skipped:
        console.print(f"[yellow]{len(skipped)} skipped (could not be decoded)[/] -> {sidecar(out, 'skipped.csv')}")
    return summary


# ------------------------------------------------------------------------------------------------------------- run


def plan(cfg: PredictConfig) -> tuple[Predictor, Inputs, LabelTable | None]:
    """Everything checked before any audio is read: the output, the model, the inputs and their labels."""
    if Path(cfg.out).exists() and not cfg.overwrite:
        raise BadInput(f"out={cfg.out}: the file exists; give another out= or overwrite=true")
    if Path(cfg.out).is_dir():
        raise BadInput(f"out={cfg.out}: is a folder; expected a file name (e.g. {Path(cfg.out) / 'predictions.csv'})")
    p = load_predictor(cfg)
    inputs = list_inputs(cfg.inputs)
    labels = read_labels(cfg.labels, p.classes) if cfg.labels else None
    if labels is not None and inputs.files and not any(labels.lookup(f.name) for f in inputs.files):
        raise BadInput(f"labels={cfg.labels}: none of its filenames is one of the {len(inputs.files)} inputs (e.g. "
                       f"{next(iter(labels.rows))!r} vs {inputs.files[0].name!r})")
    if inputs.shards is not None and inputs.labelled and not set(inputs.shards.classes) <= set(p.classes):
        log.warning("inputs: the classes of %s are not all the model's: its labels are not scored", inputs.shards.name)
        inputs.labelled = False
    return p, inputs, labels


def describe(p: Predictor, inputs: Inputs, cfg: PredictConfig, world: int, device: torch.device) -> list[str]:
    hop = cfg.hop_seconds or p.clip_seconds
    what = inputs.shards.name if inputs.shards is not None else f"{len(inputs.files)} files"
    return [f"model             {p.path} ({len(p.classes)} classes)",
            f"windows           {p.clip_seconds:g} s every {hop:g} s at {p.sample_rate} Hz -> "
            f"{p.features.target_frames} x {p.features.num_mel_bins} {p.features.kind} fbank",
            f"inputs            {what} ({len(inputs)}), {world} rank(s), batches of {cfg.batch_size} windows, "
            f"{p.precision} on {device}", *p.notes]


def run(cfg: PredictConfig, stop: Any = None) -> dict[str, Any]:
    """Predict on every rank, gather on rank 0, write there; returns the summary (rank 0) or the rank's count."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    env, device = distributed.setup(cfg.backend)
    console = Console(stderr=True, quiet=not env.is_main)
    with run_folder.held(Path(cfg.run_dir) if cfg.run_dir else resolve_run_dir(cfg), env.is_main):
        p, inputs, labels = plan(cfg)
        for line in describe(p, inputs, cfg, env.world_size, device):
            console.print(line)
        part, start = share(len(inputs), env.rank, env.world_size), time.time()
        label = "predict" if env.world_size == 1 else f"predict (rank 0 of {env.world_size})"
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("files"),
                      TimeRemainingColumn(), console=console, disable=not (cfg.progress and env.is_main)) as bar:
            task = bar.add_task(label, total=len(part))
            mine = predict_share(p, inputs, part, cfg, device, lambda n: bar.advance(task, n))
        items = [it for part_items in distributed.gather_objects(mine) for it in part_items]
        summary: dict[str, Any] = {"rank": env.rank, "world_size": env.world_size, "predicted_here": len(mine)}
        error = ""
        if env.is_main:
            try:
                summary.update(write_outputs(cfg, p, inputs, items, labels, console))
                summary["seconds"] = round(time.time() - start, 2)
            except (BadInput, OSError) as e:
                error = str(e)
        if not distributed.all_ranks(not error):
            raise BadInput(error or "rank 0 could not write the predictions (its log says why)")
    return summary


def prepare(cfg: PredictConfig) -> None:
    plan(cfg)  # the model, the inputs and the output checked before anything is queued


def main(argv: list[str] | None = None) -> int:
    """``python -m finetune.inference key=value ...``: one process, or every rank under torchrun."""
    return cli(lambda: run(load_predict_config(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
