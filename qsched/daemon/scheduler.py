"""The scheduling index and its writes. The index (sessions, their pending tasks, each device's
outstanding batches) lives in memory and is rebuilt from Redis on start; payloads stay in Redis.

Late binding: a device has at most one batch waiting in its inbox beyond the one running, so the
policy decides as late as possible. Completions arrive on the events stream from the workers.

Memory changes first, then Redis, under one lock. If a write fails the index is marked stale and is
rebuilt from Redis before the next write: what Redis holds is the truth."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime
import functools
import hashlib
import hmac
import itertools
import json
import logging
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from redis.exceptions import RedisError

from ..config import Config
from ..errors import BadRequest, Draining, NotFound, QuotaExceeded, ReplicationTimeout, Unavailable
from ..metrics import Metrics
from ..models import Batch, DeviceSpec, Session, Task, TaskState, Window
from ..policy import Policy, SessionInfo, UsageLedger
from ..policy.preempt import Dispatched, Recaller, candidates
from ..policy.quota import QuotaLedger
from ..policy.report import policy_doc, prio_row, share_rows
from ..store import Store
from . import limits
from .cost import CostModel
from .dispatch import take_batch
from .templates import TemplateIndex

log = logging.getLogger("qsched.scheduler")

MAX_OUTSTANDING = 2          # running + one in the inbox (+ merge_batches - 1 where a device merges)


class SessionEntry:
    __slots__ = ("session", "pending", "inflight", "weight", "submits", "knows_all_submits", "info", "used_s",
                 "last_active", "held")
    MAX_SUBMITS = 1024

    def __init__(self, session: Session, weight: float, *, new: bool = False):
        self.session = session
        self.pending: deque[Task] = deque()
        self.inflight = 0
        self.weight = weight
        # recent idempotency keys -> ids; while it holds every key the session used (a session this
        # daemon opened, nothing evicted), a key missing here is new without asking Redis
        self.submits: OrderedDict[str, list[str]] = OrderedDict()
        self.knows_all_submits = new
        self.info = SessionInfo(id=session.id, pool=session.pool, cls=session.cls, account=session.account,
                                user=session.user, weight=session.weight, created=session.created)
        self.used_s = 0.0              # device-seconds measured (class limit max_session_device_s)
        self.last_active = time.monotonic()      # the last request naming it (daemon.session_idle_timeout_s)
        # why the session is not dispatched, by cause ("admin": `qsched session update --hold`, kept in
        # Redis; "quota": its account's or user's quota is used up, rechecked by the device watch)
        self.held: dict[str, str] = {"admin": session.hold} if session.hold else {}

    def refresh_info(self) -> None:
        """After an admin changed the session's class or weight."""
        s = self.session
        self.info = SessionInfo(id=s.id, pool=s.pool, cls=s.cls, account=s.account, user=s.user, weight=s.weight,
                                created=s.created)

    def remember(self, key: str, ids: list[str]) -> None:
        self.submits[key] = ids
        if len(self.submits) > self.MAX_SUBMITS:
            self.submits.popitem(last=False)
            self.knows_all_submits = False


ADMIN_STATES = ("online", "draining", "paused", "maintenance")
WINDOW_REASON = "maintenance window "        # a state reason that says a window set the state
WINDOW_WHO = "maintenance window"


