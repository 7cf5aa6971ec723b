"""``manifest.json``, read in one place: every reader gets a checked dict or one line naming the file.

The manifest is written by ``shards/build.py`` (and by the pseudo-label writer) and read by the stream, a resumed
build, ``shards.norm_stats`` and the embedded default data. A hand-edited, truncated or foreign file must stop them
with ``BadInput("path: what is wrong; expected ...")``, never with a ``KeyError`` deep inside a DataLoader worker.
A manifest may also be a URL (``http(s)://``, ``s3://``, ``gs://``, ``pipe:``): fetched with retries, and one line
naming the URL when it cannot be.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from launch.common.errors import BadInput
from shards.remote import RemoteError, RetryPolicy, fetch, is_remote

MANIFEST = "manifest.json"
_EXPECTED = ('expected the manifest.json that shards/build.py writes: {"splits": {SPLIT: {"shards": '
             '[{"file": "SPLIT-000000.tar", "count": N}, ...], "sample_rate": HZ}}, ...}')


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_split(path: Path, name: str, entry: Any, default_rate: Any) -> None:
    where = f"{path}: split {name!r}"
    if not isinstance(entry, dict):
        raise BadInput(f"{where} is a JSON {type(entry).__name__}, not an object; {_EXPECTED}")
    shards = entry.get("shards")
    if not isinstance(shards, list):
        raise BadInput(f"{where} has no \"shards\" list; {_EXPECTED}")
    for i, shard in enumerate(shards):
        file = shard.get("file") if isinstance(shard, dict) else None
        if not isinstance(file, str) or not file or Path(file).name != file:
            raise BadInput(f"{where}, shards[{i}]: no \"file\" (a shard file name in the manifest's folder); "
                           f"{_EXPECTED}")
        if not _is_count(shard.get("count")):
            raise BadInput(f"{where}, shards[{i}] ({file}): \"count\" is {shard.get('count')!r}; expected the "
                           "number of clips in that shard (an integer >= 0)")
    rate = entry.get("sample_rate", default_rate)
    if not _is_count(rate) or rate == 0:
        raise BadInput(f"{where}: \"sample_rate\" is {rate!r}; expected the shards' rate in Hz (a positive integer)")


def _read_bytes(path: str | Path, retry: RetryPolicy | None) -> tuple[str | Path, bytes]:
    """``(path as named in messages, its bytes)``: a local file, or a URL fetched with retries (:mod:`shards.remote`).
    Raises :class:`BadInput` in one line naming the file or URL."""
    if not is_remote(str(path)):
        path = Path(path)
        try:
            return path, path.read_bytes()
        except FileNotFoundError:
            raise BadInput(f"{path}: no manifest (is {path.parent} a complete shards/build.py output?)") from None
        except OSError as e:
            raise BadInput(f"{path}: cannot read the manifest ({e.strerror})") from None
    url = str(path)
    try:
        return url, fetch(url, retry or RetryPolicy())
    except RemoteError as e:
        if e.missing:
            raise BadInput(f"{url}: no manifest ({e.reason}; is the shard set URL right, and the set a complete "
                           "shards/build.py output?)") from None
        raise BadInput(f"{url}: cannot fetch the manifest ({e.reason})") from None


def read_manifest(path: str | Path, retry: RetryPolicy | None = None) -> dict[str, Any]:
    """The manifest at ``path`` (a file, or a URL read with ``retry``), checked: a JSON object whose ``splits`` each
    list ``shards`` with ``file`` and ``count`` and have a sample rate. Raises :class:`BadInput` naming the file or URL
    (and line for invalid JSON)."""
    path, data = _read_bytes(path, retry)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInput(f"{path}: byte {e.start} is not UTF-8; {_EXPECTED}") from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadInput(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno}); {_EXPECTED}") from None
    if not isinstance(manifest, dict):
        raise BadInput(f"{path}: a JSON {type(manifest).__name__}, not an object; {_EXPECTED}")
    splits = manifest.get("splits")
    if not isinstance(splits, dict):
        raise BadInput(f"{path}: no \"splits\" object; {_EXPECTED}")
    for name, entry in splits.items():
        _check_split(path, name, entry, manifest.get("sample_rate"))
    return manifest
