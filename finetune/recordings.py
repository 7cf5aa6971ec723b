"""The recordings to predict: audio files (a folder, one file, a list), or a shard split, read whole; their
windows; the labels a DCASE-style CSV gives them. Everything here runs before the model (``finetune.inference``).

Files are decoded, mixed to mono and resampled exactly as the shard builder does (:func:`shards.audio.load_mono`);
shard clips are read in the exact evaluation pass's order (:func:`shards.stream.shard_samples`, every clip once). A
file or clip that cannot be decoded becomes an item with an ``error``: it is reported, never fatal.
"""
from __future__ import annotations

import csv
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Sequence

import numpy as np
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from launch.common.errors import BadInput
from shards import audio, remote
from shards.manifest import MANIFEST, read_manifest
from shards.stream import ShardSet, ShardSetConfig, StreamConfig, open_eval_split, shard_samples

log = logging.getLogger("predict")

LIST_SUFFIXES = (".txt", ".lst", ".list", ".scp")
"""A file with one of these suffixes lists the audio files to predict, one path per line."""
_SOUNDFILE_SUFFIXES = {".wav": "WAV", ".wave": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".oga": "OGG", ".opus": "OGG",
                       ".mp3": "MP3", ".aif": "AIFF", ".aiff": "AIFF", ".aifc": "AIFF", ".au": "AU", ".snd": "AU",
                       ".caf": "CAF", ".w64": "W64", ".rf64": "RF64", ".sph": "NIST", ".nist": "NIST", ".voc": "VOC",
                       ".sf": "IRCAM", ".wve": "WVE", ".avr": "AVR", ".htk": "HTK", ".svx": "SVX", ".8svx": "SVX",
                       ".paf": "PAF", ".pvf": "PVF", ".sd2": "SD2", ".sds": "SDS", ".xi": "XI", ".mpc": "MPC2K"}

# ---------------------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class AudioFile:
    name: str
    """The filename column: the path relative to the inputs folder (or the list file's folder), with ``/``."""
    path: str
    """The absolute path."""


@dataclass
class Inputs:
    """What to predict: audio files in input order, or a shard split."""

    files: list[AudioFile]
    shards: ShardSet | None = None
    labelled: bool = False
    """Whether the inputs carry their own labels (a labelled shard split)."""
    names_from: tuple[str, str] | None = None
    """A shard split's (build root, dataset folder) from its manifest: a clip's filename is its source file
    relative to the dataset folder (TAU: ``audio/0.wav``, the name DCASE expects)."""

    def __len__(self) -> int:
        return self.shards.num_clips if self.shards is not None else len(self.files)


def audio_suffixes() -> dict[str, str]:
    """File suffix -> soundfile format, for the formats this libsndfile reads."""
    import soundfile

    available = set(soundfile.available_formats())
    return {s: f for s, f in _SOUNDFILE_SUFFIXES.items() if f in available}


def natural_key(name: str) -> tuple:
    """Sort key that puts ``audio/2.wav`` before ``audio/10.wav`` (digit runs compare as numbers)."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)), name


def list_folder(folder: Path) -> list[AudioFile]:
    """The audio files under ``folder`` (recursive, hidden files and folders left out), in natural order."""
    suffixes = audio_suffixes()
    found = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if p.suffix.lower() in suffixes and not any(part.startswith(".") for part in rel.parts) and p.is_file():
            found.append(AudioFile(rel.as_posix(), str(p.resolve())))
    if not found:
        raise BadInput(f"inputs={folder}: no audio files in this folder or below (expected "
                       f"{', '.join(sorted(set(suffixes))[:6])} ...)")
    return sorted(found, key=lambda f: natural_key(f.name))


def read_list(path: Path) -> list[AudioFile]:
    """The files a list names, in its order (relative paths are relative to its folder; repeats left out)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"inputs={path}: cannot be read as a list of paths ({type(e).__name__})") from None
    files, seen, base = [], set(), path.parent.absolute()
    for line in lines:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        p = Path(entry).expanduser()
        full = p if p.is_absolute() else base / p
        if full.resolve() in seen:
            continue
        seen.add(full.resolve())
        # the filename column: the path as listed, relative to the list's folder where it can be
        name = full.relative_to(base).as_posix() if full.is_relative_to(base) else p.as_posix()
        files.append(AudioFile(name, str(full)))
    if not files:
        raise BadInput(f"inputs={path}: the list names no file (one path per line; # starts a comment)")
    return files


def is_url(path: str) -> bool:
    """A shard set that ``shards.stream`` reads by URL: a remote one (:func:`shards.remote.is_remote`: its schemes
    are the one list of what streams), or a ``file://`` URL of a local one."""
    return remote.is_remote(path) or path.startswith("file://")


def _shard_inputs(folder: str, split: str) -> Inputs:
    s = open_eval_split(ShardSetConfig(folder, split), "inputs")
    manifest = {} if is_url(folder) else read_manifest(Path(folder) / MANIFEST)
    root = (manifest.get("build_args") or {}).get("root")
    dataset = (manifest.get("info") or {}).get("dataset_dir")
    return Inputs([], s, s.labelled, (root, dataset) if root and isinstance(dataset, str) else None)


