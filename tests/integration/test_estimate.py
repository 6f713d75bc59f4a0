"""Predictions against a real daemon (`qsched up`: embedded Redis, real worker processes): a session's
estimate (`session.estimate()`), `qsched queue --start`, `qsched estimate` (as sbatch --test-only) and
the forecast gauges."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter

from qsched.errors import QschedError

DELAY = 0.2
SLOW = [{"name": "slow0", "type": "null", "pool": "slow", "options": {"delay_s": DELAY},
         "cost_prior": {"per_binding_s": DELAY}}]
POLICY = {"name": "fair-share", "merge": False, "classes": {"interactive": {"tier": 1, "weight": 4}}}


def qs(url, *args, timeout=60):
    env = {**os.environ, "QSCHED_URL": url, "QSCHED_RETRY_S": "2"}
    return subprocess.run([sys.executable, "-m", "qsched", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def submit(s, n):
    qc = QuantumCircuit(1)
    qc.rx(Parameter("a"), 0)
    return s.submit_many([dict(kind="estimate", circuit=qc, params=np.zeros((1, 1)), observables=["Z"])] * n)


def test_estimates_of_a_session_a_pool_and_the_queue(fresh_daemon):
    d = fresh_daemon(devices=SLOW, policy=POLICY)
    c = d.client()
    s = c.open_session("slow")
    try:
        futs = submit(s, 20)
        deadline = time.monotonic() + 10
        while True:         # until the device watch has seen the worker's first heartbeat: not predicted
            asked = time.time()
            e = s.estimate()
            if e["complete"] or time.monotonic() > deadline:
                break
            assert e["next_start"] is None and e["backlog_end"] is None
            time.sleep(0.1)
        assert e["session"] == s.id and e["complete"]
        # (the first may have run while the device watch saw the worker's first heartbeat)
        assert 18 <= len(e["tasks"]) <= 20 and {t["device"] for t in e["tasks"]} == {"slow0"}
        assert all(t["device_s"] == pytest.approx(DELAY, rel=0.2) for t in e["tasks"])
        # 20 tasks of 0.2 s, one device: the backlog ends about 4 s from now, the next pending soon
        assert asked - 1 <= e["next_start"] <= asked + 2 * DELAY + 1
        assert asked + 2.5 <= e["backlog_end"] <= asked + 5
        starts = [t["start"] for t in e["tasks"]]
        assert starts == sorted(starts)                  # in submission order: one session, FIFO

        pool = c.estimate(pool="slow", cls="interactive")
        batch = c.estimate(pool="slow")
        assert pool["backlog_s"] == pytest.approx(batch["backlog_s"], abs=1.0) and pool["backlog_s"] > 2
        # an interactive session is served next (tier 1); a new batch session shares with the backlog
        assert pool["wait_s"] < 2 * DELAY + 0.5 < batch["drain_s"]
        assert pool["device"] == "slow0" and pool["device_s"] == pytest.approx(DELAY, rel=0.2)

        out = qs(d.url, "queue", "--start")
        assert out.returncode == 0, out.stderr
        head, row = [line for line in out.stdout.splitlines() if "START_TIME" in line or s.id in line][:2]
        assert "END_TIME" in head and "N/A" not in row
        q = json.loads(qs(d.url, "queue", "--start", "--json").stdout)
        mine = next(x for x in q["sessions"] if x["id"] == s.id)
        assert mine["start"] is not None and mine["end"] >= mine["start"] and "start_iso" in mine

        out = qs(d.url, "estimate", "--pool", "slow", "--class", "interactive", "--bindings", "3")
        assert out.returncode == 0, out.stderr
        assert "would start at" in out.stdout and "pool slow: backlog" in out.stdout
        doc = json.loads(qs(d.url, "estimate", "--pool", "slow", "--bindings", "3", "--json").stdout)
        assert doc["device_s"] == pytest.approx(3 * DELAY, rel=0.2) and doc["bindings"] == 3
        bad = qs(d.url, "estimate", "--pool", "nonesuch")
        assert bad.returncode == 1 and "unknown pool 'nonesuch'" in bad.stderr
        bad = qs(d.url, "estimate", "--pool", "slow", "--class", "nonesuch")
        assert bad.returncode == 1 and "unknown class 'nonesuch'" in bad.stderr
        with pytest.raises(QschedError) as err:
            c.estimate(pool="slow", bindings=0)
        assert err.value.field == "bindings" and "1 to 1000000" in err.value.message

        time.sleep(11)              # the gauges are refreshed every 10 s
        text = c.metrics()
        assert 'qsched_pool_backlog_seconds{pool="slow"}' in text
        assert 'qsched_pool_predicted_wait_seconds{class="interactive",pool="slow"}' in text
        for f in futs:
            f.result(60)
        assert s.estimate()["backlog_end"] == pytest.approx(time.time(), abs=1.0)      # nothing left
    finally:
        s.close()
        c.close()
