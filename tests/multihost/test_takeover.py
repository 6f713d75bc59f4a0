"""A standby daemon: two daemons on two hosts (network namespaces) against one store; the one holding
the leader lease serves over TLS, the other waits. Workers run on a third host (`start_worker: false`).
Jobs list both daemons in QSCHED_URL and verify the server against the CA made here.

Quick form: SIGSTOP the leader: the standby takes over; the stopped one, woken, finds its lease gone
and its writes fenced, and exits (3). Full form (marked `multihost`): kill -9 the leader mid-run of K
hybrid jobs: every job completes with the right results, no task lost or run twice."""
from __future__ import annotations

import collections
import json
import os
import signal
import ssl
import threading
import time
import urllib.request

import numpy as np
import pytest
from hosts import made_hosts, make_certs, start_daemon, start_redis, start_worker, wait_for, write_config
from qiskit.circuit.library import efficient_su2
from qiskit.primitives import StatevectorEstimator
from qiskit.quantum_info import SparsePauliOp

import qsched
from qsched import keys

DEVICES = [{"name": "aer0", "type": "aer", "pool": "aer", "max_qubits": 8, "start_worker": False},
           {"name": "aer1", "type": "aer", "pool": "aer", "max_qubits": 8, "start_worker": False}]
LEASE_S = 2.0


@pytest.fixture
def hosts(monkeypatch):
    with made_hosts("qsched-takeover-", ("store", "daemonA", "daemonB", "worker")) as (net, base, h):
        st, a, b, w = h["store"], h["daemonA"], h["daemonB"], h["worker"]
        url, pw, _ = start_redis(net, st, base / "redis")
        import redis
        net.redis = redis.Redis.from_url(url, password=pw.read_text())
        certs = make_certs(base / "tls", [a.addr, b.addr])
        monkeypatch.setenv("QSCHED_CA_FILE", str(certs["ca.pem"]))
        redis_cfg = {"url": url, "password_file": str(pw)}
        daemons = {}
        for name, host in (("A", a), ("B", b)):
            cfg = {"redis": redis_cfg, "devices": DEVICES, "policy": {"name": "fair-share"},
                   "daemon": {"tcp": f"{host.addr}:8765", "leader_lease_s": LEASE_S, "heartbeat_timeout_s": 3,
                              "drain_timeout_s": 2,
                              "tls": {"cert_file": str(certs["server.pem"]), "key_file": str(certs["server.key"])}},
                   "auth": {"trust_tcp": True}}
            daemons[name] = (start_daemon(net, host, base / f"daemon{name}", cfg), host)
            if name == "A":       # A first: it takes the lease, B waits
                wait_for(lambda: _health(a), 60, "daemon A serving" + _tail(base / "daemonA" / "daemon.log"))
        wcfg = write_config(base / "worker.yaml", {"state_dir": str(base / "worker-state"), "redis": redis_cfg,
                                                    "devices": DEVICES})
        for dev in ("aer0", "aer1"):
            start_worker(net, w, dev, wcfg, base / f"worker-{dev}.log")
        urls = f"https://{a.addr}:8765,https://{b.addr}:8765"
        c = qsched.Client(urls, retry_s=60)
        local = qsched.Client(f"unix://{base / 'daemonA' / 'qsched.sock'}", retry_s=5)    # listings: local only
        wait_for(lambda: all(d["up"] for d in local.devices()), 90, "workers up" + _tail(base / "worker-aer0.log"))
        yield net, base, daemons, urls, c


def _tail(p, n=3000) -> str:
    try:
        return "\n" + p.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _health(h) -> bool:
    ctx = ssl.create_default_context(cafile=os.environ["QSCHED_CA_FILE"])
    with urllib.request.urlopen(f"https://{h.addr}:8765/v1/health", context=ctx, timeout=2) as r:
        return json.loads(r.read())["status"] == "ok"


def _serving(h) -> bool:
    try:
        return _health(h)
    except OSError:
        return False


