"""Scale budget (DESIGN.md, Budgets): "scheduling decision O(log S) in sessions; 10,000 open sessions
and 100,000 pending tasks with the daemon's RSS <= 300 MB".

1. The daemon at scale: a private `qsched up` whose only device is a `null` device that holds each batch
   for an hour, so everything submitted stays pending (two batches sit on the device: running + inbox).
   We open SESSIONS sessions and submit TASKS_PER_SESSION tasks to each (PER_REQUEST per request) over
   the unix socket with the AsyncClient, then read the RSS of the `qsched up` process itself (not its
   worker or its embedded redis-server, reported apart).
2. The policy decision in isolation: qsched.policy.FairShare pick + charge + enqueue (one decision as the
   dispatcher makes it) with S backlogged sessions in one pool, S = 100 ... 100,000.

    python benchmarks/scale.py [--sessions 10000] [--tasks-per-session 10] [--per-request 5]

The last line printed is one JSON object: daemon_rss_mb, sessions, pending_tasks,
submit_rate_tasks_per_s, decision_us_by_sessions (and a few more keys for context).
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import random
import shutil
import signal
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

RSS_BUDGET_MB = 300.0
DECISION_SIZES = (100, 1_000, 10_000, 100_000)


# ----------------------------------------------------------------------------- policy decision cost
def decision_us(S: int, decisions: int = 100_000, repeats: int = 3, seed: int = 1) -> float:
    """Microseconds per FairShare decision (pick + charge + enqueue) with S backlogged sessions."""
    from qsched.policy import FairShare
    rng = random.Random(seed)
    best = math.inf
    for _ in range(repeats):
        p = FairShare()
        sids = [f"s{i:06d}" for i in range(S)]
        weight = {s: rng.choice((0.5, 1.0, 1.0, 2.0, 4.0)) for s in sids}
        costs = [rng.uniform(1e-4, 1e-2) for _ in range(4096)]
        for i, s in enumerate(sids):
            p.enqueue(s, "qpu", weight[s], i)
        seq = S
        pick, charge, enqueue = p.pick, p.charge, p.enqueue
        gc.disable()
        t0 = time.perf_counter()
        for k in range(decisions):
            sid = pick("qpu")
            charge(sid, costs[k & 4095])
            seq += 1
            enqueue(sid, "qpu", weight[sid], seq)
        dt = time.perf_counter() - t0
        gc.enable()
        best = min(best, dt / decisions * 1e6)
    return best


def policy_scaling() -> dict[int, float]:
    out = {}
    for S in DECISION_SIZES:
        out[S] = decision_us(S)
        print(f"  FairShare decision, S={S:>7,} sessions: {out[S]:.3f} us", flush=True)
    # fit us = a + b*log2(S): O(log S) means the time per doubling (b) is small and steady
    xs = [math.log2(s) for s in out]
    ys = list(out.values())
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    print(f"  fit: {my - b * mx:.3f} us + {b:.3f} us x log2(S); "
          f"S x1000 (100 -> 100,000) costs x{ys[-1] / ys[0]:.2f} per decision (linear would be x1000)", flush=True)
    return out


# ----------------------------------------------------------------------------- the daemon at scale
def _daemon_process():
    import psutil
    me = psutil.Process()
    for c in me.children():
        cmd = c.cmdline()
        if "qsched" in cmd and "up" in cmd:
            return c
    raise RuntimeError("no `qsched up` child process found")


def _rss_mb(p) -> float:
    return p.memory_info().rss / 2**20


def _template_digest(url: str) -> str:
    from qiskit import QuantumCircuit
    from qiskit.circuit import Parameter

    import qsched
    qc = QuantumCircuit(2)
    qc.rx(Parameter("a"), 0)
    qc.cx(0, 1)
    with qsched.Client(url) as c:
        s = c.open_session("null", name="scale-template")
        digest = s.upload(qc)       # templates are global by content hash; every session may use it
        s.close()
    return digest


async def _load(url: str, digest: str, n_sessions: int, per_session: int, per_request: int,
                concurrency: int) -> dict:
    import numpy as np

    from qsched.client import AsyncClient
    sessions = []
    async with AsyncClient(url, timeout=300) as client:
        sem = asyncio.Semaphore(concurrency)

        async def open_one(i):
            async with sem:
                sessions.append(await client.open_session("null", name=f"scale-{i}"))
        t0 = time.perf_counter()
        await asyncio.gather(*(open_one(i) for i in range(n_sessions)))
        t_open = time.perf_counter() - t0
        print(f"  opened {len(sessions):,} sessions in {t_open:.1f} s ({len(sessions) / t_open:,.0f}/s)", flush=True)

        task = dict(kind="estimate", template=digest, params=np.zeros((1, 1)), observables=["ZZ"])
        chunks = [min(per_request, per_session - k) for k in range(0, per_session, per_request)]
        submitted = 0

        async def fill(s):
            nonlocal submitted
            async with sem:
                for n in chunks:
                    futs = await s.submit_many([task] * n)
                    submitted += len(futs)
        t0 = time.perf_counter()
        done, step = 0, max(1, len(sessions) // 5)
        for k in range(0, len(sessions), step):
            await asyncio.gather(*(fill(s) for s in sessions[k:k + step]))
            done = min(len(sessions), k + step)
            print(f"    {submitted:,} tasks in {time.perf_counter() - t0:.1f} s ({done:,} sessions filled)", flush=True)
        t_submit = time.perf_counter() - t0
        queue = await client._request("GET", "/v1/queue")
        metrics = (await client._request("GET", "/metrics")).decode()
    pending_metric = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                         if line.startswith("qsched_tasks_pending{"))
    return {"sessions": len(queue["sessions"]), "submitted": submitted,
            "pending": queue["pools"]["null"]["pending"], "pending_metric": pending_metric,
            "running_batches": queue["pools"]["null"]["running"], "open_s": t_open, "submit_s": t_submit}


def daemon_scale(n_sessions: int, per_session: int, per_request: int, concurrency: int) -> dict:
    from _daemon import private_daemon
    devices = [{"name": "null0", "type": "null", "pool": "null", "max_qubits": 20,
                "options": {"delay_s": 3600}}]          # holds its first batch: the rest stays pending
    t_start = time.perf_counter()
    out = {}
    # one user opens every session here: the per-user cap (daemon.max_sessions_per_user) is lifted
    with private_daemon(devices, policy={"name": "fair-share", "max_pending_per_session": 10_000},
                        daemon={"max_sessions_per_user": max(1_000, n_sessions + 10)}) as url:
        state_dir = os.path.dirname(urllib.parse.urlparse(url).path)
        daemon = _daemon_process()
        kids = daemon.children(recursive=True)
        print(f"  daemon pid {daemon.pid} up in {time.perf_counter() - t_start:.1f} s; "
              f"RSS {_rss_mb(daemon):.0f} MB at start", flush=True)
        try:
            digest = _template_digest(url)
            rss0 = _rss_mb(daemon)
            res = asyncio.run(_load(url, digest, n_sessions, per_session, per_request, concurrency))
            time.sleep(1.0)          # let the allocator settle; RSS does not shrink anyway
            rss = _rss_mb(daemon)
            out = {**res, "rss_start_mb": rss0, "rss_mb": rss,
                   "redis_rss_mb": sum(_rss_mb(k) for k in kids if "redis" in " ".join(k.cmdline())),
                   "worker_rss_mb": sum(_rss_mb(k) for k in kids if "worker" in k.cmdline())}
        finally:
            # the null device sleeps an hour inside its batch: a graceful drain would wait out the
            # drain timeout twice. Kill the daemon's own children and then the daemon, by pid.
            for k in daemon.children(recursive=True):
                try:
                    k.send_signal(signal.SIGKILL)
                except Exception:
                    pass
            try:
                daemon.send_signal(signal.SIGKILL)
                daemon.wait(10)
            except Exception:
                pass
    shutil.rmtree(state_dir, ignore_errors=True)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=10_000)
    ap.add_argument("--tasks-per-session", type=int, default=10)
    ap.add_argument("--per-request", type=int, default=5, help="tasks per submit request")
    ap.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    ap.add_argument("--skip-daemon", action="store_true", help="only the policy decision cost")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()

    print("policy decision cost (FairShare pick + charge + enqueue):", flush=True)
    dec = policy_scaling()

    d = {}
    if not args.skip_daemon:
        print(f"daemon: {args.sessions:,} sessions x {args.tasks_per_session} tasks "
              f"({args.per_request} per request, {args.concurrency} requests in flight)", flush=True)
        d = daemon_scale(args.sessions, args.tasks_per_session, args.per_request, args.concurrency)
        held = d["submitted"] - d["pending"]
        print(f"  open sessions {d['sessions']:,}; pending tasks {d['pending']:,} (metric {d['pending_metric']:,.0f}); "
              f"{held} tasks in the {d['running_batches']} batches held by the device", flush=True)
        print(f"  submitted {d['submitted']:,} tasks in {d['submit_s']:.1f} s "
              f"({d['submitted'] / d['submit_s']:,.0f} tasks/s)", flush=True)
        verdict = "within" if d["rss_mb"] <= RSS_BUDGET_MB else "OVER"
        print(f"  daemon RSS {d['rss_mb']:.0f} MB ({d['rss_start_mb']:.0f} MB before the load): {verdict} the "
              f"{RSS_BUDGET_MB:.0f} MB budget; embedded redis-server {d['redis_rss_mb']:.0f} MB, "
              f"worker {d['worker_rss_mb']:.0f} MB (not counted)", flush=True)
    print(f"total {time.perf_counter() - t0:.0f} s", flush=True)
    print(json.dumps({
        "daemon_rss_mb": round(d["rss_mb"], 1) if d else None,
        "sessions": d.get("sessions"),
        "pending_tasks": d.get("pending"),
        "submit_rate_tasks_per_s": round(d["submitted"] / d["submit_s"]) if d else None,
        "decision_us_by_sessions": {str(k): round(v, 3) for k, v in dec.items()},
        "daemon_rss_start_mb": round(d["rss_start_mb"], 1) if d else None,
        "session_open_rate_per_s": round(d["sessions"] / d["open_s"]) if d else None,
        "redis_rss_mb": round(d["redis_rss_mb"], 1) if d else None,
        "rss_budget_mb": RSS_BUDGET_MB,
    }))


if __name__ == "__main__":
    main()
