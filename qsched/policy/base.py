from __future__ import annotations

import heapq
import itertools

from ..config import PolicyConfig


class Policy:
    name = "base"

    def __init__(self, cfg: PolicyConfig | None = None):
        self.cfg = cfg or PolicyConfig()

    def weight(self, *, account: str = "", user: str = "", cls: str = "batch", own: float = 1.0) -> float:
        """Slurm-like share tree flattened: account x user x class x the session's own weight."""
        c = self.cfg
        return (c.account_weights.get(account, 1.0) * c.user_weights.get(user, 1.0)
                * c.class_weights.get(cls, 1.0) * own)

    # event interface; see the package docstring
    def enqueue(self, sid: str, pool: str, weight: float, head_seq: int) -> None:
        raise NotImplementedError

    def pick(self, pool: str) -> str | None:
        raise NotImplementedError

    def charge(self, sid: str, cost: float) -> None:
        pass

    def correct(self, sid: str, estimated: float, measured: float) -> None:
        pass

    def remove(self, sid: str) -> None:
        raise NotImplementedError


class HeapQueues:
    """Per-pool min-heaps of sessions with lazy deletion: O(log S) enqueue and pick."""

    def __init__(self):
        self._heaps: dict[str, list] = {}
        self._live: dict[str, tuple] = {}      # sid -> the entry that is current
        self._tie = itertools.count()

    def push(self, pool: str, key, sid: str) -> None:
        entry = (key, next(self._tie), sid)
        self._live[sid] = entry
        heapq.heappush(self._heaps.setdefault(pool, []), entry)

    def pop(self, pool: str):
        heap = self._heaps.get(pool)
        while heap:
            entry = heapq.heappop(heap)
            if self._live.get(entry[2], ()) is entry:
                del self._live[entry[2]]
                return entry[2], entry[0]
        return None, None

    def discard(self, sid: str) -> None:
        self._live.pop(sid, None)

    def __contains__(self, sid: str) -> bool:
        return sid in self._live
