"""Closed-loop load on the `null` device: N concurrent clients (1 .. 512), each with its own session,
each submitting one single-binding estimate and waiting for its result, again and again. Prints
tasks/s, p50 and p99 latency and errors per step.

    .venv/bin/python benchmarks/load.py [--clients 1 2 4 ... 512] [--seconds 3]

Goal (issue 14): no errors up to 512 clients, p99 <= 50 ms at 64 clients. The clients are asyncio
tasks in one process (so 512 of them fit on a laptop); on this 2-core machine they share the cores
with the daemon, its worker and Redis. The last line printed is one JSON object."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _daemon import private_daemon  # noqa: E402

DEVICES = [{"name": "null0", "type": "null", "pool": "null", "max_qubits": 20}]


def cpu_by_part(state_dir: str) -> dict[str, float]:
    """CPU seconds so far of the daemon, its workers (with their heartbeats), its Redis and this client."""
    import psutil
    out = {"client": sum(psutil.Process().cpu_times()[:2])}
    for p in psutil.process_iter(["cmdline"]):
        if state_dir in " ".join(p.info["cmdline"] or []) and "up" in (p.info["cmdline"] or []):
            for part, proc in [("daemon", p), *((None, c) for c in p.children(recursive=True))]:
                try:
                    cmd = " ".join(proc.cmdline())
                    part = part or ("redis" if "redis-server" in cmd else "parser" if "parsing" in cmd
                                    else "worker")
                    out[part] = out.get(part, 0.0) + sum(proc.cpu_times()[:2])
                except psutil.Error:
                    pass
    return out


async def step(url: str, clients: int, seconds: float) -> dict:
    import qsched
    from qiskit import QuantumCircuit
    from qiskit.circuit import Parameter
    qc = QuantumCircuit(1)
    qc.rx(Parameter("a"), 0)
    params = np.zeros((1, 1))
    latencies: list[float] = []
    errors: list[str] = []
    async with qsched.AsyncClient(url) as c:
        sessions = await asyncio.gather(*(c.open_session("null", name=f"load-{i}") for i in range(clients)))
        await asyncio.gather(*(s.upload(qc) for s in sessions))
        deadline = time.perf_counter() + seconds

        async def loop(s):
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    await s.run("estimate", qc, params, observables="Z")
                    latencies.append(time.perf_counter() - t0)
                except qsched.QschedError as e:
                    errors.append(f"{type(e).__name__}: {e.message[:80]}")
        state = os.path.dirname(url.removeprefix("unix://"))
        cpu0 = cpu_by_part(state)
        t0 = time.perf_counter()
        await asyncio.gather(*(loop(s) for s in sessions))
        wall = time.perf_counter() - t0
        cpu1 = cpu_by_part(state)
        await asyncio.gather(*(s.close() for s in sessions))
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {"clients": clients, "tasks_per_s": round(len(latencies) / wall, 1),
            "p50_ms": round(float(np.percentile(lat, 50)) * 1000, 2),
            "p99_ms": round(float(np.percentile(lat, 99)) * 1000, 2), "errors": len(errors),
            "first_error": errors[0] if errors else None,
            # CPU milliseconds per task, by process: what caps tasks/s when the parts share 2 cores
            "cpu_ms_per_task": {k: round((cpu1[k] - cpu0.get(k, 0.0)) * 1000 / max(len(latencies), 1), 3)
                                for k in sorted(cpu1)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--merge-batches", type=int, default=1,
                    help="the null device's merge_batches (cross-session batching)")
    a = ap.parse_args()
    rows = []
    with private_daemon([{**DEVICES[0], "merge_batches": a.merge_batches}]) as url:
        for n in a.clients:
            r = asyncio.run(step(url, n, a.seconds))
            rows.append(r)
            why = f"  ({r['first_error']})" if r["errors"] else ""
            cpu = "  ".join(f"{k} {v:.2f}" for k, v in r["cpu_ms_per_task"].items())
            print(f"{n:4d} clients  {r['tasks_per_s']:8.1f} tasks/s  p50 {r['p50_ms']:7.2f} ms  "
                  f"p99 {r['p99_ms']:8.2f} ms  errors {r['errors']}  CPU ms/task: {cpu}{why}")
    print(json.dumps({"load": rows}))


if __name__ == "__main__":
    main()
