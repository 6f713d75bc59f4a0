"""Replay: a requeued, preempted or resumed job spends no device time twice.

Each finished task of a session bound to a Slurm job (or opened with a resume key) is recorded under
the job's record at its position in the job's submission order: the content address of its request
and its result. A later session of the same job (same job id after a requeue, or the same resume key),
of the same user and account, re-attaches to the record; while its requests are, in order, the ones
recorded, they are answered from the record without touching a device (DONE, meta.replayed, charged
nothing). The first request that differs ends the replay for that session: the record is cut there
and the session's tasks are recorded from that position on, as a first run's are.

A record has one writer, the newest session attached to it. Replay is refused (tasks run normally)
where the record is another user's or account's, gone (expired, purged, past its size: a position
missing ends the replay there), or where the admin turned replay off for the pool. A daemon restart
forgets the cursors: the sessions open then go on without replay (safe: they only run again)."""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from ..errors import BadRequest
from ..models import Session, Task

if TYPE_CHECKING:
    from .scheduler import Scheduler
    from .tasks import Items

log = logging.getLogger("qsched.scheduler")
REPLAYED_META = {"replayed": True, "exec_s": 0.0}


def address(pool: str, template: str, t: Task, observables: str, params: bytes) -> str:
    """The content address of a request: everything that decides its result (`template`, the
    template's canonical digest, covers the circuit; the task's seed its samples). Each part is
    length-prefixed, so no two requests share one."""
    h = hashlib.sha256()
    for part in (pool.encode(), t.kind.encode(), template.encode(), str(t.shots).encode(),
                 (t.method or "").encode(), observables.encode(), params, str(t.seed).encode()):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:32]


def record_name(job_id: str, resume: str) -> str | None:
    """The record a session writes and replays: its resume key's, else its Slurm job's, else none."""
    if resume:
        return f"resume:{resume}"
    return f"job:{job_id}" if job_id else None


def matching_prefix(wanted: list[str], recorded: list[str | None]) -> int:
    """How many of the requests, from the first, are the ones recorded at the same positions."""
    n = 0
    for w, r in zip(wanted, recorded):
        if w != r:
            break
        n += 1
    return n


@dataclass
class Cursor:
    """A session's place in its record: the next position, and whether it still replays."""
    name: str
    recorded: int                  # entries in the record when the session attached
    pos: int = 0
    replaying: bool = True
    replayed: int = 0
    tasks: dict[str, tuple[int, str]] = field(default_factory=dict)   # live task -> (position, address)

    def take(self, wanted: list[str], recorded: list[str | None]) -> int:
        """The requests answered from the record (a prefix of `wanted`); the first that differs ends
        the replay. The positions are advanced past the replayed ones."""
        if not self.replaying:
            return 0
        k = matching_prefix(wanted, recorded)
        if k < len(wanted):
            self.replaying = False
        self.pos += k
        self.replayed += k
        return k

    def stop_at(self, pos: int) -> None:
        """Replay ends at `pos`, before where take() had got to (the record lost what was there)."""
        self.replayed -= self.pos - pos
        self.pos, self.replaying = pos, False

    def assign(self, tids: list[str], wanted: list[str]) -> None:
        """Positions for tasks that will run: they are recorded there once DONE."""
        for tid, addr in zip(tids, wanted):
            self.tasks[tid] = (self.pos, addr)
            self.pos += 1


class Replays:
    """The daemon's cursors: by session, and which session writes each record."""

    def __init__(self) -> None:
        self.cursors: dict[str, Cursor] = {}
        self.writer: dict[str, str] = {}           # record name -> the session that writes it
        self.by_task: dict[str, str] = {}          # live recorded task -> its session
        self.started: set[str] = set()             # open sessions that have submitted a task

    def replayed(self, sid: str) -> int:
        c = self.cursors.get(sid)
        return c.replayed if c is not None else 0

    def forget(self, sid: str) -> None:
        """The session closed."""
        self.started.discard(sid)
        self.detach(sid)

    def detach(self, sid: str) -> None:
        """The session records no more (closed, or a newer session of its job writes the record)."""
        c = self.cursors.pop(sid, None)
        if c is None:
            return
        for tid in c.tasks:
            self.by_task.pop(tid, None)
        if self.writer.get(c.name) == sid:
            del self.writer[c.name]


