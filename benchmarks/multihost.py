"""qsched across hosts made of network namespaces (tests/multihost/hosts.py; loopback addresses where
namespaces cannot be made): a Sentinel store (primary, replica, three sentinels), daemons, and three
worker hosts with two `null` devices each. Needs root, redis-server and redis-sentinel.

  tcp_p50_ms / tcp_p99_ms        one null task (submit + result, one round trip) over plain TCP
  tls_p50_ms / tls_p99_ms        the same over TLS (keep-alive: the handshake is paid once)
  tls_connect_ms                 a new TLS connection: TCP connect + handshake (median)
  wait_p50_ms / wait_p99_ms      plain TCP with redis.wait_replicas: 1 (WAIT before acknowledging)
  throughput_tasks_per_s         3 worker hosts x 2 null devices against one daemon, 6 sessions
  per_host_share                 the share of tasks each worker host ran
  throughput_50ms_tasks_per_s    null devices that take 50 ms per batch, 12 sessions (device-bound: at most
                                 6 devices x 20 batches/s x 16 tasks)
  takeover_s                     kill -9 of the leader -> the standby answers over TLS (each trial)
  takeover_lost / takeover_twice tasks of a running job lost / run twice across the takeovers
  failover_s                     kill -9 of the Redis primary -> a submission acknowledged again

The last line printed is one JSON object."""
from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "multihost"))
from hosts import (Net, make_certs, need_redis_binaries, start_daemon, start_sentinel_store,  # noqa: E402
                   start_worker, tmpdir, wait_for, write_config)

import qsched  # noqa: E402
from qsched import keys  # noqa: E402

HOSTS = ("w1", "w2", "w3")


def devices():
    return [{"name": f"{h}n{i}", "type": "null", "pool": "null", "start_worker": False}
            for h in HOSTS for i in (0, 1)]


def one(session, qc, x=0.0):
    return session.submit("estimate", qc, np.full((1, qc.num_parameters), x), observables=["ZZ"])


def latency(url, qc, n):
    c = qsched.Client(url, retry_s=30)
    s = c.open_session("null")
    for _ in range(20):
        one(s, qc).result(30)                          # warm: templates, connections, cost model
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        one(s, qc, i * 1e-3).result(30)
        out.append(time.perf_counter() - t0)
    s.close()
    c.close()
    a = np.array(out) * 1000
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def tls_connect_ms(host, ca, n=30):
    import socket
    ctx = ssl.create_default_context(cafile=ca)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        with socket.create_connection((host.addr, 8765), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname=host.addr):
                out.append(time.perf_counter() - t0)
    return float(np.median(out) * 1000)


