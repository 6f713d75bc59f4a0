"""Classes and fair share with memory against a real daemon: a class's refusals name the class, the
limit and its value; decayed usage per user and account survives a daemon restart (kept in Redis)."""
from __future__ import annotations

import asyncio
import time

from inprocess_harness import daemon, embedded_redis, one_qubit, until

from qsched.policy import SessionInfo

NULL = [{"name": "null0", "type": "null", "pool": "null"}]
CLASSES = {"interactive": {"tier": 1, "accounts": ["chem"], "max_sessions_per_user": 1},
           "small": {"max_task_device_s": 0.5, "max_pending_per_user": 3}}


def test_class_refusals_name_the_class_the_limit_and_the_value(tmp_path):
    async def body():
        async with daemon(tmp_path, NULL, workers=False, users={"root": ["phys", "chem"]},
                          policy={"classes": CLASSES}) as (d, api, _):
            st, err = await api.call("POST", "/v1/sessions", {"pool": "null", "class": "interactive"})
            assert st == 403 and err["error"]["field"] == "class"
            assert "'interactive'" in err["error"]["message"] and "chem" in err["error"]["message"]
            s = await api.session(pool="null", account="chem", **{"class": "interactive"})
            assert s["class"] == "interactive"
            st, err = await api.call("POST", "/v1/sessions", {"pool": "null", "class": "interactive",
                                                              "account": "chem"})
            assert st == 409 and err["error"]["field"] == "class.max_sessions_per_user"
            assert err["error"]["limit"] == 1 and "max_sessions_per_user=1" in err["error"]["message"]

            small = await api.session(pool="null", **{"class": "small"})
            h = await api.template(small, one_qubit())
            # the cost model starts at 1 ms per binding: 1,000 bindings is an estimated 1 s task
            st, err = await api.submit(small, h, 1, bindings=1000)
            assert st == 403 and err["error"]["field"] == "class.max_task_device_s"
            assert err["error"]["limit"] == 0.5 and "'small'" in err["error"]["message"]
            st, _ = await api.submit(small, h, 3)          # no worker: they stay pending
            assert st == 201
            st, err = await api.submit(small, h, 1)
            assert st == 409 and err["error"]["field"] == "class.max_pending_per_user"
            assert err["error"]["limit"] == 3 and "would have 4 pending" in err["error"]["message"]
    asyncio.run(body())


def test_decayed_usage_per_user_and_account_survives_a_daemon_restart(tmp_path):
    async def body():
        async with embedded_redis(tmp_path) as redis_server:
            async with daemon(tmp_path, [{"name": "slow0", "type": "null", "pool": "null",
                                          "options": {"delay_s": 0.1}}], redis_url=redis_server.url,
                              users={"root": ["chem"]}) as (d, api, _):
                s = await api.session(pool="null")
                h = await api.template(s, one_qubit())
                ids = []
                for _ in range(3):
                    ids += (await api.submit(s, h, 1))[1]["ids"]
                assert all(t["state"] == "DONE" for t in await api.wait(s, ids))
                await until(lambda: d.scheduler.idle())
                await api.call("DELETE", f"/v1/sessions/{s['id']}", token=s["token"])
                now = time.time()
                used_user = d.scheduler.usage.get("user", "root", now)
                used_acct = d.scheduler.usage.get("account", "chem", now)
                assert used_user >= 0.3 and used_acct == used_user
                saved = await d.scheduler.store.load_usage()
                assert set(saved["user"]) == {"root"} and set(saved["account"]) == {"chem"}
            async with daemon(tmp_path / "2", NULL, workers=False, redis_url=redis_server.url) as (d2, _, _):
                later = time.time()
                # the default half-life is 7 days: a few seconds change nothing measurable
                assert abs(d2.scheduler.usage.get("user", "root", later) - used_user) < 1e-4
                assert abs(d2.scheduler.usage.get("account", "chem", later) - used_acct) < 1e-4
                assert d2.scheduler.policy.usage is d2.scheduler.usage
                # the only user with usage has had all of it: its fair-share factor is 2^-1 per level
                root = SessionInfo("x", "null", user="root", account="chem")
                assert abs(d2.scheduler.policy.fairshare_factor(root, later) - 0.25) < 1e-9
    asyncio.run(body())
