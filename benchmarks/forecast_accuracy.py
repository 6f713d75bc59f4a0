"""How accurate the daemon's predictions are (issue 20 item 2): a hybrid-mix workload replayed on a
real daemon (`qsched up`, real workers) records each task's prediction when it is submitted
(`session.estimate()`: device-seconds, start and its p90 interval) and then the outcome (the result's
meta: exec_s and started_at). Prints the fraction of tasks whose device time is within ±20% of the
prediction, and the fraction whose start fell inside its p90 interval (targets: >= 80%, >= 90%).

Pools: `qpu`, two emulated QPUs with IBM Heron's timing profile (250 us a shot, 1000 shots; the job
setup shortened to 0.1 s so the run takes a minute), and `sim`, two null devices holding each batch
0.05 s. Sessions: hybrid jobs (bursts of circuits, then classical work), of the interactive and batch
classes and two accounts of unequal weight, starting staggered.

    python benchmarks/forecast_accuracy.py [--sessions 8] [--rounds 6] [--seed 1]
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter

sys.path.insert(0, str(Path(__file__).parent))
from _daemon import private_daemon  # noqa: E402

DEVICES = [*({"name": f"heron{i}", "type": "emulated-qpu", "pool": "qpu",
              "options": {"profile": "ibm-heron", "setup_s": 0.1, "noise": False}} for i in range(2)),
           *({"name": f"null{i}", "type": "null", "pool": "sim", "options": {"delay_s": 0.05},
               "cost_prior": {"setup_s": 0.05}} for i in range(2))]     # its time is per batch
POLICY = {"name": "fair-share", "classes": {"interactive": {"tier": 1, "weight": 2}},
          "weights": {"accounts": {"chem": 2}}}


def circuit() -> QuantumCircuit:
    qc = QuantumCircuit(2)
    qc.rx(Parameter("a"), 0)
    qc.cx(0, 1)
    return qc


def job(url: str, i: int, rounds: int, seed: int, out: list[dict], lock: threading.Lock) -> None:
    """One hybrid job: per round a burst of tasks (a few bindings each), then classical work."""
    import qsched
    rng = random.Random(seed * 1000 + i)
    pool = "qpu" if i % 4 else "sim"
    cls = "interactive" if i % 3 == 0 else "batch"
    time.sleep(rng.uniform(0, 3))               # staggered arrivals
    qc = circuit()
    with qsched.Client(url) as c, c.session(pool=pool, cls=cls, account=("chem", "phys")[i % 2]) as s:
        for _ in range(rounds):
            burst = [dict(kind="estimate", circuit=qc, params=np.zeros((rng.randint(1, 3), 1)), observables=["ZZ"])
                     for _ in range(rng.randint(2, 5))]
            futs = s.submit_many(burst)
            predicted = {t["id"]: t for t in s.estimate()["tasks"]}
            for f in futs:
                meta = f.result(300).meta
                p = predicted.get(f.id, {})
                with lock:
                    out.append({"pool": pool, "class": cls, "device_s": p.get("device_s"), "start": p.get("start"),
                                "lo": p.get("start_lo"), "hi": p.get("start_hi"),
                                "exec_s": meta["exec_s"], "started": meta["started_at"]})
            time.sleep(rng.uniform(0.2, 1.0))   # classical work between bursts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rows: list[dict] = []
    lock = threading.Lock()
    t0 = time.monotonic()
    with private_daemon(DEVICES, POLICY) as url:
        threads = [threading.Thread(target=job, args=(url, i, a.rounds, a.seed, rows, lock))
                   for i in range(a.sessions)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    print(f"{len(rows)} tasks, {a.sessions} sessions x {a.rounds} rounds, {time.monotonic() - t0:.0f} s")
    print(f"{'pool':6} {'tasks':>6} {'device time ±20%':>17} {'start in p90':>13} {'early':>6} {'late':>6} "
          f"{'|start err| median':>19} {'p90 width median':>17}")
    for pool in ("qpu", "sim", "all"):
        sel = [r for r in rows if (pool == "all" or r["pool"] == pool) and r["device_s"] is not None]
        if not sel:
            continue
        within = sum(abs(r["exec_s"] - r["device_s"]) <= 0.2 * r["device_s"] for r in sel) / len(sel)
        covered = sum(r["lo"] <= r["started"] <= r["hi"] for r in sel) / len(sel)
        early = sum(r["started"] < r["lo"] for r in sel) / len(sel)
        late = sum(r["started"] > r["hi"] for r in sel) / len(sel)
        err = statistics.median(abs(r["started"] - r["start"]) for r in sel)
        width = statistics.median(r["hi"] - r["lo"] for r in sel)
        print(f"{pool:6} {len(sel):6d} {within:16.1%} {covered:13.1%} {early:6.1%} {late:6.1%} {err:18.2f}s "
              f"{width:16.2f}s")
    missing = sum(r["device_s"] is None for r in rows)
    if missing:
        print(f"{missing} tasks had no prediction (their pool had no live device when they were submitted)")


if __name__ == "__main__":
    main()
