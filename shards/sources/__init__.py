"""Corpus readers, one module each, found lazily by name (importing one never imports the others).

A source module provides::

    def add_arguments(parser: argparse.ArgumentParser) -> None   # its own CLI flags (optional)
    def load(root: Path | None, args: argparse.Namespace) -> Corpus

``load`` checks the tree and the CSVs and raises :class:`launch.common.errors.BadInput` with file and line on bad input;
listing the clips of a split happens lazily through ``Corpus.splits``.
"""
from __future__ import annotations

import importlib
from types import ModuleType

SOURCES: dict[str, str] = {
    "tau22": "shards.sources.tau",
    "tau20": "shards.sources.tau",
    "cas2023": "shards.sources.cas2023",
    "audioset": "shards.sources.audioset",
    "librispeech": "shards.sources.librispeech",
    "folder": "shards.sources.folder",
    "synthetic": "shards.sources.synthetic",
}


def get_source(name: str) -> ModuleType:
    """The reader module for ``name`` (one of :data:`SOURCES`)."""
    from launch.common.errors import BadInput

    if name not in SOURCES:
        raise BadInput(f"unknown source {name!r}; expected one of {', '.join(SOURCES)}")
    return importlib.import_module(SOURCES[name])
