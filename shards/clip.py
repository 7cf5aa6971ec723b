"""What a corpus reader yields: clip descriptors, cheap to make and to pickle, decoded later in the writer's workers."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

# WebDataset splits a member name at its FIRST dot into key and extension, so keys must not contain one.
_KEY_FORBIDDEN = re.compile(r"[.\s]")


def sanitize_key(text: str) -> str:
    """A WebDataset-safe key: dots and whitespace become ``_`` (``--4gqARaEJE_0.000`` -> ``--4gqARaEJE_0_000``)."""
    return _KEY_FORBIDDEN.sub("_", text)


@dataclass(frozen=True)
class Clip:
    """One audio clip of a corpus split.

    ``key`` is unique within the split, stable across rebuilds and free of dots. Audio comes either from ``path``
    (decoded with soundfile) or from ``render()`` (synthetic corpora), which returns ``(samples [n] float32, rate)``
    and must be picklable (a module-level function or a ``functools.partial`` of one).
    ``labels`` are class names from the corpus class list (empty: unlabelled). ``meta`` holds corpus facts kept in
    the shard's ``.json``: device, city, domain, transcript, speaker, segment start/end, ...
    """

    key: str
    path: Path | None = None
    labels: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)
    render: Callable[[], tuple[np.ndarray, int]] | None = None


@dataclass
class Corpus:
    """A loaded corpus: its class list (index order) and, per split, a function listing its clips in a fixed order.

    ``splits`` values are zero-argument callables so that listing a 2-million-clip split only happens when that split
    is built. The order they return is the order clips are written, so it must be deterministic (sorted or CSV order).
    """

    name: str
    classes: list[str]
    splits: dict[str, Callable[[], Iterator[Clip]]]
    multi_label: bool = False
    """True for AudioSet-style corpora: labels are a set, no ``.cls`` field is written."""
    info: dict[str, Any] = field(default_factory=dict)
    """Free-form corpus facts recorded in the manifest (e.g. which devices are test-only)."""