def shard_filename(key: str, source_path: str | None, names_from: tuple[str, str] | None) -> str:
    """The filename column of a shard clip: its source file relative to the corpus's dataset folder where the
    manifest tells both, else the source path as recorded, else the clip key (rendered corpora have no file)."""
    if not source_path:
        return key
    if names_from is not None:
        full = PurePosixPath(names_from[0]) / source_path
        if full.is_relative_to(names_from[1]):
            return full.relative_to(names_from[1]).as_posix()
    return source_path


def list_inputs(spec: str) -> Inputs:
    """``inputs=`` -> what to predict; one line when it names nothing usable."""
    path = Path(spec)
    head, sep, split = spec.rpartition(":")
    if sep and head and is_url(head):
        return _shard_inputs(head, split)
    if sep and head and not path.exists():
        folder = Path(head)
        if (folder / MANIFEST).is_file():
            return _shard_inputs(str(folder), split)
        if folder.is_dir():
            raise BadInput(f"inputs={spec}: {folder} has no {MANIFEST}; DIR:split names a split of a shard set "
                           "written by shards/build.py")
    if path.is_dir():
        if (path / MANIFEST).is_file():
            splits = ", ".join(json.loads((path / MANIFEST).read_text()).get("splits", {}))
            raise BadInput(f"inputs={spec}: a shard set; name the split to predict: inputs={spec}:SPLIT (it has "
                           f"{splits or 'none'})")
        return Inputs(list_folder(path))
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in audio_suffixes():
            return Inputs([AudioFile(path.name, str(path))])
        if suffix in LIST_SUFFIXES:
            return Inputs(read_list(path))
        raise BadInput(f"inputs={spec}: unknown format {suffix or '(no suffix)'!r}; expected an audio file (.wav, "
                       f".flac, .ogg, .mp3 ...), a list of paths ({', '.join(LIST_SUFFIXES)}), a folder, or "
                       "SHARDS_DIR:split")
    raise BadInput(f"inputs={spec}: no such file or folder")


# ---------------------------------------------------------------------------------------------------------- labels


@dataclass
class LabelTable:
    """``labels=CSV``: filename -> (scene label, meta for the per-device / per-city report)."""

    rows: dict[str, tuple[str, dict[str, str]]]
    path: str

    def lookup(self, name: str) -> tuple[str, dict[str, str]] | None:
        """By the exact name, else by the file name alone when that is unique in the table (the CSV says
        ``audio/1.wav`` where the inputs folder was ``audio/`` itself)."""
        if name in self.rows:
            return self.rows[name]
        base = name.rsplit("/", 1)[-1]
        hits = [v for k, v in self.rows.items() if k.rsplit("/", 1)[-1] == base]
        return hits[0] if len(hits) == 1 else None


