from __future__ import annotations

from .base import Key, Policy, SessionInfo


class Fifo(Policy):
    """First come, first served across sessions (within a class tier): the oldest pending task in the
    pool goes next."""
    name = "fifo"

    def _key(self, sid: str, pool: str, info: SessionInfo, head_seq: int, now: float, size: int) -> Key | None:
        return head_seq
