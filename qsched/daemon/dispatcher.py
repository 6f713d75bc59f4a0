"""Committing what dispatch.py decides: the dispatcher loop, and taking batches back from inboxes
(preemption, holds, paused devices, drain) with the memory side of each recall."""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from ..models import Batch
from . import dispatch
from .index import DeviceEntry

if TYPE_CHECKING:
    from .scheduler import Scheduler

log = logging.getLogger("qsched.scheduler")


async def run_dispatcher(sch: Scheduler) -> None:
    sch.kick()        # (re)started: there may be work that arrived while it was down
    while True:
        await sch.kicked.wait()
        sch.kicked.clear()
        async with sch.writer.write():
            if sch.policy.cfg.preempt:
                await preempt(sch)
            batches = sch.plan()
            if batches:
                await sch.writer.commit(sch.store.commit(None, [], batches))
        count_dispatched(sch, batches)


async def preempt(sch: Scheduler) -> int:
    """Take back lower-tier batches still waiting in an inbox when a higher tier of their pool has
    work that no free slot serves (policy/preempt.py has the rules). In memory first, to decide;
    Redis only for a batch that is a candidate. Returns how many were taken back."""
    walk = dispatch.preemption(sch.index, sch.policy)
    if walk is None:
        return 0
    n = 0
    for c in walk:
        dev = sch.index.devices[c.device]
        held = dev.outstanding.get(c.batch)
        if held is None:            # it finished while an earlier recall awaited Redis: it ran
            walk.done(c, False)
            continue
        b, est = held
        try:
            taken = await sch.store.recall(b, c.device, "inbox")
        except RedisError as e:
            sch.writer.failed(e)
            raise
        walk.done(c, taken)
        if not taken:
            sch.index.started.add(c.batch)
            sch.index.note_taken(c.session, c.order)
        else:
            requeued(sch, dev, b, est, "preempt")
            sch.metrics.preemptions.labels(c.pool).inc()
            n += 1
    if n:
        log.debug("preempted %d lower-tier batches waiting in inboxes", n)
    return n


def requeued(sch: Scheduler, dev: DeviceEntry, b: Batch, est: float, reason: str) -> None:
    """Memory side of a recall (dispatch.requeue), with its metrics and the waiters of a gone session."""
    entry, live = dispatch.requeue(sch.index, sch.policy, dev, b, est, reason, time.time())
    sch.metrics.batches_requeued.labels(dev.spec.name, reason).inc()
    if entry is None:
        for t in live:
            sch.waiters.resolve(t.id)
        return
    sch.metrics.tasks_pending.labels(entry.session.pool).inc(len(live))


async def recall_waiting(sch: Scheduler, sid: str | None = None) -> int:
    """Take back the batches (of one session, or all) still waiting in an inbox; running ones finish.
    Newest first: each recall puts its tasks at the head of their queue. Call under the write lock."""
    n = 0
    for dev in sch.index.devices.values():
        for b, est in reversed(list(dev.outstanding.values())):
            if (sid is None or b.session == sid) and await sch.store.recall(b, dev.spec.name, "inbox"):
                requeued(sch, dev, b, est, "recall")
                n += 1
    return n


def count_dispatched(sch: Scheduler, batches: list[Batch]) -> None:
    for b in batches:
        spec = sch.index.devices[b.device].spec
        sch.metrics.tasks_pending.labels(spec.pool).dec(len(b.tasks))
        sch.metrics.batches.labels(spec.name).inc()
