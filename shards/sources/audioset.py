"""AudioSet (Google): 10-s YouTube segments with 527 weak multi-labels, as people keep it on disk after downloading.

Origin: research.google.com/audioset (Gemmeke et al., ICASSP 2017). Google ships only the segment lists; the audio is
each group's own YouTube download, hence several naming schemes for the same segment.

Layout (``--root``; the CSVs may also sit in ``root/metadata/`` as PANNs puts them, or in ``--csv-dir``)::

    balanced_train_segments.csv     3 "#" lines, then  YTID, start_seconds, end_seconds, "mid1,mid2"
    unbalanced_train_segments.csv   (~2 M rows)        e.g.  --PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"
    eval_segments.csv
    class_labels_indices.csv        index,mid,display_name   (527 rows; 1,/m/05zppz,"Male speech, man speaking")
    <audio, any depth under --audio-dir (default --root), in any of these schemes>
        Y<YTID>.wav                           PANNs / PaSST / EfficientAT (32 kHz)
        <YTID>_<start>.flac                   AST (16 kHz), often in nested dirs: eval/_/_/--4gqARaEJE_0.000.flac
        Y<YTID>_<start>_<end>.wav             DESED / strong-label style
        <YTID>.wav

A YTID is 11 characters of ``[A-Za-z0-9_-]`` and may begin with ``-`` or contain ``_``: names are parsed by that
fixed length, never by splitting on ``_``. A file whose name carries a start time only matches the segment with that
start (to the millisecond). Segments can be shorter than 10 s (``0.000, 6.000``).

Splits: ``balanced``, ``unbalanced``, ``eval`` (whichever CSVs exist), in CSV order. Or, with ``--datafile`` (the
AST / SSAST / Audio-MAE JSON ``{"data": [{"wav": path, "labels": "mid1,mid2"}]}``, repeatable), one split per file,
named after its stem (characters other than letters, digits, ``_`` and ``-`` made ``_``; ``--split-name`` renames a
single one). Relative ``wav`` paths are taken from ``--root`` when given, else from the JSON's folder; other keys of
an entry are ignored.

Labels: multi-label, stored as display names in class-index order (``Corpus.classes`` = display names by index);
the MIDs are kept in ``meta["mids"]``. An unknown MID is an error naming the file and line (or datafile entry).
Keys: ``<YTID>_<start>`` from the CSV with dots made ``_`` (``--PJHxphWEs_30_000``), whatever the audio name; for
a datafile, the sanitised file stem (``--4gqARaEJE_0.000.flac`` -> ``--4gqARaEJE_0_000``).
Missing audio: a segment with no audio file is not an error (downloads always miss some videos). It yields a Clip
with ``path=None`` and ``meta["missing"] = "no audio file for YTID ..."``; the writer skips it and lists it with this
reason in the manifest, so the number of unavailable segments is visible per split.
Per clip ``meta``: ``ytid``, ``start``, ``end`` (seconds; from the CSV, or from the file name for a datafile) and
``mids``.
"""
from __future__ import annotations

import argparse
import csv
import functools
import json
import re
from pathlib import Path
from typing import Callable, Iterator

from launch.common.errors import BadInput
from shards.clip import Clip, Corpus, sanitize_key
from shards.sources._csv import fail, not_utf8, read_csv, read_text, require_file, scan_audio

SEGMENT_CSVS = {"balanced": "balanced_train_segments.csv", "unbalanced": "unbalanced_train_segments.csv",
                "eval": "eval_segments.csv"}
