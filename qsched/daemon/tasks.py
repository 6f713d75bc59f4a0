"""Tasks: submission (idempotent, durable before acknowledged, dispatched in the same commit when a
device has room) and cancellation."""
from __future__ import annotations

import base64
import time
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from ..errors import BadRequest, Draining, NotFound, QuotaExceeded, ReplicationTimeout, Unavailable
from ..models import Batch, Task, TaskState
from . import dispatch, limits
from .dispatcher import count_dispatched
from .index import SessionEntry

if TYPE_CHECKING:
    from .scheduler import Scheduler

Items = list[tuple[Task, str, bytes]]        # validated tasks with their observables JSON and raw params
UNREPLICATED_MAX = 100_000


async def submit(sch: Scheduler, sid: str, items: Items, idempotency_key: str | None = None) -> tuple[list[str], bool]:
    """Returns the task ids and whether they are new: a retry of an acknowledged submission (same
    idempotency key) gets the first answer's ids and submits nothing."""
    if not sch.accepting:
        raise Draining("daemon is draining; no new tasks (retry on the next daemon)", field="tasks")
    entry = sch.session(sid)
    async with sch.writer.write():
        if sid not in sch.sessions:              # closed while we waited
            raise NotFound(f"session: {sid!r} closed", field="session")
        entry = sch.sessions[sid]
        if idempotency_key:
            done = await _submitted(sch, entry, idempotency_key)
            if done is not None:
                return done, False
        _check_limits(sch, entry, items)
        now = time.time()
        was_idle = not entry.pending
        for t, _, _ in items:
            sch.index.seq += 1
            t.seq, t.submitted = sch.index.seq, now
            entry.pending.append(t)
            sch.tasks[t.id] = t
        if was_idle:
            sch.enqueue(entry)
        batches = sch.plan()
        _attach_payloads(batches, items)
        ids = [t.id for t, _, _ in items]
        try:
            await sch.writer.commit(sch.store.commit(sid, items, batches, idempotency_key))  # durable, then acked
        except ReplicationTimeout:
            # the primary has them, no replica said so in time: not acknowledged (503), and a retry
            # under the same key gets these ids (the key is in the same commit)
            if idempotency_key:
                entry.remember(idempotency_key, ids)
                if len(sch.unreplicated) >= UNREPLICATED_MAX:
                    sch.unreplicated.clear()         # bounded: clients that never retried
                sch.unreplicated.add(idempotency_key)
            raise
        if idempotency_key:
            entry.remember(idempotency_key, ids)
        if entry.pending and dispatch.may_preempt_for(sch.index, sch.policy, entry):
            sch.kick()              # the dispatcher takes back a lower tier's waiting batch
    for t, _, _ in items:
        sch.metrics.tasks_submitted.labels(entry.session.pool, t.kind).inc()
    sch.metrics.tasks_pending.labels(entry.session.pool).inc(len(items))
    count_dispatched(sch, batches)
    return ids, True


async def _submitted(sch: Scheduler, entry: SessionEntry, key: str) -> list[str] | None:
    """The ids an earlier submission under this key was answered with; once a replica has it, if it
    was answered 503 for want of one."""
    done = entry.submits.get(key)
    if done is None and not entry.knows_all_submits:
        done = await sch.store.submitted_ids(entry.session.id, key)
    if done is not None and key in sch.unreplicated:
        try:
            await sch.store.wait_replicated()     # acknowledged only once a replica has it
        except RedisError as e:
            # the connection that wrote it is gone (a failover): the new primary may lack it, so
            # rebuild the index from there; the retry after that reads the key back
            sch.writer.store_changed()
            raise Unavailable(f"store: {e}; retry", field="store") from None
        sch.unreplicated.discard(key)
    return done


def _check_limits(sch: Scheduler, entry: SessionEntry, items: Items) -> None:
    """The session's pending limit, its class limits (limits.py) and its quotas; counts only what a
    set limit needs."""
    s, cfg = entry.session, sch.policy.cfg
    limit = cfg.max_pending_per_session
    if len(entry.pending) + len(items) > limit:
        raise BadRequest(f"tasks: session would have {len(entry.pending) + len(items)} pending tasks, "
                         f"limit {limit}", field="tasks", limit=limit)
    spec = cfg.class_spec(s.cls)
    pending = (sum(len(e.pending) for e in sch.sessions.values() if e.session.user == s.user
                   and e.session.cls == s.cls) if spec.max_pending_per_user is not None else 0)
    estimates: list[float] = []
    if limits.needs_estimates(spec):
        devices = [d.name for d in sch.pools.get(s.pool, ())]
        estimates = [min(sch.cost.estimate(d, t.kind, t.bindings) for d in devices) for t, _, _ in items]
    limits.check_submit(spec, user=s.user, pending_for_user=pending, new_tasks=len(items),
                        task_estimates_s=estimates, session_used_s=entry.used_s)
    now = time.time()
    spent = sch.quota.exhausted(s.user, s.account, now)
    if spent is not None:
        raise QuotaExceeded(f"quota: {sch.quota.describe(spent, now)}", field=f"quota.{spent.key}",
                            limit=spent.device_s)


def _attach_payloads(batches: list[Batch], items: Items) -> None:
    """A batch made only of tasks accepted in this same commit carries their payloads, so its worker
    starts without a read. The payload still only lives in Redis (in the inbox entry)."""
    new = {t.id: (t, obs, params) for t, obs, params in items}
    for b in batches:
        if all(tid in new for tid in b.tasks):
            b.inline = []
            for tid in b.tasks:
                t, obs, params = new[tid]
                b.inline.append([t.id, t.kind, t.template, t.shots, t.method, obs, t.submitted, t.bindings,
                                 t.seed, base64.b64encode(params).decode()])


async def cancel(sch: Scheduler, tid: str) -> str:
    async with sch.writer.write():
        t = sch.tasks.get(tid)
        if t is None:
            state = (await sch.store.task_fields(tid, "state"))[0]
            if state is None:
                raise NotFound(f"task: no task {tid!r}", field="task")
            return state
        await sch.store.cancel_task(tid, t.session)
        entry = sch.sessions.get(t.session)
        if entry is not None:
            if t.state == TaskState.PENDING:
                entry.pending.remove(t)       # the policy skips a session found empty at its turn
                sch.metrics.tasks_pending.labels(entry.session.pool).dec()
            else:
                entry.inflight -= 1           # scheduled: its batch's completion no longer counts it
        t.state = TaskState.CANCELLED
        sch.tasks.pop(tid, None)
    sch.waiters.resolve(tid)
    return TaskState.CANCELLED.value
