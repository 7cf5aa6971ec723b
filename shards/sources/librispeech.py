"""LibriSpeech ASR corpus (OpenSLR 12): ~1000 h of read English audiobooks (LibriVox), used here as unlabelled speech
for pretraining (SSAST and Audio-MAE mix it with AudioSet).

Origin: Panayotov et al., ICASSP 2015. Download: https://www.openslr.org/12 (one tar.gz per subset; each recreates
the ``LibriSpeech/`` root, so extracting several gives one tree).

On-disk layout (``--root`` may be the ``LibriSpeech`` folder or its parent)::

    LibriSpeech/SPEAKERS.TXT                 ";" comments, then  ID | SEX | SUBSET | MINUTES | NAME  (padded)
    LibriSpeech/<subset>/<spk>/<chap>/<spk>-<chap>.trans.txt     "<uttid> <UPPERCASE TEXT>" per line
    LibriSpeech/<subset>/<spk>/<chap>/<spk>-<chap>-<NNNN>.flac   e.g. dev-clean/19/198/19-198-0001.flac

Audio: FLAC, 16 kHz, 16-bit, mono. Subsets: dev-clean, dev-other, test-clean, test-other, train-clean-100,
train-clean-360, train-other-500 (about 5, 5, 5, 5, 101, 364, 497 hours).
Quirks: the README mentions READERS.TXT but the file is SPEAKERS.TXT; a name in it contains ``|`` (``|CBW|Simon``),
so rows are split into at most five fields.

Splits: one per subset folder present (any folder holding ``<spk>/<chap>/*.trans.txt``), clips sorted by speaker,
chapter (numerically) and utterance. No classes. Per clip ``meta``: ``transcript``, ``speaker``, ``chapter`` and, when
SPEAKERS.TXT lists the speaker, ``sex`` (F/M). Keys are utterance ids (``19-198-0001``).
A flac without a transcript line is an error naming the file; a transcript line without a flac gives a clip with
``meta["missing"]`` (the writer lists it as skipped).
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Iterator

from shards.clip import Clip, Corpus, sanitize_key
from shards.sources._csv import fail, read_text

SUBSETS = ("dev-clean", "dev-other", "test-clean", "test-other", "train-clean-100", "train-clean-360",
           "train-other-500")
"""The official subsets, in this order when present; other folders with the same structure follow, sorted."""
_UTT = re.compile(r"^(\d+)-(\d+)-(\d+)$")


def find_librispeech(root: Path) -> Path:
    """``root`` itself or ``root/LibriSpeech``: the folder holding the subset folders."""
    if (root / "LibriSpeech").is_dir():
        return root / "LibriSpeech"
    return root


def _is_subset(folder: Path) -> bool:
    if not folder.is_dir() or folder.name.startswith("."):
        return False
    return next(folder.glob("*/*/*.trans.txt"), None) is not None  # stops at the first chapter found


def read_speakers(path: Path) -> dict[str, str]:
    """SPEAKERS.TXT -> ``{speaker id: sex}``; an absent file gives ``{}``."""
    if not path.is_file():
        return {}
    sexes = {}
    for line_no, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        fields = [f.strip() for f in line.split("|", 4)]  # names may contain '|': at most 5 fields
        if len(fields) < 3 or not fields[0].isdigit() or fields[1] not in ("F", "M"):
            raise fail(path, line_no, f"cannot read {line.strip()!r}; expected ID | SEX (F or M) | SUBSET | MINUTES "
                                      "| NAME")
        sexes[fields[0]] = fields[1]
    return sexes


def read_transcripts(path: Path) -> dict[str, tuple[str, int]]:
    """``<spk>-<chap>.trans.txt`` -> ``{uttid: (text, line)}``."""
    out: dict[str, tuple[str, int]] = {}
    prefix = path.name[: -len(".trans.txt")] + "-"
    for line_no, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        uttid, _, text = line.strip().partition(" ")
        if not _UTT.match(uttid) or not uttid.startswith(prefix):
            raise fail(path, line_no, f"utterance id {uttid!r}; expected {prefix}NNNN followed by a space and the text")
        if uttid in out:
            raise fail(path, line_no, f"{uttid} repeated (first at line {out[uttid][1]}); expected each utterance once")
        out[uttid] = (text.strip(), line_no)
    return out


def _numeric_dirs(folder: Path) -> list[Path]:
    return sorted((d for d in folder.iterdir() if d.is_dir() and d.name.isdigit()), key=lambda d: int(d.name))


def _chapter(chapter: Path, sexes: dict[str, str]) -> Iterator[Clip]:
    spk, chap = chapter.parent.name, chapter.name
    flacs = {p.stem: p for p in chapter.glob("*.flac")}
    trans_path = chapter / f"{spk}-{chap}.trans.txt"
    if not trans_path.is_file():
        if flacs:
            first = flacs[min(flacs)]
            raise fail(first, None, f"no transcript: {trans_path.name} is missing; expected it next to the flac files")
        return
    transcripts = read_transcripts(trans_path)
    for uttid in sorted(flacs):
        if uttid not in transcripts:
            raise fail(flacs[uttid], None, f"no transcript line for {uttid} in {trans_path.name}; expected "
                                           f"'{uttid} TEXT'")
    for uttid in sorted(transcripts):
        text, line_no = transcripts[uttid]
        meta = {"transcript": text, "speaker": spk, "chapter": chap}
        if spk in sexes:
            meta["sex"] = sexes[spk]
        if uttid in flacs:
            yield Clip(key=sanitize_key(uttid), path=flacs[uttid], meta=meta)
        else:
            yield Clip(key=sanitize_key(uttid), meta={**meta, "missing": f"{trans_path}:{line_no} lists {uttid} "
                                                                          f"but there is no {uttid}.flac"})


def load(root: Path | None, args: argparse.Namespace) -> Corpus:
    """Find the subsets under ``root``; each split lists its chapters when it is built."""
    if root is None or not root.is_dir():
        raise fail(root or "--root", None, "no such directory; expected the LibriSpeech folder or its parent")
    base = find_librispeech(root)
    found = [d for d in sorted(base.iterdir()) if _is_subset(d)]
    if not found:
        raise fail(base, None, "no subset folders; expected e.g. dev-clean/<spk>/<chap>/<spk>-<chap>.trans.txt here "
                               "or in LibriSpeech/")
    order = {name: i for i, name in enumerate(SUBSETS)}
    found.sort(key=lambda d: (order.get(d.name, len(order)), d.name))
    sexes = read_speakers(base / "SPEAKERS.TXT")

    def lister(subset: Path):
        def clips() -> Iterator[Clip]:
            for speaker in _numeric_dirs(subset):
                for chapter in _numeric_dirs(speaker):
                    yield from _chapter(chapter, sexes)
        return clips

    info = {"librispeech_dir": str(base), "speakers_file": str(base / "SPEAKERS.TXT") if sexes else None}
    return Corpus(name=getattr(args, "source", "librispeech"), classes=[], splits={d.name: lister(d) for d in found},
                  info=info)