CLASS_CSV = "class_labels_indices.csv"
_YTID = re.compile(r"^[A-Za-z0-9_-]{11}$")
_ID, _NUM = r"(?P<ytid>[A-Za-z0-9_-]{11})", r"\d+(?:\.\d*)?"
_SCHEMES = [re.compile(p) for p in (  # (ytid, start?, end?) by fixed length; the patterns cannot overlap
    rf"^Y{_ID}$",                                           # PANNs
    rf"^Y{_ID}_(?P<start>{_NUM})_(?P<end>{_NUM})$",         # DESED
    rf"^{_ID}_(?P<start>{_NUM})$",                          # AST
    rf"^{_ID}$",                                            # bare
)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--csv-dir", type=Path, default=None,
                        help="folder of the segment CSVs and class_labels_indices.csv (default: --root, then "
                             "--root/metadata)")
    parser.add_argument("--audio-dir", type=Path, default=None,
                        help="folder scanned (any depth) for the audio files (default: --root)")
    parser.add_argument("--class-labels", type=Path, default=None,
                        help="class_labels_indices.csv (default: in the CSV folder, else next to the datafile)")
    # str, not Path: the build records its flags in JSON, and a list of Paths would not serialise
    parser.add_argument("--datafile", action="append", default=None,
                        help="AST/SSAST/Audio-MAE JSON datafile; one split per file (repeatable)")
    parser.add_argument("--split-name", default=None, help="name of the split of a single --datafile")


def parse_audio_name(stem: str) -> tuple[str, float | None, float | None] | None:
    """``(ytid, start, end)`` of an audio file stem in one of the known schemes (None where the name has no time)."""
    for scheme in _SCHEMES:
        m = scheme.match(stem)
        if m:
            d = m.groupdict()
            return d["ytid"], _float(d.get("start")), _float(d.get("end"))
    return None


def _float(text: str | None) -> float | None:
    return None if text is None else float(text)


def read_class_labels(path: Path) -> tuple[list[str], dict[str, str]]:
    """class_labels_indices.csv -> (display names in index order, ``{mid: display_name}``)."""
    rows, names, by_mid = [], {}, {}
    for line, row in read_csv(path, ["index", "mid", "display_name"], delimiter=",",
                              what="AudioSet class_labels_indices.csv (index,mid,display_name)"):
        try:
            index = int(row["index"])
        except ValueError:
            raise fail(path, line, f"index {row['index']!r} is not an integer; expected 0, 1, 2, ...") from None
        if index != len(rows):
            raise fail(path, line, f"index {index} out of order; expected {len(rows)}")
        mid, name = row["mid"], row["display_name"]
        if not mid or not name:
            raise fail(path, line, "blank mid or display_name; expected e.g. 0,/m/09x0r,Speech")
        for value, seen, what in ((mid, by_mid, "mid"), (name, names, "display_name")):
            if value in seen:
                raise fail(path, line, f"{what} {value!r} repeated (first at line {seen[value][1]}); expected unique")
        by_mid[mid], names[name] = (name, line), (mid, line)
        rows.append(name)
    if not rows:
        raise fail(path, None, "no classes; expected 527 rows index,mid,display_name")
    return rows, {mid: name for mid, (name, _) in by_mid.items()}


def read_segments(path: Path, mids: dict[str, str]) -> Iterator[tuple[int, str, str, float, float, list[str]]]:
    """Yield ``(line, ytid, start_text, start, end, [mid...])`` of a segment CSV, checking every field."""
    require_file(path, "an AudioSet segment CSV (3 '#' lines, then YTID, start, end, \"labels\")")
    expected = 'expected YTID, start_seconds, end_seconds, "mid1,mid2"'
    try:
        yield from _segment_rows(path, mids, expected)
    except UnicodeDecodeError:
        raise not_utf8(path) from None


