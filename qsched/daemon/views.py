"""Read-only views of the index and the policy for the API (sessions, sshare, sprio, policy) and the
gauges kept from them."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..errors import BadRequest
from ..models import Session, TaskState
from ..policy.report import policy_doc, prio_row, share_rows
from .forecast import PROBE, PROBE_TASK, Forecast, forecast
from .index import SessionEntry
from .sessions import _check_class

if TYPE_CHECKING:
    from .scheduler import Scheduler


FORECAST_REUSE_S = 2.0
MAX_TASK_ROWS = 10_000         # an estimate lists at most this many of the session's tasks


class Views:
    def __init__(self, sch: Scheduler):
        self.sch = sch
        self.backlog: dict[str, float] = {}     # predicted device-seconds per pool, as last refreshed
        self._last: tuple[tuple[int, int], Forecast] | None = None      # (index version, forecast)

    def session(self, entry: SessionEntry) -> dict:
        view = {**entry.session.public(), "pending": len(entry.pending), "inflight": entry.inflight,
                "weight_effective": entry.weight, "held": bool(entry.held), "reason": entry.reason(),
                "replayed": self.sch.replay.replayed(entry.session.id)}
        policy = self.sch.policy
        factor = getattr(policy, "fairshare_factor", None)
        if factor is not None:
            view["fairshare_factor"] = factor(entry.info, time.time())
            view["fairshare_source"] = policy.options.get("fairshare_source", "qsched")
        return view

    def shares(self) -> list[dict]:
        """sshare: accounts and users with their shares, decayed usage and fair-share factor."""
        open_pairs = {(e.session.account, e.session.user) for e in self.sch.sessions.values()}
        return share_rows(self.sch.policy, time.time(), open_pairs)

    def prio(self) -> list[dict]:
        """sprio: each backlogged (or held) session's priority factors, highest tier and priority first."""
        now, policy = time.time(), self.sch.policy
        rows = []
        for e in self.sch.sessions.values():
            if e.pending:
                row = prio_row(policy, e.info, now, pending=len(e.pending), since=policy.waiting_since(e.session.id))
                rows.append({**row, "held": bool(e.held), "reason": e.reason()})
        return sorted(rows, key=lambda r: (-r["tier"], -r["priority"], -r["waiting_s"]))

    def policy(self) -> dict:
        return {"name": self.sch.policy.name, **policy_doc(self.sch.policy, self.sch.quota, time.time())}

    def forecast(self, probe: Session | None = None, bindings: int = 1) -> Forecast:
        """The dispatcher's planning run forward from now (daemon/forecast.py). It costs about 0.2 ms a
        pending task: without a probe, one made under FORECAST_REUSE_S ago is reused while no task came
        or went (API requests in a row, the gauges)."""
        sch, now = self.sch, time.time()
        key = (sch.index.seq, len(sch.tasks))
        last = self._last
        if probe is None and last is not None and last[0] == key and now - last[1].now < FORECAST_REUSE_S:
            return last[1]
        fc = forecast(sch.index, sch.policy, sch.cost, sch.quota, sch.maintenance_windows, now,
                      probe=probe, probe_bindings=bindings)
        if probe is None:
            self._last = (key, fc)
        return fc

    def session_estimate(self, entry: SessionEntry) -> dict:
        """When the session's work is predicted to run: its next pending task's start, its backlog's
        end (Unix times; null: not predicted, e.g. held or no live device), and each live task's run."""
        fc, tasks = self.forecast(), self.sch.tasks
        rows = []
        inflight = [t for t in tasks.values() if t.session == entry.session.id and t.state != TaskState.PENDING]
        for t in [*inflight, *entry.pending][:MAX_TASK_ROWS]:
            r = fc.runs.get(t.id)
            lo, hi = r.interval(fc.now) if r else (None, None)
            rows.append({"id": t.id, "state": t.state.value, "device": r and r.device, "start": r and r.start,
                         "start_lo": lo, "start_hi": hi, "end": r and r.end, "device_s": r and r.share(t)})
        return {"session": entry.session.id, "now": fc.now, "complete": fc.complete,
                **fc.session(entry, tasks), "tasks": rows}

    def pool_estimate(self, pool: str, *, cls: str, account: str, user: str, bindings: int = 1) -> dict:
        """As `sbatch --test-only`: the pool's backlog, and when a new session of this class and account
        would start a task of `bindings` bindings, and its predicted device-seconds."""
        sch = self.sch
        if pool not in sch.pools:
            raise BadRequest(f"pool: unknown pool {pool!r} (pools: {', '.join(sorted(sch.pools))})", field="pool")
        _check_class(sch, cls)
        now = time.time()
        probe = Session(id=PROBE, user=user, uid=-1, pool=pool, cls=cls, account=account, created=now)
        run = self.forecast(probe, bindings).runs.get(PROBE_TASK)
        full = self.forecast()
        return {"pool": pool, "class": cls, "account": account, "bindings": bindings, "now": full.now,
                **full.pool({d.name for d in sch.pools[pool]}), "complete": full.complete,
                "start": run and run.start, "wait_s": run and max(0.0, run.start - now),
                "device": run and run.device, "device_s": run and run.device_s * bindings / (run.bindings or bindings)}

    def forecast_gauges(self) -> None:
        """Backlog seconds per pool, predicted wait of a new session per pool and class."""
        sch, m = self.sch, self.sch.metrics
        full = self.forecast()
        for pool, devs in sch.pools.items():
            self.backlog[pool] = full.pool({d.name for d in devs})["backlog_s"]
            m.pool_backlog.labels(pool).set(self.backlog[pool])
            for cls in sch.policy.cfg.class_weights:
                probe = Session(id=PROBE, user="", uid=-1, pool=pool, cls=cls, created=full.now)
                run = self.forecast(probe).runs.get(PROBE_TASK)
                m.predicted_wait.labels(pool, cls).set(max(0.0, run.start - full.now) if run else float("inf"))

    def quota_gauges(self, now: float) -> None:
        m = self.sch.metrics
        m.quota_used_ratio.clear()            # a quota removed by a reload leaves no series
        for key in self.sch.quota.specs:
            m.quota_used_ratio.labels(key).set(self.sch.quota.ratio(key, now))

    def refresh_gauges(self) -> None:
        m = self.sch.metrics
        m.sessions_open.set(len(self.sch.sessions))
        per_pool: dict[str, int] = {p: 0 for p in self.sch.pools}
        for e in self.sch.sessions.values():
            per_pool[e.session.pool] = per_pool.get(e.session.pool, 0) + len(e.pending)
        for p, n in per_pool.items():
            m.tasks_pending.labels(p).set(n)
        self.quota_gauges(time.time())
