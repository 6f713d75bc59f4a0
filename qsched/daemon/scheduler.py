"""The scheduling index and loop. The index (sessions, their pending tasks, each device's outstanding
batches) lives in memory and is rebuilt from Redis on start; payloads stay in Redis.

Late binding: a device has at most one batch waiting in its inbox beyond the one running, so the
policy decides as late as possible. Completions arrive on the events stream from the workers."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections import OrderedDict, deque

from .. import keys
from ..config import Config
from ..errors import BadRequest, Conflict, NotFound
from ..metrics import Metrics
from ..models import Batch, DeviceSpec, Session, Task, TaskState
from ..policy import Policy
from ..store import Store

log = logging.getLogger("qsched.scheduler")

MAX_OUTSTANDING = 2          # running + one in the inbox


class SessionEntry:
    __slots__ = ("session", "pending", "inflight", "weight")

    def __init__(self, session: Session, weight: float):
        self.session = session
        self.pending: deque[Task] = deque()
        self.inflight = 0
        self.weight = weight


class DeviceEntry:
    __slots__ = ("spec", "outstanding", "alive")

    def __init__(self, spec: DeviceSpec):
        self.spec = spec
        self.outstanding: dict[str, tuple[Batch, float]] = {}   # bid -> (batch, estimated seconds)
        self.alive = False


class CostModel:
    """Estimated device-seconds per binding, learned per device and task kind (EWMA of measurements),
    saved to Redis now and then so a restarted daemon starts with good estimates."""

    def __init__(self, alpha: float = 0.3, initial: float = 1e-3):
        self.alpha, self.initial = alpha, initial
        self.per_binding: dict[tuple[str, str], float] = {}
        self.dirty = False

    def estimate(self, device: str, kind: str, bindings: int) -> float:
        return self.per_binding.get((device, kind), self.initial) * bindings

    def observe(self, device: str, kind: str, bindings: int, seconds: float) -> None:
        if bindings <= 0:
            return
        k = (device, kind)
        x = seconds / bindings
        self.per_binding[k] = x if k not in self.per_binding else (1 - self.alpha) * self.per_binding[k] + self.alpha * x
        self.dirty = True


class TemplateIndex:
    """Template infos the API validates tasks against (QPY stays in Redis). Templates expire in Redis
    after template_ttl_s unused; an entry older than RECHECK_S is checked (and its expiry pushed back)
    before use, so a template in use never expires and a cached one is never stale. LRU-bounded."""
    RECHECK_S = 3600.0
    MAX_ENTRIES = 10_000

    def __init__(self, store: Store, ttl_s: int):
        self.store, self.ttl_s = store, ttl_s
        self._infos: OrderedDict[str, tuple[dict, float]] = OrderedDict()

    async def get(self, digest: str) -> dict | None:
        hit = self._infos.get(digest)
        now = time.monotonic()
        if hit and now - hit[1] < self.RECHECK_S:
            self._infos.move_to_end(digest)
            return hit[0]
        info = await self.store.template_info(digest, self.ttl_s)
        if info is None:
            self._infos.pop(digest, None)
            return None
        self.put(digest, info)
        return info

    async def add(self, digest: str, qpy: bytes, info: dict) -> None:
        await self.store.put_template(digest, qpy, info, self.ttl_s)
        self.put(digest, info)

    def put(self, digest: str, info: dict) -> None:
        self._infos[digest] = (info, time.monotonic())
        self._infos.move_to_end(digest)
        while len(self._infos) > self.MAX_ENTRIES:
            self._infos.popitem(last=False)


class Scheduler:
    def __init__(self, store: Store, config: Config, policy: Policy, metrics: Metrics, secret: bytes):
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
        self.templates = TemplateIndex(store, config.template_ttl_s)
        self._waiters: dict[str, list[asyncio.Future]] = {}
        self._kick = asyncio.Event()
        self._writing = asyncio.Lock()         # one commit at a time: memory and Redis change in the same order
        self._seq = 0
        self._events_from = "0-0"
        self.accepting = True
        metrics.prelabel(self.devices, self.pools)

    # ------------------------------------------------------------------ recovery
    async def recover(self) -> None:
        r = self.store.r
        last = await r.xrevrange(keys.EVENTS, count=1)
        self._events_from = last[0][0] if last else "0-0"
        self.cost.per_binding.update(await self.store.load_cost_model(list(self.devices)))
        sessions, pending, tasks, outstanding = await self.store.load_state(list(self.devices))
        by_id = {t.id: t for t in tasks}
        for s in sessions:
            entry = self.sessions[s.id] = SessionEntry(s, self._weight(s))
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
        self._seq = max((t.seq for t in self.tasks.values()), default=0)
        for entry in self.sessions.values():
            entry.pending = deque(sorted(entry.pending, key=lambda t: t.seq))
            self._enqueue(entry)
        self._refresh_gauges()
        log.info("recovered %d sessions, %d live tasks, %d outstanding batches", len(self.sessions),
                 len(self.tasks), sum(len(d.outstanding) for d in self.devices.values()))
        self.kick()

    # ------------------------------------------------------------------ sessions
    def _weight(self, s: Session) -> float:
        return self.policy.weight(account=s.account, user=s.user, cls=s.cls, own=s.weight)

    async def open_session(self, *, user: str, uid: int, pool: str, cls: str = "batch", weight: float = 1.0,
                           account: str = "", name: str = "", job_id: str = "") -> Session:
        if not self.accepting:
            raise Conflict("daemon is draining; retry on the next daemon", field="session")
        if pool not in self.pools:
            raise BadRequest(f"pool: unknown pool {pool!r} (pools: {', '.join(sorted(self.pools))})",
                             field="pool")
        if cls not in self.policy.cfg.class_weights:
            raise BadRequest(f"class: unknown class {cls!r} (classes: {', '.join(self.policy.cfg.class_weights)})",
                             field="class")
        if not (0 < weight <= 1000):
            raise BadRequest("weight: must be in (0, 1000]", field="weight", limit=1000)
        s = Session(id=secrets.token_hex(6), user=user, uid=uid, pool=pool, cls=cls, weight=weight,
                    account=account, name=name[:100], job_id=str(job_id), created=time.time())
        await self.store.create_session(s)
        self.sessions[s.id] = SessionEntry(s, self._weight(s))
        self.metrics.sessions_open.set(len(self.sessions))
        return s

    def token_for(self, sid: str) -> str:
        """The session's bearer token: derived, so an attach from any process of the job gets the same."""
        mac = hmac.new(self.secret, sid.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def check_token(self, sid: str, token: str) -> bool:
        return hmac.compare_digest(self.token_for(sid), token)

    def session(self, sid: str) -> SessionEntry:
        entry = self.sessions.get(sid)
        if entry is None:
            raise NotFound(f"session: no open session {sid!r}", field="session")
        return entry

    async def close_session(self, sid: str) -> dict:
        async with self._writing:
            entry = self.session(sid)
            cancelled = [t.id for t in entry.pending]
            entry.pending.clear()
            self.policy.remove(sid)
            del self.sessions[sid]
            usage = await self.store.close_session(sid, cancelled)
        for tid in cancelled:
            self.tasks.pop(tid, None)
            self._resolve(tid)
        s = entry.session
        record = {"session": sid, "user": s.user, "account": s.account, "job_id": s.job_id, "pool": s.pool,
                  "class": s.cls, "opened": s.created, "closed": time.time(), "cancelled": len(cancelled),
                  **usage.__dict__}
        await self.store.record_accounting(record)
        self._refresh_gauges()
        return record

    # ------------------------------------------------------------------ tasks
    def new_task_id(self, sid: str) -> str:
        return f"{sid}.{secrets.token_hex(5)}"

    async def submit(self, sid: str, items: list[tuple[Task, str, bytes]]) -> list[str]:
        """items are validated (api.py) tasks with their observables JSON and raw params."""
        if not self.accepting:
            raise Conflict("daemon is draining; no new tasks", field="tasks")
        entry = self.session(sid)
        limit = self.policy.cfg.max_pending_per_session
        if len(entry.pending) + len(items) > limit:
            raise BadRequest(f"tasks: session would have {len(entry.pending) + len(items)} pending tasks, "
                             f"limit {limit}", field="tasks", limit=limit)
        async with self._writing:
            if sid not in self.sessions:              # closed while we waited
                raise NotFound(f"session: {sid!r} closed", field="session")
            now = time.time()
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
            await self._commit(sid, items, batches)      # durable before acknowledged
        for t, _, _ in items:
            self.metrics.tasks_submitted.labels(entry.session.pool, t.kind).inc()
        self.metrics.tasks_pending.labels(entry.session.pool).inc(len(items))
        self._count_dispatched(batches)
        return [t.id for t, _, _ in items]

    async def cancel(self, tid: str) -> str:
        t = self.tasks.get(tid)
        if t is None:
            state = (await self.store.task_fields(tid, "state"))[0]
            if state is None:
                raise NotFound(f"task: no task {tid!r}", field="task")
            return state
        entry = self.sessions.get(t.session)
        if t.state == TaskState.PENDING and entry is not None:
            entry.pending.remove(t)       # the policy skips a session found empty at its turn
            self.metrics.tasks_pending.labels(entry.session.pool).dec()
        t.state = TaskState.CANCELLED
        self.tasks.pop(tid, None)
        async with self._writing:
            await self.store.cancel_task(tid, t.session)
        self._resolve(tid)
        return TaskState.CANCELLED.value

    # ------------------------------------------------------------------ waiting
    def _resolve(self, tid: str, payload: bytes | None = None) -> None:
        for fut in self._waiters.pop(tid, ()):
            if not fut.done():
                fut.set_result(payload)

    async def wait(self, tids: list[str], timeout: float) -> dict[str, bytes]:
        """Wait until the tasks are final or the timeout passes. Returns the results that arrived
        inline with their completion events (the rest the caller reads from Redis)."""
        futs = []
        loop = asyncio.get_running_loop()
        for tid in tids:
            if tid in self.tasks:
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
        for entry in self.sessions.values():
            entry.weight = self._weight(entry.session)
            self._enqueue(entry)
        self.kick()

    # ------------------------------------------------------------------ dispatch
    def kick(self) -> None:
        self._kick.set()

    def _enqueue(self, entry: SessionEntry) -> None:
        if entry.pending:
            self.policy.enqueue(entry.session.id, entry.session.pool, entry.weight, entry.pending[0].seq)

    def _take(self, entry: SessionEntry, spec: DeviceSpec) -> list[Task]:
        """The head task, plus the following tasks that can share its simulator call."""
        head = entry.pending.popleft()
        tasks, bindings = [head], head.bindings
        if self.policy.cfg.merge:
            key = head.merge_key()
            while entry.pending and entry.pending[0].merge_key() == key \
                    and bindings + entry.pending[0].bindings <= spec.limits.max_batch_bindings:
                t = entry.pending.popleft()
                tasks.append(t)
                bindings += t.bindings
        return tasks

    async def run_dispatcher(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            async with self._writing:
                batches = self._plan()
                if batches:
                    await self._commit(None, [], batches)
            self._count_dispatched(batches)

    async def _commit(self, sid, items, batches) -> None:
        """Memory was updated first; if Redis refuses the write, memory is rebuilt from Redis."""
        try:
            await self.store.commit(sid, items, batches)
        except Exception:
            log.exception("write to Redis failed; rebuilding the index from Redis")
            await self.resync()
            raise

    async def resync(self) -> None:
        self.sessions.clear()
        self.tasks.clear()
        for d in self.devices.values():
            d.outstanding.clear()
        self.policy = type(self.policy)(self.policy.cfg)
        await self.recover()

    def _plan(self) -> list[Batch]:
        """Fill every device's free slots from the policy (in memory only; the caller commits)."""
        batches, progress = [], self.accepting
        while progress:
            progress = False
            for dev in self.devices.values():
                if len(dev.outstanding) >= MAX_OUTSTANDING:
                    continue
                sid = self.policy.pick(dev.spec.pool)
                if sid is None:
                    continue
                progress = True
                entry = self.sessions.get(sid)
                if entry is None or not entry.pending:
                    continue
                tasks = self._take(entry, dev.spec)
                est = self.cost.estimate(dev.spec.name, tasks[0].kind, sum(t.bindings for t in tasks))
                self.policy.charge(sid, est)
                self._enqueue(entry)
                batch = Batch(id="b" + secrets.token_hex(6), device=dev.spec.name, session=sid,
                              tasks=[t.id for t in tasks], created=time.time())
                for t in tasks:
                    t.state, t.batch = TaskState.SCHEDULED, batch.id
                entry.inflight += len(tasks)
                dev.outstanding[batch.id] = (batch, est)
                batches.append(batch)
        return batches

    def _count_dispatched(self, batches: list[Batch]) -> None:
        for b in batches:
            spec = self.devices[b.device].spec
            self.metrics.tasks_pending.labels(spec.pool).dec(len(b.tasks))
            self.metrics.batches.labels(spec.name).inc()

    # ------------------------------------------------------------------ completions
    async def run_events(self, redis) -> None:
        """Follow the workers' events stream (a dedicated connection: XREAD blocks)."""
        last = self._events_from
        while True:
            try:
                resp = await redis.xread({keys.EVENTS: last}, block=1000, count=500)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("events stream: %s; retrying", e)
                await asyncio.sleep(0.5)
                continue
            for _, entries in resp or ():
                for eid, fields in entries:
                    last = eid
                    try:
                        inline = {k.decode().rsplit(":", 1)[-1]: v for k, v in fields.items() if k != b"e"}
                        self.on_batch_done(json.loads(fields[b"e"]), inline)
                    except Exception:
                        log.exception("bad event %s", eid)

    def on_batch_done(self, ev: dict, inline: dict[str, bytes] | None = None) -> None:
        dev = self.devices.get(ev["device"])
        if dev is None:
            return
        batch, est = dev.outstanding.pop(ev["batch"], (None, 0.0))
        exec_s = float(ev["exec_s"])
        sid = ev["session"]
        first_kind = None
        for tid, state in ev["tasks"].items():
            t = self.tasks.pop(tid, None)
            if t is None:
                continue
            first_kind = first_kind or t.kind
            self.metrics.tasks_completed.labels(dev.spec.name, state).inc()
            self.metrics.queue_wait.labels(dev.spec.pool).observe(max(0.0, ev["started"] - t.submitted))
            if sid in self.sessions:
                self.sessions[sid].inflight -= 1
            self._resolve(tid, (inline or {}).get(tid))
        if batch is not None:
            for tid in batch.tasks:       # cancelled while running: nothing to report, still not live
                self.tasks.pop(tid, None)
                self._resolve(tid)
            if sid in self.sessions:
                self.policy.correct(sid, est, exec_s)
        if first_kind:
            self.cost.observe(dev.spec.name, first_kind, int(ev.get("bindings", 0)), exec_s)
        self.metrics.device_busy.labels(dev.spec.name).inc(exec_s)
        self.metrics.execution.labels(dev.spec.name).observe(exec_s)
        self.metrics.bindings.labels(dev.spec.name).inc(int(ev.get("bindings", 0)))
        self.kick()

    async def run_device_watch(self, interval_s: float = 1.0) -> None:
        """A device is up while its worker heartbeats, or while it is running a batch: aer holds the GIL
        for a whole run, so a long batch can outlast the heartbeat's expiry. Works the same for workers
        the daemon starts and for workers systemd runs. Also saves the learned cost model."""
        names = list(self.devices)
        while True:
            try:
                beats = await self.store.heartbeats(names)
                running = await self.store.running_counts(names)
                for name, hb, n in zip(names, beats, running):
                    up = hb is not None or n > 0
                    self.devices[name].alive = up
                    self.metrics.device_up.labels(name).set(1 if up else 0)
                    if hb and "rss_bytes" in hb:
                        self.metrics.worker_memory.labels(name).set(hb["rss_bytes"])
                if self.cost.dirty:
                    self.cost.dirty = False
                    await self.store.save_cost_model(dict(self.cost.per_binding))
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("device watch: %s", e)
            await asyncio.sleep(interval_s)

    # ------------------------------------------------------------------ views
    def _refresh_gauges(self) -> None:
        self.metrics.sessions_open.set(len(self.sessions))
        per_pool: dict[str, int] = {p: 0 for p in self.pools}
        for e in self.sessions.values():
            per_pool[e.session.pool] = per_pool.get(e.session.pool, 0) + len(e.pending)
        for p, n in per_pool.items():
            self.metrics.tasks_pending.labels(p).set(n)

    def session_view(self, entry: SessionEntry) -> dict:
        return {**entry.session.public(), "pending": len(entry.pending), "inflight": entry.inflight,
                "weight_effective": entry.weight}

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

