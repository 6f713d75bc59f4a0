"""Quotas against a real daemon (embedded Redis, real workers): a session whose account runs out holds
at dispatch with the reason in its view, and its new tasks are accepted and wait (a job is not failed
at its next submit); a new session gets 429 naming the account, used and limit; the gauge reads the
ratio; usage survives a restart; a larger quota (reload) releases it."""
from __future__ import annotations

import asyncio
import time

from inprocess_harness import daemon, embedded_redis, one_qubit, until

from qsched.config import parse_policy
from qsched.policy import make_policy

SLOW = [{"name": "slow0", "type": "null", "pool": "null", "options": {"delay_s": 0.1}}]
QUOTA = {"merge": False, "quotas": {"chem": {"device_s": 0.25, "period": "30d"}}}


def test_quota_holds_at_dispatch_refuses_at_admission_and_survives_a_restart(tmp_path):
    async def body():
        async with embedded_redis(tmp_path) as redis_server:
            async with daemon(tmp_path, SLOW, redis_url=redis_server.url, users={"root": ["chem"]},
                              policy=QUOTA) as (d, api, _):
                sch = d.scheduler
                s = await api.session(pool="null")
                other = await api.session(pool="null", account="root")      # no quota on this account
                h = await api.template(s, one_qubit())
                st, out = await api.submit(s, h, 6)
                assert st == 201
                ids = out["ids"]
                # 0.1 s a batch: the quota is used up after the third; the one already waiting in the
                # inbox runs (never interrupted), the rest hold
                await until(lambda: sch.sessions[s["id"]].held, timeout=30)
                await until(lambda: sch.idle(), timeout=30)
                st, view = await api.call("GET", f"/v1/sessions/{s['id']}", token=s["token"])
                assert view["held"] is True and view["pending"] >= 1
                assert view["reason"].startswith("quota: account 'chem' has used")
                assert "of its 0.25 device-seconds" in view["reason"]
                held_pending = view["pending"]
                await asyncio.sleep(0.5)
                assert len(sch.sessions[s["id"]].pending) == held_pending        # nothing dispatched
                # mid-job: the next submit is accepted and waits with the session (before: 429, the job died)
                st, more = await api.submit(s, h, 1)
                assert st == 201, more
                ids += more["ids"]
                await asyncio.sleep(0.3)
                assert len(sch.sessions[s["id"]].pending) == held_pending + 1 and sch.sessions[s["id"]].held
                # a new session of the account (a new job) is refused
                st, err = await api.call("POST", "/v1/sessions", {"pool": "null"})
                assert st == 429, err
                e = err["error"]
                assert e["code"] == "quota_exceeded" and e["field"] == "quota.chem" and e["limit"] == 0.25
                assert "account 'chem'" in e["message"] and "has used 0." in e["message"]
                # another account is not held by chem's quota
                st, out2 = await api.submit(other, h, 1)
                assert st == 201 and (await api.wait(other, out2["ids"]))[0]["state"] == "DONE"
                # the gauge for alerts, set by the device watch
                await until(lambda: (sch.metrics.registry.get_sample_value(
                    "qsched_quota_used_ratio", {"account": "chem"}) or 0) >= 1.0, timeout=5)
                used = sch.quota.used("chem", time.time())
                assert used >= 0.3
                await until(lambda: not sch.quota.dirty, timeout=5)       # written by the device watch
            async with daemon(tmp_path / "2", SLOW, redis_url=redis_server.url, users={"root": ["chem"]},
                              policy=QUOTA) as (d2, api2, _):
                sch2 = d2.scheduler
                assert abs(sch2.quota.used("chem", time.time()) - used) < 1e-9
                st, err = await api2.call("POST", "/v1/sessions", {"pool": "null"})
                assert st == 429 and err["error"]["field"] == "quota.chem"
                # the held session is held again at its first pick after the restart
                await until(lambda: sch2.sessions[s["id"]].held, timeout=10)
                # the admin raises the quota (SIGHUP reload): the session is released and finishes
                sch2.set_policy(make_policy(parse_policy({**QUOTA, "quotas": {"chem": {"device_s": 100,
                                                                                      "period": "30d"}}})))
                done = await api2.wait(s, ids, 30)
                assert [t["state"] for t in done] == ["DONE"] * 7
                assert not sch2.sessions[s["id"]].held
    asyncio.run(body())
