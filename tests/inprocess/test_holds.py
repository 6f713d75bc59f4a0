"""An admin's hold against a real daemon: it takes back the session's batch waiting in the inbox (the
running one finishes), nothing more is dispatched, and it holds across a daemon restart (Redis) until
released; class and weight changes are kept too."""
from __future__ import annotations

import asyncio

from inprocess_harness import daemon, embedded_redis, one_qubit, until

SLOW = [{"name": "slow0", "type": "null", "pool": "null", "options": {"delay_s": 0.2}}]
POLICY = {"merge": False, "classes": {"interactive": {"tier": 1}}}


def test_a_hold_takes_back_the_waiting_batch_and_survives_a_restart(tmp_path):
    async def body():
        async with embedded_redis(tmp_path) as redis_server:
            async with daemon(tmp_path, SLOW, redis_url=redis_server.url, policy=POLICY) as (d, api, _):
                sch = d.scheduler
                s = await api.session(pool="null")
                h = await api.template(s, one_qubit())
                ids = (await api.submit(s, h, 6))[1]["ids"]
                await until(lambda: len(sch.devices["slow0"].outstanding) == 2)
                entry = await sch.update_session(s["id"], who="alice-admin", hold="recalibration")
                assert entry.held == {"admin": "held by alice-admin: recalibration"}
                assert len(sch.devices["slow0"].outstanding) <= 1            # the waiting one came back
                await until(lambda: sch.idle(), timeout=10)
                await asyncio.sleep(0.5)
                assert len(entry.pending) in (4, 5)          # one ran (two, if the second had started)
                held_pending = len(entry.pending)
                await sch.update_session(s["id"], who="alice-admin", cls="interactive", weight=3)
            async with daemon(tmp_path / "2", SLOW, redis_url=redis_server.url, policy=POLICY) as (d2, api2, _):
                sch2 = d2.scheduler
                e2 = sch2.sessions[s["id"]]
                assert e2.held == {"admin": "held by alice-admin: recalibration"}
                assert (e2.session.cls, e2.session.weight, e2.info.cls) == ("interactive", 3.0, "interactive")
                await asyncio.sleep(0.6)
                assert len(e2.pending) == held_pending and sch2.idle()
                st, view = await api2.call("GET", f"/v1/sessions/{s['id']}", token=s["token"])
                assert view["held"] and view["reason"] == "held by alice-admin: recalibration"
                await sch2.update_session(s["id"], who="root", release=True)
                done = await api2.wait(s, ids, 30)
                assert [t["state"] for t in done] == ["DONE"] * 6
                st, view = await api2.call("GET", f"/v1/sessions/{s['id']}", token=s["token"])
                assert not view["held"] and view["hold"] == "" and view["class"] == "interactive"
    asyncio.run(body())
