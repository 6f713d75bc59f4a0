"""A device has one worker. A second one (an orphan of a killed daemon, a worker started twice by hand or
by two daemons) is refused by the store, a killed worker's successor takes over at once, and a worker
whose daemon died before it could tie itself to it exits instead of serving the next daemon's Redis."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import redis

from qsched import keys
from qsched.paths import embedded_redis_socket

DEVICES = [{"name": "solo0", "type": "null", "pool": "null", "max_qubits": 4, "start_worker": False}]


def _worker(d, *extra):
    env = {**os.environ, "QSCHED_STATE_DIR": str(d.state_dir)}
    return subprocess.Popen([sys.executable, "-m", "qsched", "worker", "--device", "solo0",
                             "--config", str(d.config_path), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _heartbeat_pid(r) -> int | None:
    raw = r.get(keys.device_heartbeat("solo0"))
    return json.loads(raw)["pid"] if raw else None


def _wait(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_second_worker_is_refused_and_a_dead_ones_successor_takes_over(fresh_daemon):
    d = fresh_daemon(devices=DEVICES, extra={"daemon": {"heartbeat_timeout_s": 2.0}},
                     wait_devices=False)
    r = redis.Redis(unix_socket_path=str(embedded_redis_socket(d.state_dir)))
    first = second = third = None
    try:
        first = _worker(d)
        _wait(lambda: _heartbeat_pid(r) == first.pid, 60, "the first worker never beat")

        second = _worker(d)
        out, _ = second.communicate(timeout=60)      # it waits out two heartbeat periods, then gives up
        assert second.returncode != 0
        assert b"served by another live worker" in out, out.decode(errors="replace")
        assert _heartbeat_pid(r) == first.pid and first.poll() is None

        first.kill()
        first.wait()
        t0 = time.monotonic()
        third = _worker(d)
        _wait(lambda: _heartbeat_pid(r) == third.pid, 60, "the successor never beat")
        # a dead predecessor on this host is taken over at once, not after its lease's 2 s expiry
        # (the successor's own start, imports included, is most of this)
        started_s = time.monotonic() - t0
        assert third.poll() is None
        c = d.client()
        assert c.devices()[0]["up"]
        assert started_s < 30
    finally:
        for p in (first, second, third):
            if p is not None and p.poll() is None:
                p.kill()


def test_a_worker_whose_daemon_is_already_gone_exits_at_once(fresh_daemon):
    d = fresh_daemon(devices=DEVICES, wait_devices=False)
    r = redis.Redis(unix_socket_path=str(embedded_redis_socket(d.state_dir)))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    # as if its daemon died between starting it and the worker's prctl: PR_SET_PDEATHSIG never fires
    w = _worker(d, "--parent-pid", str(gone.pid))
    out, _ = w.communicate(timeout=60)
    assert w.returncode != 0 and f"pid {gone.pid}) is gone".encode() in out, out
    assert _heartbeat_pid(r) is None and r.get(keys.device_worker("solo0")) is None


def test_the_worker_lease_ends_with_a_clean_exit(fresh_daemon):
    d = fresh_daemon(devices=DEVICES, wait_devices=False)
    r = redis.Redis(unix_socket_path=str(embedded_redis_socket(d.state_dir)))
    w = _worker(d)
    try:
        _wait(lambda: _heartbeat_pid(r) == w.pid, 60, "the worker never beat")
        w.send_signal(signal.SIGTERM)
        w.wait(30)
        assert r.get(keys.device_worker("solo0")) is None and _heartbeat_pid(r) is None
    finally:
        if w.poll() is None:
            w.kill()
