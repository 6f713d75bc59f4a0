"""The scheduling index: what the daemon knows in memory (sessions, their pending tasks, each device's
outstanding batches, dispatch order). Pure: no I/O; rebuilt from a store snapshot after a failed
write or a restart (what Redis holds is the truth)."""
from __future__ import annotations

import copy
import itertools
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..models import Batch, DeviceSpec, Session, Task, TaskState
from ..policy import SessionInfo

MAX_OUTSTANDING = 2          # running + one in the inbox (+ merge_batches - 1 where a device merges)
UNAVAILABLE = ("draining", "paused", "maintenance")    # a pool all of whose devices are so: spill_to applies
WINDOW_REASON = "maintenance window "        # a state reason that says a window set the state


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
        self.info = _info(session)
        self.used_s = 0.0              # device-seconds measured (class limit max_session_device_s)
        self.last_active = time.monotonic()      # the last request naming it (daemon.session_idle_timeout_s)
        # why the session is not dispatched, by cause ("admin": `qsched session update --hold`, kept in
        # Redis; "quota": its account's or user's quota is used up, rechecked by the device watch)
        self.held: dict[str, str] = {"admin": session.hold} if session.hold else {}

    def refresh_info(self) -> None:
        """After an admin changed the session's class or weight."""
        self.info = _info(self.session)

    def remember(self, key: str, ids: list[str]) -> None:
        self.submits[key] = ids
        if len(self.submits) > self.MAX_SUBMITS:
            self.submits.popitem(last=False)
            self.knows_all_submits = False

    def reason(self) -> str:
        return "; ".join(self.held[k] for k in sorted(self.held))


def _info(s: Session) -> SessionInfo:
    return SessionInfo(id=s.id, pool=s.pool, cls=s.cls, account=s.account, user=s.user, weight=s.weight,
                       created=s.created)


class DeviceEntry:
    __slots__ = ("spec", "outstanding", "alive", "described", "state", "reason", "since", "finished")

    def __init__(self, spec: DeviceSpec):
        self.spec = spec
        self.outstanding: dict[str, tuple[Batch, float]] = {}   # bid -> (batch, estimated seconds)
        self.alive = False
        self.described: dict = {}      # what its worker last said of the device (its heartbeat)
        # the admin's state: only an online device is sent work; draining lets outstanding batches end,
        # paused and maintenance also take back the one waiting in the inbox
        self.state, self.reason, self.since = "online", "", 0.0
        self.finished = 0.0       # when its worker last ended a batch: the one running began no earlier

    def public_state(self) -> str:
        """online, draining, paused, maintenance, or offline (no worker heartbeat)."""
        return self.state if self.state != "online" or self.alive else "offline"

    def free_slots(self) -> int:
        """Batches it may still be sent now (0 unless alive and online)."""
        if not self.alive or self.state != "online":
            return 0
        return max(0, MAX_OUTSTANDING + self.spec.merge_batches - 1 - len(self.outstanding))


@dataclass
class Snapshot:
    """What `Store.load_state` returns, plus each session's device-seconds used so far."""
    sessions: list[Session]
    pending: dict[str, list[str]]
    tasks: list[Task]
    outstanding: dict[str, list[Batch]]
    used: dict[str, float]


@dataclass(frozen=True)
class Placed:
    """Why and when an outstanding batch was dispatched: what preemption needs to choose and to requeue
    without a fresh wait."""
    order: int
    tier: int
    promoted: bool = False
    since: float | None = None       # the session's wait start when it was picked


