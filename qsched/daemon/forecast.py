"""Predictions by planning forward, pure (no I/O, simulated time): the dispatcher's own `plan` run over
a copy of the index, the policy, the quotas and the usage, with every device working through its
batches at the cost model's estimates. Tiers, fair share, quotas (holds and their windows), maintenance
windows, spill and preemption count as they do for the real dispatcher: there is no second model.

What it predicts: per live task, the device, start and end of the batch it will run in; from those,
per session the start of its next pending task and the end of its backlog, and per pool its backlog in
device-seconds and the wait of a new session (a one-task probe planned with the others)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..models import Batch, Session, Task, Window
from ..policy import Policy
from ..policy.quota import QuotaLedger, window_start
from . import dispatch
from .cost import CostModel
from .index import WINDOW_REASON, DeviceEntry, Index, SessionEntry

PROBE = "~probe"                 # the id of the probe session (no real id has a tilde)
PROBE_TASK = PROBE + ".t"
MAX_BATCHES = 20_000             # planned at most per forecast: a bound on its cost for a huge backlog
HORIZON_S = 7 * 86_400.0
# the p90 interval of a predicted start: what planning forward cannot know grows with the predicted
# wait. Mostly work that arrives later and goes first (a higher tier, a session with more fair share):
# starts come late far more often than early, so the interval reaches further after than before.
# Calibrated in benchmarks/forecast_accuracy.py (docs/benchmarks.md)
START_EARLY = (0.5, 0.5)         # (x the wait, + seconds) before the predicted start
START_LATE = (1.0, 3.0)          # after it
EPS = 1e-9                       # events this close are one (sums of floats: ties stay ties)


@dataclass(frozen=True)
class Run:
    """When a batch is predicted to run: its tasks share it."""
    device: str
    start: float
    end: float
    device_s: float
    bindings: int

    def interval(self, now: float) -> tuple[float, float]:
        """The start's p90 interval."""
        wait = max(0.0, self.start - now)
        return (self.start - wait * START_EARLY[0] - START_EARLY[1],
                self.start + wait * START_LATE[0] + START_LATE[1])

    def share(self, task: Task) -> float:
        """The task's part of its batch's device-seconds (merged tasks share one batch)."""
        return self.device_s * task.bindings / self.bindings if self.bindings else self.device_s


@dataclass
class Forecast:
    now: float
    runs: dict[str, Run] = field(default_factory=dict)      # live task id -> its batch's run
    complete: bool = True          # every pending task got a run (False: a bound or a dead pool stopped it)
    _by_session: dict[str, list[tuple[Task, Run]]] | None = field(default=None, repr=False)

    def batches(self, devices: set[str] | None = None) -> list[Run]:
        """Each planned batch once (its tasks share its run), on `devices` only if given."""
        return list({(r.device, r.start): r for r in self.runs.values()
                     if devices is None or r.device in devices}.values())

    def pool(self, devices: set[str]) -> dict:
        """The device-seconds still to run on these devices, and when that backlog ends (seconds from now)."""
        runs = self.batches(devices)
        return {"backlog_s": sum(r.end - max(r.start, self.now) for r in runs),
                "drain_s": max((r.end for r in runs), default=self.now) - self.now}

    def session(self, entry: SessionEntry, tasks: dict[str, Task]) -> dict:
        """The session's next pending task's start and its backlog's end (None: not predicted, e.g. its
        pool has no live device or it is held), and its predicted device-seconds still to run."""
        if self._by_session is None:          # once per forecast: a queue view asks for every session
            self._by_session = {}
            for tid, r in self.runs.items():
                if tid in tasks:
                    self._by_session.setdefault(tasks[tid].session, []).append((tasks[tid], r))
        mine = self._by_session.get(entry.session.id, [])
        head = self.runs.get(entry.pending[0].id) if entry.pending else None
        planned = all(t.id in self.runs for t in entry.pending)
        return {"next_start": head.start if head else None,
                "backlog_end": max((r.end for _, r in mine), default=self.now) if planned else None,
                "device_s": sum(r.share(t) for t, r in mine)}


def forecast(index: Index, policy: Policy, cost: CostModel, quota: QuotaLedger, windows: list[Window],
             now: float, *, probe: Session | None = None, probe_bindings: int = 1, probe_kind: str = "estimate",
             max_batches: int = MAX_BATCHES, horizon_s: float = HORIZON_S) -> Forecast:
    """Plan forward from `now` until every pending task has a run (or a bound). Nothing given changes.
    probe: a session with one pending task, planned as if it arrived now (task id PROBE_TASK); the
    forecast then stops when that task has its run."""
    sim = _Sim(index.copy(), policy.copy(), cost, _copy_quota(quota), windows, now)
    if probe is not None:
        sim.add_probe(probe, probe_bindings, probe_kind)
    return sim.run(max_batches, now + horizon_s)


