"""The leader's fence on every state write, against a real redis-server: once another daemon holds the
lease, an ex-leader that wakes up (SIGSTOP, a long GC pause, a cut-off host) writes nothing, not only
in the task commit and recall scripts but in session closes, cancels, usage, quota, cost model,
device states and maintenance windows, which it would otherwise overwrite with what it knew before."""
from __future__ import annotations

import asyncio
import subprocess
import time

import pytest

from qsched import errors, keys
from qsched.daemon.redis_server import redis_server_binary
from qsched.models import Session, Window
from qsched.redisconn import async_client
from qsched.store import Store


@pytest.fixture
def redis_url(tmp_path):
    sock = tmp_path / "redis.sock"
    proc = subprocess.Popen([redis_server_binary(), "--port", "0", "--unixsocket", str(sock), "--save", "",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not sock.exists():
        assert time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.05)
    yield f"unix://{sock}"
    proc.kill()
    proc.wait()


def writes(store: Store):
    """Each state write the daemon makes outside the commit and recall scripts."""
    return {
        "close_session": lambda: store.close_session("s1", ["s1.t0"]),
        "cancel_task": lambda: store.cancel_task("s1.t1", "s1"),
        "fail_tasks": lambda: store.fail_tasks(["s1.t2"], "never runs"),
        "update_session": lambda: store.update_session("s1", {"hold": "admin"}),
        "save_usage": lambda: store.save_usage({"user": {"alice": (9.0, 1.0)}}),
        "save_quota_usage": lambda: store.save_quota_usage({"chem": (9.0, 1.0, 86400.0, 1.0)}, {"chem": {0.0: 9.0}}),
        "save_cost_model": lambda: store.save_cost_model({("aer0", "estimate"): 9.0}),
        "set_device_state": lambda: store.set_device_state("aer0", "paused", "x", 1.0),
        "save_window": lambda: store.save_window(Window(pool="aer", start=1.0, end=2.0, id="w1")),
        "forget_windows": lambda: store.forget_windows(["w0"]),
    }


async def _snapshot(r) -> dict:
    return {k: await r.dump(k) for k in sorted(await r.keys("*")) if k != keys.LEADER.encode()}


def test_a_write_from_a_daemon_whose_lease_was_taken_over_is_refused_and_changes_nothing(redis_url):
    async def main():
        r = async_client(redis_url)
        store = Store(r)
        await store.create_session(Session(id="s1", user="alice", uid=1000, pool="aer"))
        await r.hset(keys.MAINTENANCE, "w0", "{}")
        stepped_down = []
        store.on_fenced = lambda: stepped_down.append(True)
        store.fence = "1 old-leader:1"
        await r.set(keys.LEADER, "2 new-leader:2")             # the standby took over
        before = await _snapshot(r)
        for name, write in writes(store).items():
            with pytest.raises(errors.Fenced):
                await write()
            assert await _snapshot(r) == before, f"{name} wrote while fenced"
        assert len(stepped_down) == len(writes(store))         # each refusal makes the daemon stop
        await r.set(keys.LEADER, store.fence)                  # while the lease is ours, they write
        for write in writes(store).values():
            await write()
        assert (await r.hget(keys.session("s1"), "state")) == b"CLOSED"
        assert await r.hget(keys.usage("user"), "alice")
        assert not await r.hexists(keys.MAINTENANCE, "w0") and await r.hexists(keys.MAINTENANCE, "w1")
        await store.close()
        await r.aclose()
    asyncio.run(main())


def test_the_lease_taken_between_the_check_and_the_write_aborts_it(redis_url):
    """WATCH: a takeover that lands after the lease was read and before EXEC aborts the write."""
    import redis
    takeover = redis.Redis(unix_socket_path=redis_url.removeprefix("unix://"))

    async def main():
        r = async_client(redis_url)
        store = Store(r)
        store.fence = "1 old-leader:1"
        await r.set(keys.LEADER, store.fence)
        attempts = []

        def build(p):
            # queued after WATCH and the lease check, before EXEC: the standby takes over in between
            attempts.append(1)
            takeover.set(keys.LEADER, "2 new-leader:2")
            p.hset(keys.usage("user"), "alice", "9.0 1.0")
        with pytest.raises(errors.Fenced):
            await store._write(build)
        assert len(attempts) == 1                   # EXEC aborted; the next check saw the new leader
        assert not await r.hexists(keys.usage("user"), "alice")
        await store.close()
        await r.aclose()
    asyncio.run(main())
    takeover.close()