def read_labels(path: str, classes: Sequence[str]) -> LabelTable:
    """A DCASE-style label CSV (header with ``filename`` and ``scene_label``; tab- or comma-separated)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"labels={path}: cannot be read ({type(e).__name__}: {e})") from None
    lines = text.splitlines()
    delimiter = "\t" if lines and "\t" in lines[0] else ","
    rows = list(csv.reader(lines, delimiter=delimiter))
    header = rows[0] if rows else []
    if "filename" not in header or "scene_label" not in header:
        raise BadInput(f"labels={path}: expected a header with filename and scene_label columns, got {header}")
    col = {name: header.index(name) for name in header}
    known, table = set(classes), {}
    for lineno, row in enumerate(rows[1:], 2):
        if not row:
            continue
        if len(row) != len(header):
            raise BadInput(f"{path}:{lineno}: expected {len(header)} fields ({', '.join(header)}), got {len(row)}")
        label = row[col["scene_label"]]
        if label not in known:
            raise BadInput(f"{path}:{lineno}: scene_label {label!r} is not a class of the model ({', '.join(classes)})")
        meta = {}
        if "source_label" in col:
            meta["device"] = row[col["source_label"]]
        if "identifier" in col:  # DCASE: "<city>-<location id>"
            meta["city"] = row[col["identifier"]].split("-")[0]
        table[row[col["filename"]]] = (label, meta)
    if not table:
        raise BadInput(f"labels={path}: no rows below the header")
    return LabelTable(table, path)


# -------------------------------------------------------------------------------------------------- windows, items


def window_starts(n: int, window: int, hop: int) -> list[int]:
    """Where the windows of an ``n``-sample clip start: 0, hop, 2 hop, ... while a window fits, then one window that
    ends where the clip ends when the last one stopped short of it (a tail is covered by real audio, not by a window
    of mostly zeros that would weigh as much as the others in the mean). A clip shorter than a window is one window,
    zero-padded as training pads a short clip."""
    if n <= window:
        return [0]
    starts = list(range(0, n - window + 1, hop))
    if starts[-1] + window < n:
        starts.append(n - window)
    return starts


def cut_windows(x: np.ndarray, window: int, hop: int) -> np.ndarray:
    """``x [n]`` -> ``[K, window]``; only a clip shorter than a window is zero-padded (as ``shards.stream`` pads)."""
    starts = window_starts(len(x), window, hop)
    padded = np.pad(x, (0, max(0, starts[-1] + window - len(x))))
    return np.stack([padded[s : s + window] for s in starts]).astype(np.float32, copy=False)


@dataclass
class Item:
    """One input file or clip: what was read, then what was predicted."""

    index: int
    """Position in the input list (the order of the output)."""
    name: str
    path: str
    waves: np.ndarray | None = None
    """[K, window] samples (dropped once classified)."""
    error: str | None = None
    """Why it could not be predicted (the skipped report); None when it was."""
    label: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    probs: np.ndarray | None = None
    """[C] float64: the mean of the window probabilities."""
    window_probs: np.ndarray | None = None
    """[K, C] (kept with ``windows=true``)."""
    starts: list[int] = field(default_factory=list)
    """Where each of the K windows starts (samples at the model's rate)."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


class FileItems(Dataset):
    """Files ``[start, stop)`` of the list, each decoded and resampled as the shard builder does, then windowed."""

    def __init__(self, files: Sequence[AudioFile], start: int, stop: int, rate: int, window: int, hop: int):
        self.files, self.start, self.stop, self.rate, self.window, self.hop = files, start, stop, rate, window, hop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> Item:
        index = self.start + i
        f = self.files[index]
        if not Path(f.path).is_file():
            return Item(index, f.name, f.path, error="missing: no such file")
        try:
            x, _ = audio.load_mono(f.path, self.rate)
        except audio.UnusableAudio as e:
            return Item(index, f.name, f.path, error=str(e))
        except Exception as e:  # noqa: BLE001 - whatever a damaged file raises, it is reported, never fatal
            return Item(index, f.name, f.path, error=_first_line(e))
        return Item(index, f.name, f.path, cut_windows(x, self.window, self.hop),
                    starts=window_starts(len(x), self.window, self.hop))


class _Reasons:
    """Collects why a shard stopped early (``shard_samples`` reports through ``skip``)."""

    def __init__(self) -> None:
        self.last = ""

    def skip(self, what: str, exc: BaseException) -> bool:
        self.last = _first_line(exc)
        log.warning("%s: %s", what, self.last)
        return True


class ShardItems(IterableDataset):
    """Clips ``[start, stop)`` of a shard split, whole, in the exact evaluation pass's order (``shards.stream``);
    split between DataLoader workers. A damaged sample, or the clips a truncated tar lost, are error items."""

    def __init__(self, inputs: Inputs, start: int, stop: int, rate: int, window: int, hop: int):
        self.s, self.names_from = inputs.shards, inputs.names_from
        self.start, self.stop, self.rate, self.window, self.hop = start, stop, rate, window, hop

    def __iter__(self) -> Iterator[Item]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        part = share(self.stop - self.start, worker, workers)
        lo, hi = self.start + part.start, self.start + part.stop
        first = 0  # global index of the shard's first clip
        for url, count in zip(self.s.urls, self.s.counts):
            if lo < hi and first < hi and first + count > lo:
                yield from self._shard(url, first, count, lo, hi)
            first += count

    def _shard(self, url: str, first: int, count: int, lo: int, hi: int) -> Iterator[Item]:
        reasons, index = _Reasons(), first
        for sample in shard_samples(url, StreamConfig().retry, reasons):
            if index >= min(hi, first + count):
                break
            if index >= lo:
                yield self._item(url, index, sample)
            index += 1
        for i in range(max(index, lo), min(first + count, hi)):
            why = reasons.last or "truncated or damaged"
            yield Item(i, "", f"{url}#{i - first}", error=f"lost: the shard ended before this clip ({why})")

    def _item(self, url: str, index: int, sample: dict) -> Item:
        key = sample.get("__key__") or ""
        try:
            meta = json.loads(sample["json"])
            x, rate = audio.decode_flac(sample["flac"])
            audio.check(x)
            x = audio.resample(x, rate, self.rate)
        except Exception as e:  # noqa: BLE001 - a damaged sample is reported, never fatal
            return Item(index, key, f"{url}#{key}", error=_first_line(e))
        label = meta.get("label") if isinstance(meta.get("label"), str) else None
        name = shard_filename(key, meta.get("source_path"), self.names_from)
        return Item(index, name, f"{url}#{key}", cut_windows(x, self.window, self.hop), label=label, meta=meta,
                    starts=window_starts(len(x), self.window, self.hop))


def share(total: int, rank: int, world: int) -> range:
    """Rank ``rank``'s contiguous share of ``total`` items (the shares of all ranks cover each item once)."""
    return range(rank * total // world, (rank + 1) * total // world)
