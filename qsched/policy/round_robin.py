from __future__ import annotations

from .base import Key, Policy, SessionInfo
from .config import PolicyConfig


class RoundRobin(Policy):
    """One batch per backlogged session in turn (within a class tier), whatever its size or weight."""
    name = "round-robin"

    def __init__(self, cfg: PolicyConfig | None = None):
        super().__init__(cfg)
        self._turn = 0       # an int: a policy is deep-copied (forecasts)

    def _key(self, sid: str, pool: str, info: SessionInfo, head_seq: int, now: float, size: int) -> Key | None:
        if sid in self._q:
            return None                  # already in the ring: it keeps its place
        self._turn += 1
        return self._turn