def throughput(url, qc, seconds, sessions=6, per_submit=16):
    stop = threading.Event()
    done = collections.Counter()
    hosts = collections.Counter()

    def loop(k):
        c = qsched.Client(url, retry_s=30)
        s = c.open_session("null")
        while not stop.is_set():
            futs = s.submit_many([dict(kind="estimate", circuit=qc, params=np.full((1, qc.num_parameters), j),
                                       observables=["ZZ"]) for j in range(per_submit)])
            for f in futs:
                hosts[f.result(60).meta["device"][:2]] += 1
            done[k] += len(futs)
        s.close()
    threads = [threading.Thread(target=loop, args=(k,)) for k in range(sessions)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(120)
    el = time.perf_counter() - t0
    total = sum(done.values())
    return total / el, {h: round(hosts[h] / max(1, total), 3) for h in HOSTS}


def serving(h, ca) -> bool:
    try:
        ctx = ssl.create_default_context(cafile=ca)
        with urllib.request.urlopen(f"https://{h.addr}:8765/v1/health", context=ctx, timeout=1) as r:
            return json.loads(r.read())["status"] == "ok"
    except OSError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--takeovers", type=int, default=3)
    args = ap.parse_args()
    if why := need_redis_binaries():
        sys.exit(why)
    from qiskit.circuit.library import efficient_su2
    qc = efficient_su2(2, reps=1)
    base = tmpdir("qsched-bench-multihost-")
    net = Net.make()
    out: dict = {"hosts": net.kind}
    try:
        s1, s2, a, b = (net.host(n) for n in ("store1", "store2", "daemonA", "daemonB"))
        workers = {h: net.host(h) for h in HOSTS}
        store = start_sentinel_store(net, [s1, s2], [s1, s2, a], base / "redis")
        certs = make_certs(base / "tls", [a.addr, b.addr])
        os.environ["QSCHED_CA_FILE"] = str(certs["ca.pem"])
        ca = str(certs["ca.pem"])
        tls = {"cert_file": str(certs["server.pem"]), "key_file": str(certs["server.key"])}
        wprocs: list = []

        def start_workers(delay_s: float) -> None:
            for p in wprocs:
                p.send_signal(signal.SIGTERM)
                p.wait(30)
            wprocs.clear()
            devs = [d | {"options": {"delay_s": delay_s}} for d in devices()] if delay_s else devices()
            wcfg = write_config(base / f"worker-{delay_s}.yaml", {"state_dir": str(base / "wstate"),
                                                                   "redis": store.config_block(), "devices": devs})
            for h, host in workers.items():
                for i in (0, 1):
                    wprocs.append(start_worker(net, host, f"{h}n{i}", wcfg, base / f"worker-{h}n{i}.log"))
        start_workers(0.0)

        def daemon(host, name, *, tls_on, wait, lease=0.0):
            cfg = {"redis": store.config_block(wait_replicas=wait, wait_timeout_ms=1000), "devices": devices(),
                   "policy": {"name": "fair-share"}, "auth": {"trust_tcp": True},
                   "daemon": {"tcp": f"{host.addr}:8765", "drain_timeout_s": 2, "leader_lease_s": lease,
                              "heartbeat_timeout_s": 3, **({"tls": tls} if tls_on else {})}}
            return start_daemon(net, host, base / name, cfg)

        def ready(state):
            c = qsched.Client(f"unix://{state / 'qsched.sock'}", retry_s=5)
            wait_for(lambda: all(d["up"] for d in c.devices()), 120, f"daemon {state.name} and workers up")

        # latency: plain, TLS, WAIT (one daemon at a time on host A)
        for label, tls_on, wait in (("tcp", False, 0), ("tls", True, 0), ("wait", False, 1)):
            p = daemon(a, f"lat-{label}", tls_on=tls_on, wait=wait)
            ready(base / f"lat-{label}")
            scheme = "https" if tls_on else "http"
            p50, p99 = latency(f"{scheme}://{a.addr}:8765", qc, args.requests)
            out[f"{label}_p50_ms"], out[f"{label}_p99_ms"] = round(p50, 3), round(p99, 3)
            if tls_on:
                out["tls_connect_ms"] = round(tls_connect_ms(a, ca), 3)
            if label == "tcp":
                # instant null devices: the daemon is the bottleneck (the first free device takes nearly all)
                tput, share = throughput(f"http://{a.addr}:8765", qc, args.seconds)
                out["throughput_tasks_per_s"], out["per_host_share"] = round(tput, 1), share
                # 50 ms per batch on each device, 12 sessions: the six devices on three hosts share the work
                start_workers(0.05)
                ready(base / f"lat-{label}")
                tput, share = throughput(f"http://{a.addr}:8765", qc, args.seconds, sessions=12)
                out["throughput_50ms_tasks_per_s"], out["per_host_share_50ms"] = round(tput, 1), share
                start_workers(0.0)
                ready(base / f"lat-{label}")
            p.send_signal(signal.SIGTERM)
            p.wait(60)
            print(json.dumps(out), flush=True)

        # takeover: A and B with a 2 s lease; a job runs throughout; kill -9 the leader, restart it as standby
        lease = 2.0
        procs = {"A": daemon(a, "lease-A", tls_on=True, wait=1, lease=lease)}
        wait_for(lambda: serving(a, ca), 60, "A leads")
        procs["B"] = daemon(b, "lease-B", tls_on=True, wait=1, lease=lease)
        time.sleep(3)
        urls = f"https://{a.addr}:8765,https://{b.addr}:8765"
        stop = threading.Event()
        tids: list[str] = []
        answered: collections.Counter = collections.Counter()
        errs: list[str] = []

        def job():
            try:
                c = qsched.Client(urls, retry_s=60)
                s = c.open_session("null")
                while not stop.is_set():
                    f = one(s, qc)
                    tids.append(f.id)
                    f.result(120)
                    answered[f.id] += 1
                    time.sleep(0.02)
                s.close()
            except Exception as e:
                errs.append(repr(e))
        jt = threading.Thread(target=job)
        jt.start()
        times = []
        leader, leader_host = "A", a
        hosts_by = {"A": a, "B": b}
        for _ in range(args.takeovers):
            time.sleep(2)
            other = "B" if leader == "A" else "A"
            os.killpg(procs[leader].pid, signal.SIGKILL)
            t0 = time.monotonic()
            wait_for(lambda h=hosts_by[other]: serving(h, ca), 60, "standby takes over")
            times.append(round(time.monotonic() - t0, 2))
            shutil.rmtree(base / f"lease-{leader}", ignore_errors=True)
            procs[leader] = daemon(leader_host, f"lease-{leader}", tls_on=True, wait=1, lease=lease)
            leader, leader_host = other, hosts_by[other]
            time.sleep(3)                                      # the restarted one is the standby now
        time.sleep(2)
        stop.set()
        jt.join(120)
        out["takeover_s"] = times
        out["takeover_tasks"] = len(tids)
        out["takeover_lost"] = sum(1 for t in tids if answered[t] == 0)
        ran: collections.Counter = collections.Counter()
        r = store.data(store.primary())
        for _, fields in r.xrange(keys.EVENTS, "-", "+"):
            ran.update(json.loads(fields[b"e"])["tasks"].keys())
        out["takeover_twice"] = sum(1 for t in tids if ran[t] > 1)
        out["takeover_errors"] = errs
        print(json.dumps(out), flush=True)

        # Sentinel failover under the leader: kill -9 the primary, time until a submission is acknowledged
        c = qsched.Client(urls, retry_s=120)
        s = c.open_session("null")
        one(s, qc).result(60)
        old = store.primary()
        os.kill(old.proc.pid, signal.SIGKILL)
        t0 = time.monotonic()
        wait_for(lambda: store.primary() is not old, 60, "promotion")
        promoted = time.monotonic() - t0
        net.procs.append(subprocess.Popen(old.proc.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          start_new_session=True))     # back, as a replica (WAIT needs one)
        one(s, qc).result(120)
        out["failover_promoted_s"] = round(promoted, 2)
        out["failover_s"] = round(time.monotonic() - t0, 2)
        s.close()
    finally:
        net.close()
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
