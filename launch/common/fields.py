"""Dataclass field helpers shared by every config tree (the runtime's and the data package's, which may not import
the runtime)."""
from __future__ import annotations

import dataclasses
from typing import Any

SINCE = "tessera_since"
"""Field metadata key of :func:`since`: the version that added the field."""
HOW_NOT_WHAT = "tessera_how_not_what"
"""Field metadata key of :func:`since`: the field changes how a run computes, never what (compile, recompute)."""


def since(version: str, default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
          how_not_what: bool = False) -> Any:
    """A config field added in ``version``: while it holds its default it is left out of
    :func:`launch.runtime.config.config_hash`, so a new option does not rename the run folders of every existing
    config (old runs still resume). With ``how_not_what`` the field changes how a run computes, never its result
    (compilation, recomputation, retries): it is never part of the hash, and a resumed run may change it.

    ``compile: bool = since("0.2", False, how_not_what=True)``; ``irs: IRConfig = since("0.2", default_factory=IRConfig)``.
    """
    if (default is dataclasses.MISSING) == (default_factory is dataclasses.MISSING):
        raise TypeError("since(): give exactly one of default and default_factory")
    meta = {SINCE: version, HOW_NOT_WHAT: how_not_what}
    if default_factory is dataclasses.MISSING:
        return dataclasses.field(default=default, metadata=meta)
    return dataclasses.field(default_factory=default_factory, metadata=meta)
