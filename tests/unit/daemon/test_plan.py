"""Dispatch decisions without Redis (daemon/dispatch.py): what `plan` sends to which device, quota
holds, and the in-memory half of preemption."""
from __future__ import annotations

import time

from daemon_fakes import index, pending_ids, policy, session, task

from qsched.daemon import dispatch
from qsched.daemon.cost import CostModel
from qsched.daemon.index import MAX_OUTSTANDING, SessionEntry
from qsched.models import TaskState
from qsched.policy.quota import QuotaLedger


def _backlog(ix, pol, sid: str, n: int, **kw) -> SessionEntry:
    entry = ix.sessions[sid] = SessionEntry(session(sid, **kw), 1.0)
    for i in range(n):
        ix.seq += 1
        t = task(sid, i, seq=ix.seq)
        entry.pending.append(t)
        ix.tasks[t.id] = t
    dispatch.enqueue(ix, pol, entry, now=0.0)
    return entry


def test_plan_fills_the_free_slots_of_live_online_devices_only():
    ix, pol = index(), policy()
    ix.devices["d1"].state = "paused"
    entry = _backlog(ix, pol, "a", 5)
    batches = dispatch.plan(ix, pol, CostModel(), QuotaLedger(), now=1.0)
    assert [b.device for b in batches] == ["d0"] * MAX_OUTSTANDING
    assert [b.tasks for b in batches] == [["a.t0"], ["a.t1"]]          # merge off: one task each, in order
    assert pending_ids(entry.pending) == ["a.t2", "a.t3", "a.t4"] and entry.inflight == 2
    assert all(ix.tasks[t].state == TaskState.SCHEDULED and ix.tasks[t].batch == b.id
               for b in batches for t in b.tasks)
    assert list(ix.devices["d0"].outstanding) == [b.id for b in batches]
    assert ix.placed[batches[0].id].order < ix.placed[batches[1].id].order
    assert dispatch.plan(ix, pol, CostModel(), QuotaLedger(), now=2.0) == []     # no free slot left
    ix.devices["d1"].state = "online"
    assert [b.device for b in dispatch.plan(ix, pol, CostModel(), QuotaLedger(), now=3.0)] == ["d1", "d1"]


def test_a_session_over_its_quota_is_held_until_the_quota_allows_it():
    ix, pol = index(), policy()
    quota = QuotaLedger(pol.cfg.quotas)
    now = time.time()
    quota.charge("ann", "chem", 5.0, now)                  # chem's quota is 1 device-second a day
    entry = _backlog(ix, pol, "a", 2, account="chem")
    assert dispatch.plan(ix, pol, CostModel(), quota, now) == []
    assert entry.held["quota"].startswith("quota:") and pending_ids(entry.pending) == ["a.t0", "a.t1"]
    assert pol.pick("p", now=now) is None                  # out of the policy while held
    assert dispatch.release_quota_holds(ix, pol, quota, now) == 0
    quota.set_specs({})
    assert dispatch.release_quota_holds(ix, pol, quota, now) == 1 and not entry.held
    assert len(dispatch.plan(ix, pol, CostModel(), quota, now)) == 2


def test_preemption_offers_the_newest_lower_tier_batch_when_no_slot_serves_the_higher_tier():
    ix, pol = index(), policy()
    ix.devices["d1"].alive = False
    _backlog(ix, pol, "lo", 3)
    low = dispatch.plan(ix, pol, CostModel(), QuotaLedger(), now=1.0)
    assert len(low) == 2 and dispatch.preemption(ix, pol) is None           # nobody above tier 0 waits
    hi = _backlog(ix, pol, "hi", 1, cls="interactive")
    assert dispatch.may_preempt_for(ix, pol, hi) and not dispatch.may_preempt_for(ix, pol, ix.sessions["lo"])
    walk = dispatch.preemption(ix, pol)
    assert walk is not None
    offered = []
    for c in walk:                       # as the dispatcher walks it: each recall succeeds
        offered.append(c)
        walk.done(c, True)
    # one backlogged higher-tier session and no free slot: one batch, the newest
    assert [c.batch for c in offered] == [low[1].id] and offered[0].tier == 0
    ix.started.add(low[1].id)            # a recall found it taken: its session's older batch stays too
    walk = dispatch.preemption(ix, pol)
    assert walk is not None and list(walk) == []
    ix.started.clear()
    ix.devices["d1"].alive = True        # a free slot serves the higher tier: nothing is taken back
    walk = dispatch.preemption(ix, pol)
    assert walk is None or list(walk) == []
