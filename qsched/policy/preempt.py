"""Preemption at batch boundaries: which dispatched batches to try to take back. Pure, no I/O.

A batch waiting in a device's inbox (dispatched, not yet taken by its worker) may be recalled when a
session of a higher tier of the same pool is backlogged and no free slot would serve it. A running batch
is never interrupted: the recall itself (store.recall) is atomic against the worker's BLMOVE, and fails
when the worker took the batch first.

Order rules, so that preemption never reorders a session's tasks and never undoes the anti-starvation
bound:
  - newest dispatched first, and a session's batches newest first: once one of a session's batches
    could not be taken back (it runs), none of its older ones is tried (they run or ran before it);
  - likewise per device (its inbox is first in, first out: if a newer entry was taken, so were older);
  - nor a batch of a session whose newer batch a worker already took (on another device, it ran first:
    taking the older one back would dispatch it again behind the newer one);
  - a batch picked by an anti-starvation promotion is not preempted;
  - in general, a batch that stays (for any of these reasons) keeps its session's older batches too;
  - at most as many batches as there are backlogged higher-tier sessions, less the pool's free slots.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Dispatched:
    """One outstanding batch as the preemption rules see it."""
    batch: str
    device: str
    session: str
    pool: str
    tier: int
    order: int             # dispatch order (larger: newer)
    promoted: bool = False
    started: bool = False  # a recall already found it taken by its worker
    behind: bool = False   # a newer batch of its session was already taken by a worker


def candidates(outstanding: list[Dispatched], top_tier: dict[str, int | None]) -> list[Dispatched]:
    """The batches that a backlogged higher tier could preempt, newest first. `top_tier[pool]`: the
    pool's highest backlogged tier (None: no backlog)."""
    out = []
    for b in sorted(outstanding, key=lambda b: -b.order):
        top = top_tier.get(b.pool)
        if top is not None and b.tier < top:
            out.append(b)         # those that stay too (promoted, started): they rule out older ones
    return out


class Recaller:
    """Walks the candidates, skipping what the order rules rule out after a failed recall, within
    each pool's budget. `backlog_above(pool, tier)`: backlogged sessions of the pool above that tier;
    `free_slots[pool]`: free dispatch slots of the pool's online devices now. Usage:
    `for b in r: r.done(b, recalled)`."""

    def __init__(self, ordered: list[Dispatched], *, backlog_above: Callable[[str, int], int],
                 free_slots: dict[str, int]) -> None:
        self._ordered = ordered
        self._backlog_above = backlog_above
        self._free = dict(free_slots)
        self._taken: dict[str, int] = {}
        self._blocked_sessions: set[str] = set()
        self._blocked_devices: set[str] = set()

    def _budget(self, b: Dispatched) -> int:
        return self._backlog_above(b.pool, b.tier) - self._free.get(b.pool, 0) - self._taken.get(b.pool, 0)

    def __iter__(self) -> Iterator[Dispatched]:
        for b in self._ordered:
            if b.session in self._blocked_sessions:
                continue
            if b.started or b.device in self._blocked_devices:
                self.done(b, False)                # taken by its worker (known, or its inbox says so)
                continue
            if b.behind or b.promoted or self._budget(b) <= 0:
                # it stays where it is, so none of its session's older batches may be taken back (they
                # would be dispatched again behind it); its device's inbox may still hold others'
                self._blocked_sessions.add(b.session)
                continue
            yield b

    def done(self, b: Dispatched, recalled: bool) -> None:
        if recalled:
            self._taken[b.pool] = self._taken.get(b.pool, 0) + 1
        else:
            self._blocked_sessions.add(b.session)
            self._blocked_devices.add(b.device)
