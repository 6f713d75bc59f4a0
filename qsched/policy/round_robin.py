from __future__ import annotations

import itertools

from .base import Key, Policy, SessionInfo
from .config import PolicyConfig


class RoundRobin(Policy):
    """One batch per backlogged session in turn (within a class tier), whatever its size or weight."""
    name = "round-robin"

    def __init__(self, cfg: PolicyConfig | None = None):
        super().__init__(cfg)
        self._turn = itertools.count()

    def _key(self, sid: str, pool: str, info: SessionInfo, head_seq: int, now: float, size: int) -> Key | None:
        if sid in self._q:
            return None                  # already in the ring: it keeps its place
        return next(self._turn)
