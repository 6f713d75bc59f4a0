from __future__ import annotations

from .base import HeapQueues, Policy


class Fifo(Policy):
    """First come, first served across sessions: the oldest pending task in the pool goes next."""
    name = "fifo"

    def __init__(self, cfg=None):
        super().__init__(cfg)
        self._q = HeapQueues()

    def enqueue(self, sid, pool, weight, head_seq):
        self._q.push(pool, head_seq, sid)

    def pick(self, pool):
        return self._q.pop(pool)[0]

    def remove(self, sid):
        self._q.discard(sid)
