"""CAS 2023: the Chinese Acoustic Scene dataset of the IEEE ICME 2024 Grand Challenge "Semi-supervised Acoustic Scene
Classification under Domain Shift" (also used, with location and time columns, by the APSIPA 2025 GC).

Origin: the challenge organisers (Bai et al.). Audio: Zenodo 10616533 (``ICME2024_GC_ASC_dev.zip``) and Zenodo
10820626 (``ICME2024_GC_ASC_eval.zip``). Labels: github.com/JishengBai/ICME2024ASC
(``data/ICME2024_ASC_dev_label.csv``) and github.com/JishengBai/APSIPA2025GC-ASC (``metadata/*.csv``). Paper: arXiv
2402.02694.

On-disk layout (``--root`` is the folder holding both, or the dev folder itself)::

    ICME2024_GC_ASC_dev/<uuid hex 32><index>_<1|2>.wav      8,700 10-s clips, flat (the baseline globs, so any depth)
    ICME2024_GC_ASC_eval/<...>.wav                          1,100 clips
    ICME2024_ASC_dev_label.csv      filename,scene_label                        (ICME; comma-separated)
    metadata/APSIPA2025_GC_ASC_dev_metadata.csv                                 (APSIPA; UTF-8 BOM)
                                    filename,location,record_time,scene_label   (same rows, two more columns)
    ICME2024_ASC_eval.csv           filename,scene_label, every label empty

The filename column may or may not end in ``.wav``; the file is ``<filename>.wav`` anywhere under the dev folder.
Rows with an empty scene_label are the unlabelled 80% (1,740 of 8,700 rows are labelled).

CSV lookup: ``--labels-csv`` / ``--eval-csv`` name the files. Without them the reader takes the one ``*.csv`` whose name
contains ``dev`` (resp. ``eval``) in ``--root``, the dev (resp. eval) folder, ``root/data`` or ``root/metadata`` (for
dev, failing that, the one CSV there not named ``*eval*``); none or several is an error asking for the flag. With no
eval CSV at all, ``eval`` lists the eval folder's wav files in sorted order.

Splits: ``labelled`` and ``unlabelled`` (dev CSV order) and ``eval`` (when the eval folder or CSV exists).
Classes: Bus, Airport, Metro, Restaurant, Shopping mall, Public square, Urban park, Traffic street, Construction site,
Bar (the baseline's index order; labels are matched ignoring case and blanks, and stored in this spelling).
Per clip ``meta``: ``city`` (the APSIPA ``location`` column, which holds city names: Xi'an, Luoyang, ...),
``record_time`` (``2023-06-18 18:44:34``) and ``domain`` (= city), when the CSV has those columns. Several clips share
one city and record_time (apparently pieces of one recording session): group by both to keep such pieces in one fold.
A listed clip without an audio file gives a clip with ``meta["missing"]`` (the writer lists it as skipped).
"""
from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Iterator

from shards.clip import Clip, Corpus, sanitize_key
from shards.sources._csv import fail, index_by_stem, read_csv, require_file, scan_audio

CLASSES = ["Bus", "Airport", "Metro", "Restaurant", "Shopping mall", "Public square", "Urban park", "Traffic street",
           "Construction site", "Bar"]
DEV_DIR, EVAL_DIR = "ICME2024_GC_ASC_dev", "ICME2024_GC_ASC_eval"
_CANONICAL = {" ".join(c.lower().split()): c for c in CLASSES}
_WHAT = "a CAS 2023 labels CSV (filename,scene_label or filename,location,record_time,scene_label)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels-csv", type=Path, default=None,
                        help="dev labels CSV (filename,scene_label[,...]); default: the one *dev*.csv near --root")
    parser.add_argument("--eval-csv", type=Path, default=None,
                        help="eval CSV (same columns, labels empty); default: the one *eval*.csv near --root, "
                             "else the eval folder listing")


def _find_csv(places: list[Path], word: str, flag: str, required: bool) -> Path | None:
    """The one ``*<word>*.csv`` in ``places`` (for ``dev``, failing that the one CSV not named ``*eval*``)."""
    csvs = sorted({p.resolve() for d in places if d.is_dir() for p in d.glob("*.csv")})
    found = [p for p in csvs if word in p.name.lower()]
    if not found and word == "dev":
        found = [p for p in csvs if "eval" not in p.name.lower()]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise fail(found[0].parent, None, f"several *{word}*.csv files ({', '.join(p.name for p in found)}); "
                                          f"expected one: pick it with {flag}")
    if required:
        raise fail(places[0], None, f"no *{word}*.csv in {', '.join(str(p) for p in places if p.is_dir())}; "
                                    f"expected {_WHAT}: pass it with {flag}")
    return None


