"""TAU Urban Acoustic Scenes Mobile, development sets of DCASE2022 Task 1 (``tau22``) and DCASE2020 Task 1A (``tau20``).

Origin: Tampere University. Downloads: Zenodo 6337421 (2022, 1-s clips, 16 audio zips + meta + doc) and Zenodo 2589280
/ 3819968 (2020, 10-s files). Both are the same recordings: the 2022 set cuts every 10-s 2020 file into ten 1-s pieces.

On-disk layout after unzipping (``--root`` may be this folder or its parent)::

    TAU-urban-acoustic-scenes-2022-mobile-development/     (2020: ...-2020-mobile-development/)
        audio/airport-lisbon-1000-40000-0-a.wav            {scene}-{city}-{loc}-{seg}-{k}-{device}.wav (2020: no -{k})
        meta.csv                                           TAB: filename  scene_label  identifier  source_label
        evaluation_setup/fold1_train.csv                   TAB: filename  scene_label
        evaluation_setup/fold1_evaluate.csv                TAB: filename  scene_label
        evaluation_setup/fold1_test.csv                    TAB: filename

Audio: mono, 44.1 kHz, 24-bit PCM wav (device A was recorded binaural at 48 kHz, resampled and averaged to mono).
Devices: real a, b, c and simulated s1..s6 in the development set; s4, s5, s6 occur only in the test fold. The loader
derives this from the fold files: ``Corpus.info["test_only_devices"]`` and ``info["devices"]`` ({split: {device: n}}).

Splits: ``train``, ``evaluate`` and ``test``, in fold-file order. ``evaluate`` and ``test`` list the same clips in
the development set (``test`` without labels, which come from meta.csv). The evaluation set's ``fold1_test.csv``
lists anonymous ``audio/0.wav``... files that meta.csv does not label: they become unlabelled clips.
``--train-csv`` swaps fold1_train.csv for another list of the same format, e.g. the DCASE2024 ``split25.csv``.

Per clip ``meta``: ``device``, ``city``, ``location`` (meta.csv identifier, ``lisbon-1000``), ``domain`` (= device,
the shift DCASE measures) and, for tau22, ``recording`` (the 10-s parent file, ``airport-lisbon-1000-40000-a``) and
``piece`` (k, 0..9); group by ``recording`` to keep the pieces of one file in the same fold.
Keys are file stems. A listed file missing from ``audio/`` gives a clip with ``meta["missing"]`` (the writer lists it).
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Iterator

from launch.common.errors import BadInput
from shards.clip import Clip, Corpus, sanitize_key
from shards.sources._csv import fail, read_csv, require_file

CLASSES = ["airport", "shopping_mall", "metro_station", "street_pedestrian", "public_square", "street_traffic",
           "tram", "bus", "metro", "park"]
"""The 10 scenes in the order of the DCASE baselines (class index = position)."""

FOLDERS = {"tau22": "TAU-urban-acoustic-scenes-2022-mobile-development",
           "tau20": "TAU-urban-acoustic-scenes-2020-mobile-development"}
FOLDS = {"train": "fold1_train.csv", "evaluate": "fold1_evaluate.csv", "test": "fold1_test.csv"}

# {scene}-{city}-{loc}-{seg}[-{k}]-{device}; scene names use '_' never '-', so the parts split cleanly
_NAME = re.compile(r"^(?P<scene>[a-z_]+)-(?P<city>[a-z]+)-(?P<loc>\d+)-(?P<seg>\d+)(?:-(?P<k>\d+))?"
                   r"-(?P<device>[a-z]+\d*)$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train-csv", type=Path, default=None,
                        help="file list used for the train split instead of evaluation_setup/fold1_train.csv "
                             "(same TAB format, e.g. DCASE2024 split25.csv)")


def find_dataset_dir(root: Path, source: str) -> Path:
    """The folder holding ``evaluation_setup/``: ``root`` itself, its documented child, or its only such child."""
    if (root / "evaluation_setup").is_dir():
        return root
    if (root / FOLDERS[source] / "evaluation_setup").is_dir():
        return root / FOLDERS[source]
    found = sorted(p.parent for p in root.glob("*/evaluation_setup") if p.is_dir())
    if len(found) == 1:
        return found[0]
    if not found:
        raise fail(root, None, f"no evaluation_setup/ folder here or one level down; expected the {FOLDERS[source]}/ "
                               "folder (meta.csv, audio/, evaluation_setup/) or its parent")
    raise fail(root, None, f"several TAU datasets here ({', '.join(p.name for p in found)}); pass one as --root")


def parse_name(stem: str) -> dict[str, str] | None:
    """The parts of a development-set file stem, or None for other names (the evaluation set's ``0``, ``1``...)."""
    m = _NAME.match(stem)
    return m.groupdict() if m else None


def _read_meta(path: Path) -> dict[str, tuple[str, str, str]]:
    """meta.csv -> ``{filename: (scene_label, identifier, source_label)}`` (columns other than filename optional)."""
    rows: dict[str, tuple[str, str, str]] = {}
    for line, row in read_csv(path, ["filename"], delimiter="\t",
                              what="the TAB-separated TAU meta.csv (filename, scene_label, identifier, source_label)"):
        if not row["filename"]:
            raise fail(path, line, "blank filename; expected audio/<name>.wav")
        label = row.get("scene_label", "")
        if label and label not in CLASSES:
            raise fail(path, line, f"unknown scene_label {label!r}; expected one of {', '.join(CLASSES)}")
        rows[row["filename"]] = (label, row.get("identifier", ""), row.get("source_label", ""))
    return rows


def _read_fold(path: Path, source: str, labelled: bool, meta: dict) -> list[tuple[str, str, int]]:
    """A fold file -> ``[(filename, label or "", line)]``; labels from the file, else from meta.csv."""
    what = "a TAB-separated TAU fold file (filename" + (", scene_label)" if labelled else ")")
    out, seen = [], {}
    columns = ["filename", "scene_label"] if labelled else ["filename"]
    for line, row in read_csv(path, columns, delimiter="\t", what=what):
        name = row["filename"]
        if not name:
            raise fail(path, line, "blank filename; expected audio/<name>.wav")
        if name in seen:
            raise fail(path, line, f"{name} listed twice (first at line {seen[name]}); expected each file once")
        seen[name] = line
        parts = parse_name(Path(name).stem)
        if parts is not None and (parts["k"] is None) != (source == "tau20"):
            other = "tau20" if parts["k"] is None else "tau22"
            piece = "with" if source == "tau22" else "without"
            raise fail(path, line, f"{name} is a {other} file name; expected a {source} name ({piece} the -k piece "
                                   f"index): use source {other}")
        label = row.get("scene_label", "") if labelled else meta.get(name, ("",))[0]
        if label and label not in CLASSES:
            raise fail(path, line, f"unknown scene_label {label!r}; expected one of {', '.join(CLASSES)}")
        out.append((name, label, line))
    return out


def _clip(dataset: Path, name: str, label: str, meta_row: tuple[str, str, str] | None, source: str) -> Clip:
    stem = Path(name).stem
    parts = parse_name(stem)
    meta: dict = {}
    if parts is not None:
        meta.update(device=parts["device"], city=parts["city"], location=f"{parts['city']}-{parts['loc']}")
        if source == "tau22":
            meta.update(recording=f"{parts['scene']}-{parts['city']}-{parts['loc']}-{parts['seg']}-{parts['device']}",
                        piece=int(parts["k"]))
    if meta_row is not None:  # meta.csv is the authority where it has a value
        _, identifier, device = meta_row
        if identifier:
            meta.update(location=identifier, city=identifier.split("-")[0])
        if device:
            meta["device"] = device
    if "device" in meta:
        meta["domain"] = meta["device"]
    path = dataset / name
    if not path.is_file():
        return Clip(key=sanitize_key(stem), labels=(label,) if label else (),
                    meta={**meta, "missing": f"no such file: {path}"})
    return Clip(key=sanitize_key(stem), path=path, labels=(label,) if label else (), meta=meta)


def _natural(device: str) -> tuple[str, int]:
    """Sort key putting s2 before s10."""
    letters = device.rstrip("0123456789")
    return letters, int(device[len(letters):] or 0)


def _device_counts(rows: list[tuple[str, str, int]], meta: dict) -> dict[str, int]:
    """``{device: clips}`` of a fold (device from meta.csv, else from the name; unknown for ``audio/0.wav``)."""
    counts: dict[str, int] = {}
    for name, _, _ in rows:
        parts = parse_name(Path(name).stem)
        device = (meta.get(name) or ("", "", ""))[2] or (parts["device"] if parts else "")
        if device:
            counts[device] = counts.get(device, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: _natural(kv[0])))


