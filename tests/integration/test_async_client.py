"""qsched.AsyncClient against the real daemon: futures, concurrent waits, cancel, errors."""
from __future__ import annotations

import asyncio
import inspect
import time

import numpy as np
import pytest
from qiskit.circuit.library import efficient_su2
from qiskit.primitives import StatevectorEstimator
from qiskit.quantum_info import SparsePauliOp

import qsched
from qsched import errors


def test_async_client_round_trip(qsched_daemon):
    qc = efficient_su2(2, reps=1)
    params = np.random.default_rng(2).uniform(size=(3, qc.num_parameters))
    ref = StatevectorEstimator().run([(qc, SparsePauliOp("ZZ"), params)]).result()[0].data.evs

    async def main():
        async with qsched.AsyncClient(qsched_daemon.url) as client:
            assert (await client.health())["status"] == "ok"
            async with await client.open_session("aer", name="async") as s:
                futs = await s.submit_many([dict(kind="estimate", circuit=qc, params=params[i:i + 1],
                                                 observables="ZZ") for i in range(3)])
                results = await asyncio.gather(*(f.result(30) for f in futs))
                one = await s.submit("estimate", qc, params[:1], observables="ZZ")
                assert (await one).evs.shape == (1, 1)        # a future is awaitable
                with pytest.raises(errors.BadRequest) as e:
                    await s.submit("sample", qc, params[:1], shots=10**9)
                assert e.value.field == "tasks[0].shots" and e.value.limit == 100000
            return results

    results = asyncio.run(main())
    np.testing.assert_allclose(np.concatenate([r.evs[:, 0] for r in results]), ref, atol=1e-10)


def test_async_cancel(fresh_daemon):
    d = fresh_daemon(devices=[{"name": "slow0", "type": "null", "pool": "slow", "options": {"delay_s": 0.5}}],
                     policy={"name": "fifo", "merge": False})
    qc = efficient_su2(2, reps=1)

    async def main():
        async with qsched.AsyncClient(d.url) as client:
            s = await client.open_session("slow")
            futs = await s.submit_many([dict(kind="estimate", circuit=qc, params=np.zeros((1, qc.num_parameters)),
                                             observables="ZZ")] * 4)
            assert await futs[-1].cancel() == "CANCELLED"
            first = await futs[0].result(30)
            with pytest.raises(errors.TaskCancelled):
                await futs[-1].result(5)
            usage = await s.close()
            return first, usage

    first, usage = asyncio.run(main())
    assert first.evs.shape == (1, 1)
    assert usage["tasks"] >= 1 and usage["device_seconds"] > 0


CLIENT_API = ["health", "devices", "queue", "sessions", "session_info", "close_session", "accounting", "metrics",
              "open_session", "attach", "session", "close"]
SESSION_API = ["upload", "submit", "submit_many", "run", "wait", "status", "close"]
FUTURE_API = ["done", "state", "result", "cancel"]


def test_the_async_face_has_the_sync_faces_api():
    from qsched.client import AsyncSession, AsyncTaskFuture, Session, TaskFuture
    for sync_cls, async_cls, names in ((qsched.Client, qsched.AsyncClient, CLIENT_API),
                                       (Session, AsyncSession, SESSION_API), (TaskFuture, AsyncTaskFuture, FUTURE_API)):
        for name in names:
            s, a = getattr(sync_cls, name), getattr(async_cls, name)
            assert inspect.iscoroutinefunction(a), f"{async_cls.__name__}.{name}"
            assert inspect.signature(s).parameters.keys() == inspect.signature(a).parameters.keys(), name
    assert not issubclass(AsyncSession, Session)         # no inherited sync methods that fail on an AsyncClient


