"""Seeds as pure functions of their numbers, so a resumed run draws what an uninterrupted one drew."""
from __future__ import annotations

import numpy as np

STEP_SALT = 0x5EED
"""Salt of the per-step seeds: a step seed never equals a data-stream seed of the same numbers."""


def derive_seed(*parts: int) -> int:
    """A 64-bit seed that is a pure function of ``parts`` (e.g. seed, rank, step): independent streams per tuple."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0])


def step_seed(seed: int, rank: int, micro_step: int) -> int:
    """Seed of a training micro-step's random draws (masks, mixup, dropout) on one rank."""
    return derive_seed(seed, rank, micro_step, STEP_SALT)
