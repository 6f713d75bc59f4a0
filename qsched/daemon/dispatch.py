"""Dispatch decisions, pure (no I/O, tested without Redis): what one pick takes from a session's
queue, which batches fill the devices' free slots (`plan`), and which outstanding batches a higher
tier may take back (`preemption`). The scheduler commits what these decide (dispatcher.py)."""
from __future__ import annotations

import functools
import json
import logging
import secrets
from collections import deque
from collections.abc import Callable

from ..models import Batch, Task, TaskState
from ..policy import Policy
from ..policy.preempt import Dispatched, Recaller, candidates
from ..policy.quota import QuotaLedger
from .cost import CostModel
from .index import DeviceEntry, Index, Placed, SessionEntry

log = logging.getLogger("qsched.scheduler")


def take_batch(pending: deque[Task], *, merge: bool, max_bindings: int, max_batch_s: float,
               estimate: Callable[[int], float]) -> list[Task]:
    """The head task, plus the following tasks that can share its simulator call.

    Merging stops at the device's binding limit and at the policy's quantum, max_batch_s estimated
    device-seconds: without that bound one pick takes a session's whole backlog, the policy's charge
    comes after the fact, and competing sessions merely alternate whatever their weights."""
    head = pending.popleft()
    tasks, bindings = [head], head.bindings
    if merge:
        key = head.merge_key()
        while pending and pending[0].merge_key() == key:
            nxt = bindings + pending[0].bindings
            if nxt > max_bindings or estimate(nxt) > max_batch_s:
                break
            tasks.append(pending.popleft())
            bindings = nxt
    return tasks


def pool_for(index: Index, policy: Policy, entry: SessionEntry) -> str:
    """The session's pool, or its class's spill_to pool while every device of its own is draining,
    paused or in maintenance."""
    home = entry.session.pool
    spill = policy.cfg.class_spec(entry.session.cls).spill_to
    return spill if spill and spill != home and spill in index.pools and index.pool_down(home) else home


def enqueue(index: Index, policy: Policy, entry: SessionEntry, now: float, since: float | None = None) -> None:
    """(Re)enter a backlogged session into the policy; a held one is taken out."""
    if entry.held:
        policy.remove(entry.session.id)
        return
    if entry.pending:
        policy.enqueue(entry.session.id, pool_for(index, policy, entry), entry.info, entry.pending[0].seq,
                       now=now, size=len(entry.pending), since=since)


def respill(index: Index, policy: Policy, pool: str, now: float) -> None:
    """`pool` went down or came back: requeue the sessions that may spill from it where they now
    belong (the policy forgets their place in the old pool's queue)."""
    for entry in index.sessions.values():
        if entry.session.pool == pool and policy.cfg.class_spec(entry.session.cls).spill_to:
            policy.remove(entry.session.id)
            enqueue(index, policy, entry, now)


def requeue(index: Index, policy: Policy, dev: DeviceEntry, b: Batch, est: float, reason: str,
            now: float) -> tuple[SessionEntry | None, list[Task]]:
    """Memory side of a recall (index.requeue), the policy un-charged and the session re-entered;
    returns its entry (None: gone) and the batch's live tasks."""
    entry, live, placed = index.requeue(dev, b, attempt=reason == "worker_lost")
    if entry is not None:
        policy.correct(b.session, est, 0.0)
        # preempted: the session keeps the wait it had (anti-starvation counts from then)
        enqueue(index, policy, entry, now, placed.since if reason == "preempt" else None)
    return entry, live


def hold_if_over_quota(policy: Policy, quota: QuotaLedger, entry: SessionEntry, now: float) -> bool:
    spent = quota.exhausted(entry.session.user, entry.session.account, now)
    if spent is None:
        return False
    reason = f"quota: {quota.describe(spent, now)}"
    if "quota" not in entry.held:
        log.warning("session %s held: %s", entry.session.id, reason)
    entry.held["quota"] = reason
    policy.remove(entry.session.id)
    return True


