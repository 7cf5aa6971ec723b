"""Dataclass field helpers shared by every config tree (the runtime's and the data package's, which may not import
the runtime)."""
from __future__ import annotations

import dataclasses
from typing import Any

SINCE = "tessera_since"
"""Field metadata key of :func:`since`: the version that added the field."""


def since(version: str, default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING) -> Any:
    """A config field added in ``version``: while it holds its default it is left out of
    :func:`launch.runtime.config.config_hash`, so a new option does not rename the run folders of every existing
    config (old runs still resume).

    ``compile: bool = since("0.2", False)``; ``irs: IRConfig = since("0.2", default_factory=IRConfig)``.
    """
    if (default is dataclasses.MISSING) == (default_factory is dataclasses.MISSING):
        raise TypeError("since(): give exactly one of default and default_factory")
    meta = {SINCE: version}
    if default_factory is dataclasses.MISSING:
        return dataclasses.field(default=default, metadata=meta)
    return dataclasses.field(default_factory=default_factory, metadata=meta)