def _iso(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
UNAVAILABLE = ("draining", "paused", "maintenance")    # a pool all of whose devices are so: spill_to applies
VENDOR = "vendor: "        # the reason of a state the vendor's status set (and may lift)


class DeviceEntry:
    __slots__ = ("spec", "outstanding", "alive", "described", "state", "reason", "since")

    def __init__(self, spec: DeviceSpec):
        self.spec = spec
        self.outstanding: dict[str, tuple[Batch, float]] = {}   # bid -> (batch, estimated seconds)
        self.alive = False
        self.described: dict = {}      # what its worker last said of the device (its heartbeat)
        # the admin's state: only an online device is sent work; draining lets outstanding batches end,
        # paused and maintenance also take back the one waiting in the inbox
        self.state, self.reason, self.since = "online", "", 0.0

    def public_state(self) -> str:
        """online, draining, paused, maintenance, or offline (no worker heartbeat)."""
        return self.state if self.state != "online" or self.alive else "offline"


class Scheduler:
    def __init__(self, store: Store, config: Config, policy: Policy, metrics: Metrics, secret: bytes, *,
                 on_worker_lost: Callable[[str], None] | None = None):
        self.store = store
        self.secret = secret                             # session tokens are HMACs of session ids
        self.config = config
        self.policy = policy
        self.metrics = metrics
        self.sessions: dict[str, SessionEntry] = {}
        self.tasks: dict[str, Task] = {}                 # live tasks only
        self.devices = {d.name: DeviceEntry(d) for d in config.devices}
        self.pools = config.pools()
        self.cost = CostModel()
        self.cost.seed(config.devices)              # cost_prior: until measurements replace it
        # decayed usage per user and account (fair share with memory): charged with measured time in
        # on_batch_done, written to Redis by the device watch, read back in resync
        self.usage = UsageLedger(config.policy.decay_half_life_s)
        policy.usage = self.usage
        self.quota = QuotaLedger(policy.cfg.quotas)       # device-seconds per period (policy.quotas)
        self.slurm_shares = None     # Slurm's fair-share factors (sshare), for fairshare_source: slurm
        self._closing: dict[str, Session] = {}       # closed, batches may still end: charged to them
        self.templates = TemplateIndex(store, config.template_ttl_s)
        self.on_worker_lost = on_worker_lost             # a local worker that stopped beating: kill it
        self._waiters: dict[str, list[asyncio.Future]] = {}
        self._by_token: dict[str, str] = {}     # bearer token -> open session id
        self._kick = asyncio.Event()
        self._writing = asyncio.Lock()         # one commit at a time: memory and Redis change in the same order
        self._stale = False                    # a write failed: rebuild from Redis before the next one
        self._unreplicated: set[str] = set()   # submissions answered 503 for want of a replica's WAIT
        self._write_failed_at = 0.0
        self.store_writable = True
        self._seq = 0
        # per outstanding batch: (dispatch order, tier, picked by an anti-starvation promotion, the
        # session's wait start): what preemption needs to choose and to requeue without a fresh wait
        self._dispatched: dict[str, tuple[int, int, bool, float]] = {}
        self._order = itertools.count()
        self._started: set[str] = set()      # batches a recall found taken by their worker: not tried again
        # per session, the dispatch order of its newest batch a worker took: an older one still waiting
        # is not taken back (on another device the newer one ran first; see policy/preempt.py)
        self._taken_upto: dict[str, int] = {}
        self.events_from = "0-0"
        # planned maintenance (config, and `qsched device maintenance --start/--duration`, kept in Redis):
        # while a window is on, its devices are in state maintenance; the Slurm mirror reads these too
        self.maintenance_windows: list[Window] = list(config.maintenance)
        self.accepting = True
        self.store_ok = True
        metrics.prelabel(self.devices, self.pools)

    # ------------------------------------------------------------------ recovery
    async def recover(self) -> None:
        """Startup: requeue what removed devices held, then build the index from Redis."""
        await self._strand_removed_devices()
        await self.resync()
        log.info("recovered %d sessions, %d live tasks, %d outstanding batches", len(self.sessions),
                 len(self.tasks), sum(len(d.outstanding) for d in self.devices.values()))

    async def resync(self) -> None:
        """Rebuild the index from Redis. All reads come first: if Redis fails midway, memory is as it was."""
        last = await self.store.last_event_id()
        cost = await self.store.load_cost_model(list(self.devices))
        states = await self.store.device_states(list(self.devices))
        stored = {w.id: w for w in await self.store.windows()}
        sessions, pending, tasks, outstanding = await self.store.load_state(list(self.devices))
        usage = await self.store.load_usage()
        quota_used = await self.store.load_quota_usage()
        used = (await self.store.sessions_device_seconds([s.id for s in sessions])
                if any(c.max_session_device_s is not None for c in self.policy.cfg.classes.values()) else {})
        self.sessions.clear()
        self.tasks.clear()
        self._dispatched.clear()
        self._started.clear()
        self._taken_upto.clear()
        for d in self.devices.values():
            d.outstanding.clear()
        self.policy = type(self.policy)(self.policy.cfg)
        self.policy.usage = self.usage
        self._attach_shares(self.policy)
        self.usage.load(usage, time.time())
        self.quota.load(quota_used)
        self.events_from = last
        self.cost.per_binding.update(cost)
        self.maintenance_windows = [stored.pop(w.id, w) for w in self.config.maintenance] + list(stored.values())
        for name, st in states.items():
            d = self.devices[name]
            d.state, d.reason, d.since = st.get("state", "online"), st.get("reason", ""), float(st.get("since", 0))
        by_id = {t.id: t for t in tasks}
        self._by_token = {self.token_for(s.id): s.id for s in sessions}
        for s in sessions:
            entry = self.sessions[s.id] = SessionEntry(s, self._weight(s))
            entry.used_s = used.get(s.id, 0.0)
            for tid in pending.get(s.id, []):
                t = by_id.get(tid)
                if t and t.state == TaskState.PENDING:
                    entry.pending.append(t)
                    self.tasks[t.id] = t
        for dev, batches in outstanding.items():
            for b in batches:
                live = [by_id[t] for t in b.tasks if t in by_id and not by_id[t].state.terminal]
                for t in live:
                    self.tasks[t.id] = t
                    if b.session in self.sessions:
                        self.sessions[b.session].inflight += 1
                kind = live[0].kind if live else "estimate"
                est = self.cost.estimate(dev, kind, sum(t.bindings for t in live))
                self.devices[dev].outstanding[b.id] = (b, est)
                owner = self.sessions.get(b.session)
                tier = self.policy.tier_of(owner.info) if owner is not None else 0
                self._dispatched[b.id] = (next(self._order), tier, False, time.time())
        self._seq = max((t.seq for t in self.tasks.values()), default=0)
        for entry in self.sessions.values():
            entry.pending = deque(sorted(entry.pending, key=lambda t: t.seq))
            self._enqueue(entry)
        for tid in [t for t in self._waiters if t not in self.tasks]:
            self._resolve(tid)        # ended while we could not see it: the waiter reads Redis
        self._stale = False
        self._unreplicated.clear()        # a key found in Redis from here on is on what is now the primary
        self._refresh_gauges()
        self.kick()

    async def _strand_removed_devices(self) -> None:
        """A device removed from the config may still hold batches: requeue them to their pool, or fail
        their tasks naming the device when the pool is gone too."""
        for name in sorted(await self.store.known_devices(list(self.devices))):
            processing, inbox = await self.store.device_batches(name)
            for source, batches in (("processing", processing), ("inbox", inbox)):
                for b in batches:
                    session = await self.store.get_session(b.session)
                    if session is not None and session.pool in self.pools:
                        await self.store.recall(b, name, source)
                        log.warning("device %s is no longer configured: batch %s requeued to pool %s",
                                    name, b.id, session.pool)
                    elif await self.store.recall(b, name, source):
                        await self.store.fail_tasks(b.tasks, f"device {name} was removed from the config "
                                                             "before this task ran, and its pool has no devices left")
                        log.warning("device %s is no longer configured: batch %s failed", name, b.id)
            await self.store.forget_device(name)

    @contextlib.asynccontextmanager
    async def _write(self):
        """The write lock, with an index known to match Redis."""
        async with self._writing:
            if self._stale:
                # while writes keep failing (a full disk), answer at once rather than rebuild per request
                if time.monotonic() - self._write_failed_at < 1.0:
                    raise Unavailable("store: Redis is refusing writes; retry", field="store")
                try:
                    await self.resync()
                except RedisError as e:
                    raise Unavailable(f"store: Redis is unavailable ({e}); retry", field="store") from None
                log.info("index rebuilt from Redis after a failed write")
            yield

    async def _commit(self, sid, items, batches, idempotency_key=None) -> None:
        try:
            await self.store.commit(sid, items, batches, idempotency_key)
        except RedisError as e:
            self._stale, self._write_failed_at, self.store_writable = True, time.monotonic(), False
            self.metrics.store_writable.set(0)
            log.error("write to Redis failed (%s); the index is rebuilt from Redis before the next write", e)
            raise Unavailable(f"store: Redis refused the write ({e}); retry", field="store") from None
        if not self.store_writable:
            self.store_writable = True
            self.metrics.store_writable.set(1)
            log.info("Redis accepts writes again")

    # ------------------------------------------------------------------ sessions
    def _weight(self, s: Session) -> float:
        return self.policy.weight(account=s.account, user=s.user, cls=s.cls, own=s.weight)

    async def open_session(self, *, user: str, uid: int, pool: str, cls: str = "batch", weight: float = 1.0,
                           account: str = "", name: str = "", job_id: str = "") -> Session:
        if not self.accepting:
            raise Draining("daemon is draining; retry on the next daemon", field="session")
        if pool not in self.pools:
            raise BadRequest(f"pool: unknown pool {pool!r} (pools: {', '.join(sorted(self.pools))})",
                             field="pool")
        if cls not in self.policy.cfg.class_weights:
            raise BadRequest(f"class: unknown class {cls!r} (classes: {', '.join(self.policy.cfg.class_weights)})",
                             field="class")
        if not (0 < weight <= 1000):
            raise BadRequest("weight: must be in (0, 1000]", field="weight", limit=1000)
        spec = self.policy.cfg.class_spec(cls)
        limits.check_open(spec, user=user, account=account, open_sessions=(
            sum(1 for e in self.sessions.values() if e.session.user == user and e.session.cls == cls)
            if spec.max_sessions_per_user is not None else 0))
        s = Session(id=secrets.token_hex(6), user=user, uid=uid, pool=pool, cls=cls, weight=weight,
                    account=account, name=name[:100], job_id=str(job_id), created=time.time())
        await self.store.create_session(s)
        self.sessions[s.id] = SessionEntry(s, self._weight(s), new=True)
        self._by_token[self.token_for(s.id)] = s.id
        log.info("session %s opened: user=%s account=%s job=%s pool=%s class=%s", s.id, s.user, s.account,
                 s.job_id or "-", s.pool, s.cls)
        self.metrics.sessions_open.set(len(self.sessions))
        return s

    def token_for(self, sid: str) -> str:
        """The session's bearer token: derived, so an attach from any process of the job gets the same."""
        mac = hmac.new(self.secret, sid.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def check_token(self, sid: str, token: str) -> bool:
        return hmac.compare_digest(self.token_for(sid), token)

    def session_for_token(self, token: str) -> str | None:
        """The open session a bearer token belongs to (a dict lookup: tokens are kept per open session)."""
        return self._by_token.get(token)

    def session(self, sid: str) -> SessionEntry:
        entry = self.sessions.get(sid)
        if entry is None:
            raise NotFound(f"session: no open session {sid!r}", field="session")
        entry.last_active = time.monotonic()
        return entry

    async def run_session_expiry(self) -> None:
        """Close sessions idle past daemon.session_idle_timeout_s that no Slurm job owns (the job's end
        closes those) and that have nothing queued or running: a client that never closes its session
        must not hold its memory and index entry forever."""
        limit = self.config.session_idle_timeout_s
        while True:
            await asyncio.sleep(min(60.0, max(limit / 4, 0.25)))
            now = time.monotonic()
            for sid, e in list(self.sessions.items()):
                idle = now - e.last_active
                if e.session.job_id or e.pending or e.inflight or idle <= limit or sid not in self.sessions:
                    continue
                log.info("session %s expired: idle %.0f s > daemon.session_idle_timeout_s, no Slurm job", sid, idle)
                with contextlib.suppress(NotFound):         # closed by its owner meanwhile
                    await self.close_session(sid)
                    self.metrics.sessions_expired.inc()

    async def close_session(self, sid: str) -> dict:
        """Cancel what has not started (pending tasks, and batches still waiting in an inbox), wait for
        the session's running batches to end (up to drain_timeout_s), then write its ledger record, so
        the record holds all the device time the session used."""
        async with self._write():
            entry = self.session(sid)
            await self._recall_waiting_of(sid)
            cancelled = [t.id for t in entry.pending]
            await self.store.close_session(sid, cancelled)
            entry.pending.clear()
            self.policy.remove(sid)
            del self.sessions[sid]
            self._taken_upto.pop(sid, None)
            self._closing[sid] = entry.session
            self._by_token.pop(self.token_for(sid), None)
        for tid in cancelled:
            self.tasks.pop(tid, None)
            self._resolve(tid)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.drain_timeout_s
        while self._running_for(sid) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self._running_for(sid):
            log.warning("session %s closed with batches still running after %.0f s: their usage is not in "
                        "its ledger record", sid, self.config.drain_timeout_s)
        self._closing.pop(sid, None)
        with contextlib.suppress(RedisError):       # else the device watch writes it
            await self._save_usage()
        usage = await self.store.session_usage(sid)
        s = entry.session
        record = {"session": sid, "name": s.name, "user": s.user, "account": s.account, "job_id": s.job_id,
                  "pool": s.pool,
                  "class": s.cls, "opened": s.created, "closed": time.time(), "cancelled": len(cancelled),
                  **usage.__dict__}
        await self.store.record_accounting(record)
        self._refresh_gauges()
        log.info("session %s closed: user=%s job=%s tasks=%d device_s=%.3f cancelled=%d", sid, s.user,
                 s.job_id or "-", record["tasks"], record["device_seconds"], len(cancelled))
        return record

    # ------------------------------------------------------------------ tasks
    def new_task_id(self, sid: str) -> str:
        return f"{sid}.{secrets.token_hex(5)}"

    async def submit(self, sid: str, items: list[tuple[Task, str, bytes]],
                     idempotency_key: str | None = None) -> tuple[list[str], bool]:
        """items are validated (api.py) tasks with their observables JSON and raw params. Returns the
        task ids and whether they are new: a retry of an acknowledged submission (same idempotency key)
        gets the first answer's ids and submits nothing."""
        if not self.accepting:
            raise Draining("daemon is draining; no new tasks (retry on the next daemon)", field="tasks")
        entry = self.session(sid)
        async with self._write():
            if sid not in self.sessions:              # closed while we waited
                raise NotFound(f"session: {sid!r} closed", field="session")
            entry = self.sessions[sid]
            if idempotency_key:
                done = entry.submits.get(idempotency_key)
                if done is None and not entry.knows_all_submits:
                    done = await self.store.submitted_ids(sid, idempotency_key)
                if done is not None:
                    if idempotency_key in self._unreplicated:
                        try:
                            await self.store.wait_replicated()     # acknowledged only once a replica has it
                        except RedisError as e:
                            # the connection that wrote it is gone (a failover): the new primary may lack
                            # it, so rebuild the index from there; the retry after that reads the key back
                            self._stale, self._write_failed_at = True, 0.0
                            raise Unavailable(f"store: {e}; retry", field="store") from None
                        self._unreplicated.discard(idempotency_key)
                    return done, False
            limit = self.policy.cfg.max_pending_per_session
            if len(entry.pending) + len(items) > limit:
                raise BadRequest(f"tasks: session would have {len(entry.pending) + len(items)} pending tasks, "
                                 f"limit {limit}", field="tasks", limit=limit)
            self._check_class_limits(entry, items)
            now = time.time()
            spent = self.quota.exhausted(entry.session.user, entry.session.account, now)
            if spent is not None:
                raise QuotaExceeded(f"quota: {self.quota.describe(spent, now)}", field=f"quota.{spent.key}",
                                    limit=spent.device_s)
            was_idle = not entry.pending
            for t, _, _ in items:
                self._seq += 1
                t.seq, t.submitted = self._seq, now
                entry.pending.append(t)
                self.tasks[t.id] = t
            if was_idle:
                self._enqueue(entry)
            batches = self._plan()
            _attach_payloads(batches, items)
            try:
                await self._commit(sid, items, batches, idempotency_key)      # durable before acknowledged
            except ReplicationTimeout:
                # the primary has them, no replica said so in time: not acknowledged (503), and a retry
                # under the same key gets these ids (the key is in the same commit)
                if idempotency_key:
                    entry.remember(idempotency_key, [t.id for t, _, _ in items])
                    if len(self._unreplicated) >= 100_000:
                        self._unreplicated.clear()         # bounded: clients that never retried
                    self._unreplicated.add(idempotency_key)
                raise
            if idempotency_key:
                entry.remember(idempotency_key, [t.id for t, _, _ in items])
            if entry.pending and self._may_preempt_for(entry):
                self.kick()              # the dispatcher takes back a lower tier's waiting batch
        for t, _, _ in items:
            self.metrics.tasks_submitted.labels(entry.session.pool, t.kind).inc()
        self.metrics.tasks_pending.labels(entry.session.pool).inc(len(items))
        self._count_dispatched(batches)
        return [t.id for t, _, _ in items], True

    def _check_class_limits(self, entry: SessionEntry, items: list[tuple[Task, str, bytes]]) -> None:
        """The session's class limits at submit (limits.py); counts only what a set limit needs."""
        s = entry.session
        spec = self.policy.cfg.class_spec(s.cls)
        pending = (sum(len(e.pending) for e in self.sessions.values() if e.session.user == s.user
                       and e.session.cls == s.cls) if spec.max_pending_per_user is not None else 0)
        estimates: list[float] = []
        if limits.needs_estimates(spec):
            devices = [d.name for d in self.pools.get(s.pool, ())]
            estimates = [min(self.cost.estimate(d, t.kind, t.bindings) for d in devices) for t, _, _ in items]
        limits.check_submit(spec, user=s.user, pending_for_user=pending, new_tasks=len(items),
                            task_estimates_s=estimates, session_used_s=entry.used_s)

    async def _save_usage(self) -> None:
        """Write the usage and quota entries changed since the last write (kept dirty if Redis refuses)."""
        if self.quota.dirty:
            used = self.quota.take_dirty()
            try:
                await self.store.save_quota_usage(used)
            except RedisError:
                self.quota.dirty.update(used)
                raise
        if not self.usage.dirty:
            return
        dirty = self.usage.take_dirty()
        try:
            await self.store.save_usage(dirty)
        except RedisError:
            self.usage.dirty.update((kind, n) for kind, names in dirty.items() for n in names)
            raise

    async def cancel(self, tid: str) -> str:
        async with self._write():
            t = self.tasks.get(tid)
            if t is None:
                state = (await self.store.task_fields(tid, "state"))[0]
                if state is None:
                    raise NotFound(f"task: no task {tid!r}", field="task")
                return state
            await self.store.cancel_task(tid, t.session)
            entry = self.sessions.get(t.session)
            if entry is not None:
                if t.state == TaskState.PENDING:
                    entry.pending.remove(t)       # the policy skips a session found empty at its turn
                    self.metrics.tasks_pending.labels(entry.session.pool).dec()
                else:
                    entry.inflight -= 1           # scheduled: its batch's completion no longer counts it
            t.state = TaskState.CANCELLED
            self.tasks.pop(tid, None)
        self._resolve(tid)
        return TaskState.CANCELLED.value

    # ------------------------------------------------------------------ waiting
    def _resolve(self, tid: str, payload: bytes | None = None) -> None:
        for fut in self._waiters.pop(tid, ()):
            if not fut.done():
                fut.set_result(payload)

    def release_waiters(self) -> None:
        """Drain: answer now every long-poll on a task that will not run before the stop (a client
        re-polls the next daemon); those on running batches are answered as the batches end."""
        for tid in list(self._waiters):
            t = self.tasks.get(tid)
            if t is None or t.state == TaskState.PENDING:
                self._resolve(tid)

    async def wait(self, tids: list[str], timeout: float) -> dict[str, bytes]:
        """Wait until the tasks are final or the timeout passes. Returns the results that arrived
        inline with their completion events (the rest the caller reads from Redis)."""
        futs = []
        loop = asyncio.get_running_loop()
        for tid in tids:
            t = self.tasks.get(tid)
            if t is not None and (self.accepting or t.state != TaskState.PENDING):
                f = loop.create_future()
                self._waiters.setdefault(tid, []).append(f)
                futs.append((tid, f))
        if futs and timeout > 0:
            await asyncio.wait([f for _, f in futs], timeout=timeout)
        ready = {}
        for tid, f in futs:
            if f.done():
                if f.result() is not None:
                    ready[tid] = f.result()
                continue
            lst = self._waiters.get(tid)          # drop our waiters that did not fire
            if lst and f in lst:
                lst.remove(f)
                if not lst:
                    del self._waiters[tid]
        return ready

    def set_policy(self, policy: Policy) -> None:
        """Swap the policy (SIGHUP): backlogged sessions re-enter the new one in their current order."""
        self.policy = policy
        policy.usage = self.usage
        self._attach_shares(policy)
        self.usage.half_life_s = policy.cfg.decay_half_life_s
        self.quota.set_specs(policy.cfg.quotas)
        self.release_quota_holds()
        for entry in self.sessions.values():
            entry.weight = self._weight(entry.session)
            self._enqueue(entry)
        self.kick()

    def _attach_shares(self, policy: Policy) -> None:
        if hasattr(policy, "imported"):
            policy.imported = self.slurm_shares

    def set_slurm_shares(self, shares) -> None:
        """Slurm's fair-share factors, imported from sshare (qsched.slurm.hooks); the policy re-keys its
        queued sessions at its next periodic refresh."""
        self.slurm_shares = shares
        self._attach_shares(self.policy)
        self.kick()

    # ------------------------------------------------------------------ dispatch
    def kick(self) -> None:
        self._kick.set()

    def _enqueue(self, entry: SessionEntry, since: float | None = None) -> None:
        if entry.held:
            self.policy.remove(entry.session.id)          # a held session is not dispatched
            return
        if entry.pending:
            self.policy.enqueue(entry.session.id, self._pool_for(entry), entry.info, entry.pending[0].seq,
                                now=time.time(), size=len(entry.pending), since=since)

    def _pool_for(self, entry: SessionEntry) -> str:
        """The session's pool, or its class's spill_to pool while every device of its own is draining,
        paused or in maintenance."""
        home = entry.session.pool
        spill = self.policy.cfg.class_spec(entry.session.cls).spill_to
        return spill if spill and spill != home and spill in self.pools and self._pool_down(home) else home

    def _pool_down(self, pool: str) -> bool:
        devs = self.pools.get(pool, [])
        return bool(devs) and all(self.devices[d.name].state in UNAVAILABLE for d in devs)

    def _respill(self, pool: str) -> None:
        """`pool` went down or came back: requeue the sessions that may spill from it where they now
        belong (the policy forgets their place in the old pool's queue)."""
        for entry in self.sessions.values():
            if entry.session.pool == pool and self.policy.cfg.class_spec(entry.session.cls).spill_to:
                self.policy.remove(entry.session.id)
                self._enqueue(entry)

    async def run_dispatcher(self) -> None:
        self.kick()        # (re)started: there may be work that arrived while it was down
        while True:
            await self._kick.wait()
            self._kick.clear()
            async with self._write():
                if self.policy.cfg.preempt:
                    await self._preempt()
                batches = self._plan()
                if batches:
                    await self._commit(None, [], batches)
            self._count_dispatched(batches)

    def _plan(self) -> list[Batch]:
        """Fill every live device's free slots from the policy (in memory only; the caller commits)."""
        batches, progress = [], self.accepting
        cfg = self.policy.cfg
        now = time.time()
        while progress:
            progress = False
            for dev in self.devices.values():
                if not dev.alive or dev.state != "online" or \
                        len(dev.outstanding) >= MAX_OUTSTANDING + dev.spec.merge_batches - 1:
                    continue
                sid = self.policy.pick(dev.spec.pool, now=now)
                if sid is None:
                    continue
                progress = True
                promoted, since = self.policy.last_promoted, self.policy.last_since
                entry = self.sessions.get(sid)
                if entry is None or not entry.pending:
                    continue
                if self.quota.specs and self._hold_if_over_quota(entry, now):
                    continue
                name, kind = dev.spec.name, entry.pending[0].kind
                tasks = take_batch(entry.pending, merge=cfg.merge, max_bindings=dev.spec.limits.max_batch_bindings,
                                   max_batch_s=cfg.max_batch_s,
                                   estimate=functools.partial(self.cost.marginal, name, kind))
                est = self.cost.estimate(name, kind, sum(t.bindings for t in tasks))
                self.policy.charge(sid, est)
                self._enqueue(entry)
                batch = Batch(id="b" + secrets.token_hex(6), device=name, session=sid,
                              tasks=[t.id for t in tasks], created=time.time())
                if dev.spec.merge_batches > 1:
                    # the worker may run it in one device call (one job) with other sessions' batches of
                    # the same kind, shots and method: a job carries several circuits, so any template
                    batch.merge = json.dumps(tasks[0].merge_key()[1:])
                    batch.bindings = sum(t.bindings for t in tasks)
                for t in tasks:
                    t.state, t.batch = TaskState.SCHEDULED, batch.id
                entry.inflight += len(tasks)
                dev.outstanding[batch.id] = (batch, est)
                self._dispatched[batch.id] = (next(self._order), self.policy.tier_of(entry.info), promoted, since)
                batches.append(batch)
        return batches

    # ------------------------------------------------------------------ admin changes
    async def update_session(self, sid: str, *, who: str, cls: str | None = None, weight: float | None = None,
                             hold: str | None = None, release: bool = False) -> SessionEntry:
        """The admin's `qsched session update`: class, weight, hold (with a reason) or release. Kept in
        Redis (the session's hash) and logged with who made the change. A hold also takes back the
        session's batches still waiting in an inbox; running ones finish."""
        if hold is not None and release:
            raise BadRequest("hold: give hold or release, not both", field="hold")
        if cls is not None and cls not in self.policy.cfg.class_weights:
            raise BadRequest(f"class: unknown class {cls!r} (classes: {', '.join(self.policy.cfg.class_weights)})",
                             field="class")
        if weight is not None and not (0 < weight <= 1000):
            raise BadRequest("weight: must be in (0, 1000]", field="weight", limit=1000)
        async with self._write():
            entry = self.session(sid)
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
            await self.store.update_session(sid, changes)
            before = {"class": s.cls, "weight": s.weight, "hold": s.hold}
            s.cls = changes.get("class", s.cls)
            s.weight = changes.get("weight", s.weight)
            s.hold = changes.get("hold", s.hold)
            entry.refresh_info()
            entry.weight = self._weight(s)
            if s.hold:
                entry.held["admin"] = s.hold
                await self._recall_waiting_of(sid)
            else:
                entry.held.pop("admin", None)
            self.policy.remove(sid)          # re-entered with its new tier and weight (or not, if held)
            self._enqueue(entry)
        log.warning("session %s updated by %s: %s", sid, who,
                    ", ".join(f"{k} {before[k]!r} -> {v!r}" for k, v in changes.items()))
        self.kick()
        return entry

    def share_view(self) -> list[dict]:
        """sshare: accounts and users with their shares, decayed usage and fair-share factor."""
        open_pairs = {(e.session.account, e.session.user) for e in self.sessions.values()}
        return share_rows(self.policy, time.time(), open_pairs)

    def prio_view(self) -> list[dict]:
        """sprio: each backlogged (or held) session's priority factors, highest tier and priority first."""
        now = time.time()
        rows = []
        for e in self.sessions.values():
            if e.pending:
                row = prio_row(self.policy, e.info, now, pending=len(e.pending),
                               since=self.policy.waiting_since(e.session.id))
                rows.append({**row, "held": bool(e.held), "reason": "; ".join(e.held[k] for k in sorted(e.held))})
        return sorted(rows, key=lambda r: (-r["tier"], -r["priority"], -r["waiting_s"]))

    def policy_view(self) -> dict:
        return {"name": self.policy.name, **policy_doc(self.policy, self.quota, time.time())}

    # ------------------------------------------------------------------ holds and quotas
    def _hold_if_over_quota(self, entry: SessionEntry, now: float) -> bool:
        spent = self.quota.exhausted(entry.session.user, entry.session.account, now)
        if spent is None:
            return False
        reason = f"quota: {self.quota.describe(spent, now)}"
        if "quota" not in entry.held:
            log.warning("session %s held: %s", entry.session.id, reason)
        entry.held["quota"] = reason
        self.policy.remove(entry.session.id)
        return True

    def release_quota_holds(self, now: float | None = None) -> int:
        """Sessions held by a quota whose window rolled over (or whose quota was raised) go back to the
        policy. Called by the device watch; returns how many were released."""
        now = time.time() if now is None else now
        n = 0
        for entry in self.sessions.values():
            if "quota" in entry.held and self.quota.exhausted(entry.session.user, entry.session.account, now) is None:
                del entry.held["quota"]
                log.info("session %s: quota hold released", entry.session.id)
                self._enqueue(entry)
                n += 1
        if n:
            self.kick()
        return n

    def _quota_gauges(self, now: float) -> None:
        self.metrics.quota_used_ratio.clear()            # a quota removed by a reload leaves no series
        for key in self.quota.specs:
            self.metrics.quota_used_ratio.labels(key).set(self.quota.ratio(key, now))

    def _note_taken(self, sid: str, order: int) -> None:
        if order > self._taken_upto.get(sid, -1):
            self._taken_upto[sid] = order

    def _may_preempt_for(self, entry: SessionEntry) -> bool:
        """A lower tier's batch is outstanding on a device of the session's pool (cheap: at most two
        per device)."""
        if not self.policy.cfg.preempt:
            return False
        tier = self.policy.tier_of(entry.info)
        return any(self._dispatched.get(b.id, (0, tier))[1] < tier for d in self.pools.get(entry.session.pool, ())
                   for b, _ in self.devices[d.name].outstanding.values())

    async def _preempt(self) -> int:
        """Take back lower-tier batches still waiting in an inbox when a higher tier of their pool has
        work that no free slot serves (policy/preempt.py has the rules). In memory first, to decide;
        Redis only for a batch that is a candidate. Returns how many were taken back."""
        top = {pool: self.policy.top_tier(pool) for pool in self.pools}
        if all(t is None for t in top.values()):
            return 0
        free: dict[str, int] = {}
        waiting: list[Dispatched] = []
        for dev in self.devices.values():
            pool = dev.spec.pool
            if top.get(pool) is None:
                continue
            if dev.alive and dev.state == "online":
                room = MAX_OUTSTANDING + dev.spec.merge_batches - 1 - len(dev.outstanding)
                free[pool] = free.get(pool, 0) + max(0, room)
            for b, _ in dev.outstanding.values():
                order, tier, promoted, _since = self._dispatched.get(b.id, (0, 0, False, 0.0))
                waiting.append(Dispatched(b.id, dev.spec.name, b.session, pool, tier, order, promoted,
                                          b.id in self._started, order < self._taken_upto.get(b.session, -1)))
        ordered = candidates(waiting, top)
        if not ordered:
            return 0
        walk = Recaller(ordered, backlog_above=self.policy.backlogged_above, free_slots=free)
        n = 0
        for c in walk:
            dev = self.devices[c.device]
            held = dev.outstanding.get(c.batch)
            if held is None:            # it finished while an earlier recall awaited Redis: it ran
                walk.done(c, False)
                continue
            b, est = held
            try:
                taken = await self.store.recall(b, c.device, "inbox")
            except RedisError:
                self._stale, self._write_failed_at = True, time.monotonic()
                raise
            walk.done(c, taken)
            if not taken:
                self._started.add(c.batch)
                self._note_taken(c.session, c.order)
            else:
                self._requeued(dev, b, est, "preempt")
                self.metrics.preemptions.labels(c.pool).inc()
                n += 1
        if n:
            log.debug("preempted %d lower-tier batches waiting in inboxes", n)
        return n

    def _count_dispatched(self, batches: list[Batch]) -> None:
        for b in batches:
            spec = self.devices[b.device].spec
            self.metrics.tasks_pending.labels(spec.pool).dec(len(b.tasks))
            self.metrics.batches.labels(spec.name).inc()

    async def add_window(self, name: str, start: float, end: float | None, reason: str, *, who: str) -> Window:
        """`qsched device maintenance NAME --start T --duration D`: a planned window, kept in Redis."""
        dev = self.devices.get(name)
        if dev is None:
            raise NotFound(f"device: no device {name!r} (devices: {', '.join(self.devices)})", field="device")
        if end is not None and end <= max(start, time.time()):
            raise BadRequest("end: the window must end after its start and in the future", field="end")
        w = Window(pool=dev.spec.pool, start=start, end=end, devices=(name,), reason=reason,
                   id="w" + secrets.token_hex(4))
        await self.store.save_window(w)
        self.maintenance_windows.append(w)
        log.warning("device %s: maintenance window %s from %s to %s added by %s%s", name, w.id, _iso(start),
                    _iso(end) if end else "resume", who, f": {reason}" if reason else "")
        await self._apply_windows(time.time())
        return w

    async def _end_windows(self, dev: DeviceEntry, now: float) -> None:
        """An admin's resume ends the windows that are on over the device (kept: the stored end overrides
        a config window's), so the next watch does not take it back into maintenance."""
        for i, w in enumerate(self.maintenance_windows):
            if w.covers(dev.spec.name, dev.spec.pool) and w.on(now):
                self.maintenance_windows[i] = w = dataclasses.replace(w, end=now)
                await self.store.save_window(w)
                log.warning("device %s resumed: maintenance window %s ended early", dev.spec.name, w.id)

    def windows_of(self, dev: DeviceEntry) -> list[Window]:
        return [w for w in self.maintenance_windows if w.covers(dev.spec.name, dev.spec.pool)]

    async def _apply_windows(self, now: float) -> None:
        """A window that starts takes its online devices into maintenance; one that ends brings back those
        it took (a state reason starting with WINDOW_REASON marks them). Ended windows are forgotten."""
        ended = [w for w in self.maintenance_windows if w.end is not None and w.end <= now]
        if ended:
            self.maintenance_windows = [w for w in self.maintenance_windows if w not in ended]
            await self.store.forget_windows([w.id for w in ended if not w.id.startswith("config-")])
        for dev in self.devices.values():
            on = [w for w in self.windows_of(dev) if w.on(now)]
            if on and dev.state == "online":
                w = on[0]
                why = f"{WINDOW_REASON}{w.id}" + (f" until {_iso(w.end)}" if w.end else "") \
                    + (f": {w.reason}" if w.reason else "")
                await self.set_device_state(dev.spec.name, "maintenance", why, who=WINDOW_WHO)
            elif not on and dev.state == "maintenance" and dev.reason.startswith(WINDOW_REASON):
                await self.set_device_state(dev.spec.name, "online", "maintenance window over", who=WINDOW_WHO)

    async def set_device_state(self, name: str, state: str, reason: str = "", *, who: str = "qsched") -> DeviceEntry:
        """The admin's `qsched device drain|pause|resume|maintenance`; kept in Redis across restarts."""
        dev = self.devices.get(name)
        if dev is None:
            raise NotFound(f"device: no device {name!r} (devices: {', '.join(self.devices)})", field="device")
        if state not in ADMIN_STATES:
            raise BadRequest(f"state: one of {', '.join(ADMIN_STATES)}, got {state!r}", field="state")
        if state == "online" and who != WINDOW_WHO:
            await self._end_windows(dev, time.time())
        async with self._write():
            await self.store.set_device_state(name, state, reason, time.time())
            was_down = self._pool_down(dev.spec.pool)
            dev.state, dev.reason, dev.since = state, reason, time.time()
            if state in ("paused", "maintenance"):
                for b, est in list(dev.outstanding.values()):
                    if await self.store.recall(b, name, "inbox"):
                        self._requeued(dev, b, est, "recall")
            if was_down != self._pool_down(dev.spec.pool):
                self._respill(dev.spec.pool)
        log.warning("device %s is %s (set by %s)%s", name, state, who, f": {reason}" if reason else "")
        self.kick()
        return dev

    # ------------------------------------------------------------------ taking batches back
    async def recall_waiting(self) -> int:
        """Take back every batch still waiting in an inbox (drain: what no worker has started stays
        queued for the next daemon instead of holding the drain). Returns how many."""
        n = 0
        async with self._write():
            for dev in self.devices.values():
                # newest first: each recall puts its tasks at the head of their queue
                for b, est in reversed(list(dev.outstanding.values())):
                    if await self.store.recall(b, dev.spec.name, "inbox"):
                        self._requeued(dev, b, est, "recall")
                        n += 1
        return n

    async def _recall_waiting_of(self, sid: str) -> None:
        """Take back the session's batches still waiting in an inbox (its running ones finish)."""
        for dev in self.devices.values():
            for b, est in list(dev.outstanding.values()):
                if b.session == sid and await self.store.recall(b, dev.spec.name, "inbox"):
                    self._requeued(dev, b, est, "recall")

    async def _requeue_lost(self, dev: DeviceEntry) -> None:
        """The device's worker stopped beating: take back what it held (from its processing list, so a
        late result from it is refused, and from its inbox) and requeue it to the pool."""
        async with self._write():
            # newest first: each recall puts its tasks at the head of their queue, so the oldest ends first
            for b, est in reversed(list(dev.outstanding.values())):
                if await self.store.recall(b, dev.spec.name, "processing", attempt=True):
                    self._requeued(dev, b, est, "worker_lost")
                    log.error("device %s: its worker stopped while running batch %s; requeued to pool %s",
                              dev.spec.name, b.id, dev.spec.pool)
                elif await self.store.recall(b, dev.spec.name, "inbox"):
                    self._requeued(dev, b, est, "recall")
            failed = [t for t in self.tasks.values()
                      if t.state == TaskState.PENDING and t.attempts >= self.config.max_attempts]
            if failed:
                await self.store.fail_tasks([t.id for t in failed], (
                    f"the worker of device {dev.spec.name} stopped while running this task "
                    f"({self.config.max_attempts} attempts)"))
                for t in failed:
                    entry = self.sessions.get(t.session)
                    if entry is not None and t in entry.pending:
                        entry.pending.remove(t)
                    self.tasks.pop(t.id, None)
                    self._resolve(t.id)
        self.kick()

    def _requeued(self, dev: DeviceEntry, b: Batch, est: float, reason: str) -> None:
        """Memory side of a recall: the batch's live tasks go back to the head of their session's queue,
        in order, and the policy is un-charged."""
        dev.outstanding.pop(b.id, None)
        since = self._dispatched.pop(b.id, (0, 0, False, None))[3]
        self._started.discard(b.id)
        self.metrics.batches_requeued.labels(dev.spec.name, reason).inc()
        live = [self.tasks[t] for t in b.tasks if t in self.tasks]
        entry = self.sessions.get(b.session)
        if entry is None:
            for t in live:
                self.tasks.pop(t.id, None)
                self._resolve(t.id)
            return
        for t in reversed(live):
            t.state, t.batch = TaskState.PENDING, None
            if reason == "worker_lost":
                t.attempts += 1
            entry.pending.appendleft(t)
        entry.inflight -= len(live)
        self.metrics.tasks_pending.labels(entry.session.pool).inc(len(live))
        self.policy.correct(b.session, est, 0.0)
        # preempted: the session keeps the wait it had (anti-starvation counts from then)
        self._enqueue(entry, since if reason == "preempt" else None)

    # ------------------------------------------------------------------ completions
    async def run_events(self, redis) -> None:
        """Follow the workers' events stream (a dedicated connection: XREAD blocks)."""
        last = self.events_from
        while True:
            for eid, ev, inline in await self.store.read_events(redis, last):
                last = eid
                try:
                    if ev is None:
                        raise ValueError("the event does not parse")
                    self.on_batch_done(ev, inline)
                except Exception:
                    log.exception("bad event %s", eid)

    def on_batch_done(self, ev: dict, inline: dict[str, bytes] | None = None) -> None:
        dev = self.devices.get(ev["device"])
        if dev is None:
            return
        batch, est = dev.outstanding.pop(ev["batch"], (None, 0.0))
        done = self._dispatched.pop(ev["batch"], None)
        if done is not None and ev["session"] in self.sessions:
            self._note_taken(ev["session"], done[0])
        self._started.discard(ev["batch"])
        exec_s = float(ev["exec_s"])
        sid = ev["session"]
        first_kind = None
        for tid, state in ev["tasks"].items():
            t = self.tasks.pop(tid, None)
            self._resolve(tid, (inline or {}).get(tid))
            if t is None:
                continue
            first_kind = first_kind or t.kind
            self.metrics.tasks_completed.labels(dev.spec.name, state).inc()
            self.metrics.queue_wait.labels(dev.spec.pool).observe(max(0.0, ev["started"] - t.submitted))
            if sid in self.sessions:
                self.sessions[sid].inflight -= 1
        if batch is not None:
            for tid in batch.tasks:       # cancelled while running: nothing to report, still not live
                self.tasks.pop(tid, None)
                self._resolve(tid)
            if sid in self.sessions:
                self.policy.correct(sid, est, exec_s)
            owner = self.sessions[sid].session if sid in self.sessions else self._closing.get(sid)
            if owner is not None:
                self.usage.charge(owner.user, owner.account, exec_s, time.time())
                self.quota.charge(owner.user, owner.account, exec_s, time.time())
                if sid in self.sessions:
                    self.sessions[sid].used_s += exec_s
        if first_kind:
            self.cost.observe(dev.spec.name, first_kind, int(ev.get("bindings", 0)), exec_s)
        self.metrics.device_busy.labels(dev.spec.name).inc(exec_s)
        self.metrics.execution.labels(dev.spec.name).observe(exec_s)
        self.metrics.bindings.labels(dev.spec.name).inc(int(ev.get("bindings", 0)))
        self.kick()

    async def run_device_watch(self, interval_s: float = 0.5) -> None:
        """Also watches the store: while Redis does not answer, health says so and the gauge reads 0."""
        down_since = None
        while True:
            try:
                await self.watch_devices()
            except RedisError as e:
                if down_since is None:
                    down_since = time.monotonic()
                    log.error("store unavailable (%s): writes get 503 until it is back", e)
                self.store_ok = False
            else:
                if down_since is not None:
                    log.info("store is back after %.1f s", time.monotonic() - down_since)
                    down_since = None
                    # it may be a promoted replica without the primary's last writes: rebuild the index
                    # from what it holds before the next write
                    self._stale, self._write_failed_at = True, 0.0
                    self.kick()            # the dispatcher rebuilds the index if a write failed meanwhile
                self.store_ok = True
            self.metrics.store_up.set(1 if self.store_ok else 0)
            await asyncio.sleep(interval_s)

    async def watch_devices(self) -> None:
        """A device is up while its worker heartbeats. The heartbeat comes from a small process beside
        the worker that beats while the worker runs (a long aer run holds the worker's GIL) and stops
        when it is stopped or gone: a missing heartbeat with batches outstanding means those batches
        are lost with it. Also saves the learned cost model."""
        names = list(self.devices)
        for name, hb in zip(names, await self.store.heartbeats(names)):
            dev = self.devices[name]
            up = hb is not None
            if hb is not None and not dev.alive:
                log.info("device %s is up (worker pid %s)", name, hb.get("pid"))
                self.kick()
            elif dev.alive and not up:
                log.error("device %s is down: no heartbeat from its worker for %.1f s", name,
                          self.config.heartbeat_timeout_s)
                self.metrics.workers_lost.labels(name).inc()
                if self.on_worker_lost:
                    self.on_worker_lost(name)      # a local worker that is stopped or hung: restart it
            dev.alive = up
            if hb is not None:
                dev.described = hb
            self.metrics.device_up.labels(name).set(1 if up else 0)
            self.metrics.set_device_state(name, dev.public_state())
            if hb and "rss_bytes" in hb:
                self.metrics.worker_memory.labels(name).set(hb["rss_bytes"])
            if not up and dev.outstanding:
                await self._requeue_lost(dev)
        await self._apply_windows(time.time())
        await self._follow_vendors(names)
        if self.cost.dirty:
            self.cost.dirty = False
            await self.store.save_cost_model(dict(self.cost.per_binding))
        await self._save_usage()
        if self.quota.specs:
            now = time.time()
            self.release_quota_holds(now)
            self._quota_gauges(now)

    async def _follow_vendors(self, names: list[str]) -> None:
        """A remote device's vendor status moves its state by itself: not online pauses an online
        device; online again lifts a pause the vendor set (never one an admin set)."""
        for name, v in (await self.store.vendor_states(names)).items():
            dev = self.devices[name]
            status, why = v.get("status", "online"), v.get("reason", "")
            if not dev.alive:
                continue
            if status != "online" and dev.state == "online":
                await self.set_device_state(name, "paused", f"{VENDOR}{status}" + (f" ({why})" if why else ""),
                                            who="vendor")
            elif status == "online" and dev.state == "paused" and dev.reason.startswith(VENDOR):
                await self.set_device_state(name, "online", f"{VENDOR}online", who="vendor")

    # ------------------------------------------------------------------ views
    def _refresh_gauges(self) -> None:
        self.metrics.sessions_open.set(len(self.sessions))
        per_pool: dict[str, int] = {p: 0 for p in self.pools}
        for e in self.sessions.values():
            per_pool[e.session.pool] = per_pool.get(e.session.pool, 0) + len(e.pending)
        for p, n in per_pool.items():
            self.metrics.tasks_pending.labels(p).set(n)
        self._quota_gauges(time.time())

    def session_view(self, entry: SessionEntry) -> dict:
        view = {**entry.session.public(), "pending": len(entry.pending), "inflight": entry.inflight,
                "weight_effective": entry.weight, "held": bool(entry.held),
                "reason": "; ".join(entry.held[k] for k in sorted(entry.held))}
        factor = getattr(self.policy, "fairshare_factor", None)
        if factor is not None:
            view["fairshare_factor"] = factor(entry.info, time.time())
            view["fairshare_source"] = self.policy.options.get("fairshare_source", "qsched")
        return view

    async def unsupported(self, pool: str) -> dict[str, str]:
        """Instructions some device of the pool says it cannot run -> that device (devices of a pool are
        interchangeable, so one that cannot run it is enough to refuse it). A device not yet described
        (its worker beat before the device watch looked) is asked now."""
        unknown = [d.name for d in self.pools.get(pool, ()) if not self.devices[d.name].described]
        if unknown:
            for name, hb in zip(unknown, await self.store.heartbeats(unknown)):
                if hb is not None:
                    self.devices[name].described = hb
        out: dict[str, str] = {}
        for d in self.pools.get(pool, ()):
            for name in self.devices[d.name].described.get("unsupported_instructions", ()):
                out.setdefault(name, d.name)
        return out

    def _running_for(self, sid: str) -> bool:
        return any(b.session == sid for d in self.devices.values() for b, _ in d.outstanding.values())

    def idle(self) -> bool:
        return not any(d.outstanding for d in self.devices.values())


def _attach_payloads(batches: list[Batch], items: list[tuple[Task, str, bytes]]) -> None:
    """A batch made only of tasks accepted in this same commit carries their payloads, so its worker
    starts without a read. The payload still only lives in Redis (in the inbox entry)."""
    new = {t.id: (t, obs, params) for t, obs, params in items}
    for b in batches:
        if all(tid in new for tid in b.tasks):
            b.inline = []
            for tid in b.tasks:
                t, obs, params = new[tid]
                b.inline.append([t.id, t.kind, t.template, t.shots, t.method, obs, t.submitted, t.bindings,
                                 base64.b64encode(params).decode()])
