"""Predictions by planning forward (daemon/forecast.py), checked against what actually happens: the
same scenario then run by the real pure planner in simulated time (ticks), each device working through
its batches for exactly their estimated seconds."""
from __future__ import annotations

from collections import deque

import pytest
from daemon_fakes import index, session, task

from qsched.config import parse_policy
from qsched.daemon import dispatch
from qsched.daemon.cost import CostModel
from qsched.daemon.forecast import PROBE, PROBE_TASK, Run, forecast
from qsched.daemon.index import Index, SessionEntry
from qsched.models import DeviceSpec, Window
from qsched.policy import FairShare
from qsched.policy.quota import QuotaLedger

TICK = 0.01


def _policy(**kw) -> FairShare:
    return FairShare(parse_policy({"merge": False, "preempt": True, "classes": {"interactive": {"tier": 1}},
                                   "weights": {"accounts": {"chem": 3.0}}, **kw}))


def _cost(per_binding: float = 0.1) -> CostModel:
    c = CostModel()
    c.prior = {"d0": per_binding, "d1": per_binding * 2}        # d1 is half as fast
    return c


def _backlog(ix: Index, pol, sid: str, bindings: list[int], now: float = 0.0, **kw) -> SessionEntry:
    entry = ix.sessions.get(sid) or SessionEntry(session(sid, **kw), pol.weight(account=kw.get("account", "phys")))
    ix.sessions[sid] = entry
    for b in bindings:
        ix.seq += 1
        t = task(sid, ix.seq, seq=ix.seq, bindings=b)
        entry.pending.append(t)
        ix.tasks[t.id] = t
    dispatch.enqueue(ix, pol, entry, now=now)
    return entry


def _replay(ix: Index, pol, cost: CostModel, quota: QuotaLedger, *, t: float = 0.0,
            arrivals: dict[float, tuple] | None = None, until: float = 100.0) -> dict[str, float]:
    """What happens: the real planner every tick; each device runs its batches in order, each for its
    estimate; usage and quotas charged at the end. Returns each task's start."""
    started: dict[str, float] = {}
    running: dict[str, tuple[str, float]] = {}          # device -> (batch, end)
    arrivals = dict(arrivals or {})
    while t < until and (any(e.pending for e in ix.sessions.values()) or not ix.idle() or arrivals):
        for at in [a for a in arrivals if a <= t + 1e-9]:
            _backlog(ix, pol, *arrivals.pop(at), now=t)
        for dev in ix.devices.values():
            cur = running.get(dev.spec.name)
            if cur and cur[1] <= t + 1e-9:
                b, est = dev.outstanding.pop(cur[0])
                ix.placed.pop(b.id)
                entry = ix.sessions[b.session]
                for tid in b.tasks:
                    ix.tasks.pop(tid)
                    entry.inflight -= 1
                pol.correct(b.session, est, est)
                pol.usage.charge(entry.session.user, entry.session.account, est, t)
                quota.charge(entry.session.user, entry.session.account, est, t)
                del running[dev.spec.name]
        dispatch.release_quota_holds(ix, pol, quota, t)
        walk = dispatch.preemption(ix, pol)
        for c in walk or ():
            taken = running.get(c.device, ("",))[0] != c.batch
            walk.done(c, taken)
            if taken:
                dev = ix.devices[c.device]
                b, est = dev.outstanding[c.batch]
                dispatch.requeue(ix, pol, dev, b, est, "preempt", t)
        dispatch.plan(ix, pol, cost, quota, t)
        for dev in ix.devices.values():
            if dev.spec.name not in running and dev.outstanding:
                b, est = next(iter(dev.outstanding.values()))
                running[dev.spec.name] = (b.id, t + est)
                for tid in b.tasks:
                    started[tid] = t
        t = round(t + TICK, 6)
    return started


def _scenario():
    ix, pol = index(), _policy()
    _backlog(ix, pol, "a", [1, 2, 3, 1, 2, 3, 1, 2], account="phys")
    _backlog(ix, pol, "b", [2, 2, 2, 2, 2, 2], account="chem", user="bob")
    _backlog(ix, pol, "c", [1] * 10, account="bio", user="cy")
    return ix, pol


