"""Sessions: open, the admin's update (class, weight, hold), close with its ledger record, and the
expiry of idle sessions no Slurm job owns."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from ..errors import BadRequest, Conflict, Draining, NotFound, QuotaExceeded
from ..models import Session
from . import limits, replay
from .dispatcher import recall_waiting
from .index import SessionEntry

if TYPE_CHECKING:
    from .scheduler import Scheduler

log = logging.getLogger("qsched.scheduler")


def _check_class(sch: Scheduler, cls: str) -> None:
    if cls not in sch.policy.cfg.class_weights:
        raise BadRequest(f"class: unknown class {cls!r} (classes: {', '.join(sch.policy.cfg.class_weights)})",
                         field="class")


def _check_weight(weight: float) -> None:
    if not (0 < weight <= 1000):
        raise BadRequest("weight: must be in (0, 1000]", field="weight", limit=1000)


async def open_session(sch: Scheduler, *, user: str, uid: int, pool: str, cls: str = "batch", weight: float = 1.0,
                       account: str = "", name: str = "", job_id: str = "", resume: str = "") -> Session:
    if not sch.accepting:
        raise Draining("daemon is draining; retry on the next daemon", field="session")
    if pool not in sch.pools:
        raise BadRequest(f"pool: unknown pool {pool!r} (pools: {', '.join(sorted(sch.pools))})", field="pool")
    _check_class(sch, cls)
    _check_weight(weight)
    spec = sch.policy.cfg.class_spec(cls)
    mine = [e.session.cls for e in sch.sessions.values() if e.session.user == user]
    lim = sch.config.max_sessions_per_user
    if len(mine) >= lim:
        raise Conflict(f"session: user {user!r} has {len(mine)} open sessions, daemon.max_sessions_per_user={lim}; "
                       "close some first", field="daemon.max_sessions_per_user", limit=lim)
    limits.check_open(spec, user=user, account=account, open_sessions=mine.count(cls))
    now = time.time()
    spent = sch.quota.exhausted(user, account, now)
    if spent is not None:       # a new session (a new job) is refused; open ones hold (dispatch.py)
        raise QuotaExceeded(f"quota: {sch.quota.describe(spent, now)}", field=f"quota.{spent.key}",
                            limit=spent.device_s)
    s = Session(id=secrets.token_hex(6), user=user, uid=uid, pool=pool, cls=cls, weight=weight,
                account=account, name=name[:100], job_id=str(job_id), created=time.time())
    await sch.store.create_session(s)
    sch.sessions[s.id] = SessionEntry(s, sch.weight(s), new=True)
    sch.index.by_token[sch.token_for(s.id)] = s.id
    await replay.attach(sch, s, resume)
    log.info("session %s opened: user=%s account=%s job=%s pool=%s class=%s", s.id, s.user, s.account,
             s.job_id or "-", s.pool, s.cls)
    sch.metrics.sessions_open.set(len(sch.sessions))
    return s


async def update_session(sch: Scheduler, sid: str, *, who: str, cls: str | None = None,
                         weight: float | None = None, hold: str | None = None, release: bool = False) -> SessionEntry:
    """The admin's `qsched session update`: class, weight, hold (with a reason) or release. Kept in
    Redis (the session's hash) and logged with who made the change. A hold also takes back the
    session's batches still waiting in an inbox; running ones finish."""
    if hold is not None and release:
        raise BadRequest("hold: give hold or release, not both", field="hold")
    if cls is not None:
        _check_class(sch, cls)
    if weight is not None:
        _check_weight(weight)
    async with sch.writer.write():
        entry = sch.session(sid)
        s = entry.session
        changes: dict = {}
        if cls is not None and cls != s.cls:
            changes["class"] = cls
        if weight is not None and weight != s.weight:
            changes["weight"] = weight
        if hold is not None:
            changes["hold"] = f"held by {who}" + (f": {hold}" if hold else "")
        elif release and s.hold:
            changes["hold"] = ""
        if not changes:
            return entry
        await sch.store.update_session(sid, changes)
        before = {"class": s.cls, "weight": s.weight, "hold": s.hold}
        s.cls = changes.get("class", s.cls)
        s.weight = changes.get("weight", s.weight)
        s.hold = changes.get("hold", s.hold)
        entry.refresh_info()
        entry.weight = sch.weight(s)
        if s.hold:
            entry.held["admin"] = s.hold
            await recall_waiting(sch, sid)
        else:
            entry.held.pop("admin", None)
        sch.policy.remove(sid)          # re-entered with its new tier and weight (or not, if held)
        sch.enqueue(entry)
    log.warning("session %s updated by %s: %s", sid, who,
                ", ".join(f"{k} {before[k]!r} -> {v!r}" for k, v in changes.items()))
    sch.kick()
    return entry


async def close_session(sch: Scheduler, sid: str) -> dict:
    """Cancel what has not started (pending tasks, and batches still waiting in an inbox), wait for
    the session's running batches to end (up to drain_timeout_s), then write its ledger record, so
    the record holds all the device time the session used."""
    async with sch.writer.write():
        entry = sch.session(sid)
        await recall_waiting(sch, sid)
        cancelled = [t.id for t in entry.pending]
        await sch.store.close_session(sid, cancelled)
        entry.pending.clear()
        sch.policy.remove(sid)
        sch.index.drop_session(sid, sch.token_for(sid))
    for tid in cancelled:
        sch.tasks.pop(tid, None)
        sch.waiters.resolve(tid)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + sch.config.drain_timeout_s
    while sch.index.running_for(sid) and loop.time() < deadline:
        await asyncio.sleep(0.05)
    late = sch.index.running_for(sid)
    if late:
        log.warning("session %s closed with batches still running after %.0f s: their usage goes into a "
                    "second ledger record when they end", sid, sch.config.drain_timeout_s)
    else:
        sch.index.closing.pop(sid, None)
    with contextlib.suppress(RedisError):       # else the device watch writes it
        await sch.watch.save_usage()
    usage = await sch.store.session_usage(sid)
    s = entry.session
    record = {"session": sid, "name": s.name, "user": s.user, "account": s.account, "job_id": s.job_id,
              "pool": s.pool, "class": s.cls, "opened": s.created, "closed": time.time(),
              "cancelled": len(cancelled), "replayed": sch.replay.replayed(sid), **usage.__dict__}
    sch.replay.forget(sid)
    await sch.store.record_accounting(record)
    if late:
        sch.index.recorded[sid] = record
    sch.views.refresh_gauges()
    log.info("session %s closed: user=%s job=%s tasks=%d device_s=%.3f cancelled=%d", sid, s.user,
             s.job_id or "-", record["tasks"], record["device_seconds"], len(cancelled))
    return record


async def record_late_usage(sch: Scheduler, sid: str) -> None:
    """The last batch of a closed session that outlived its close ended: charge what it used (the
    device ran it; the policy's usage and the quota were charged at its completion) in a second ledger
    record, of the difference, so the ledger holds all the device time the session used."""
    first = sch.index.recorded.get(sid)
    if first is None or sch.index.running_for(sid):
        return
    usage = (await sch.store.session_usage(sid)).__dict__
    del sch.index.recorded[sid]
    sch.index.closing.pop(sid, None)
    record = {**first, "closed": time.time(), "late": True,
              **{k: v - first.get(k, 0) for k, v in usage.items()}}
    await sch.store.record_accounting(record)
    log.info("session %s: batches that outlived its close used %.3f device-seconds more (a second ledger "
             "record)", sid, record["device_seconds"])


async def run_session_expiry(sch: Scheduler) -> None:
    """Close sessions idle past daemon.session_idle_timeout_s that no Slurm job owns (the job's end
    closes those) and that have nothing queued or running: a client that never closes its session
    must not hold its memory and index entry forever."""
    limit = sch.config.session_idle_timeout_s
    while True:
        await asyncio.sleep(min(60.0, max(limit / 4, 0.25)))
        now = time.monotonic()
        for sid, e in list(sch.sessions.items()):
            idle = now - e.last_active
            if e.session.job_id or e.pending or e.inflight or idle <= limit or sid not in sch.sessions:
                continue
            log.info("session %s expired: idle %.0f s > daemon.session_idle_timeout_s, no Slurm job", sid, idle)
            with contextlib.suppress(NotFound):         # closed by its owner meanwhile
                await close_session(sch, sid)
                sch.metrics.sessions_expired.inc()
