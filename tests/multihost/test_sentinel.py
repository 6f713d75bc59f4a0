"""The store on Redis Sentinel, across hosts (network namespaces): a primary and a replica on two store
hosts, three sentinels, the daemon on a third host and a worker on a fourth that the daemon does not
start (`start_worker: false`), all on a password given by 0600 files.

Quick form: tasks run through the remote worker. Full form (marked `multihost`, CI runs it): kill -9 the
primary under continuous load; the daemon and both workers follow the promoted replica, every
acknowledged task is answered exactly once and charged once."""
from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
from hosts import made_hosts, start_daemon, start_sentinel_store, start_worker, wait_for, write_config
from qiskit.circuit.library import efficient_su2

import qsched
from qsched import keys

NULL_REMOTE = {"name": "null0", "type": "null", "pool": "null", "start_worker": False}
NULL_LOCAL = {"name": "null1", "type": "null", "pool": "null"}


@pytest.fixture
def cluster():
    """store1 (primary + sentinel), store2 (replica + sentinel), daemon host (sentinel + daemon), worker
    host; removed with everything started in it."""
    with made_hosts("qsched-sentinel-", ("store1", "store2", "daemon", "worker")) as (net, base, h):
        store = start_sentinel_store(net, [h["store1"], h["store2"]], [h["store1"], h["store2"], h["daemon"]],
                                     base / "redis")
        yield net, store, h["daemon"], h["worker"], base


def _start(net, store, dh, wh, base, *, redis_extra=None):
    redis_cfg = store.config_block(**(redis_extra or {}))
    state = base / "daemon"
    start_daemon(net, dh, state, {"redis": redis_cfg, "devices": [NULL_REMOTE, NULL_LOCAL],
                                  "daemon": {"tcp": f"{dh.addr}:8765", "drain_timeout_s": 5},
                                  "policy": {"name": "fair-share"}})
    wcfg = write_config(base / "worker.yaml", {"state_dir": str(base / "worker-state"), "redis": redis_cfg,
                                                "devices": [NULL_REMOTE]})
    start_worker(net, wh, "null0", wcfg, base / "worker.log")
    c = qsched.Client(f"unix://{state / 'qsched.sock'}", retry_s=90)
    wait_for(lambda: all(d["up"] for d in c.devices()), 60,
             "daemon and both workers up: " + _tail(state / "daemon.log") + _tail(base / "worker.log"))
    return c, state


def _tail(p, n=3000) -> str:
    try:
        return "\n" + p.read_text(errors="replace")[-n:]
    except OSError:
        return ""


QC = efficient_su2(2, reps=1)


def _one(session, x: float):
    return session.submit("estimate", QC, np.full((1, QC.num_parameters), x), observables=["ZZ"])


def test_remote_worker_runs_tasks_through_sentinel(cluster):
    net, store, dh, wh, base = cluster
    c, state = _start(net, store, dh, wh, base)
    s = c.open_session("null")
    futs = [_one(s, i) for i in range(40)]
    devices = collections.Counter(f.result(60).meta["device"] for f in futs)
    assert sum(devices.values()) == 40
    # the remote worker took batches (two devices share the pool; at least one batch went its way)
    assert devices["null0"] > 0, devices
    assert s.status()["usage"]["tasks"] == 40
    s.close()
    hb = json.loads(store.data(store.primary()).get(keys.device_heartbeat("null0")))
    assert hb["pid"] and hb["type"] == "null"
    # the password never shows: not in the daemon's log, nor in any process's argv
    assert store.password not in (state / "daemon.log").read_text(errors="replace")
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                assert store.password.encode() not in open(f"/proc/{pid}/cmdline", "rb").read()
            except OSError:
                pass


@pytest.mark.multihost
def test_primary_killed_under_load_nothing_acknowledged_lost_or_answered_twice(cluster):
    net, store, dh, wh, base = cluster
    c, state = _start(net, store, dh, wh, base, redis_extra={"wait_replicas": 1, "wait_timeout_ms": 500})
    old = store.primary()
    stop = threading.Event()
    acked: dict[str, list[str]] = collections.defaultdict(list)       # session -> acknowledged task ids
    answered: collections.Counter = collections.Counter()
    errors: list[str] = []
    sessions = [c.open_session("null") for _ in range(3)]

    def load(s):
        i = 0
        try:
            while not stop.is_set():
                futs = [_one(s, i + k) for k in range(4)]
                acked[s.id] += [f.id for f in futs]
                for f in futs:
                    r = f.result(120)
                    answered[f.id] += 1
                    assert r.evs.shape == (1, 1)
                i += 4
        except Exception as e:           # any failure is the test's
            errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=load, args=(s,)) for s in sessions]
    for t in threads:
        t.start()
    wait_for(lambda: sum(map(len, acked.values())) >= 60, 60, "load under way")
    before = sum(map(len, acked.values()))
    killed_at = time.monotonic()
    os.kill(old.proc.pid, signal.SIGKILL)
    new = wait_for(lambda: (p := store.primary()) is not old and p, 60, "a sentinel promotes the replica")
    promoted_s = time.monotonic() - killed_at
    # with wait_replicas: 1 nothing is acknowledged while the new primary has no replica: the dead host
    # comes back (as a replica: the sentinels reconfigure it) and submissions are acknowledged again
    net.procs.append(subprocess.Popen(old.proc.args, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True))
    # the load goes on against the new primary: at least 60 more tasks acknowledged and answered
    wait_for(lambda: sum(map(len, acked.values())) >= before + 60 or errors, 120,
             "load continues after the failover" + _tail(state / "daemon.log") + _tail(base / "worker.log"))
    stop.set()
    for t in threads:
        t.join(180)
    assert not errors, errors
    all_acked = [t for ids in acked.values() for t in ids]
    assert len(all_acked) == len(set(all_acked))
    lost = [t for t in all_acked if answered[t] == 0]
    twice = [t for t, n in answered.items() if n > 1]
    assert not lost and not twice, (lost, twice)
    r = store.data(new)
    for s in sessions:
        assert int(r.hget(keys.session_usage(s.id), "tasks") or 0) == len(acked[s.id]), "each task charged once"
        s.close()
    # no task announced twice by the workers on the store that survived
    seen: collections.Counter = collections.Counter()
    for _, fields in r.xrange(keys.EVENTS, "-", "+"):
        seen.update(json.loads(fields[b"e"])["tasks"].keys())
    assert not [t for t, n in seen.items() if n > 1]
    # both workers (the daemon's and the remote one) are beating into the new primary
    assert r.get(keys.device_heartbeat("null0")) and r.get(keys.device_heartbeat("null1"))
    print(f"\nsentinel failover ({net.kind}): promoted in {promoted_s:.1f} s; {len(all_acked)} tasks acknowledged, "
          f"lost {len(lost)}, answered twice {len(twice)}")
