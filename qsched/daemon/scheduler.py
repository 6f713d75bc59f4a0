"""The scheduler: a facade over the daemon's rooms, so the API, the daemon's lifecycle and the Slurm
hooks have one object to talk to.

  index.py         what is known in memory (sessions, tasks, outstanding batches), rebuilt from Redis
  txn.py           the write discipline (one writer; memory first, then Redis; stale -> rebuild)
  dispatch.py      pure decisions: what to dispatch (plan), what a higher tier takes back (preemption)
  dispatcher.py    committing them: the dispatcher loop, recalls
  completions.py   the workers' events       device_watch.py  heartbeats, states, windows, vendors
  waiters.py       long-polls                views.py      session, sshare, sprio and policy views
Sessions and tasks are still here.

Late binding: a device has at most one batch waiting in its inbox beyond the one running, so the
policy decides as late as possible. Payloads stay in Redis."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from ..config import Config
from ..errors import BadRequest, Draining, NotFound, QuotaExceeded, ReplicationTimeout, Unavailable
from ..metrics import Metrics
from ..models import Batch, Session, Task, TaskState, Window
from ..policy import Policy, UsageLedger
from ..policy.quota import QuotaLedger
from ..store import Store
from . import completions, dispatch, dispatcher, limits
from .cost import CostModel
from .device_watch import DeviceWatch
from .dispatcher import count_dispatched, recall_waiting
from .index import Index, SessionEntry, Snapshot
from .templates import TemplateIndex
from .txn import Writer
from .views import Views
from .waiters import Waiters

log = logging.getLogger("qsched.scheduler")


def _check_weight(weight: float) -> None:
    if not (0 < weight <= 1000):
        raise BadRequest("weight: must be in (0, 1000]", field="weight", limit=1000)


Items = list[tuple[Task, str, bytes]]        # validated tasks with their observables JSON and raw params
UNREPLICATED_MAX = 100_000


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
                                 base64.b64encode(params).decode()])


class Scheduler:
    def __init__(self, store: Store, config: Config, policy: Policy, metrics: Metrics, secret: bytes, *,
                 on_worker_lost: Callable[[str], None] | None = None):
        self.store = store
        self.secret = secret                             # session tokens are HMACs of session ids
        self.config = config
        self.policy = policy
        self.metrics = metrics
        self.pools = config.pools()
        self.index = Index(config.devices, self.pools)
        self.sessions = self.index.sessions
        self.tasks = self.index.tasks
        self.devices = self.index.devices
        self.cost = CostModel()
        self.cost.seed(config.devices)              # cost_prior: until measurements replace it
        # decayed usage per user and account (fair share with memory): charged with measured time by
        # completions, written to Redis by the device watch, read back in resync
        self.usage = UsageLedger(config.policy.decay_half_life_s)
        policy.usage = self.usage
        self.quota = QuotaLedger(policy.cfg.quotas)       # device-seconds per period (policy.quotas)
        self.slurm_shares: Any = None     # Slurm's fair-share factors (sshare), for fairshare_source: slurm
        self.templates = TemplateIndex(store, config.template_ttl_s)
        self.on_worker_lost = on_worker_lost             # a local worker that stopped beating: kill it
        # planned maintenance (config, and `qsched device maintenance`, kept in Redis): while a window is
        # on, its devices are in state maintenance; the Slurm mirror reads these too
        self.maintenance_windows: list[Window] = list(config.maintenance)
        self.writer = Writer(metrics, self.resync)
        self.unreplicated: set[str] = set()   # submissions answered 503 for want of a replica's WAIT
        self.kicked = asyncio.Event()         # the dispatcher's wake-up
        self.events_from = "0-0"
        self.accepting = True
        self.waiters = Waiters(self.tasks, lambda: self.accepting)
        self.watch = DeviceWatch(self, self.maintenance_windows)
        self.views = Views(self)
        # the rooms' entry points the API, the daemon and the Slurm hooks call by these names
        self.wait, self.release_waiters = self.waiters.wait, self.waiters.release
        self.run_device_watch, self.recall_waiting = self.watch.run, self.watch.recall_all
        self.set_device_state, self.add_window = self.watch.set_state, self.watch.add_window
        self.windows_of, self.unsupported = self.watch.windows_of, self.watch.unsupported
        self.session_view, self.share_view = self.views.session, self.views.shares
        self.prio_view, self.policy_view = self.views.prio, self.views.policy
        self.idle = self.index.idle
        metrics.prelabel(self.devices, self.pools)

    @property
    def store_ok(self) -> bool:
        return self.watch.store_ok

    @property
    def store_writable(self) -> bool:
        return self.writer.writable

    # ------------------------------------------------------------------ recovery
    async def recover(self) -> None:
        """Startup: requeue what removed devices held, then build the index from Redis."""
        await self.watch.strand_removed_devices()
        await self.resync()
        log.info("recovered %d sessions, %d live tasks, %d outstanding batches", len(self.sessions),
                 len(self.tasks), sum(len(d.outstanding) for d in self.devices.values()))

    async def resync(self) -> None:
        """Rebuild the index from Redis. All reads come first: if Redis fails midway, memory is as it was.
        The policy starts afresh: backlogged sessions re-enter it ordered by their oldest pending task."""
        store, names = self.store, list(self.devices)
        last = await store.last_event_id()
        cost = await store.load_cost_model(names)
        states = await store.device_states(names)
        stored = {w.id: w for w in await store.windows()}
        found, pending, task_list, outstanding = await store.load_state(names)
        usage = await store.load_usage()
        quota_used = await store.load_quota_usage()
        used = (await store.sessions_device_seconds([s.id for s in found])
                if any(c.max_session_device_s is not None for c in self.policy.cfg.classes.values()) else {})
        self._use_policy(type(self.policy)(self.policy.cfg))
        self.usage.load(usage, time.time())
        self.quota.load(quota_used)
        self.events_from = last
        self.cost.per_binding.update(cost)
        self.maintenance_windows[:] = [stored.pop(w.id, w) for w in self.config.maintenance] + list(stored.values())
        for name, st in states.items():
            d = self.devices[name]
            d.state, d.reason, d.since = st.get("state", "online"), st.get("reason", ""), float(st.get("since", 0))
        self.index.rebuild(Snapshot(found, pending, task_list, outstanding, used), weight=self.weight,
                           tier=self.policy.tier_of, estimate=self.cost.estimate, token=self.token_for,
                           now=time.time())
        for entry in self.sessions.values():
            self.enqueue(entry)
        self.waiters.resolve_gone()
        self.writer.rebuilt()
        self.unreplicated.clear()        # a key found in Redis from here on is on what is now the primary
        self.views.refresh_gauges()
        self.kick()

    # ------------------------------------------------------------------ policy
    def weight(self, s: Session) -> float:
        return self.policy.weight(account=s.account, user=s.user, cls=s.cls, own=s.weight)

    def _use_policy(self, policy: Policy) -> None:
        self.policy = policy
        policy.usage = self.usage
        if hasattr(policy, "imported"):
            policy.imported = self.slurm_shares

    def set_policy(self, policy: Policy) -> None:
        """Swap the policy (SIGHUP): backlogged sessions re-enter the new one, ordered by their oldest
        pending task (the old policy's finish tags are not carried over)."""
        self._use_policy(policy)
        self.usage.half_life_s = policy.cfg.decay_half_life_s
        self.quota.set_specs(policy.cfg.quotas)
        self.release_quota_holds()
        for entry in self.sessions.values():
            entry.weight = self.weight(entry.session)
            self.enqueue(entry)
        self.kick()

    def set_slurm_shares(self, shares: Any) -> None:
        """Slurm's fair-share factors, imported from sshare (qsched.slurm.hooks); the policy re-keys its
        queued sessions at its next periodic refresh."""
        self.slurm_shares = shares
        self._use_policy(self.policy)
        self.kick()

    def release_quota_holds(self, now: float | None = None) -> int:
        """Sessions held by a quota whose window rolled over go back to the policy; returns how many."""
        n = dispatch.release_quota_holds(self.index, self.policy, self.quota, time.time() if now is None else now)
        if n:
            self.kick()
        return n

    # ------------------------------------------------------------------ dispatch
    def kick(self) -> None:
        self.kicked.set()

    def enqueue(self, entry: SessionEntry, since: float | None = None) -> None:
        dispatch.enqueue(self.index, self.policy, entry, time.time(), since)

    def plan(self) -> list[Batch]:
        """What to dispatch now (nothing while draining); the caller commits it under the write lock."""
        if not self.accepting:
            return []
        return dispatch.plan(self.index, self.policy, self.cost, self.quota, time.time())

    async def run_dispatcher(self) -> None:
        await dispatcher.run_dispatcher(self)

    async def run_events(self, redis: Any) -> None:
        await completions.run_events(self, redis)

    # ------------------------------------------------------------------ sessions and tokens
    def _check_class(self, cls: str) -> None:
        if cls not in self.policy.cfg.class_weights:
            raise BadRequest(f"class: unknown class {cls!r} (classes: {', '.join(self.policy.cfg.class_weights)})",
                             field="class")

    async def open_session(self, *, user: str, uid: int, pool: str, cls: str = "batch", weight: float = 1.0,
                           account: str = "", name: str = "", job_id: str = "") -> Session:
        if not self.accepting:
            raise Draining("daemon is draining; retry on the next daemon", field="session")
        if pool not in self.pools:
            raise BadRequest(f"pool: unknown pool {pool!r} (pools: {', '.join(sorted(self.pools))})", field="pool")
        self._check_class(cls)
        _check_weight(weight)
        spec = self.policy.cfg.class_spec(cls)
        limits.check_open(spec, user=user, account=account, open_sessions=(
            sum(1 for e in self.sessions.values() if e.session.user == user and e.session.cls == cls)
            if spec.max_sessions_per_user is not None else 0))
        s = Session(id=secrets.token_hex(6), user=user, uid=uid, pool=pool, cls=cls, weight=weight,
                    account=account, name=name[:100], job_id=str(job_id), created=time.time())
        await self.store.create_session(s)
        self.sessions[s.id] = SessionEntry(s, self.weight(s), new=True)
        self.index.by_token[self.token_for(s.id)] = s.id
        log.info("session %s opened: user=%s account=%s job=%s pool=%s class=%s", s.id, s.user, s.account,
                 s.job_id or "-", s.pool, s.cls)
        self.metrics.sessions_open.set(len(self.sessions))
        return s

    async def update_session(self, sid: str, *, who: str, cls: str | None = None, weight: float | None = None,
                             hold: str | None = None, release: bool = False) -> SessionEntry:
        """The admin's `qsched session update`: class, weight, hold (with a reason) or release. Kept in
        Redis (the session's hash) and logged with who made the change. A hold also takes back the
        session's batches still waiting in an inbox; running ones finish."""
        if hold is not None and release:
            raise BadRequest("hold: give hold or release, not both", field="hold")
        if cls is not None:
            self._check_class(cls)
        if weight is not None:
            _check_weight(weight)
        async with self.writer.write():
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
            entry.weight = self.weight(s)
            if s.hold:
                entry.held["admin"] = s.hold
                await recall_waiting(self, sid)
            else:
                entry.held.pop("admin", None)
            self.policy.remove(sid)          # re-entered with its new tier and weight (or not, if held)
            self.enqueue(entry)
        log.warning("session %s updated by %s: %s", sid, who,
                    ", ".join(f"{k} {before[k]!r} -> {v!r}" for k, v in changes.items()))
        self.kick()
        return entry

    async def close_session(self, sid: str) -> dict:
        """Cancel what has not started (pending tasks, and batches still waiting in an inbox), wait for
        the session's running batches to end (up to drain_timeout_s), then write its ledger record, so
        the record holds all the device time the session used."""
        async with self.writer.write():
            entry = self.session(sid)
            await recall_waiting(self, sid)
            cancelled = [t.id for t in entry.pending]
            await self.store.close_session(sid, cancelled)
            entry.pending.clear()
            self.policy.remove(sid)
            self.index.drop_session(sid, self.token_for(sid))
        for tid in cancelled:
            self.tasks.pop(tid, None)
            self.waiters.resolve(tid)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.drain_timeout_s
        while self.index.running_for(sid) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self.index.running_for(sid):
            log.warning("session %s closed with batches still running after %.0f s: their usage is not in "
                        "its ledger record", sid, self.config.drain_timeout_s)
        self.index.closing.pop(sid, None)
        with contextlib.suppress(RedisError):       # else the device watch writes it
            await self.watch.save_usage()
        usage = await self.store.session_usage(sid)
        s = entry.session
        record = {"session": sid, "name": s.name, "user": s.user, "account": s.account, "job_id": s.job_id,
                  "pool": s.pool, "class": s.cls, "opened": s.created, "closed": time.time(),
                  "cancelled": len(cancelled), **usage.__dict__}
        await self.store.record_accounting(record)
        self.views.refresh_gauges()
        log.info("session %s closed: user=%s job=%s tasks=%d device_s=%.3f cancelled=%d", sid, s.user,
                 s.job_id or "-", record["tasks"], record["device_seconds"], len(cancelled))
        return record

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

    def session(self, sid: str) -> SessionEntry:
        """The open session (a request names it: it is active now)."""
        entry = self.sessions.get(sid)
        if entry is None:
            raise NotFound(f"session: no open session {sid!r}", field="session")
        entry.last_active = time.monotonic()
        return entry

    def token_for(self, sid: str) -> str:
        """The session's bearer token: derived, so an attach from any process of the job gets the same."""
        mac = hmac.new(self.secret, sid.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def check_token(self, sid: str, token: str) -> bool:
        return hmac.compare_digest(self.token_for(sid), token)

    def session_for_token(self, token: str) -> str | None:
        """The open session a bearer token belongs to (a dict lookup: tokens are kept per open session)."""
        return self.index.by_token.get(token)

    # ------------------------------------------------------------------ tasks
    def new_task_id(self, sid: str) -> str:
        return f"{sid}.{secrets.token_hex(5)}"

    async def submit(self, sid: str, items: Items, idempotency_key: str | None = None) -> tuple[list[str], bool]:
        """Returns the task ids and whether they are new: a retry of an acknowledged submission (same
        idempotency key) gets the first answer's ids and submits nothing."""
        if not self.accepting:
            raise Draining("daemon is draining; no new tasks (retry on the next daemon)", field="tasks")
        entry = self.session(sid)
        async with self.writer.write():
            if sid not in self.sessions:              # closed while we waited
                raise NotFound(f"session: {sid!r} closed", field="session")
            entry = self.sessions[sid]
            if idempotency_key:
                done = await self._submitted(entry, idempotency_key)
                if done is not None:
                    return done, False
            self._check_limits(entry, items)
            now = time.time()
            was_idle = not entry.pending
            for t, _, _ in items:
                self.index.seq += 1
                t.seq, t.submitted = self.index.seq, now
                entry.pending.append(t)
                self.tasks[t.id] = t
            if was_idle:
                self.enqueue(entry)
            batches = self.plan()
            _attach_payloads(batches, items)
            ids = [t.id for t, _, _ in items]
            try:
                await self.writer.commit(self.store.commit(sid, items, batches, idempotency_key))  # durable, then acked
            except ReplicationTimeout:
                # the primary has them, no replica said so in time: not acknowledged (503), and a retry
                # under the same key gets these ids (the key is in the same commit)
                if idempotency_key:
                    entry.remember(idempotency_key, ids)
                    if len(self.unreplicated) >= UNREPLICATED_MAX:
                        self.unreplicated.clear()         # bounded: clients that never retried
                    self.unreplicated.add(idempotency_key)
                raise
            if idempotency_key:
                entry.remember(idempotency_key, ids)
            if entry.pending and dispatch.may_preempt_for(self.index, self.policy, entry):
                self.kick()              # the dispatcher takes back a lower tier's waiting batch
        for t, _, _ in items:
            self.metrics.tasks_submitted.labels(entry.session.pool, t.kind).inc()
        self.metrics.tasks_pending.labels(entry.session.pool).inc(len(items))
        count_dispatched(self, batches)
        return ids, True

    async def _submitted(self, entry: SessionEntry, key: str) -> list[str] | None:
        """The ids an earlier submission under this key was answered with; once a replica has it, if it
        was answered 503 for want of one."""
        done = entry.submits.get(key)
        if done is None and not entry.knows_all_submits:
            done = await self.store.submitted_ids(entry.session.id, key)
        if done is not None and key in self.unreplicated:
            try:
                await self.store.wait_replicated()     # acknowledged only once a replica has it
            except RedisError as e:
                # the connection that wrote it is gone (a failover): the new primary may lack it, so
                # rebuild the index from there; the retry after that reads the key back
                self.writer.store_changed()
                raise Unavailable(f"store: {e}; retry", field="store") from None
            self.unreplicated.discard(key)
        return done

    def _check_limits(self, entry: SessionEntry, items: Items) -> None:
        """The session's pending limit, its class limits (limits.py) and its quotas; counts only what a
        set limit needs."""
        s, cfg = entry.session, self.policy.cfg
        limit = cfg.max_pending_per_session
        if len(entry.pending) + len(items) > limit:
            raise BadRequest(f"tasks: session would have {len(entry.pending) + len(items)} pending tasks, "
                             f"limit {limit}", field="tasks", limit=limit)
        spec = cfg.class_spec(s.cls)
        pending = (sum(len(e.pending) for e in self.sessions.values() if e.session.user == s.user
                       and e.session.cls == s.cls) if spec.max_pending_per_user is not None else 0)
        estimates: list[float] = []
        if limits.needs_estimates(spec):
            devices = [d.name for d in self.pools.get(s.pool, ())]
            estimates = [min(self.cost.estimate(d, t.kind, t.bindings) for d in devices) for t, _, _ in items]
        limits.check_submit(spec, user=s.user, pending_for_user=pending, new_tasks=len(items),
                            task_estimates_s=estimates, session_used_s=entry.used_s)
        now = time.time()
        spent = self.quota.exhausted(s.user, s.account, now)
        if spent is not None:
            raise QuotaExceeded(f"quota: {self.quota.describe(spent, now)}", field=f"quota.{spent.key}",
                                limit=spent.device_s)

    async def cancel(self, tid: str) -> str:
        async with self.writer.write():
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
        self.waiters.resolve(tid)
        return TaskState.CANCELLED.value
