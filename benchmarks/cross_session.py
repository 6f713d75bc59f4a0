"""Cross-session batching on an emulated QPU with a fixed per-job overhead (issue 10 item 6).

K hybrid jobs, each its own session and its own copy of one ansatz (as separate processes would
build it), run M iterations of: one estimate task (B bindings, S shots), wait for it, think T_c.
The device is the emulated QPU holding each device call for setup_s + shots x rep_s (setup_s = 1 s:
the per-job overhead). Three runs, side by side, on the same workload:

  per-session         merge_batches: 1   (every session's batch is its own job: as simulators run)
  cross-session       merge_batches: K   (the batches waiting when a job starts share it)
  cross-session+wait  merge_batches: K, merge_wait_s: 0.3  (a job that could take more waits for them)

Per run: throughput (tasks/s), makespan, makespan / bound (bound: the critical path of one job,
M x (setup_s + its shots x rep_s + T_c), the same for both), device busy fraction, Jain's index over
the jobs' completion times and over the device-seconds charged to each session, and the charges' sum
against the device time. The last line printed is one JSON object.

    .venv/bin/python benchmarks/cross_session.py [--jobs 8] [--iterations 5] [--setup-s 1.0] [--quick]
"""
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


def ansatz(qubits: int):
    from qiskit import QuantumCircuit
    from qiskit.circuit import ParameterVector
    theta = ParameterVector("θ", 2 * qubits)
    qc = QuantumCircuit(qubits)
    for q in range(qubits):
        qc.ry(theta[q], q)
    for q in range(qubits - 1):
        qc.cx(q, q + 1)
    for q in range(qubits):
        qc.rz(theta[qubits + q], q)
    return qc


def jain(xs: list[float]) -> float:
    a = np.asarray(xs, dtype=float)
    return float(a.sum() ** 2 / (len(a) * (a ** 2).sum())) if a.any() else 1.0


async def one_run(url: str, args) -> dict:
    import qsched
    rng = np.random.default_rng(7)
    async with qsched.AsyncClient(url) as c:
        sessions = [await c.open_session("qpu", name=f"job{i}") for i in range(args.jobs)]
        circuits = [ansatz(args.qubits) for _ in sessions]          # own Parameter UUIDs per job
        obs = "Z" * args.qubits
        ends: list[float] = []
        merged: list[int] = []
        t0 = time.perf_counter()

        async def job(s, qc):
            for _ in range(args.iterations):
                params = rng.uniform(0, np.pi, (args.bindings, qc.num_parameters))
                [res] = await s.submit_wait([{"kind": "estimate", "circuit": qc, "params": params,
                                              "observables": obs, "shots": args.shots}])
                merged.append(int(res.meta.get("batches_merged", 1)))
                await asyncio.sleep(args.think_s)
            ends.append(time.perf_counter() - t0)

        await asyncio.gather(*(job(s, qc) for s, qc in zip(sessions, circuits)))
        makespan = time.perf_counter() - t0
        records = [await s.close() for s in sessions]
    charged = [float(r["device_seconds"]) for r in records if r]
    per_job = args.setup_s + args.shots * args.bindings * args.rep_s
    bound = args.iterations * (per_job + args.think_s)
    tasks = args.jobs * args.iterations
    return {"tasks": tasks, "throughput_tasks_s": round(tasks / makespan, 3), "makespan_s": round(makespan, 2),
            "makespan_over_bound": round(makespan / bound, 2), "device_busy": round(sum(charged) / makespan, 3),
            "jain_completion": round(jain(ends), 4), "jain_charge": round(jain(charged), 4),
            "batches_per_call": round(float(np.mean(merged)), 2), "charged_s": round(sum(charged), 2)}


def device(merge: int, wait_s: float, args) -> list[dict]:
    return [{"name": "qpu0", "type": "emulated-qpu", "pool": "qpu", "max_qubits": args.qubits,
             "merge_batches": merge, "merge_wait_s": wait_s,
             "options": {"setup_s": args.setup_s, "rep_s": args.rep_s, "noise": False}}]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--qubits", type=int, default=4)
    ap.add_argument("--bindings", type=int, default=1)
    ap.add_argument("--shots", type=int, default=1000)
    ap.add_argument("--setup-s", type=float, default=1.0, help="per-job overhead of the emulated QPU")
    ap.add_argument("--rep-s", type=float, default=100e-6, help="seconds per shot")
    ap.add_argument("--think-s", type=float, default=0.2, help="classical phase between iterations")
    ap.add_argument("--merge-wait-s", type=float, default=0.3, help="merge_wait_s of the third run")
    ap.add_argument("--quick", action="store_true", help="4 jobs x 3 iterations, setup 0.5 s")
    args = ap.parse_args()
    if args.quick:
        args.jobs, args.iterations, args.setup_s = 4, 3, 0.5
    out: dict = {"params": {k: v for k, v in vars(args).items() if k != "quick"}}
    runs = (("per-session", 1, 0.0), ("cross-session", args.jobs, 0.0), ("cross-session+wait", args.jobs,
                                                                          args.merge_wait_s))
    for name, merge, wait_s in runs:
        with private_daemon(device(merge, wait_s, args), {"name": "fair-share"}) as url:
            out[name] = asyncio.run(one_run(url, args))
        r = out[name]
        print(f"{name:>18}: {r['throughput_tasks_s']:6.2f} tasks/s  makespan {r['makespan_s']:6.1f} s "
              f"({r['makespan_over_bound']:.2f}x bound)  busy {r['device_busy']:.2f}  batches per call "
              f"{r['batches_per_call']:.1f}  Jain completion {r['jain_completion']:.3f} charge "
              f"{r['jain_charge']:.3f}", flush=True)
    for name in ("cross-session", "cross-session+wait"):
        gain = out[name]["throughput_tasks_s"] / out["per-session"]["throughput_tasks_s"]
        out[name]["throughput_gain"] = round(gain, 2)
        print(f"throughput gain of {name}: {gain:.2f}x")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
