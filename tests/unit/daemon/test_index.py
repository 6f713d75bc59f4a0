"""The index rebuilt from a store snapshot, and the memory side of a recall (daemon/index.py), and the
facade's rebuild over an in-memory store (daemon/scheduler.py resync)."""
from __future__ import annotations

import asyncio

from daemon_fakes import FakeStore, index, pending_ids, policy, scheduler, session, task

from qsched.daemon.index import Snapshot
from qsched.models import Batch, TaskState, Window


def _snapshot() -> Snapshot:
    a0, a2 = task("a", 0), task("a", 2)
    a5 = task("a", 5, state=TaskState.DONE)          # listed as pending, but already answered
    b1 = task("b", 1, state=TaskState.SCHEDULED, bindings=3)
    b3 = task("b", 3, state=TaskState.DONE, bindings=100)
    z0 = task("z", 0, state=TaskState.SCHEDULED)      # of a session closed since
    return Snapshot(sessions=[session("a"), session("b", cls="interactive")],
                    pending={"a": ["a.t2", "a.t5", "a.t0"]},
                    tasks=[a0, a2, a5, b1, b3, z0],
                    outstanding={"d0": [Batch(id="B1", device="d0", session="b", tasks=["b.t1", "b.t3"], created=1.0),
                                        Batch(id="B2", device="d0", session="z", tasks=["z.t0"], created=1.0)]},
                    used={"a": 4.5})


def _rebuild(ix, pol, snap: Snapshot) -> None:
    ix.rebuild(snap, weight=lambda s: 2.0, tier=pol.tier_of, estimate=lambda d, k, n: n * 0.5,
               token=lambda sid: "tok-" + sid, now=100.0)


def test_rebuild_keeps_live_tasks_in_order_and_counts_what_is_outstanding():
    ix, pol = index(), policy()
    _rebuild(ix, pol, _snapshot())
    assert pending_ids(ix.sessions["a"].pending) == ["a.t0", "a.t2"]          # by seq, the answered one gone
    assert set(ix.tasks) == {"a.t0", "a.t2", "b.t1", "z.t0"}
    assert ix.sessions["a"].used_s == 4.5 and ix.sessions["a"].weight == 2.0
    assert ix.sessions["b"].inflight == 1                 # only its live task
    d0 = ix.devices["d0"].outstanding
    assert list(d0) == ["B1", "B2"] and d0["B1"][1] == 1.5    # estimated on live bindings only
    assert ix.placed["B1"].tier == 1 and ix.placed["B2"].tier == 0    # an unknown session's: tier 0
    assert ix.placed["B1"].order < ix.placed["B2"].order
    assert ix.seq == 2 and ix.by_token == {"tok-a": "a", "tok-b": "b"}
    assert ix.running_for("b") and not ix.running_for("a") and not ix.idle()


def test_a_second_rebuild_forgets_everything_the_first_knew():
    ix, pol = index(), policy()
    _rebuild(ix, pol, _snapshot())
    ix.started.add("B1")
    ix.note_taken("b", 7)
    _rebuild(ix, pol, Snapshot([], {}, [], {}, {}))
    assert not (ix.sessions or ix.tasks or ix.placed or ix.started or ix.taken_upto or ix.by_token)
    assert ix.idle() and ix.seq == 0


def test_requeue_puts_live_tasks_back_at_the_head_or_forgets_them_with_their_session():
    ix, pol = index(), policy()
    _rebuild(ix, pol, _snapshot())
    dev = ix.devices["d0"]
    entry, live, placed = ix.requeue(dev, dev.outstanding["B1"][0], attempt=True)
    assert entry is ix.sessions["b"] and [t.id for t in live] == ["b.t1"] and placed.tier == 1
    t = ix.tasks["b.t1"]
    assert (t.state, t.batch, t.attempts) == (TaskState.PENDING, None, 1)
    assert pending_ids(entry.pending) == ["b.t1"] and entry.inflight == 0
    assert "B1" not in dev.outstanding and "B1" not in ix.placed
    entry, live, _ = ix.requeue(dev, dev.outstanding["B2"][0], attempt=False)
    assert entry is None and [t.id for t in live] == ["z.t0"] and "z.t0" not in ix.tasks
    assert ix.idle()


def test_drop_session_keeps_it_for_the_charges_of_its_running_batches():
    ix, pol = index(), policy()
    _rebuild(ix, pol, _snapshot())
    ix.note_taken("b", 3)
    ix.drop_session("b", "tok-b")
    assert "b" not in ix.sessions and ix.closing["b"].id == "b"
    assert "tok-b" not in ix.by_token and "b" not in ix.taken_upto


def test_the_facade_rebuilds_from_the_store_and_reenters_backlogged_sessions():
    store = FakeStore()
    snap = _snapshot()
    store.sessions, store.pending, store.tasks, store.outstanding = (snap.sessions, snap.pending, snap.tasks,
                                                                     snap.outstanding)
    store.states = {"d1": {"state": "paused", "reason": "admin", "since": "5"}}
    sch = scheduler(store, maintenance=[{"pool": "p", "start": 10, "end": 20}])
    # the stored copy of a config window (an admin ended it early) wins; a window added at run time stays
    store.windows_ = [Window(pool="p", start=10, end=15, id="config-maintenance[0]"),
                      Window(pool="p", start=30, end=40, id="w1")]
    sch.writer.stale = True
    asyncio.run(sch.resync())
    assert [(w.id, w.end) for w in sch.maintenance_windows] == [("config-maintenance[0]", 15), ("w1", 40)]
    assert (sch.devices["d1"].state, sch.devices["d1"].since) == ("paused", 5.0)
    assert sch.events_from == "7-0" and not sch.writer.stale
    assert sch.session_for_token(sch.token_for("a")) == "a"
    assert sch.policy.pick("p", now=1.0) == "a"           # backlogged: back in the (fresh) policy
