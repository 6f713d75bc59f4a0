"""Killed processes: nothing acknowledged is lost or answered twice."""
from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import psutil
import pytest
import redis
from qiskit.circuit.library import efficient_su2

from qsched import errors, keys
from qsched.models import Batch

SLOW = {"name": "slow0", "type": "null", "pool": "slow", "options": {"delay_s": 1.5}}


def _redis(d):
    return redis.Redis(unix_socket_path=str(d.state_dir / "redis" / "redis.sock"))


def _worker_pid(d, device="slow0", old=None, timeout=30, r=None):
    r = r or _redis(d)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hb = r.get(keys.device_heartbeat(device))
        if hb and json.loads(hb)["pid"] != old:
            return json.loads(hb)["pid"]
        time.sleep(0.05)
    raise AssertionError("no worker heartbeat")


def _wait_state(fut, state, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fut.state() == state:
            return
        time.sleep(0.02)
    raise AssertionError(f"task never reached {state}")


def _wait_group_gone(pgid: int, keep=(), timeout=30) -> None:
    """Until no live process of the (killed) daemon's process group is left, but those in `keep`: its
    workers and Redis follow it down by PDEATHSIG, which takes longer on a loaded machine."""
    def live():
        out = []
        for p in psutil.process_iter(["status"]):
            try:
                if p.pid not in keep and os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                    out.append(p.pid)
            except (ProcessLookupError, psutil.Error):
                pass
        return out
    deadline = time.monotonic() + timeout
    while left := live():
        assert time.monotonic() < deadline, f"still alive {timeout} s after their daemon: {left}"
        time.sleep(0.05)


def test_worker_killed_mid_batch_is_requeued_and_completes(fresh_daemon):
    d = fresh_daemon(devices=[SLOW])
    c = d.client()
    s = c.open_session("slow")
    qc = efficient_su2(2, reps=1)
    fut = s.submit("estimate", qc, np.zeros((1, qc.num_parameters)), observables=["ZZ"])
    pid = _worker_pid(d)
    _wait_state(fut, "RUNNING")
    os.kill(pid, signal.SIGKILL)
    res = fut.result(60)
    assert res.evs.shape == (1, 1)
    deaths = int(_redis(d).hget(keys.batch(res.meta["batch"]), "deaths"))
    assert deaths == 1                                    # ran once, died, ran again
    assert "SIGKILL" in d.log()
    assert s.status()["usage"]["tasks"] == 1             # charged once
    s.close()


def test_a_batch_that_keeps_killing_its_worker_fails_with_the_error(fresh_daemon):
    d = fresh_daemon(devices=[SLOW], extra={"daemon": {"max_attempts": 2}})
    c = d.client()
    s = c.open_session("slow")
    qc = efficient_su2(2, reps=1)
    fut = s.submit("estimate", qc, np.zeros((1, qc.num_parameters)), observables=["ZZ"])
    pid = None
    r = _redis(d)
    for attempt in range(2):
        pid = _worker_pid(d, old=pid)
        _wait_state(fut, "RUNNING")
        # the task stays RUNNING across the death: that this worker has the batch shows in Redis, in its
        # processing list and, for a rerun, in the death it counted before running it (its heartbeat
        # comes first: killed before that count, a loaded machine's slow restart would not count)
        deadline = time.monotonic() + 30
        while True:
            held = r.lrange(keys.device_processing("slow0"), 0, -1)
            if held and int(r.hget(keys.batch(Batch.from_entry(held[0]).id), "deaths") or 0) == attempt:
                break
            assert time.monotonic() < deadline, (attempt, held)
            time.sleep(0.02)
        time.sleep(0.2)                                   # into its run
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(errors.TaskFailed) as e:
        fut.result(60)
    assert "died 2 times" in e.value.message and "SIGKILL" in e.value.message
    # the device is healthy again for the next task
    ok = s.submit("estimate", qc, np.zeros((1, qc.num_parameters)), observables=["ZZ"])
    assert ok.result(60).evs.shape == (1, 1)
    s.close()


def test_daemon_killed_and_restarted_loses_nothing_and_answers_once(fresh_daemon, tmp_path):
    dev = {"name": "slow0", "type": "null", "pool": "slow", "options": {"delay_s": 0.05}}
    state = tmp_path / "state"
    d = fresh_daemon(state_dir=state, devices=[dev], policy={"name": "fifo", "merge": False})
    c = d.client()
    s = c.open_session("slow")
    qc = efficient_su2(2, reps=1)
    futs = s.submit_many([dict(kind="estimate", circuit=qc, params=np.full((1, qc.num_parameters), i),
                               observables=["ZZ"]) for i in range(40)])
    acked = [f.id for f in futs]
    _wait_state(futs[2], "DONE")                      # some done, one running, most pending
    d.stop(signal.SIGKILL)
    _wait_group_gone(d.proc.pid)                      # workers and Redis follow their parent down
    d2 = fresh_daemon(state_dir=state, devices=[dev], policy={"name": "fifo", "merge": False})
    c2 = d2.client()
    s2 = c2.attach(s.id)
    res = s2.wait([type(futs[0])(s2, tid) for tid in acked], timeout=120)
    assert len(res) == 40 and all(r.evs.shape == (1, 1) for r in res)
    usage = s2.status()["usage"]
    assert usage["tasks"] == 40                       # each result written (and charged) exactly once
    # pending tasks kept their order across the restart (FIFO, one task per batch)
    r = _redis(d2)
    finished = [float(r.hget(keys.task(t), "finished")) for t in acked]
    assert finished == sorted(finished)
    # the learned cost model was saved for the next start (estimate task on the null device), by the
    # device watch: wait for its round rather than race it
    deadline = time.monotonic() + 20
    while float(r.hget(keys.device_model("slow0"), "estimate") or 0) <= 0.01:
        assert time.monotonic() < deadline, r.hgetall(keys.device_model("slow0"))
        time.sleep(0.05)
    s2.close()


def test_a_stopped_worker_is_noticed_killed_and_its_batch_runs_on_another_device_once(fresh_daemon):
    """SIGSTOP (what a hung worker looks like from outside): its heartbeat stops, the daemon takes its
    batch back from the processing list and the pool's other device runs it; the stopped worker is
    killed and restarted. A long run is not mistaken for a hang: the heartbeat comes from a process
    beside the worker, which beats while the worker holds its GIL."""
    slow = {**SLOW, "options": {"delay_s": 4.0}}
    devs = [{**slow, "name": "slow0"}, {**slow, "name": "slow1"}]
    d = fresh_daemon(devices=devs, extra={"daemon": {"heartbeat_timeout_s": 1.0}})
    c = d.client()
    # both devices online in the daemon's eyes first: on a loaded machine a worker can start late, and
    # the other device would then run both batches one after the other
    deadline = time.monotonic() + 30
    while {dev["name"] for dev in c.devices() if dev["state"] == "online"} != {"slow0", "slow1"}:
        assert time.monotonic() < deadline, c.devices()
        time.sleep(0.05)
    stopped = _worker_pid(d, "slow0")
    s = c.open_session("slow")
    qc = efficient_su2(2, reps=1)
    futs = [s.submit("estimate", qc, np.zeros((1, qc.num_parameters)), observables=["ZZ"]) for _ in range(2)]
    for f in futs:
        _wait_state(f, "RUNNING")
    os.kill(stopped, signal.SIGSTOP)
    try:
        held = [Batch.from_entry(e) for e in _redis(d).lrange(keys.device_processing("slow0"), 0, -1)]
        assert len(held) == 1, "slow0 finished its batch before it was stopped: raise delay_s"
        lost = {f.id: f.result(60) for f in futs}[held[0].tasks[0]]
        assert lost.meta["device"] == "slow1"                         # the lost batch ran on slow1
        assert _worker_pid(d, "slow0", old=stopped) != stopped        # killed and restarted
    finally:
        try:
            os.kill(stopped, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert s.status()["usage"]["tasks"] == 2                           # each answered once
    log = d.log()
    assert "slow0 is down" in log and "requeued to pool slow" in log and "stopped beating: killing it" in log
    metrics = c.metrics()
    import re

    def value(series):
        m = re.search(re.escape(series) + r" ([0-9.e+]+)", metrics)
        return float(m.group(1)) if m else 0.0
    # at least once (a worker starting slowly on a loaded machine can be seen down again)
    assert value('qsched_workers_lost_total{device="slow0"}') >= 1
    assert value('qsched_batches_requeued_total{device="slow0",reason="worker_lost"}') >= 1
    s.close()


def test_a_late_result_from_a_worker_whose_batch_was_taken_back_is_refused(fresh_daemon):
    """The fence: COMPLETE writes nothing once the batch entry left the worker's processing list."""
    from qsched.store import COMPLETE_LUA
    d = fresh_daemon(devices=[{"name": "null0", "type": "null", "pool": "null"}])
    r = _redis(d)
    entry = '{"id":"bx","device":"ghost","session":"s0","tasks":["s0.t"],"created":0}'
    r.hset(keys.task("s0.t"), mapping={"state": "SCHEDULED"})
    complete = r.register_script(COMPLETE_LUA)
    args = [entry, "{}", 60, 0.1, 0.0, "DONE", '{"result":1}', 1, 0]
    ks = [keys.device_processing("ghost"), keys.EVENTS, keys.session_usage("s0"), keys.batch("bx"),
          keys.task("s0.t"), keys.task_result("s0.t")]
    assert complete(keys=ks, args=args) == -1                       # not in the processing list: refused
    assert r.get(keys.task_result("s0.t")) is None
    r.lpush(keys.device_processing("ghost"), entry)
    assert complete(keys=ks, args=args) == 1                        # the holder's result is written once
    assert r.get(keys.task_result("s0.t")) == b'DONE\n{"result":1}'     # state, then body


def test_an_orphaned_stopped_worker_neither_answers_nor_charges_after_sigcont(fresh_daemon, tmp_path):
    """A worker stopped mid-batch survives its daemon's kill -9 (SIGSTOP holds the PDEATHSIG). The next
    daemon's worker runs the batch; when the orphan is continued it finds its daemon gone and leaves the
    batch alone: the task is answered and charged once, with the successor's measured time."""
    import subprocess

    from qsched.daemon.redis_server import redis_server_binary
    dev = {"name": "slow0", "type": "null", "pool": "slow", "options": {"delay_s": 1.0}}
    state = tmp_path / "state"
    # an external Redis: the orphan's connection survives the daemon (with the embedded one it would not)
    sock = tmp_path / "redis.sock"
    redis_proc = subprocess.Popen([redis_server_binary(), "--port", "0", "--unixsocket", str(sock), "--save", "",
                                   "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    extra = {"redis": {"url": f"unix://{sock}"}}
    d = fresh_daemon(state_dir=state, devices=[dev], extra=extra)
    s = d.client().open_session("slow")
    qc = efficient_su2(2, reps=1)
    fut = s.submit("estimate", qc, np.zeros((1, qc.num_parameters)), observables=["ZZ"])
    _wait_state(fut, "RUNNING")
    orphan = _worker_pid(d, r=redis.Redis(unix_socket_path=str(sock)))
    os.kill(orphan, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        d.stop(signal.SIGKILL)
        # the rest of its group follows it down; the stopped orphan (and its heartbeat beside it) cannot
        keep = {orphan, *(p.pid for p in psutil.Process(orphan).children(recursive=True))}
        _wait_group_gone(d.proc.pid, keep=keep)
        time.sleep(max(0.0, stopped_at + 3.0 - time.monotonic()))   # stopped long enough to show in a charge
        d2 = fresh_daemon(state_dir=state, devices=[dev], extra=extra)
        os.kill(orphan, signal.SIGCONT)                   # it would finish first: it was mid-batch
        stopped_s = time.monotonic() - stopped_at        # the orphan's run would include all of this (>= 3 s)
        s2 = d2.client().attach(s.id)
        res = type(fut)(s2, fut.id).result(60)
        # the successor's run (delay_s 1 s), not the orphan's, which lasted longer than it was stopped
        assert res.meta["exec_s"] < stopped_s, (res.meta["exec_s"], stopped_s)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and psutil_alive(orphan):
            time.sleep(0.1)
        assert not psutil_alive(orphan), "the orphan kept running after SIGCONT"
        usage = s2.status()["usage"]
        assert usage["tasks"] == 1 and usage["device_seconds"] < stopped_s, (usage, stopped_s)
    finally:
        try:
            os.kill(orphan, signal.SIGKILL)
        except ProcessLookupError:
            pass
        redis_proc.kill()
        redis_proc.wait()


def psutil_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
