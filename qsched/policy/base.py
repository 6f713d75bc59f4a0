from __future__ import annotations

import copy
import heapq
from dataclasses import dataclass
from typing import Any

from ..options import Option
from .config import PolicyConfig
from .usage import UsageLedger

Key = Any          # a policy's order key within a tier: smallest first (a number or a tuple of them)


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What a policy sees of a session: who it is charged to, its class and its own weight. Frozen: a
    session's identity does not change while it is open (its size is given with each enqueue)."""
    id: str
    pool: str
    cls: str = "batch"
    account: str = ""
    user: str = ""
    weight: float = 1.0          # the session's own weight (a client may lower it, admins raise it)
    created: float = 0.0         # Unix time the session was opened


class Policy:
    """The event interface (see the package docstring). Every policy orders backlogged sessions per pool
    and per class tier: a higher tier goes first, strictly, except that a session of a lower tier that
    has waited `max_wait_s` is promoted (the anti-starvation bound). Within a tier the subclass's key
    decides. Time is given by the caller (`now`), never read: policies are tested in simulated time."""
    name = "base"
    OPTIONS: tuple[Option, ...] = ()       # the policy's own options (validated by config.parse_policy)

    def __init__(self, cfg: PolicyConfig | None = None):
        self.cfg = cfg or PolicyConfig()
        self.options = resolve_options(type(self), self.cfg.options)
        self.usage = UsageLedger(self.cfg.decay_half_life_s)   # the scheduler attaches its own
        self._q = TieredQueues()
        self._now = 0.0
        self.promotions = 0
        # of the last pick: whether it was an anti-starvation promotion, and since when the session had
        # waited (a batch taken back by preemption re-enters with that wait, not a fresh one)
        self.last_promoted = False
        self.last_since = 0.0

    def weight(self, *, account: str = "", user: str = "", cls: str = "batch", own: float = 1.0) -> float:
        """Slurm-like share tree flattened: account x user x class x the session's own weight."""
        c = self.cfg
        return (c.account_weights.get(account, 1.0) * c.user_weights.get(user, 1.0)
                * c.class_weights.get(cls, 1.0) * own)

    def weight_of(self, info: SessionInfo) -> float:
        return self.weight(account=info.account, user=info.user, cls=info.cls, own=info.weight)

    def tier_of(self, info: SessionInfo) -> int:
        spec = self.cfg.classes.get(info.cls)
        return spec.tier if spec is not None else 0

    def _clock(self, now: float | None) -> float:
        if now is not None and now > self._now:
            self._now = now
        return self._now

    # event interface; see the package docstring
    def enqueue(self, sid: str, pool: str, session: SessionInfo | float, head_seq: int, *,
                now: float | None = None, size: int = 0, since: float | None = None) -> None:
        """`session` is the session's SessionInfo; a bare number is taken as a tier-0 session of that
        effective weight (the interface before classes, kept for simulations). `since`: the session has
        waited since then (a preempted batch's session keeps its wait for the anti-starvation bound)."""
        info = session if isinstance(session, SessionInfo) else SessionInfo(sid, pool, cls="", weight=float(session))
        t = self._clock(now)
        key = self._key(sid, pool, info, head_seq, t, size)
        if key is not None:
            self._q.push(pool, self.tier_of(info), key, sid, t, since=since)

    def pick(self, pool: str, *, now: float | None = None) -> str | None:
        sid, key, promoted = self._q.pop(pool, self._clock(now), self.cfg.max_wait_s)
        if sid is not None:
            self.promotions += promoted
            self.last_promoted, self.last_since = promoted, self._q.last_since
            self._picked(sid, pool, key)
        return sid

    def top_tier(self, pool: str) -> int | None:
        """The highest tier of the pool with a backlogged session, or None."""
        return self._q.top_tier(pool)

    def waiting_since(self, sid: str) -> float | None:
        """When the session's current wait began (None: not queued)."""
        return self._q.since(sid)

    def backlogged_above(self, pool: str, tier: int) -> int:
        """How many sessions of the pool are backlogged in tiers above `tier`."""
        return self._q.count_above(pool, tier)

    def charge(self, sid: str, cost: float) -> None:
        pass

    def correct(self, sid: str, estimated: float, measured: float) -> None:
        pass

    def remove(self, sid: str) -> None:
        self._q.discard(sid)
        self._forget(sid)

    def copy(self) -> Policy:
        """An independent copy, its usage ledger included, to plan forward on (daemon/forecast.py);
        factors imported from Slurm are shared, read-only."""
        imported = getattr(self, "imported", None)
        return copy.deepcopy(self, {id(imported): imported} if imported is not None else None)

    # what a subclass provides
    def _key(self, sid: str, pool: str, info: SessionInfo, head_seq: int, now: float, size: int) -> Key | None:
        """The session's order key within its tier (smallest first); None keeps it where it is."""
        raise NotImplementedError

    def _picked(self, sid: str, pool: str, key: Key) -> None:
        pass

    def _forget(self, sid: str) -> None:
        pass


