"""Read-only views of the index and the policy for the API (sessions, sshare, sprio, policy) and the
gauges kept from them."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..policy.report import policy_doc, prio_row, share_rows
from .index import SessionEntry

if TYPE_CHECKING:
    from .scheduler import Scheduler


class Views:
    def __init__(self, sch: Scheduler):
        self.sch = sch

    def session(self, entry: SessionEntry) -> dict:
        view = {**entry.session.public(), "pending": len(entry.pending), "inflight": entry.inflight,
                "weight_effective": entry.weight, "held": bool(entry.held), "reason": entry.reason()}
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
