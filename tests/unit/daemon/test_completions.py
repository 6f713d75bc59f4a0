"""A finished batch's event applied to the core (daemon/completions.py), the committing half of
preemption (daemon/dispatcher.py), and the event parsing the store does (store.parse_event)."""
from __future__ import annotations

import asyncio
import json
import time

from daemon_fakes import FakeStore, pending_ids, scheduler, session, task

from qsched import keys
from qsched.daemon import completions, dispatcher
from qsched.models import TaskState
from qsched.store import parse_event


async def _loaded(store: FakeStore, **sessions: int):
    """A scheduler rebuilt from a store holding these sessions' pending tasks, devices up."""
    for sid, n in sessions.items():
        store.sessions.append(session(sid, cls="interactive" if sid.startswith("hi") else "batch"))
        ts = [task(sid, i, seq=i + 1) for i in range(n)]
        store.tasks += ts
        store.pending[sid] = [t.id for t in ts]
    sch = scheduler(store)
    await sch.resync()
    for d in sch.devices.values():
        d.alive = True
    return sch


def test_a_finished_batch_answers_its_waiters_and_charges_its_session():
    async def main():
        sch = await _loaded(FakeStore(), a=3)
        [b, *_] = sch.plan()
        [tid] = b.tasks
        waiting = asyncio.ensure_future(sch.wait([tid], timeout=5))
        await asyncio.sleep(0)
        ev = {"device": b.device, "batch": b.id, "session": "a", "exec_s": 2.0, "started": 1.0, "bindings": 1,
              "tasks": {tid: "DONE"}}
        completions.on_batch_done(sch, ev, {tid: b'{"result": 1}'})
        return sch, b, tid, await asyncio.wait_for(waiting, 1)
    sch, b, tid, got = asyncio.run(main())
    assert got == {tid: b'{"result": 1}'}            # the inline result, without a read
    assert tid not in sch.tasks and b.id not in sch.devices[b.device].outstanding and b.id not in sch.index.placed
    entry = sch.sessions["a"]
    assert entry.inflight == len(sch.index.tasks) - len(entry.pending) and entry.used_s == 2.0
    assert sch.usage.get("user", "ann", time.time()) > 0 and sch.usage.dirty
    assert sch.cost.per_binding[(b.device, "estimate")] == 2.0 and sch.cost.dirty


def test_a_batch_of_a_closed_session_is_charged_to_it_and_an_unknown_device_is_ignored():
    sch = asyncio.run(_loaded(FakeStore(), a=1))
    [b] = sch.plan()
    sch.index.drop_session("a", sch.token_for("a"))
    ev = {"device": "gone", "batch": b.id, "session": "a", "exec_s": 1.0, "started": 0.0, "tasks": {b.tasks[0]: "DONE"}}
    completions.on_batch_done(sch, ev)
    assert b.id in sch.devices[b.device].outstanding
    completions.on_batch_done(sch, {**ev, "device": b.device, "exec_s": 3.0})
    assert sch.idle() and not sch.tasks and sch.usage.get("account", "phys", time.time()) > 0


def test_preemption_recalls_the_lower_tier_and_remembers_a_batch_a_worker_took():
    store = FakeStore()
    sch = asyncio.run(_loaded(store, lo=3))
    sch.devices["d1"].alive = False
    low = sch.plan()
    assert [b.device for b in low] == ["d0", "d0"]
    store.sessions.append(session("hi", cls="interactive"))
    sch.sessions["hi"] = entry = type(sch.sessions["lo"])(session("hi", cls="interactive"), 1.0)
    entry.pending.append(task("hi", 0, seq=10))
    sch.enqueue(entry)
    store.taken.add(low[1].id)                       # the newest was taken by the worker meanwhile
    assert asyncio.run(dispatcher.preempt(sch)) == 0
    assert low[1].id in sch.index.started and sch.index.taken_upto["lo"] == sch.index.placed[low[1].id].order
    store.taken.clear()
    sch.index.started.clear()
    sch.index.taken_upto.clear()
    assert asyncio.run(dispatcher.preempt(sch)) == 1 and store.recalled == [low[1].id]
    lo = sch.sessions["lo"]
    assert pending_ids(lo.pending) == ["lo.t1", "lo.t2"] and lo.inflight == 1
    assert sch.tasks["lo.t1"].state == TaskState.PENDING and low[1].id not in sch.devices["d0"].outstanding


def test_the_store_parses_events_and_names_inline_results_by_task_id():
    ev = {"device": "d0", "batch": "b1", "session": "s1", "tasks": {"s1.t0": "DONE"}}
    fields = {b"e": json.dumps(ev).encode(), keys.task("s1.t0").encode(): b"r0"}
    assert parse_event(fields) == (ev, {"s1.t0": b"r0"})
    assert parse_event({b"e": b"{not json"}) == (None, {})
    assert parse_event({}) == (None, {})