def load(root: Path | None, args: argparse.Namespace) -> Corpus:
    """Read meta.csv and the fold files of the TAU tree under ``root`` (``args.source``: tau22 or tau20)."""
    source = getattr(args, "source", "tau22")
    if source not in FOLDERS:
        raise BadInput(f"source {source!r}: the TAU reader serves {', '.join(FOLDERS)}")
    if root is None or not root.is_dir():
        raise fail(root or "--root", None, f"no such directory; expected the {FOLDERS[source]}/ folder or its parent")
    dataset = find_dataset_dir(root, source)
    setup = dataset / "evaluation_setup"
    meta_path = dataset / "meta.csv"
    meta = _read_meta(meta_path) if meta_path.is_file() else {}
    development = any(row[0] for row in meta.values())  # a labelled meta.csv: the three folds must all be there
    folds = {split: setup / name for split, name in FOLDS.items()}
    train_csv = getattr(args, "train_csv", None)
    if train_csv is not None:
        folds["train"] = require_file(Path(train_csv), "a TAB-separated TAU file list (filename, scene_label)")
    eval_set = not development and not folds["train"].is_file() and folds["test"].is_file()
    if not eval_set:  # the development set: meta.csv and all three fold files must be there
        for split, path in folds.items():
            require_file(path, f"the TAU {split} fold file (TAB-separated, header filename"
                               + (")" if split == "test" else ", scene_label)"))
        require_file(meta_path, "the TAU meta.csv (filename, scene_label, identifier, source_label)")
    lists = {split: _read_fold(path, source, split != "test", meta)
             for split, path in folds.items() if path.is_file()}

    def lister(rows: list[tuple[str, str, int]]):
        def clips() -> Iterator[Clip]:
            for name, label, _ in rows:
                yield _clip(dataset, name, label, meta.get(name), source)
        return clips

    devices = {split: _device_counts(rows, meta) for split, rows in lists.items()}
    held_out = set(devices.get("evaluate", {})) | set(devices.get("test", {}))
    test_only = sorted(held_out - set(devices["train"]), key=_natural) if "train" in devices else []
    info = {"dataset_dir": str(dataset), "devices": devices, "test_only_devices": test_only,
            "fold_files": {split: str(path) for split, path in folds.items() if split in lists}}
    return Corpus(name=source, classes=list(CLASSES), splits={s: lister(rows) for s, rows in lists.items()}, info=info)
