from __future__ import annotations

from .base import HeapQueues, Policy


class FairShare(Policy):
    """Weighted start-time fair queuing (Goyal et al., SFQ) on device-seconds.

    Each session has a finish tag F. When it becomes backlogged its start tag is S = max(v - c / w, F),
    where v is the pool's virtual time (the start tag of the last pick) and c the policy's
    return_credit_s: a session back from a classical phase re-enters at (about) the current virtual
    time, so the credit it could bank while idle is at most c device-seconds. That small credit lets a
    returning session's burst run next rather than queue behind sessions that never stopped: a hybrid
    job's critical path is its own alternation, and waiting at every return stretches it. A pick advances
    v to the picked start tag and charges F = S + cost / weight with the estimated cost; the measured
    cost corrects F when the batch ends.
    """
    name = "fair-share"

    def __init__(self, cfg=None):
        super().__init__(cfg)
        self._q = HeapQueues()
        self._finish: dict[str, float] = {}
        self._start: dict[str, float] = {}
        self._weight: dict[str, float] = {}
        self._vtime: dict[str, float] = {}
        self._pool_of: dict[str, str] = {}
        self._carry: dict[str, float] = {}        # corrections that arrived while the session was queued

    def enqueue(self, sid, pool, weight, head_seq):
        self._weight[sid] = weight
        self._pool_of[sid] = pool
        v = self._vtime.get(pool, 0.0) - self.cfg.return_credit_s / weight
        s = max(v, self._finish.get(sid, 0.0))
        self._start[sid] = s
        self._q.push(pool, (s, head_seq), sid)

    def pick(self, pool):
        sid, key = self._q.pop(pool)
        if sid is not None:
            # monotone: a returning session's credited start tag lies below v, and letting v follow it
            # down would push everyone served recently behind it, again and again
            self._vtime[pool] = max(self._vtime.get(pool, 0.0), key[0])
        return sid

    def charge(self, sid, cost):
        self._finish[sid] = (self._start.get(sid, 0.0) + cost / self._weight.get(sid, 1.0)
                             + self._carry.pop(sid, 0.0))

    def correct(self, sid, estimated, measured):
        if sid not in self._finish:
            return
        delta = (measured - estimated) / self._weight.get(sid, 1.0)
        if sid in self._q:
            # queued again already (it stayed backlogged): its start tag came from the uncorrected
            # finish tag, and its next charge overwrites that tag; carry the difference into it
            self._carry[sid] = self._carry.get(sid, 0.0) + delta
        else:
            self._finish[sid] += delta

    def remove(self, sid):
        self._q.discard(sid)
        for d in (self._finish, self._start, self._weight, self._pool_of, self._carry):
            d.pop(sid, None)

    def virtual_time(self, pool: str) -> float:
        return self._vtime.get(pool, 0.0)
