"""Seeds derived from ids: every draw of a run is reproducible from the run's seed and what it is for."""

from __future__ import annotations

import zlib

import numpy as np


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from ids (``crc32`` chain, never Python's salted ``hash``). A numpy scalar counts
    as the Python number it holds: its repr (``np.int64(5)``) differs from the number's and between numpy
    versions, and would give another seed for the same id."""
    h = 0
    for p in parts:
        h = zlib.crc32(repr(p.item() if isinstance(p, np.generic) else p).encode(), h)
    return int(np.random.SeedSequence([h, len(parts)]).generate_state(2, np.uint64)[0] >> np.uint64(1))