async def attach(sch: Scheduler, s: Session, resume: str = "") -> None:
    """At open: the session's record, if it has one and may use it."""
    name = record_name(s.job_id, resume)
    cfg = sch.config
    if name is None or cfg.replay_ttl_s == 0:
        return
    try:
        await _attach(sch, s, name)
    except RedisError as e:             # the session opens all the same, without replay
        log.warning("session %s: no replay record (%s)", s.id, e)


async def resume(sch: Scheduler, s: Session, key: str) -> None:
    """A session that Slurm opened for its job (it attaches, it does not open) takes a resume key's
    record instead of its job's, before its first task."""
    if not key:
        raise BadRequest("resume: a non-empty key", field="resume")
    async with sch.writer.write():
        if s.id in sch.replay.started:
            raise BadRequest("resume: the session has submitted tasks; a resume key is given before the first",
                             field="resume")
        if sch.config.replay_ttl_s:
            sch.replay.detach(s.id)
            await _attach(sch, s, f"resume:{key}")


async def _attach(sch: Scheduler, s: Session, name: str) -> None:
    off = await sch.store.replay_off(s.pool)
    if off is not None:
        log.info("session %s: no replay record, replay is off on pool %s (%s)", s.id, s.pool, off)
        return
    n = await sch.store.replay_claim(name, s.user, s.account, s.id, sch.config.replay_ttl_s)
    if n is None:
        log.warning("session %s (user %s, account %s): replay record %s belongs to another user or account; "
                    "no replay", s.id, s.user, s.account, name)
        return
    book = sch.replay
    old = book.writer.get(name)
    if old is not None:          # the newest session writes the record (a requeued job's old one is over)
        book.detach(old)
    book.cursors[s.id] = Cursor(name, n, replaying=n > 0)
    book.writer[name] = s.id
    if n:
        log.info("session %s attached to replay record %s (%d tasks recorded)", s.id, name, n)


async def answer(sch: Scheduler, sid: str, pool: str, items: Items) -> Items:
    """Submission (under the write lock): answer the leading requests that the record holds, in
    order; returns the others, which run (and are recorded)."""
    sch.replay.started.add(sid)
    c = sch.replay.cursors.get(sid)
    if c is None:
        return items
    canonical = {t.template: ((await sch.templates.get(t.template)) or {}).get("canonical", t.template)
                 for t, _, _ in items}
    wanted = [address(pool, canonical[t.template], t, obs, params) for t, obs, params in items]
    k = 0
    if c.replaying:
        recorded: list[str | None] = [None] * len(items)
        if c.pos < c.recorded:
            recorded = await sch.store.replay_addrs(c.name, c.pos, len(items))
        start = c.pos
        k = c.take(wanted, recorded)
        if k:
            answered = [(t, start + i) for i, (t, _, _) in enumerate(items[:k])]
            try:
                done = await sch.store.replay_answer(c.name, answered, REPLAYED_META)
            except RedisError:
                c.stop_at(start)        # not answered: a retry of this submission runs it
                raise
            if done < k:            # the record lost positions meanwhile (purged, expired)
                c.stop_at(start + done)
                k = done
            sch.metrics.tasks_replayed.labels(pool).inc(k)
        if not c.replaying:
            await sch.store.replay_truncate(c.name, c.pos)
            log.info("session %s: replay ended at position %d of record %s (%d tasks replayed)", sid, c.pos,
                     c.name, c.replayed)
    rest = items[k:]
    tids = [t.id for t, _, _ in rest]
    c.assign(tids, wanted[k:])
    for tid in tids:
        sch.replay.by_task[tid] = sid
    return rest


async def record(sch: Scheduler, ev: dict) -> None:
    """A finished batch: its DONE tasks go into their records (others leave a gap: replay ends there)."""
    book = sch.replay
    entries = []
    for tid in ev.get("tasks", {}):
        sid = book.by_task.pop(tid, None)
        c = book.cursors.get(sid) if sid is not None else None
        if c is None:
            continue
        pos, addr = c.tasks.pop(tid)
        entries.append((c.name, pos, addr, tid))
    if entries:
        cfg = sch.config
        await sch.store.replay_record(entries, cfg.replay_ttl_s, cfg.replay_max_tasks, cfg.replay_max_bytes)