def _read_labels(path: Path) -> list[tuple[str, str, dict, int]]:
    """A labels CSV -> ``[(stem, label or "", meta, line)]`` in file order."""
    rows, seen = [], {}
    for line, row in read_csv(path, ["filename", "scene_label"], what=_WHAT):
        stem = row["filename"][:-4] if row["filename"].lower().endswith(".wav") else row["filename"]
        if not stem:
            raise fail(path, line, "blank filename; expected a clip name like 40c8570776704268be56bc0d1fa8a16f60_1")
        if stem in seen:
            raise fail(path, line, f"{stem} listed twice (first at line {seen[stem]}); expected each clip once")
        seen[stem] = line
        label = row["scene_label"]
        if label:
            label = _CANONICAL.get(" ".join(label.lower().split()))
            if label is None:
                raise fail(path, line, f"unknown scene_label {row['scene_label']!r}; expected one of "
                                       f"{', '.join(CLASSES)} or empty (unlabelled)")
        meta = {}
        if row.get("location"):
            meta.update(city=row["location"], domain=row["location"])
        if row.get("record_time"):
            meta["record_time"] = row["record_time"]
        rows.append((stem, label or "", meta, line))
    return rows


def _lister(rows, audio_dir: Path, index):
    def clips() -> Iterator[Clip]:
        files = index(audio_dir)
        for stem, label, meta, line in rows:
            labels = (label,) if label else ()
            paths = files.get(stem, [])
            wav = [p for p in paths if p.suffix.lower() == ".wav"] or paths
            if not wav:
                yield Clip(key=sanitize_key(stem), labels=labels,
                           meta={**meta, "missing": f"no {stem}.wav under {audio_dir} (listed at line {line})"})
            else:
                yield Clip(key=sanitize_key(stem), path=wav[0], labels=labels, meta=meta)
    return clips


def load(root: Path | None, args: argparse.Namespace) -> Corpus:
    """Read the dev (and eval) CSVs of the CAS 2023 tree under ``root``."""
    if root is None or not root.is_dir():
        raise fail(root or "--root", None, f"no such directory; expected the folder holding {DEV_DIR}/ or that folder")
    dev = root / DEV_DIR if (root / DEV_DIR).is_dir() else root
    eval_dir = next((d for d in (root / EVAL_DIR, dev.parent / EVAL_DIR) if d.is_dir()), None)
    places = [root, dev, root / "data", root / "metadata"]
    labels_csv = getattr(args, "labels_csv", None)
    labels_csv = require_file(Path(labels_csv), _WHAT) if labels_csv else _find_csv(places, "dev", "--labels-csv", True)
    eval_csv = getattr(args, "eval_csv", None)
    if eval_csv:
        eval_csv = require_file(Path(eval_csv), _WHAT.replace("labels", "eval"))
    elif eval_dir is not None:
        eval_csv = _find_csv(places + [eval_dir], "eval", "--eval-csv", False)

    # one scan per folder, shared by the splits, made when the first split is listed
    index = functools.lru_cache(maxsize=None)(lambda d: index_by_stem(scan_audio(d)))
    dev_rows = _read_labels(labels_csv)
    splits = {"labelled": _lister([r for r in dev_rows if r[1]], dev, index),
              "unlabelled": _lister([r for r in dev_rows if not r[1]], dev, index)}
    if eval_csv is not None:
        splits["eval"] = _lister(_read_labels(eval_csv), eval_dir or root, index)
    elif eval_dir is not None:
        def eval_listing() -> Iterator[Clip]:
            for p in scan_audio(eval_dir, (".wav",)):
                yield Clip(key=sanitize_key(p.stem), path=p)
        splits["eval"] = eval_listing
    info = {"labels_csv": str(labels_csv), "eval_csv": str(eval_csv) if eval_csv else None,
            "labelled": sum(1 for r in dev_rows if r[1]), "unlabelled": sum(1 for r in dev_rows if not r[1])}
    return Corpus(name=getattr(args, "source", "cas2023"), classes=list(CLASSES), splits=splits, info=info)
