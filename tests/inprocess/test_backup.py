"""Backup and restore (issue 22 item 6, docs/admin-guide.md "Backup and restore"): a hot copy of the
embedded Redis's AOF, taken while the daemon runs and keeps writing, restores to the same accounting (the
ledger, usage and quota use); and the ledger keeps about `daemon.ledger_max_records` records."""
from __future__ import annotations

import asyncio
import shutil

import redis.asyncio as aredis
from inprocess_harness import Api, daemon, one_qubit, until

from qsched import keys
from qsched.daemon import aof
from qsched.daemon.redis_server import EmbeddedRedis

NULL = [{"name": "null0", "type": "null", "pool": "null"}]
POLICY = {"quotas": {"root": {"device_s": 1e6, "period": "1d"}}}


async def _accounting(r) -> dict:
    return {"ledger": await r.xrange(keys.ACCOUNTING), "quota": await r.hgetall(keys.QUOTA_USED),
            **{f"usage:{k}": await r.hgetall(keys.usage(k)) for k in ("user", "account", "assoc")}}


def test_a_hot_copy_of_the_aof_restores_identical_accounting(tmp_path):
    async def body():
        async with daemon(tmp_path, NULL, policy=POLICY) as (d, api, _):
            sch = d.scheduler
            for i in range(5):
                s = await api.session(pool="null", name=f"job{i}")
                h = await api.template(s, one_qubit())
                _, out = await api.submit(s, h, 20)
                await api.wait(s, out["ids"])
                st, _ = await api.call("DELETE", f"/v1/sessions/{s['id']}", token=s["token"])
                assert st == 200
            await until(lambda: not (sch.quota.dirty or sch.usage.dirty), timeout=5)
            live = await _accounting(sch.store.r)
            assert len(live["ledger"]) == 5 and live["quota"] and live["usage:user"]
            # the daemon keeps appending while the copy is taken (heartbeats, the watch's saves, this
            # open session's tasks, held so that they charge nothing after the snapshot)
            busy = await api.session(pool="null")
            admin = Api(d.config.admin_socket_path)
            st, _ = await admin.call("POST", f"/v1/admin/sessions/{busy['id']}", {"hold": True, "reason": "backup"})
            await admin.close()
            assert st == 200
            h = await api.template(busy, one_qubit())
            assert (await api.submit(busy, h, 50))[0] == 201
            await asyncio.sleep(1.2)                       # appendfsync everysec: on disk within a second
            backup = tmp_path / "backup"
            (backup / "redis").mkdir(parents=True)
            shutil.copy2(aof.aof_file(d.config.state_dir), aof.aof_file(backup))
        report = aof.check(backup, fix=True)               # a copy cut mid-command loses only that tail
        assert report.ok, report.output
        async with EmbeddedRedis(backup) as restored:
            r = aredis.Redis.from_url(restored.url)
            try:
                assert await _accounting(r) == live
                assert await r.llen(keys.session_pending(busy["id"])) == 50     # and the queue with it
            finally:
                await r.aclose()
    asyncio.run(body())


def test_the_ledger_keeps_about_its_configured_records(tmp_path):
    """Before: a fixed cap of 1,000,000 records (about 500 MB), whatever the admin needed."""
    from qsched.config import parse_config
    from qsched.store import Store
    assert parse_config({"daemon": {"ledger_max_records": 1000}}).ledger_max_records == 1000

    async def body():
        async with EmbeddedRedis(tmp_path) as server:
            r = aredis.Redis.from_url(server.url)
            store = Store(r, ledger_max_records=1000)
            for i in range(2500):
                await store.record_accounting({"session": f"s{i}", "device_seconds": 1.0})
            n = await r.xlen(keys.ACCOUNTING)
            await r.aclose()
        assert 1000 <= n <= 1100, n           # trimmed by whole stream nodes (MAXLEN ~)
    asyncio.run(body())


def test_events_read_and_older_than_their_retention_are_trimmed(tmp_path):
    """Each completion event carries its batch's results: before, the stream kept 10,000 of them."""
    async def body():
        async with daemon(tmp_path, NULL) as (d, api, _):
            sch = d.scheduler
            s = await api.session(pool="null")
            h = await api.template(s, one_qubit())
            for _ in range(3):
                _, out = await api.submit(s, h, 10)
                await api.wait(s, out["ids"])
            r = sch.store.r
            n = await r.xlen(keys.EVENTS)
            assert n >= 3
            await sch.watch.trim_events()                  # read, but younger than events_retention_s
            assert await r.xlen(keys.EVENTS) == n
            sch.config.events_retention_s = 0.0            # (the config's floor is 10 s: not waited for here)
            sch.watch._trimmed = 0.0
            await sch.watch.trim_events()
            read_ms = int(sch.events_from.split("-")[0])
            left = [int(eid.split(b"-")[0]) for eid, _ in await r.xrange(keys.EVENTS)]
            assert len(left) < n and all(ms >= read_ms for ms in left)   # only the last read millisecond's
    asyncio.run(body())