def test_standby_waits_then_takes_over_a_stopped_leader_which_is_fenced(hosts):
    net, base, daemons, urls, c = hosts
    (pa, a), (_, b) = daemons["A"], daemons["B"]
    assert _serving(a) and not _serving(b)              # the standby does not listen
    s = c.open_session("aer")
    qc = efficient_su2(2, reps=1)
    assert s.submit("estimate", qc, np.zeros((1, qc.num_parameters)), observables=["ZZ"]).result(60).evs.shape == (1, 1)
    os.killpg(pa.pid, signal.SIGSTOP)
    t0 = time.monotonic()
    wait_for(lambda: _serving(b), 30, "standby B serving" + _tail(base / "daemonB" / "daemon.log"))
    took = time.monotonic() - t0
    # the session carries on at B (same token: the secret is in the store)
    r = s.submit("estimate", qc, np.full((1, qc.num_parameters), 0.3), observables=["ZZ"]).result(60)
    assert r.evs.shape == (1, 1)
    os.killpg(pa.pid, signal.SIGCONT)
    assert pa.wait(30) == 3, _tail(base / "daemonA" / "daemon.log")
    assert "leader lease lost" in (base / "daemonA" / "daemon.log").read_text()
    assert _serving(b)
    s.close()
    print(f"\nstandby took over a SIGSTOPped leader in {took:.1f} s (lease {LEASE_S} s, {net.kind})")


def _reference(qc, params):
    return StatevectorEstimator().run([(qc, SparsePauliOp("ZZ"), params)]).result()[0].data.evs


@pytest.mark.multihost
def test_leader_killed_mid_run_jobs_complete_nothing_lost_or_run_twice(hosts):
    net, base, daemons, urls, c = hosts
    (pa, _), (_, b) = daemons["A"], daemons["B"]
    qc = efficient_su2(2, reps=1)
    K, N = 4, 12
    results: dict[int, list] = {}
    params: dict[int, list] = collections.defaultdict(list)
    tids: dict[int, list[str]] = collections.defaultdict(list)
    sids: dict[int, str] = {}
    errors: list[str] = []
    progress = collections.Counter()

    def job(k):
        """A hybrid job: each iteration's parameters depend on the last result (a classical step)."""
        try:
            jc = qsched.Client(urls, retry_s=60)
            s = jc.open_session("aer")
            sids[k] = s.id
            x = np.full(qc.num_parameters, 0.1 * (k + 1))
            out = []
            for _ in range(N):
                p = x[None, :]
                f = s.submit("estimate", qc, p, observables=["ZZ"])
                tids[k].append(f.id)
                ev = f.result(120).evs[0, 0]
                params[k].append(p.copy())
                out.append(ev)
                x = x + 0.05 * (1.0 + ev)          # classical update from the quantum answer
                progress[k] += 1
                time.sleep(0.05)                    # the classical phase
            results[k] = out
            s.close()
        except Exception as e:
            errors.append(f"job {k}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=job, args=(k,)) for k in range(K)]
    for t in threads:
        t.start()
    wait_for(lambda: sum(progress.values()) >= K * N // 3 or errors, 120, "jobs under way")
    os.killpg(pa.pid, signal.SIGKILL)
    t0 = time.monotonic()
    wait_for(lambda: _serving(b), 30, "standby B serving" + _tail(base / "daemonB" / "daemon.log"))
    takeover_s = time.monotonic() - t0
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert sorted(results) == list(range(K))
    for k in range(K):
        ref = np.concatenate([_reference(qc, p) for p in params[k]]).ravel()
        assert np.allclose(results[k], ref, atol=1e-9), k
    r = net.redis
    all_tids = [t for ts in tids.values() for t in ts]
    assert len(all_tids) == K * N == len(set(all_tids))
    ran: collections.Counter = collections.Counter()
    for _, fields in r.xrange(keys.EVENTS, "-", "+"):
        ran.update(json.loads(fields[b"e"])["tasks"].keys())
    assert all(ran[t] == 1 for t in all_tids), [t for t in all_tids if ran[t] != 1]      # none lost, none twice
    for k in range(K):
        assert int(r.hget(keys.session_usage(sids[k]), "tasks")) == N                    # charged once
    for dev in ("aer0", "aer1"):
        assert "re-running" not in (base / f"worker-{dev}.log").read_text()
    print(f"\nleader kill -9 -> standby serving in {takeover_s:.1f} s (lease {LEASE_S} s, {net.kind}); "
          f"{K} jobs x {N} tasks: lost 0, run twice 0")
