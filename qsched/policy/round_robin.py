from __future__ import annotations

import itertools

from .base import Policy


class RoundRobin(Policy):
    """One batch per backlogged session in turn (within a class tier), whatever its size or weight."""
    name = "round-robin"

    def __init__(self, cfg=None):
        super().__init__(cfg)
        self._turn = itertools.count()

    def _key(self, sid, pool, info, head_seq, now, size):
        if sid in self._q:
            return None                  # already in the ring: it keeps its place
        return next(self._turn)
