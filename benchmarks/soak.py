"""Redis growth at steady state (issue 22 item 6): a private daemon on the `null` device takes a steady
stream of tasks (sessions of --tasks-per-session tasks, opened and closed like jobs) for --seconds,
while Redis's memory (INFO used_memory) and its AOF's size are sampled. Results live result_ttl_s
(short here, --ttl) so that the run reaches the steady state a day's TTL would reach after a day.

    .venv/bin/python benchmarks/soak.py [--rate 20] [--seconds 120] [--ttl 30] [--bindings 100]

What is kept per task at steady state is (memory at steady state - memory before) / (rate x ttl); the
projection multiplies it by the tasks a centre runs in one result_ttl_s (default 24 h) at --project
tasks per hour, which is how docs/admin-guide.md ("Sizing") states the size. The AOF grows by what is
written until Redis rewrites it (auto-aof-rewrite-percentage 100: at twice the size after the last
rewrite, 64 MB at least), so at steady state it stays between one and about two times the data.
The last line printed is one JSON object."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _daemon import private_daemon  # noqa: E402

DEVICES = [{"name": "null0", "type": "null", "pool": "null", "max_qubits": 20}]
MB = 1024 * 1024


def sizes(r, aof: str) -> tuple[float, float]:
    return r.info("memory")["used_memory"] / MB, (os.path.getsize(aof) if os.path.exists(aof) else 0) / MB


def by_kind(r) -> dict[str, float]:
    """MB per kind of key (ids stripped: qsched:task:{ID}:ID:result -> qsched:task:result)."""
    out: dict[str, float] = {}
    for k in r.scan_iter(count=1000):
        parts = k.decode().split(":")
        kind = ":".join(p for p in parts if not (p.startswith("{") or any(c.isdigit() for c in p)))
        out[kind] = out.get(kind, 0.0) + (r.memory_usage(k) or 0) / MB
    return dict(sorted(out.items(), key=lambda kv: -kv[1])[:8])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=20.0, help="tasks per second")
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--ttl", type=int, default=30, help="daemon.result_ttl_s for the run")
    ap.add_argument("--bindings", type=int, default=100, help="parameter sets per task (its result's size)")
    ap.add_argument("--tasks-per-session", type=int, default=200)
    ap.add_argument("--project", type=float, default=44_000.0, help="tasks per hour to project to")
    ap.add_argument("--project-ttl", type=int, default=86_400, help="result_ttl_s to project to")
    a = ap.parse_args()

    import redis
    from qiskit import QuantumCircuit
    from qiskit.circuit import Parameter
    from qiskit.quantum_info import SparsePauliOp

    import qsched
    from qsched.paths import embedded_redis_socket
    qc = QuantumCircuit(2)
    qc.rx(Parameter("a"), 0)
    qc.cx(0, 1)
    obs = [SparsePauliOp("ZZ")]
    params = np.random.default_rng(0).random((a.bindings, 1))
    # the completion events (results inline) are kept as long as the results in this run: the projection
    # then counts both for the whole result_ttl_s, an upper bound (events_retention_s is 600 s by default)
    with private_daemon(DEVICES, daemon={"result_ttl_s": a.ttl, "events_retention_s": max(10, a.ttl)}) as url:
        state = url.removeprefix("unix://").rsplit("/", 1)[0]
        r = redis.Redis(unix_socket_path=str(embedded_redis_socket(state)))
        aof = os.path.join(state, "redis", "appendonly.aof")
        base_mem, base_aof = sizes(r, aof)
        samples: list[tuple[float, float, float]] = []
        done, t0, sess, in_sess = 0, time.monotonic(), None, 0
        with qsched.Client(url) as c:
            while (now := time.monotonic() - t0) < a.seconds:
                if sess is None:
                    sess, in_sess = c.session(pool="null"), 0
                due = int(now * a.rate) - done
                if due > 0:
                    n = min(due, a.tasks_per_session - in_sess)
                    futs = sess.submit_many([{"kind": "estimate", "circuit": qc, "params": params,
                                              "observables": obs}] * n)
                    sess.wait(futs, timeout=60)
                    done, in_sess = done + n, in_sess + n
                    if in_sess >= a.tasks_per_session:
                        sess.close()
                        sess = None
                else:
                    time.sleep(0.05)
                if not samples or now - samples[-1][0] >= 2.0:
                    samples.append((now, *sizes(r, aof)))
            if sess is not None:
                sess.close()
        kinds = by_kind(r)
        steady = [s for s in samples if s[0] >= a.ttl * 1.5] or samples[-3:]
        mem = max(s[1] for s in steady)
        aof_mb = max(s[2] for s in steady)
        rate = done / a.seconds
        per_task = (mem - base_mem) * MB / max(1.0, rate * a.ttl)
        project_mb = base_mem + per_task * a.project / 3600 * a.project_ttl / MB     # an upper bound
        for t, m, f in samples[:: max(1, len(samples) // 12)]:
            print(f"t={t:6.0f}s  redis {m:8.1f} MB  aof {f:8.1f} MB")
        print(f"{rate:.1f} tasks/s ({rate * 3600:.0f}/h), ttl {a.ttl} s: steady state redis {mem:.1f} MB "
              f"(base {base_mem:.1f}), aof {aof_mb:.1f} MB; {per_task / 1024:.1f} KB kept per task")
        print("at the end, MB by kind of key:", ", ".join(f"{k} {v:.2f}" for k, v in kinds.items()))
        print(f"projected: {a.project:.0f} tasks/h with result_ttl_s={a.project_ttl}: redis ~{project_mb:.0f} MB, "
              f"aof up to ~{2 * project_mb:.0f} MB")
        print(json.dumps({"tasks": done, "tasks_per_hour": rate * 3600, "ttl_s": a.ttl, "bindings": a.bindings,
                          "redis_mb": round(mem, 1), "aof_mb": round(aof_mb, 1), "base_mb": round(base_mem, 1),
                          "kb_per_task": round(per_task / 1024, 2), "projected_tasks_per_hour": a.project,
                          "projected_ttl_s": a.project_ttl, "projected_redis_mb": round(project_mb),
                          "mb_by_kind": {k: round(v, 2) for k, v in kinds.items()}}))


if __name__ == "__main__":
    main()
