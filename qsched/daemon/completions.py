"""Completions: the workers' events (one per finished batch) applied to the index, the policy's
charges, usage and quotas, the cost model, and the clients waiting on the batch's tasks."""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from . import replay, sessions

if TYPE_CHECKING:
    from .scheduler import Scheduler

log = logging.getLogger("qsched.scheduler")


async def run_events(sch: Scheduler, redis: Any) -> None:
    """Follow the workers' events stream (a dedicated connection: XREAD blocks)."""
    last = sch.events_from
    while True:
        for eid, ev, inline in await sch.store.read_events(redis, last):
            last = sch.events_from = eid
            try:
                if ev is None:
                    raise ValueError("the event does not parse")
                on_batch_done(sch, ev, inline)
                await replay.record(sch, ev)
                if ev["session"] in sch.index.recorded:
                    await sessions.record_late_usage(sch, ev["session"])
            except Exception:
                log.exception("bad event %s", eid)


def on_batch_done(sch: Scheduler, ev: dict, inline: dict[str, bytes] | None = None) -> None:
    """One finished batch: its tasks leave the index and their waiters are answered; the measured
    device time corrects the policy's estimate and is charged to the session's user and account."""
    index, m = sch.index, sch.metrics
    dev = index.devices.get(ev["device"])
    if dev is None:
        return
    bid, sid = ev["batch"], ev["session"]
    batch, est = dev.outstanding.pop(bid, (None, 0.0))
    placed = index.placed.pop(bid, None)
    if placed is not None and sid in index.sessions:
        index.note_taken(sid, placed.order)
    index.started.discard(bid)
    exec_s = float(ev["exec_s"])
    dev.finished = max(dev.finished, float(ev.get("finished", 0.0)))
    entry = index.sessions.get(sid)
    first_kind = None
    for tid, state in ev["tasks"].items():
        t = index.tasks.pop(tid, None)
        sch.waiters.resolve(tid, (inline or {}).get(tid))
        if t is None:
            continue
        first_kind = first_kind or t.kind
        m.tasks_completed.labels(dev.spec.name, state).inc()
        m.queue_wait.labels(dev.spec.pool).observe(max(0.0, ev["started"] - t.submitted))
        if entry is not None:
            entry.inflight -= 1
    if batch is not None:
        for tid in batch.tasks:       # cancelled while running: nothing to report, still not live
            index.tasks.pop(tid, None)
            sch.waiters.resolve(tid)
        if entry is not None:
            sch.policy.correct(sid, est, exec_s)
        owner = entry.session if entry is not None else index.closing.get(sid)
        if owner is not None:
            now = time.time()
            sch.usage.charge(owner.user, owner.account, exec_s, now)
            sch.quota.charge(owner.user, owner.account, exec_s, now)
            if entry is not None:
                entry.used_s += exec_s
    bindings = int(ev.get("bindings", 0))
    if first_kind:
        sch.cost.observe(dev.spec.name, first_kind, int(ev.get("job_bindings", bindings)),
                         float(ev.get("job_s", exec_s)))
    m.device_busy.labels(dev.spec.name).inc(exec_s)
    m.execution.labels(dev.spec.name).observe(exec_s)
    m.bindings.labels(dev.spec.name).inc(bindings)
    sch.kick()