def _face_report(health, devices, queue, sessions, info, attached, evs_run, evs_wait, done, state, usage, metrics,
                 acct, closed_other, sid):
    return {"health": health["status"], "devices": sorted(d["name"] for d in devices), "queue": sorted(queue),
            "listed": sid in {x["id"] for x in sessions}, "info": info["id"] == sid, "attached": attached,
            "evs_run": np.round(evs_run, 10).tolist(), "evs_wait": np.round(evs_wait, 10).tolist(), "done": done,
            "state": state, "usage_tasks": usage["tasks"], "metrics": "qsched_tasks_submitted_total" in metrics,
            "acct": sid in {r["session"] for r in acct}, "closed_other": closed_other}


def test_the_async_face_does_what_the_sync_face_does(qsched_daemon, monkeypatch):
    qc = efficient_su2(2, reps=1)
    params = np.random.default_rng(5).uniform(size=(3, qc.num_parameters))
    tasks = [dict(kind="estimate", circuit=qc, params=params[i:i + 1], observables="ZZ") for i in range(3)]
    since = time.time() - 1

    def sync_face():
        with qsched.Client(qsched_daemon.url) as c:
            s = c.open_session("aer", name="sync-face")
            assert s.upload(qc) == s.upload(qc)
            run = s.run("estimate", qc, params[:1], observables="ZZ", timeout=60)
            futs = s.submit_many(tasks) + [s.submit("estimate", qc, params[2:], observables="ZZ")]
            waited = s.wait(futs, timeout=60)
            done, state = futs[0].done(), futs[0].state()
            usage = s.status()["usage"]
            attached = c.attach(s.id)
            monkeypatch.setenv("QSCHED_SESSION", s.id)
            via_env = c.session("aer")
            monkeypatch.delenv("QSCHED_SESSION")
            other = c.session("null")                    # no QSCHED_SESSION: a new session
            closed_other = c.close_session(other.id)["session"] == other.id
            report = dict(health=c.health(), devices=c.devices(), queue=c.queue(), sessions=c.sessions(),
                          info=c.session_info(s.id), attached=(attached.attached, via_env.attached,
                                                               attached.token == s.token),
                          evs_run=run.evs, evs_wait=[r.evs for r in waited], done=done, state=state, usage=usage,
                          metrics=c.metrics(), closed_other=closed_other)
            s.close()
            return _face_report(acct=c.accounting(since=since), sid=s.id, **report)

    async def async_face():
        async with qsched.AsyncClient(qsched_daemon.url) as c:
            s = await c.open_session("aer", name="async-face")
            assert await s.upload(qc) == await s.upload(qc)
            run = await s.run("estimate", qc, params[:1], observables="ZZ", timeout=60)
            futs = await s.submit_many(tasks) + [await s.submit("estimate", qc, params[2:], observables="ZZ")]
            waited = await s.wait(futs, timeout=60)
            done, state = await futs[0].done(), await futs[0].state()
            usage = (await s.status())["usage"]
            attached = await c.attach(s.id)
            monkeypatch.setenv("QSCHED_SESSION", s.id)
            via_env = await c.session("aer")
            monkeypatch.delenv("QSCHED_SESSION")
            other = await c.session("null")
            closed_other = (await c.close_session(other.id))["session"] == other.id
            report = dict(health=await c.health(), devices=await c.devices(), queue=await c.queue(),
                          sessions=await c.sessions(), info=await c.session_info(s.id),
                          attached=(attached.attached, via_env.attached, attached.token == s.token),
                          evs_run=run.evs, evs_wait=[r.evs for r in waited], done=done, state=state, usage=usage,
                          metrics=await c.metrics(), closed_other=closed_other)
            await s.close()
            return _face_report(acct=await c.accounting(since=since), sid=s.id, **report)

    sync_report, async_report = sync_face(), asyncio.run(async_face())
    assert sync_report == async_report
    assert sync_report["usage_tasks"] == 5 and sync_report["attached"] == (True, True, True)
    assert sync_report["done"] and sync_report["state"] == "DONE" and sync_report["acct"]