def _segment_rows(path: Path, mids: dict[str, str], expected: str
                  ) -> Iterator[tuple[int, str, str, float, float, list[str]]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        # blank the '#' lines instead of dropping them, so csv's line_num stays the file's line number
        reader = csv.reader(("\n" if line.startswith("#") else line for line in f), skipinitialspace=True)
        previous, seen = 0, {}
        for fields in reader:
            line, previous = previous + 1, reader.line_num
            if not fields or fields == [""]:
                continue
            if len(fields) != 4:
                raise fail(path, line, f"{len(fields)} fields; {expected}")
            ytid, start_text, end_text, labels = (x.strip() for x in fields)
            if not _YTID.match(ytid):
                raise fail(path, line, f"YTID {ytid!r} is not 11 characters of [A-Za-z0-9_-]; {expected}")
            try:
                start, end = float(start_text), float(end_text)
            except ValueError:
                raise fail(path, line, f"start/end {start_text!r}, {end_text!r} are not numbers; {expected}") from None
            if not 0 <= start < end:
                raise fail(path, line, f"segment {start_text}..{end_text} is empty or negative; expected start < end")
            row_mids = [m.strip() for m in labels.split(",") if m.strip()]
            for mid in row_mids:
                if mid not in mids:
                    raise fail(path, line, f"unknown label MID {mid!r}; expected one of the {len(mids)} MIDs in "
                                           f"{CLASS_CSV}")
            segment = f"{ytid} at {start:.3f} s"  # what the clip key is made of
            if segment in seen:
                raise fail(path, line, f"segment {segment} repeated (first at line {seen[segment]}); "
                                       "expected each segment once")
            seen[segment] = line
            yield line, ytid, start_text, start, end, row_mids


def _index_audio(audio_dir: Path) -> dict[str, list[tuple[float | None, Path]]]:
    """``{ytid: [(start or None, path), ...]}`` over every audio file under ``audio_dir`` that names a YTID."""
    index: dict[str, list[tuple[float | None, Path]]] = {}
    for p in scan_audio(audio_dir):
        parsed = parse_audio_name(p.stem)
        if parsed:
            index.setdefault(parsed[0], []).append((parsed[1], p))
    return index


def _segment_lister(path: Path, mids: dict[str, str], audio_index) -> Callable[[], Iterator[Clip]]:
    def clips() -> Iterator[Clip]:
        files = audio_index()
        for _, ytid, _, start, end, row_mids in read_segments(path, mids):
            key = sanitize_key(f"{ytid}_{start:.3f}")
            meta = {"ytid": ytid, "start": start, "end": end, "mids": row_mids}
            labels = tuple(mids[m] for m in row_mids)
            candidates = files.get(ytid, [])
            match = [p for s, p in candidates if s is None or abs(s - start) < 5e-4]
            if match:
                yield Clip(key=key, path=match[0], labels=labels, meta=meta)
            else:
                other = f" (only for start {', '.join(f'{s:.3f}' for s, _ in candidates)})" if candidates else ""
                yield Clip(key=key, labels=labels,
                           meta={**meta, "missing": f"no audio file for YTID {ytid} at {start:.3f} s{other}"})
    return clips


def _datafile_lister(path: Path, mids: dict[str, str], base: Path) -> Callable[[], Iterator[Clip]]:
    """Check a datafile now; its clips are listed (and checked for existence) later."""
    require_file(path, 'an AST-style datafile {"data": [{"wav": ..., "labels": "mid1,mid2"}]}')
    expected = 'expected {"data": [{"wav": path, "labels": "mid1,mid2"}, ...]}'
    try:
        entries = json.loads(read_text(path))["data"]
    except (ValueError, KeyError, TypeError) as e:
        raise fail(path, None, f"not a datafile ({type(e).__name__}: {e}); {expected}") from None
    if not isinstance(entries, list):
        raise fail(path, None, f'"data" is a {type(entries).__name__}, not a list; {expected}')
    rows, seen = [], {}
    for i, entry in enumerate(entries):
        where = f"entry {i} (data[{i}])"
        wav = entry.get("wav") if isinstance(entry, dict) else None
        if not isinstance(wav, str) or not wav.strip():
            raise fail(path, None, f"{where}: no \"wav\" path; expected {{\"wav\": path, \"labels\": \"mid1,mid2\"}}")
        labels = entry.get("labels") or ""
        labels = ",".join(labels) if isinstance(labels, list) else str(labels)
        row_mids = [m.strip() for m in labels.split(",") if m.strip()]
        for mid in row_mids:
            if mid not in mids:
                raise fail(path, None, f"{where}: unknown label MID {mid!r}; expected one of the {len(mids)} MIDs "
                                       f"in {CLASS_CSV}")
        wav_path = Path(wav.strip())
        key = sanitize_key(wav_path.stem)
        if key in seen:
            raise fail(path, None, f"{where}: key {key} (from {wav}) repeats entry {seen[key]}; expected unique stems")
        seen[key] = i
        rows.append((key, wav_path if wav_path.is_absolute() else base / wav_path, row_mids))

    def clips() -> Iterator[Clip]:
        for key, wav_path, row_mids in rows:
            meta: dict = {"mids": row_mids}
            parsed = parse_audio_name(wav_path.stem)
            if parsed:
                meta.update({"ytid": parsed[0], **({"start": parsed[1]} if parsed[1] is not None else {}),
                             **({"end": parsed[2]} if parsed[2] is not None else {})})
            labels = tuple(mids[m] for m in row_mids)
            if wav_path.is_file():
                yield Clip(key=key, path=wav_path, labels=labels, meta=meta)
            else:
                yield Clip(key=key, labels=labels, meta={**meta, "missing": f"no such file: {wav_path}"})
    return clips


def load(root: Path | None, args: argparse.Namespace) -> Corpus:
    """Read the class list and check the segment CSVs (or datafiles); audio is matched when a split is listed."""
    datafiles = [Path(p) for p in (getattr(args, "datafile", None) or [])]
    if root is not None and not root.is_dir():
        raise fail(root, None, "no such directory; expected the AudioSet folder (segment CSVs and/or audio)")
    if root is None and not datafiles:
        raise BadInput("--root: missing; expected the AudioSet folder (segment CSVs, audio) or --datafile")
    csv_dir = getattr(args, "csv_dir", None)
    if csv_dir is None and root is not None:
        csv_dir = next((d for d in (root, root / "metadata") if (d / CLASS_CSV).is_file()
                        or any((d / n).is_file() for n in SEGMENT_CSVS.values())), root)
    class_csv = getattr(args, "class_labels", None)
    if class_csv is None:  # the CSV folder first, then next to each datafile
        near = ([Path(csv_dir)] if csv_dir else []) + [d.parent for d in datafiles]
        class_csv = next((d / CLASS_CSV for d in near if (d / CLASS_CSV).is_file()), near[0] / CLASS_CSV)
    classes, mids = read_class_labels(require_file(Path(class_csv), f"AudioSet {CLASS_CSV} (index,mid,display_name) "
                                                                    "or pass --class-labels"))

    splits = {}
    if datafiles:
        names = [re.sub(r"[^A-Za-z0-9_-]", "_", d.stem) for d in datafiles]  # split names end up in shard names
        split_name = getattr(args, "split_name", None)
        if split_name:
            if len(datafiles) != 1 or not re.fullmatch(r"[A-Za-z0-9_-]+", split_name):
                raise BadInput(f"--split-name {split_name!r}: expected one --datafile and a name of letters, digits, "
                               "'_' or '-'")
            names = [split_name]
        for name, path in zip(names, datafiles):
            if name in splits:
                raise fail(path, None, f"a second datafile named {name}; expected distinct file stems")
            splits[name] = _datafile_lister(path, mids, root if root is not None else path.parent)
    else:
        audio_dir = Path(getattr(args, "audio_dir", None) or root)
        if not audio_dir.is_dir():
            raise fail(audio_dir, None, "no such directory; expected the folder of the audio files")
        audio_index = functools.lru_cache(maxsize=None)(lambda: _index_audio(audio_dir))
        for split, name in SEGMENT_CSVS.items():
            path = Path(csv_dir) / name
            if path.is_file():
                for _ in read_segments(path, mids):  # check every row now, so a bad row fails before any work
                    pass
                splits[split] = _segment_lister(path, mids, audio_index)
        if not splits:
            raise fail(csv_dir, None, f"no segment CSVs; expected {', '.join(SEGMENT_CSVS.values())} here "
                                      "(or pass --csv-dir or --datafile)")
    info = {"class_labels": str(class_csv), "label_mids": list(mids)}
    return Corpus(name=getattr(args, "source", "audioset"), classes=classes, splits=splits, multi_label=True,
                  info=info)
