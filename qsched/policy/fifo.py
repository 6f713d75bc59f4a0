from __future__ import annotations

from .base import Policy


class Fifo(Policy):
    """First come, first served across sessions (within a class tier): the oldest pending task in the
    pool goes next."""
    name = "fifo"

    def _key(self, sid, pool, info, head_seq, now, size):
        return head_seq
