"""A missed heartbeat kills a worker only when the worker itself is stopped: not when its heartbeat process
was starved (a fully loaded node), not when the store stalled (every key lapsed in Redis's time), and not
for a predecessor's key that outlived it (a restart finds the last daemon's heartbeats in the AOF)."""
from __future__ import annotations

import json
import os
import signal
import time

import psutil
import redis

from qsched import keys
from qsched.paths import embedded_redis_socket

DEVICES = [{"name": "n0", "type": "null", "pool": "null", "max_qubits": 4}]


def _beat(d) -> dict | None:
    raw = redis.Redis(unix_socket_path=str(embedded_redis_socket(d.state_dir)), socket_timeout=5).get(
        keys.device_heartbeat("n0"))
    return json.loads(raw) if raw else None


def _wait(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not (v := cond()):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    return v


def _stopped(pid: int, seconds: float) -> None:
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)


def test_a_starved_heartbeat_does_not_get_a_running_worker_killed(fresh_daemon):
    d = fresh_daemon(devices=DEVICES, extra={"daemon": {"heartbeat_timeout_s": 1.0}})
    worker = _wait(lambda: _beat(d), 30, "a heartbeat")["pid"]
    _wait(lambda: "device n0 is up" in d.log(), 30, "the daemon to see the device up")
    beater = next(p for p in psutil.Process(worker).children() if "qsched.heartbeat" in " ".join(p.cmdline()))
    _stopped(beater.pid, 3.0)          # as a heartbeat process that got no CPU for 3 s
    assert _wait(lambda: (b := _beat(d)) and b["pid"], 10, "the heartbeat again") == worker
    log = d.log()
    assert "device n0 is down" in log and "not killing it" in log, log
    assert "stopped beating: killing it" not in log, log
    with d.client() as c:
        assert c.devices()[0]["up"]
        s = c.open_session("null")
        assert s.submit("estimate", _circuit(), observables=["Z"]).result(30).evs.shape == (1, 1)


def test_a_stalled_store_does_not_take_a_device_down(fresh_daemon):
    """Redis stops for 3 s (three heartbeat periods): every key lapses in its time. The daemon reads
    the heartbeats before the worker's heartbeat process, also held up, beats again; a device
    declared down would have its outstanding batches requeued (and their finished results discarded)."""
    d = fresh_daemon(devices=DEVICES, extra={"daemon": {"heartbeat_timeout_s": 1.0}})
    worker = _wait(lambda: _beat(d), 30, "a heartbeat")["pid"]
    _wait(lambda: "device n0 is up" in d.log(), 30, "the daemon to see the device up")
    beater = next(p for p in psutil.Process(worker).children() if "qsched.heartbeat" in " ".join(p.cmdline()))
    server = next(p for p in psutil.Process(d.proc.pid).children(recursive=True) if "redis-server" in p.name())
    beater.suspend()
    try:
        _stopped(server.pid, 3.0)
        time.sleep(0.5)                 # the daemon reads first: the key is gone
    finally:
        beater.resume()
    assert _wait(lambda: (b := _beat(d)) and b["pid"], 10, "the heartbeat again") == worker
    time.sleep(1.5)
    log = d.log()
    assert "stalled" in log and "device n0 is down" not in log, log
    with d.client() as c:
        assert c.devices()[0]["up"]


def test_a_restart_does_not_kill_its_own_worker_for_the_last_daemons_heartbeat(fresh_daemon):
    d = fresh_daemon(devices=DEVICES, extra={"daemon": {"heartbeat_timeout_s": 5.0}})
    old = _wait(lambda: _beat(d), 30, "a heartbeat")["pid"]
    d.stop_all(signal.SIGKILL, 5)       # the heartbeat key (5 s to live) stays in the AOF
    d2 = fresh_daemon(devices=DEVICES, extra={"daemon": {"heartbeat_timeout_s": 5.0}}, state_dir=d.state_dir)
    new = _wait(lambda: (b := _beat(d2)) and b["pid"] != old and b["pid"], 30, "the new worker's heartbeat")
    time.sleep(6.0)                     # past the old key's expiry
    log = d2.log()
    assert "killing it" not in log, log
    assert _beat(d2)["pid"] == new and "restarting" not in log, log


def _circuit():
    from qiskit import QuantumCircuit
    qc = QuantumCircuit(1)
    qc.h(0)
    return qc


def test_a_killed_worker_is_restarted_once(fresh_daemon):
    """kill -9 of a worker: one restart, not a second kill of its successor for the dead one's heartbeat
    (its key outlives it by up to a heartbeat period, and the successor is still importing)."""
    d = fresh_daemon(devices=DEVICES, extra={"daemon": {"heartbeat_timeout_s": 2.0}})
    first = _wait(lambda: _beat(d), 30, "a heartbeat")["pid"]
    _wait(lambda: "device n0 is up" in d.log(), 30, "the daemon to see the device up")
    os.kill(first, signal.SIGKILL)
    second = _wait(lambda: (b := _beat(d)) and b["pid"] != first and b["pid"], 60, "the successor's heartbeat")
    time.sleep(5.0)                     # past the dead one's key, and a heartbeat period more
    log = d.log()
    assert log.count("restarting in") == 1 and "killing it" not in log, log
    assert _beat(d)["pid"] == second
    with d.client() as c:
        assert 'qsched_worker_restarts_total{device="n0"} 1.0' in c.metrics()
