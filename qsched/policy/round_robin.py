from __future__ import annotations

from collections import OrderedDict

from .base import Policy


class RoundRobin(Policy):
    """One batch per backlogged session in turn, whatever its size or weight."""
    name = "round-robin"

    def __init__(self, cfg=None):
        super().__init__(cfg)
        self._rings: dict[str, OrderedDict] = {}
        self._pool_of: dict[str, str] = {}

    def enqueue(self, sid, pool, weight, head_seq):
        self._rings.setdefault(pool, OrderedDict())[sid] = None
        self._pool_of[sid] = pool

    def pick(self, pool):
        ring = self._rings.get(pool)
        if not ring:
            return None
        sid, _ = ring.popitem(last=False)
        self._pool_of.pop(sid, None)
        return sid

    def remove(self, sid):
        pool = self._pool_of.pop(sid, None)
        if pool is not None:
            self._rings[pool].pop(sid, None)
