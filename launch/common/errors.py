"""The one error type for bad user input.

Every command catches :class:`BadInput` at its entry point and prints the message as a single line, so a message
must name the file (and line or key) and say what was expected, e.g.
``meta.csv:17: expected 4 tab-separated fields (filename, scene_label, identifier, source_label), got 3``.
"""
from __future__ import annotations

from pathlib import Path


class BadInput(Exception):
    """A file, CSV row, config key, checkpoint or flag that cannot be used as given."""


def check(key: str, value: object, ok: bool, expected: str) -> None:
    """A config field's range check: raise ``ValueError("key=value: expected ...")`` unless ``ok`` (raised in a
    dataclass's ``__post_init__``, it becomes one BadInput line when the config is read)."""
    if not ok:
        raise ValueError(f"{key}={value}: expected {expected}")


def at(path: str | Path, line: int | None = None) -> str:
    """``path`` or ``path:line``, the prefix of a :class:`BadInput` message."""
    return f"{path}:{line}" if line is not None else str(path)


def cli(fn, *args, **kwargs) -> int:
    """Run an entry point: :class:`BadInput` becomes one ``error:`` line on stderr and exit status 2."""
    import sys

    try:
        fn(*args, **kwargs)
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
