"""The scheduler: a facade over the daemon's rooms, so the API, the daemon's lifecycle and the Slurm
hooks have one object to talk to.

  index.py         what is known in memory (sessions, tasks, outstanding batches), rebuilt from Redis
  txn.py           the write discipline (one writer; memory first, then Redis; stale -> rebuild)
  dispatch.py      pure decisions: what to dispatch (plan), what a higher tier takes back (preemption)
  dispatcher.py    committing them: the dispatcher loop, recalls
  tasks.py         submit, cancel            sessions.py   open, update, close, expiry
  completions.py   the workers' events       device_watch.py  heartbeats, states, windows, vendors
  waiters.py       long-polls                views.py      session, sshare, sprio and policy views

Late binding: a device has at most one batch waiting in its inbox beyond the one running, so the
policy decides as late as possible. Payloads stay in Redis."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from ..config import Config
from ..errors import NotFound
from ..metrics import Metrics
from ..models import Batch, Session, Task, Window
from ..policy import Policy, UsageLedger
from ..policy.quota import QuotaLedger
from ..store import Store
from . import completions, dispatch, dispatcher, sessions, tasks
from .cost import CostModel
from .device_watch import DeviceWatch
from .index import Index, SessionEntry, Snapshot
from .templates import TemplateIndex
from .txn import Writer
from .views import Views
from .waiters import Waiters

log = logging.getLogger("qsched.scheduler")


class Scheduler:
    def __init__(self, store: Store, config: Config, policy: Policy, metrics: Metrics, secret: bytes, *,
                 on_worker_lost: Callable[[str, int | None], None] | None = None):
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
    async def open_session(self, *, user: str, uid: int, pool: str, cls: str = "batch", weight: float = 1.0,
                           account: str = "", name: str = "", job_id: str = "") -> Session:
        return await sessions.open_session(self, user=user, uid=uid, pool=pool, cls=cls, weight=weight,
                                           account=account, name=name, job_id=job_id)

    async def update_session(self, sid: str, *, who: str, cls: str | None = None, weight: float | None = None,
                             hold: str | None = None, release: bool = False) -> SessionEntry:
        return await sessions.update_session(self, sid, who=who, cls=cls, weight=weight, hold=hold,
                                             release=release)

    async def close_session(self, sid: str) -> dict:
        return await sessions.close_session(self, sid)

    async def run_session_expiry(self) -> None:
        await sessions.run_session_expiry(self)

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

    async def submit(self, sid: str, items: list[tuple[Task, str, bytes]],
                     idempotency_key: str | None = None) -> tuple[list[str], bool]:
        """items are validated (api.py) tasks with their observables JSON and raw params (tasks.submit)."""
        return await tasks.submit(self, sid, items, idempotency_key)

    async def cancel(self, tid: str) -> str:
        return await tasks.cancel(self, tid)