def _assert_close(predicted: dict[str, float], actual: dict[str, float]) -> None:
    assert set(predicted) == set(actual)
    off = {tid: (predicted[tid], actual[tid]) for tid in actual if abs(predicted[tid] - actual[tid]) > 2 * TICK}
    assert not off


def test_the_forecast_of_every_task_start_is_what_the_planner_then_does():
    ix, pol = _scenario()
    cost, quota = _cost(), QuotaLedger()
    fc = forecast(ix, pol, cost, quota, [], 0.0)
    assert fc.complete and len(fc.runs) == 24
    predicted = {tid: r.start for tid, r in fc.runs.items()}
    assert len(set(predicted.values())) > 10              # not a trivial schedule
    assert all(t.state.name == "PENDING" for t in ix.tasks.values())      # the forecast changed nothing
    _assert_close(predicted, _replay(ix, pol, cost, quota))


def test_the_session_view_gives_its_next_start_backlog_end_and_device_seconds():
    ix, pol = _scenario()
    cost = _cost()
    fc = forecast(ix, pol, cost, QuotaLedger(), [], 0.0)
    a = fc.session(ix.sessions["a"], ix.tasks)
    first = fc.runs[ix.sessions["a"].pending[0].id]
    assert a["next_start"] == first.start
    assert a["backlog_end"] == max(fc.runs[t.id].end for t in ix.sessions["a"].pending)
    # the device-seconds: each task's bindings at the speed of the device it is planned on
    assert a["device_s"] == pytest.approx(sum(t.bindings * (0.1 if fc.runs[t.id].device == "d0" else 0.2)
                                             for t in ix.sessions["a"].pending))


def test_a_higher_tier_arriving_preempts_in_the_forecast_as_in_the_planner():
    ix, pol = index(), _policy()
    ix.devices["d1"].alive = False
    _backlog(ix, pol, "lo", [5] * 4)
    cost, quota = _cost(), QuotaLedger()
    dispatch.plan(ix, pol, cost, quota, 0.0)           # lo's first two batches: one runs, one waits
    _backlog(ix, pol, "hi", [1], cls="interactive", user="bob")
    fc = forecast(ix, pol, cost, quota, [], 0.0)
    hi = ix.sessions["hi"].pending[0].id
    assert fc.runs[hi].start == pytest.approx(0.5)          # right after the running batch: it jumped the inbox
    actual = _replay(ix, pol, cost, quota)
    assert actual[hi] == pytest.approx(0.5)


def test_a_quota_holds_the_session_until_its_window_rolls_over():
    ix = index()
    pol = _policy(quotas={"chem": {"device_s": 1, "period": "60s"}})
    quota = QuotaLedger(pol.cfg.quotas)
    _backlog(ix, pol, "q", [4] * 6, account="chem")
    cost = _cost()
    fc = forecast(ix, pol, cost, quota, [], 0.0)
    starts = sorted(r.start for r in fc.runs.values())
    # 0.4 s per task on d0, 0.8 on d1: the quota's 1 s is passed after a few, the rest waits for 60 s
    assert starts[0] == 0.0 and any(s >= 60.0 for s in starts)
    assert not [s for s in starts if 2.0 < s < 60.0]
    predicted = {tid: r.start for tid, r in fc.runs.items()}
    _assert_close(predicted, _replay(ix, pol, cost, quota, until=90.0))


def test_a_maintenance_window_delays_the_pool_until_it_ends():
    ix, pol = index(), _policy()
    _backlog(ix, pol, "a", [10] * 4)
    fc = forecast(ix, pol, _cost(), QuotaLedger(), [Window(pool="p", start=0.5, end=30.0)], 0.0)
    starts = sorted(r.start for r in fc.runs.values())
    # the two running batches end (d0 at 1 s, d1 at 2 s); those waiting in the inboxes come back
    assert starts[:2] == [0.0, 0.0] and starts[2:] == [30.0, 30.0]


def test_the_probe_gives_the_wait_of_a_new_session_by_class():
    ix, pol = index(), _policy()
    ix.devices["d1"].alive = False
    for i in range(3):
        _backlog(ix, pol, f"s{i}", [10] * 5, user=f"u{i}")
    cost, quota = _cost(), QuotaLedger()
    dispatch.plan(ix, pol, cost, quota, 0.0)           # d0 runs one batch, one waits in its inbox
    batch = forecast(ix, pol, cost, quota, [], 0.0, probe=session(PROBE, user="new"))
    inter = forecast(ix, pol, cost, quota, [], 0.0, probe=session(PROBE, cls="interactive", user="new"))
    wait_batch, wait_inter = (f.runs[PROBE_TASK].start for f in (batch, inter))
    assert wait_inter == pytest.approx(1.0)       # the next slot: it preempts the batch in the inbox
    assert wait_batch > wait_inter
    assert PROBE not in ix.sessions