class Index:
    """Open sessions and their live tasks, each device's outstanding batches and why they were placed,
    the bearer tokens of open sessions, and closed sessions whose batches may still end."""

    def __init__(self, devices: list[DeviceSpec], pools: dict[str, list[DeviceSpec]]):
        self.sessions: dict[str, SessionEntry] = {}
        self.tasks: dict[str, Task] = {}                 # live tasks only
        self.devices = {d.name: DeviceEntry(d) for d in devices}
        self.pools = pools
        self.closing: dict[str, Session] = {}      # closed, batches may still end: charged to them
        # closed sessions whose batches outlived the close's wait: the ledger record written then
        self.recorded: dict[str, dict] = {}
        self.by_token: dict[str, str] = {}         # bearer token -> open session id
        self.seq = 0
        self.placed: dict[str, Placed] = {}        # per outstanding batch
        self._order = itertools.count()
        self.started: set[str] = set()      # batches a recall found taken by their worker: not tried again
        # per session, the dispatch order of its newest batch a worker took: an older one still waiting
        # is not taken back (on another device the newer one ran first; see policy/preempt.py)
        self.taken_upto: dict[str, int] = {}

    def rebuild(self, snap: Snapshot, *, weight: Callable[[Session], float], tier: Callable[[SessionInfo], int],
                estimate: Callable[[str, str, int], float], token: Callable[[str], str], now: float) -> None:
        """Replace everything but the devices' admin and liveness states with the snapshot's."""
        self.sessions.clear()
        self.tasks.clear()
        self.placed.clear()
        self.started.clear()
        self.taken_upto.clear()
        for d in self.devices.values():
            d.outstanding.clear()
        by_id = {t.id: t for t in snap.tasks}
        self.by_token = {token(s.id): s.id for s in snap.sessions}
        for s in snap.sessions:
            entry = self.sessions[s.id] = SessionEntry(s, weight(s))
            entry.used_s = snap.used.get(s.id, 0.0)
            for tid in snap.pending.get(s.id, []):
                t = by_id.get(tid)
                if t and t.state == TaskState.PENDING:
                    entry.pending.append(t)
                    self.tasks[t.id] = t
        for dev, batches in snap.outstanding.items():
            for b in batches:
                live = [by_id[t] for t in b.tasks if t in by_id and not by_id[t].state.terminal]
                owner = self.sessions.get(b.session)
                for t in live:
                    self.tasks[t.id] = t
                    if owner is not None:
                        owner.inflight += 1
                kind = live[0].kind if live else "estimate"
                self.devices[dev].outstanding[b.id] = (b, estimate(dev, kind, sum(t.bindings for t in live)))
                self.placed[b.id] = Placed(self.next_order(), tier(owner.info) if owner is not None else 0,
                                           False, now)
        self.seq = max((t.seq for t in self.tasks.values()), default=0)
        for entry in self.sessions.values():
            entry.pending = deque(sorted(entry.pending, key=lambda t: t.seq))

    def next_order(self) -> int:
        return next(self._order)

    def copy(self) -> Index:
        """A copy to plan forward on (daemon/forecast.py): sessions, live tasks, devices and placements
        are new objects (planning changes them); specs, sessions' identities and batches are shared."""
        ix = Index(list(d.spec for d in self.devices.values()), self.pools)
        ix.tasks = {tid: copy.copy(t) for tid, t in self.tasks.items()}
        for sid, e in self.sessions.items():
            c = ix.sessions[sid] = SessionEntry(e.session, e.weight)
            c.pending = deque(ix.tasks.get(t.id) or copy.copy(t) for t in e.pending)
            c.inflight, c.info, c.used_s, c.held = e.inflight, e.info, e.used_s, dict(e.held)
        for name, d in self.devices.items():
            dc = ix.devices[name]
            dc.outstanding, dc.alive, dc.described = dict(d.outstanding), d.alive, d.described
            dc.state, dc.reason, dc.since, dc.finished = d.state, d.reason, d.since, d.finished
        ix.closing, ix.seq = dict(self.closing), self.seq
        ix.placed, ix.started, ix.taken_upto = dict(self.placed), set(self.started), dict(self.taken_upto)
        ix._order = itertools.count(max((p.order for p in self.placed.values()), default=-1) + 1)
        return ix

    def outstanding(self) -> Iterator[tuple[DeviceEntry, Batch, float]]:
        for d in self.devices.values():
            for b, est in d.outstanding.values():
                yield d, b, est

    def running_for(self, sid: str) -> bool:
        return any(b.session == sid for _, b, _ in self.outstanding())

    def idle(self) -> bool:
        return not any(d.outstanding for d in self.devices.values())

    def pool_down(self, pool: str) -> bool:
        devs = self.pools.get(pool, [])
        return bool(devs) and all(self.devices[d.name].state in UNAVAILABLE for d in devs)

    def note_taken(self, sid: str, order: int) -> None:
        if order > self.taken_upto.get(sid, -1):
            self.taken_upto[sid] = order

    def drop_session(self, sid: str, token: str) -> SessionEntry:
        """Forget an open session (closed): batches still running are charged to it via `closing`."""
        entry = self.sessions.pop(sid)
        self.taken_upto.pop(sid, None)
        self.closing[sid] = entry.session
        self.by_token.pop(token, None)
        return entry

    def requeue(self, dev: DeviceEntry, b: Batch, *, attempt: bool) -> tuple[SessionEntry | None, list[Task], Placed]:
        """Memory side of a recall: the batch's live tasks go back to the head of their session's queue,
        in order (or are forgotten when the session is gone). Returns (entry, live tasks, placement)."""
        dev.outstanding.pop(b.id, None)
        placed = self.placed.pop(b.id, Placed(0, 0))
        self.started.discard(b.id)
        live = [self.tasks[t] for t in b.tasks if t in self.tasks]
        entry = self.sessions.get(b.session)
        if entry is None:
            for t in live:
                self.tasks.pop(t.id, None)
            return None, live, placed
        for t in reversed(live):
            t.state, t.batch = TaskState.PENDING, None
            if attempt:
                t.attempts += 1
            entry.pending.appendleft(t)
        entry.inflight -= len(live)
        return entry, live, placed
