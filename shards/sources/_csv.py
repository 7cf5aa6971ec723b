"""Shared helpers of the corpus readers: line-numbered CSV reading, one-line errors, file lookup by stem.

Every reader reports bad input the same way, ``path:line: what was wrong; what was expected``, so the helpers here
take care of the tedious parts: a UTF-8 BOM (Excel and the APSIPA CAS CSVs have one), text that is not UTF-8 (a CSV
saved as Latin-1 or Windows-1252), the delimiter (TAU is TAB separated, most others comma), the header check, the
field count of every row and a CSV with no data rows.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Iterator, Sequence

from launch.common.errors import BadInput, at

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff")
"""What counts as an audio file when a reader scans a tree (anything soundfile decodes)."""

_DELIMITER_NAMES = {",": "comma", "\t": "tab", ";": "semicolon"}


def fail(path: str | Path, line: int | None, message: str) -> BadInput:
    """``BadInput("path:line: message")``, to raise; ``message`` says what was wrong and what was expected."""
    return BadInput(f"{at(path, line)}: {message}")


def not_utf8(path: str | Path) -> BadInput:
    """The error for a text file that does not decode as UTF-8, naming the line and byte of the first bad sequence
    (found by reading the file again: this only runs once decoding has failed)."""
    data = Path(path).read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        return fail(path, line, f"byte 0x{data[e.start]:02x} is not UTF-8; expected a UTF-8 text file (re-save it as "
                                "UTF-8, e.g. iconv -f latin1 -t utf-8)")
    return fail(path, None, "not UTF-8; expected a UTF-8 text file")


def read_text(path: Path) -> str:
    """The text of a UTF-8 file (a BOM dropped), or a one-line :class:`BadInput` when it is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise not_utf8(path) from None


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file, else a :class:`BadInput` saying that ``what`` was expected there."""
    if not path.is_file():
        raise fail(path, None, f"no such file; expected {what}")
    return path


def sniff_delimiter(header: str) -> str:
    """The most frequent of TAB, comma and semicolon in the header line (comma when none occurs)."""
    counts = {d: header.count(d) for d in ("\t", ",", ";")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def read_csv(
    path: Path,
    required: Sequence[str],
    *,
    delimiter: str | None = None,
    what: str | None = None,
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line, row)`` for each data row of a CSV with a header line, values stripped of surrounding blanks.

    ``required`` header names must be present (others are kept too); blank lines are skipped; a row with another
    field count than the header is an error naming its line, and so are bytes that are not UTF-8 and a file with no
    data row (nothing would be built from it). ``delimiter=None`` sniffs it from the header. ``what`` names the file
    and its columns in errors ("the TAU meta.csv (filename, scene_label, ...)").
    """
    what = what or f"a CSV file with a header naming {', '.join(required)}"
    require_file(path, what)
    try:
        rows = 0
        for line, row in _read_rows(path, required, delimiter, what):
            rows += 1
            yield line, row
    except UnicodeDecodeError:
        raise not_utf8(path) from None
    if not rows:
        raise fail(path, None, f"a header but no data rows: nothing to build from it; expected {what} and one row "
                               "per clip")


def _read_rows(path: Path, required: Sequence[str], delimiter: str | None, what: str
               ) -> Iterator[tuple[int, dict[str, str]]]:
    with open(path, newline="", encoding="utf-8-sig") as f:  # utf-8-sig drops a BOM when there is one
        first = f.readline()
        if not first.strip():
            raise fail(path, 1, f"empty header line; expected {what}")
        delim = delimiter or sniff_delimiter(first)
        header = [h.strip() for h in next(csv.reader([first], delimiter=delim))]
        missing = [name for name in required if name not in header]
        if missing:
            raise fail(path, 1, f"header {delim.join(header)!r} lacks {', '.join(missing)}; expected {what}")
        if len(set(header)) != len(header):
            raise fail(path, 1, f"duplicate column names in header {header}; expected each column once")
        reader = csv.reader(f, delimiter=delim)
        previous = 1  # reader.line_num counts from the second physical line, which it sees as its first
        for fields in reader:
            line, previous = previous + 1, reader.line_num + 1
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            if len(fields) != len(header):
                raise fail(path, line, f"expected {len(header)} {_DELIMITER_NAMES.get(delim, repr(delim))}-separated "
                                       f"fields ({', '.join(header)}), got {len(fields)}")
            yield line, {name: value.strip() for name, value in zip(header, fields)}


def scan_audio(root: Path, suffixes: Sequence[str] = AUDIO_SUFFIXES) -> list[Path]:
    """Every audio file under ``root`` (any depth, hidden folders skipped), in a fixed sorted order."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(folder) / name for name in sorted(files)
                     if name.lower().endswith(tuple(suffixes)) and not name.startswith("."))
    return found


def index_by_stem(paths: Sequence[Path]) -> dict[str, list[Path]]:
    """``{stem: [paths...]}`` (several when the same name occurs in different folders or formats)."""
    index: dict[str, list[Path]] = {}
    for p in paths:
        index.setdefault(p.stem, []).append(p)
    return index