def test_a_pool_without_live_devices_is_not_predicted():
    ix, pol = index(), _policy()
    for d in ix.devices.values():
        d.alive = False
    entry = _backlog(ix, pol, "a", [1])
    fc = forecast(ix, pol, _cost(), QuotaLedger(), [], 0.0)
    assert not fc.complete and fc.session(entry, ix.tasks)["next_start"] is None
    assert fc.session(entry, ix.tasks)["backlog_end"] is None


def test_the_forecast_stops_at_its_batch_bound():
    ix, pol = index(), _policy()
    _backlog(ix, pol, "a", [1] * 50)
    fc = forecast(ix, pol, _cost(), QuotaLedger(), [], 0.0, max_batches=10)
    assert not fc.complete and 10 <= len(fc.runs) < 50
    assert deque(ix.sessions["a"].pending)         # the real queue is untouched


def test_batches_that_a_device_merges_into_one_job_share_its_setup_and_start():
    spec = DeviceSpec(name="q0", type="emulated-qpu", pool="p", merge_batches=4)
    ix = Index([spec], {"p": [spec]})
    ix.devices["q0"].alive = True
    pol = _policy()
    cost = CostModel()
    cost.setup, cost.prior = {"q0": 1.0}, {"q0": 0.1}        # a cloud QPU: 1 s a job, 0.1 s a binding
    a = _backlog(ix, pol, "a", [1], user="a")
    dispatch.plan(ix, pol, cost, QuotaLedger(), 0.0)             # a's job runs since 0
    for sid in ("b", "c", "d"):
        _backlog(ix, pol, sid, [1], user=sid)
    fc = forecast(ix, pol, cost, QuotaLedger(), [], 0.5)
    first = next(r for tid, r in fc.runs.items() if tid.startswith("a."))
    runs = [fc.runs[ix.sessions[sid].pending[0].id] for sid in ("b", "c", "d")]
    # the three batches planned while a's job runs go as one job (setup once), which starts when a's
    # ends; each task's device time is its share
    assert (first.start, first.end) == (0.0, pytest.approx(1.1)) and not a.pending
    assert [(r.start, r.end) for r in runs] == [(pytest.approx(1.1), pytest.approx(2.4))] * 3
    assert runs[0].share(ix.sessions["b"].pending[0]) == pytest.approx(1.3 / 3)
    # planned together on an idle device, batches are one job from the start
    ix = Index([spec], {"p": [spec]})
    ix.devices["q0"].alive = True
    for sid in ("b", "c"):
        _backlog(ix, pol, sid, [1, 1], user=sid)
    fc = forecast(ix, pol, cost, QuotaLedger(), [], 0.0)
    assert [(r.start, r.end) for r in fc.runs.values()] == [(0.0, pytest.approx(1.4))] * 4


def test_a_start_interval_reaches_further_after_than_before_and_grows_with_the_wait():
    r = Run("d0", 110.0, 111.0, 1.0, 1)
    lo, hi = r.interval(100.0)
    assert lo < 110.0 < hi and hi - 110.0 > 110.0 - lo
    lo_soon, hi_soon = Run("d0", 101.0, 102.0, 1.0, 1).interval(100.0)
    assert hi_soon - lo_soon < hi - lo


def test_the_daemon_reuses_a_fresh_forecast_until_a_task_comes_or_goes():
    from daemon_fakes import FakeStore, scheduler
    sch = scheduler(FakeStore())
    for d in sch.devices.values():
        d.alive = True
    _backlog(sch.index, sch.policy, "a", [1, 1])
    first = sch.views.forecast()
    assert sch.views.forecast() is first                        # nothing changed: the same one
    _backlog(sch.index, sch.policy, "a", [1])                   # a submit: planned again, with it
    again = sch.views.forecast()
    assert again is not first and len(again.runs) == 3
    assert sch.views.forecast(probe=session(PROBE, user="new")) is not again    # a probe is never reused
