"""Signals: SIGHUP reloads the policy (an invalid one keeps the old); SIGTERM drains."""
from __future__ import annotations

import signal
import threading
import time

import numpy as np
import pytest
import yaml
from qiskit.circuit.library import efficient_su2

import qsched
from qsched import errors


def _policy(client) -> str:
    return client.queue()["policy"]


def _wait_for(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_sighup_reloads_policy_and_keeps_the_old_one_when_invalid(fresh_daemon):
    d = fresh_daemon(devices=[{"name": "null0", "type": "null"}], policy={"name": "fifo"})
    c = d.client()
    assert _policy(c) == "fifo"
    cfg = yaml.safe_load(d.config_path.read_text())
    cfg["policy"] = {"name": "round-robin"}
    d.config_path.write_text(yaml.safe_dump(cfg))
    d.proc.send_signal(signal.SIGHUP)
    assert _wait_for(lambda: _policy(c) == "round-robin")
    cfg["policy"] = {"name": "lottery"}
    d.config_path.write_text(yaml.safe_dump(cfg))
    d.proc.send_signal(signal.SIGHUP)
    assert _wait_for(lambda: "invalid policy" in d.log())
    assert _policy(c) == "round-robin"
    assert "policy.name" in d.log()
    s = c.open_session("null")                    # still serving
    qc = efficient_su2(2, reps=1)
    assert s.run("estimate", qc, np.zeros((1, qc.num_parameters)), observables="ZZ").evs.shape == (1, 1)


def test_sigterm_stops_accepting_and_drains_running_work(fresh_daemon):
    d = fresh_daemon(devices=[{"name": "slow0", "type": "null", "pool": "slow", "options": {"delay_s": 1.5}}])
    c = qsched.Client(d.url, retry_s=0)      # see the Draining error rather than retry it
    s = c.open_session("slow")
    qc = efficient_su2(2, reps=1)
    fut = s.submit("estimate", qc, np.zeros((1, qc.num_parameters)), observables="ZZ")
    assert _wait_for(lambda: fut.state() == "RUNNING")
    result = {}
    waiter = threading.Thread(target=lambda: result.setdefault("r", fut.result(30)))
    waiter.start()
    d.proc.send_signal(signal.SIGTERM)
    assert _wait_for(lambda: c.health()["status"] == "draining", 5)
    with pytest.raises(errors.Draining) as e:
        s.submit("estimate", qc, np.zeros((1, qc.num_parameters)), observables="ZZ")
    assert "draining" in e.value.message
    waiter.join(30)
    assert result["r"].evs.shape == (1, 1)         # the running batch finished and was answered
    assert d.proc.wait(30) == 0
    assert "qsched daemon stopped" in d.log()
