"""Any folder of audio files, optionally with a CSV of labels: the reader for corpora without a module of their own
(ESC-50, UrbanSound8K, a field recording campaign, ...).

Layout::

    <root>/**/*.{wav,flac,ogg,mp3,aif,aiff}       any depth
    labels.csv                                     --labels; anywhere (a relative path is taken from the cwd)

    path,label,split,fold                          header required; comma, TAB or semicolon (sniffed); BOM ok
    dogs/bark.1.wav,dog,train,1                    path relative to --root (or absolute) ...
    meow,cat,test,2                                ... or a bare stem, looked up anywhere under --root

Columns: ``path`` (required); ``label`` (empty: unlabelled clip); ``split`` (a name of letters, digits, ``_``, ``-``);
every other column is kept as a string in the clip's ``meta``. Without a split column every row goes to split ``all``
(``--split-name`` renames it); splits appear in the order of their first row, clips in CSV order.
Without ``--labels`` every audio file under --root is one unlabelled clip of that split, in sorted path order.

Classes: the sorted unique labels, or ``--classes a,b,c`` to fix the order (an unknown label is then an error naming
the CSV line). Keys: the path relative to --root without its suffix, dots and blanks made ``_`` (``dogs/bark_1``;
slashes are fine in WebDataset keys). A row whose file does not exist gives a clip with ``meta["missing"]`` (the
writer lists it as skipped); a stem matching several files is an error.
"""
from __future__ import annotations

import argparse
import functools
import re
from pathlib import Path
from typing import Iterator

from shards.clip import Clip, Corpus, sanitize_key
from shards.sources._csv import AUDIO_SUFFIXES, fail, index_by_stem, read_csv, scan_audio

_SPLIT = re.compile(r"^[A-Za-z0-9_-]+$")  # split names become shard file names: {split}-000000.tar
_STANDARD = ("path", "label", "split")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels", type=Path, default=None,
                        help="CSV with a header: path[,label][,split][,extra columns kept as meta]")
    parser.add_argument("--classes", default=None, help="class order as a,b,c (default: sorted unique labels)")
    parser.add_argument("--split-name", default="all", help="split of rows without a split column (default: all)")


def _key(path: Path, root: Path) -> str:
    rel = path.relative_to(root) if path.is_relative_to(root) else Path(path.name)
    return sanitize_key(rel.with_suffix("").as_posix())


def _resolve(text: str, root: Path, stems) -> tuple[Path | None, str]:
    """A CSV ``path`` value -> (file or None when missing, key); ``stems()`` is the lazily built stem index."""
    p = Path(text)
    if p.suffix.lower() in AUDIO_SUFFIXES or len(p.parts) > 1 or p.is_absolute():
        full = p if p.is_absolute() else root / p
        return (full if full.is_file() else None), _key(full, root)
    matches = stems().get(text, [])
    if len(matches) > 1:
        raise ValueError(f"stem {text!r} matches {len(matches)} files ({', '.join(str(m) for m in matches[:3])}); "
                         "expected a path relative to --root")
    return (matches[0] if matches else None), (_key(matches[0], root) if matches else sanitize_key(text))


def load(root: Path | None, args: argparse.Namespace) -> Corpus:
    """Read the labels CSV (if any) and check every row; files are looked up now, so a bad row fails at once."""
    if root is None or not root.is_dir():
        raise fail(root or "--root", None, "no such directory; expected the folder of the audio files")
    split_name = getattr(args, "split_name", None) or "all"
    if not _SPLIT.match(split_name):
        raise fail("--split-name", None, f"{split_name!r}; expected letters, digits, '_' or '-'")
    classes_arg = getattr(args, "classes", None)
    given = [c.strip() for c in classes_arg.split(",") if c.strip()] if classes_arg else None
    if given is not None and len(set(given)) != len(given):
        raise fail("--classes", None, f"{classes_arg!r} repeats a class; expected each class once")
    labels_csv = getattr(args, "labels", None)
    if labels_csv is None:
        def everything() -> Iterator[Clip]:
            for p in scan_audio(root):
                yield Clip(key=_key(p, root), path=p)
        return Corpus(name=getattr(args, "source", "folder"), classes=given or [],
                      splits={split_name: everything}, info={"labels_csv": None})

    labels_csv = Path(labels_csv)
    stems = functools.lru_cache(maxsize=None)(lambda: index_by_stem(scan_audio(root)))
    rows: dict[str, list[Clip]] = {}
    seen: dict[str, tuple[str, int]] = {}
    what = "a labels CSV with a header naming path (and optionally label, split, extra columns)"
    for line, row in read_csv(labels_csv, ["path"], what=what):
        if not row["path"]:
            raise fail(labels_csv, line, "blank path; expected a file path relative to --root or a stem")
        label = row.get("label", "")
        if label and given is not None and label not in given:
            raise fail(labels_csv, line, f"unknown label {label!r}; expected one of --classes {','.join(given)}")
        split = row["split"] if "split" in row else split_name  # a blank split cell is an error below
        if not _SPLIT.match(split):
            raise fail(labels_csv, line, f"split {split!r}; expected a name of letters, digits, '_' or '-'")
        try:
            path, key = _resolve(row["path"], root, stems)
        except ValueError as e:
            raise fail(labels_csv, line, str(e)) from None
        if (split, key) in seen:
            raise fail(labels_csv, line, f"key {key} (from {row['path']}) repeats line {seen[split, key][1]}; "
                                         "expected each file once per split")
        seen[split, key] = (row["path"], line)
        meta = {k: v for k, v in row.items() if k not in _STANDARD}
        labels = (label,) if label else ()
        if path is None:
            meta["missing"] = f"no such file: {row['path']} (under {root}, {labels_csv.name} line {line})"
        rows.setdefault(split, []).append(Clip(key=key, path=path, labels=labels, meta=meta))

    found = {c.labels[0] for clips in rows.values() for c in clips if c.labels}
    classes = given if given is not None else sorted(found)
    splits = {name: (lambda clips=clips: iter(clips)) for name, clips in rows.items()}
    return Corpus(name=getattr(args, "source", "folder"), classes=classes, splits=splits,
                  info={"labels_csv": str(labels_csv)})