def _copy_quota(quota: QuotaLedger) -> QuotaLedger:
    q = QuotaLedger(quota.specs)
    q._used = dict(quota._used)
    return q


class _Sim:
    def __init__(self, ix: Index, pol: Policy, cost: CostModel, quota: QuotaLedger, windows: list[Window],
                 now: float):
        self.ix, self.pol, self.cost, self.quota, self.windows = ix, pol, cost, quota, windows
        self.fc = Forecast(now)
        self.when: dict[str, tuple[float, float]] = {}       # outstanding batch -> (start, end)
        self.batches = 0
        self.probing = False
        for dev in ix.devices.values():
            if dev.outstanding:
                self._outstanding(dev, now)

    def _outstanding(self, dev: DeviceEntry, now: float) -> None:
        """The device's batches as its worker runs them. The job running: the first batch, since it was
        created or the device's previous batch ended (the later), and ending now at the earliest, with
        those committed with it (the worker takes what its inbox holds, waiting merge_wait_s for more);
        the others behind it."""
        batches = list(dev.outstanding.values())
        first = batches[0][0]
        k = 1
        while k < len(batches) and batches[k][0].created <= first.created + dev.spec.merge_wait_s:
            k += 1
        for b, est in batches[:k]:
            self._place(dev, b, est, min(now, max(first.created, dev.finished)))
        start, end = self.when[first.id]
        if end < now:
            self._record(dev, [b for b, _ in batches[:k] if self.when[b.id] == (start, end)], start, now, end - start)
        for b, est in batches[k:]:
            self._place(dev, b, est, now)

    def add_probe(self, probe: Session, bindings: int, kind: str) -> None:
        ix, pol = self.ix, self.pol
        entry = ix.sessions[PROBE] = SessionEntry(probe, pol.weight(account=probe.account, user=probe.user,
                                                                  cls=probe.cls, own=probe.weight))
        ix.seq += 1
        t = Task(PROBE_TASK, PROBE, kind, "", bindings, None, ix.seq, self.fc.now)
        entry.pending.append(t)
        ix.tasks[t.id] = t
        dispatch.enqueue(ix, pol, entry, self.fc.now)
        self.probing = True

    def _record(self, dev: DeviceEntry, batches: list[Batch], start: float, end: float, device_s: float) -> None:
        """Batches that run as one device call (one, or a merged job) from start to end."""
        live = [self.ix.tasks[t] for b in batches for t in b.tasks if t in self.ix.tasks]
        run = Run(dev.spec.name, start, end, device_s, sum(t.bindings for t in live))
        for b in batches:
            self.when[b.id] = (start, end)
        for t in live:
            self.fc.runs[t.id] = run

    def _place(self, dev: DeviceEntry, b: Batch, est: float, t: float) -> None:
        """A new batch runs after the device's last one; on a device that merges batches into one job
        (merge_batches > 1) it joins the job not yet started (or starting now: committed together) with
        the same merge key, as the worker takes them: the job's setup is paid once and its time is shared
        by bindings."""
        queued = [o for o in dev.outstanding.values() if o[0].id in self.when]     # (not those planned with it)
        last = max((self.when[o.id][0] for o, _ in queued), default=t)
        job = [o for o, _ in queued if self.when[o.id][0] == last]
        if job and last >= t and b.merge and len(job) < dev.spec.merge_batches and all(o.merge == b.merge for o in job):
            start, end = self.when[job[0].id]
            end += est - self.cost.setup.get(dev.spec.name, 0.0)
            self._record(dev, [*job, b], start, end, end - start)
            return
        start = max([t] + [self.when[o.id][1] for o, _ in queued])
        self._record(dev, [b], start, start + est, est)

    def run(self, max_batches: int, until: float) -> Forecast:
        t = self.fc.now
        while True:
            self._complete(t)
            self._windows(t)
            dispatch.release_quota_holds(self.ix, self.pol, self.quota, t)
            if self.pol.cfg.preempt:
                self._preempt(t)
            for b in dispatch.plan(self.ix, self.pol, self.cost, self.quota, t):
                dev = self.ix.devices[b.device]
                self._place(dev, b, dev.outstanding[b.id][1], t)
                self.batches += 1
            if self.probing and PROBE_TASK in self.fc.runs:
                return self.fc
            # done when nothing waits (a batch still in an inbox may yet be taken back by a window)
            if not any(e.pending for e in self.ix.sessions.values()) and \
                    not any(self._waiting(d, t) for d in self.ix.devices.values()):
                return self.fc
            nxt = self._next_event(t)
            if nxt is None or nxt > until or self.batches >= max_batches:
                self.fc.complete = False
                return self.fc
            t = nxt

    def _next_event(self, t: float) -> float | None:
        """The next batch end, window start or end, or quota window while a session is held by a quota
        (`t` again when a batch ends now: it has not left yet)."""
        times = [end for _, end in self.when.values()]
        times += [x for w in self.windows for x in (w.start, w.end) if x is not None]
        if any("quota" in e.held for e in self.ix.sessions.values()):
            times += [window_start(s, t) + s.period_s for s in self.quota.specs.values()]
        if any(end <= t + EPS for _, end in self.when.values()):
            return t
        return min((x for x in times if x > t + EPS), default=None)

    def _complete(self, t: float) -> None:
        """The batches ended by `t` leave the index, and their device-seconds are charged as measured
        (as completions.py does with a worker's event)."""
        ix = self.ix
        for dev in ix.devices.values():
            for bid in [bid for bid in dev.outstanding if self.when.get(bid, (0, math.inf))[1] <= t + EPS]:
                b, est = dev.outstanding.pop(bid)
                self.when.pop(bid)
                placed = ix.placed.pop(bid, None)
                entry = ix.sessions.get(b.session)
                if placed is not None and entry is not None:
                    ix.note_taken(b.session, placed.order)
                ix.started.discard(bid)
                for tid in b.tasks:
                    if ix.tasks.pop(tid, None) is not None and entry is not None:
                        entry.inflight -= 1
                owner = entry.session if entry is not None else ix.closing.get(b.session)
                if entry is not None:
                    self.pol.correct(b.session, est, est)
                    entry.used_s += est
                if owner is not None:
                    self.pol.usage.charge(owner.user, owner.account, est, t)
                    self.quota.charge(owner.user, owner.account, est, t)

    def _waiting(self, dev: DeviceEntry, t: float) -> list[tuple[Batch, float]]:
        """The device's batches still in its inbox at `t` (not started): what a recall takes back."""
        return [(b, est) for b, est in dev.outstanding.values() if self.when.get(b.id, (t, 0))[0] > t]

    def _requeue(self, dev: DeviceEntry, b: Batch, est: float, reason: str, t: float) -> None:
        dispatch.requeue(self.ix, self.pol, dev, b, est, reason, t)
        self.when.pop(b.id, None)
        free = t
        for ob, oest in dev.outstanding.values():        # the batches behind it move up
            start, end = self.when[ob.id]
            if start > t:
                start, end = max(t, free), max(t, free) + oest
                self._record(dev, [ob], start, end, oest)
            free = end

    def _preempt(self, t: float) -> None:
        """dispatcher.preempt, with a batch in an inbox always taken back and a running one never."""
        walk = dispatch.preemption(self.ix, self.pol)
        if walk is None:
            return
        for c in walk:
            dev = self.ix.devices[c.device]
            held = dev.outstanding.get(c.batch)
            taken = held is not None and self.when[c.batch][0] > t
            walk.done(c, taken)
            if held is None:
                continue
            if taken:
                self._requeue(dev, held[0], held[1], "preempt", t)
            else:
                self.ix.started.add(c.batch)
                self.ix.note_taken(c.session, c.order)

    def _windows(self, t: float) -> None:
        """device_watch.apply_windows: a window that is on takes its devices into maintenance (their
        inbox batches come back), one that ended brings back those it took; spill follows."""
        changed = set()
        for dev in self.ix.devices.values():
            on = any(w.on(t) for w in self.windows if w.covers(dev.spec.name, dev.spec.pool))
            if on and dev.state == "online":
                dev.state, dev.reason = "maintenance", WINDOW_REASON
                for b, est in reversed(self._waiting(dev, t)):
                    self._requeue(dev, b, est, "recall", t)
                changed.add(dev.spec.pool)
            elif not on and dev.state == "maintenance" and dev.reason.startswith(WINDOW_REASON):
                dev.state = "online"
                changed.add(dev.spec.pool)
        for pool in changed:
            dispatch.respill(self.ix, self.pol, pool, t)