def resolve_options(cls: type[Policy], given: dict) -> dict:
    """The policy's options with defaults filled in (config.parse_policy has validated `given`)."""
    out = {o.name: o.default for o in cls.OPTIONS}
    out.update({k: v for k, v in given.items() if k in out})
    return out


class TieredQueues:
    """Per (pool, tier) min-heaps of sessions with lazy deletion, and beside each a heap by the time the
    session started waiting (for the anti-starvation bound). O(log S) push and pop; the number of tiers
    of a pool is small (classes)."""

    def __init__(self) -> None:
        self._heaps: dict[tuple[str, int], list] = {}
        self._ages: dict[tuple[str, int], list] = {}
        self._count: dict[tuple[str, int], int] = {}
        self._tiers: dict[str, list[int]] = {}          # pool -> its tiers, highest first
        self._live: dict[str, tuple] = {}               # sid -> (slot, entry, age entry)
        self._tie = 0          # a plain int, not itertools.count: a policy is deep-copied (forecasts)
        self.last_since = 0.0                           # the wait start of the session popped last

    def push(self, pool: str, tier: int, key: Key, sid: str, now: float, *, since: float | None = None) -> None:
        """since: the session has waited since then (default: now, or its current wait if queued)."""
        slot = (pool, tier)
        old = self._live.pop(sid, None)
        if since is None:
            since = now
            if old is not None and old[0] == slot:
                since = old[2][0]                     # re-keyed, still waiting since then
        if old is not None:
            self._count[old[0]] -= 1
        if slot not in self._heaps:
            self._heaps[slot], self._ages[slot], self._count[slot] = [], [], 0
            self._tiers[pool] = sorted({*self._tiers.get(pool, ()), tier}, reverse=True)
        n = self._tie
        self._tie += 1
        entry, age = (key, n, sid), (since, n, sid)
        self._live[sid] = (slot, entry, age)
        self._count[slot] += 1
        heapq.heappush(self._heaps[slot], entry)
        heapq.heappush(self._ages[slot], age)
        self._compact(slot)

    def _is_live(self, sid: str, obj: tuple, i: int) -> bool:
        live = self._live.get(sid)
        return live is not None and live[i] is obj

    def _compact(self, slot: tuple[str, int]) -> None:
        live = self._count[slot]
        for heaps, i in ((self._heaps, 1), (self._ages, 2)):
            h = heaps[slot]
            if len(h) > 2 * live + 64:
                h[:] = [e for e in h if self._is_live(e[2], e, i)]
                heapq.heapify(h)

    def _take(self, sid: str) -> tuple:
        slot, entry, age = self._live.pop(sid)
        self._count[slot] -= 1
        self.last_since = age[0]
        return entry

    def top_tier(self, pool: str) -> int | None:
        return next((t for t in self._tiers.get(pool, ()) if self._count[(pool, t)]), None)

    def since(self, sid: str) -> float | None:
        live = self._live.get(sid)
        return live[2][0] if live is not None else None

    def count_above(self, pool: str, tier: int) -> int:
        return sum(self._count[(pool, t)] for t in self._tiers.get(pool, ()) if t > tier)

    def pop(self, pool: str, now: float, max_wait_s: float | None) -> tuple[str | None, Key | None, bool]:
        """(sid, key, promoted) of the next session, or (None, None, False)."""
        tiers = [t for t in self._tiers.get(pool, ()) if self._count[(pool, t)]]
        if not tiers:
            return None, None, False
        if max_wait_s is not None and len(tiers) > 1:
            oldest = None
            for t in tiers[1:]:
                ages = self._ages[(pool, t)]
                while ages and not self._is_live(ages[0][2], ages[0], 2):
                    heapq.heappop(ages)
                if ages and now - ages[0][0] >= max_wait_s and (oldest is None or ages[0] < oldest):
                    oldest = ages[0]
            if oldest is not None:
                entry = self._take(oldest[2])
                return entry[2], entry[0], True
        heap = self._heaps[(pool, tiers[0])]
        while heap:
            entry = heapq.heappop(heap)
            if self._is_live(entry[2], entry, 1):
                self._take(entry[2])
                return entry[2], entry[0], False
        return None, None, False        # unreachable while counts are right

    def discard(self, sid: str) -> None:
        old = self._live.pop(sid, None)
        if old is not None:
            self._count[old[0]] -= 1

    def __contains__(self, sid: str) -> bool:
        return sid in self._live

    def __len__(self) -> int:
        return len(self._live)