def release_quota_holds(index: Index, policy: Policy, quota: QuotaLedger, now: float) -> int:
    """Sessions held by a quota whose window rolled over (or whose quota was raised) go back to the
    policy; returns how many."""
    n = 0
    for entry in index.sessions.values():
        if "quota" in entry.held and quota.exhausted(entry.session.user, entry.session.account, now) is None:
            del entry.held["quota"]
            log.info("session %s: quota hold released", entry.session.id)
            enqueue(index, policy, entry, now)
            n += 1
    return n


def plan(index: Index, policy: Policy, cost: CostModel, quota: QuotaLedger, now: float) -> list[Batch]:
    """Fill every live device's free slots from the policy: the batches to commit, with the index and
    the policy already changed as if they were (the caller rebuilds the index if the commit fails)."""
    batches: list[Batch] = []
    cfg = policy.cfg
    progress = True
    while progress:
        progress = False
        for dev in index.devices.values():
            if not dev.free_slots():
                continue
            sid = policy.pick(dev.spec.pool, now=now)
            if sid is None:
                continue
            progress = True
            promoted, since = policy.last_promoted, policy.last_since
            entry = index.sessions.get(sid)
            if entry is None or not entry.pending:
                continue
            if quota.specs and hold_if_over_quota(policy, quota, entry, now):
                continue
            name, kind = dev.spec.name, entry.pending[0].kind
            tasks = take_batch(entry.pending, merge=cfg.merge, max_bindings=dev.spec.limits.max_batch_bindings,
                               max_batch_s=cfg.max_batch_s, estimate=functools.partial(cost.marginal, name, kind))
            est = cost.estimate(name, kind, sum(t.bindings for t in tasks))
            policy.charge(sid, est)
            enqueue(index, policy, entry, now)
            batch = Batch(id="b" + secrets.token_hex(6), device=name, session=sid, tasks=[t.id for t in tasks],
                          created=now)
            if dev.spec.merge_batches > 1:
                # the worker may run it in one device call (one job) with other sessions' batches of
                # the same kind, shots and method: a job carries several circuits, so any template
                batch.merge = json.dumps(tasks[0].merge_key()[1:])
                batch.bindings = sum(t.bindings for t in tasks)
            for t in tasks:
                t.state, t.batch = TaskState.SCHEDULED, batch.id
            entry.inflight += len(tasks)
            dev.outstanding[batch.id] = (batch, est)
            index.placed[batch.id] = Placed(index.next_order(), policy.tier_of(entry.info), promoted, since)
            batches.append(batch)
    return batches


def may_preempt_for(index: Index, policy: Policy, entry: SessionEntry) -> bool:
    """A lower tier's batch is outstanding on a device of the session's pool (cheap: at most two
    per device)."""
    if not policy.cfg.preempt:
        return False
    tier = policy.tier_of(entry.info)
    return any(index.placed[b.id].tier < tier for d in index.pools.get(entry.session.pool, ())
               for b, _ in index.devices[d.name].outstanding.values() if b.id in index.placed)


def preemption(index: Index, policy: Policy) -> Recaller | None:
    """The in-memory half of preemption: the lower-tier outstanding batches a backlogged higher tier
    of their pool may take back, in the order policy/preempt.py rules (None: nothing to try). The
    caller recalls each from Redis and reports the outcome with `Recaller.done`."""
    top = {pool: policy.top_tier(pool) for pool in index.pools}
    if all(t is None for t in top.values()):
        return None
    free: dict[str, int] = {}
    waiting: list[Dispatched] = []
    for dev in index.devices.values():
        pool = dev.spec.pool
        if top.get(pool) is None:
            continue
        free[pool] = free.get(pool, 0) + dev.free_slots()
        for b, _ in dev.outstanding.values():
            p = index.placed.get(b.id, Placed(0, 0))
            waiting.append(Dispatched(b.id, dev.spec.name, b.session, pool, p.tier, p.order, p.promoted,
                                      b.id in index.started, p.order < index.taken_upto.get(b.session, -1)))
    ordered = candidates(waiting, top)
    if not ordered:
        return None
    return Recaller(ordered, backlog_above=policy.backlogged_above, free_slots=free)
