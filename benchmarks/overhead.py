"""The daemon's own cost, measured side by side in one run.

  null_p50_ms / null_p99_ms  one single-binding request through daemon and worker on the `null` device
                             (submit and result in one HTTP round trip: all of it is added latency)
  per_binding_us             (100-binding task - 1-binding task) / 99 on `null`: the cost of a binding
  aer_estimate_ratio         a 120-binding 12-qubit estimate through qsched / the same aer EstimatorV2 call
                             made directly in this process (both single-threaded statevector)

Budgets (DESIGN.md): p50 <= 1.5 ms, p99 <= 5 ms, <= 20 us per binding, ratio <= 1.3.
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


def vqe_problem(n=12, bindings=120, seed=0):
    from qiskit.circuit.library import real_amplitudes
    from qiskit.quantum_info import SparsePauliOp
    qc = real_amplitudes(n, reps=4)                                   # 60 parameters
    terms = [("I" * (n - i - 1) + "Z" + "I" * i, 1.0) for i in range(5)]
    terms += [("I" * (n - i - 2) + "ZZ" + "I" * i, 0.5) for i in range(5)]
    H = SparsePauliOp.from_list(terms)                                # 10 Z/ZZ terms
    params = np.random.default_rng(seed).uniform(-np.pi, np.pi, (bindings, qc.num_parameters))
    return qc, H, params


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--aer-reps", type=int, default=15)
    args = ap.parse_args()
    import qsched
    from qiskit.circuit.library import efficient_su2
    from qiskit_aer.primitives import EstimatorV2

    devices = [{"name": "null0", "type": "null", "pool": "null"},
               {"name": "aer0", "type": "aer", "pool": "aer", "options": {"max_parallel_threads": 1}}]
    with private_daemon(devices) as url, qsched.Client(url) as client:
        s = client.open_session("null")
        small = efficient_su2(2, reps=1)
        h = s.upload(small)
        one = np.zeros((1, small.num_parameters))
        hundred = np.zeros((100, small.num_parameters))
        for _ in range(200):                                           # warm up connections and caches
            s.run("estimate", h, one, observables="ZZ")
        lat = []
        for _ in range(args.requests):
            t0 = time.perf_counter()
            s.run("estimate", h, one, observables="ZZ")
            lat.append(time.perf_counter() - t0)
        lat = np.array(lat) * 1e3
        t1, t100 = [], []
        for _ in range(args.requests // 4):                            # interleaved, medians
            t0 = time.perf_counter()
            s.run("estimate", h, one, observables="ZZ")
            t1.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            s.run("estimate", h, hundred, observables="ZZ")
            t100.append(time.perf_counter() - t0)
        per_binding_us = (np.median(t100) - np.median(t1)) / 99 * 1e6
        s.close()

        qc, H, params = vqe_problem()
        est = EstimatorV2(options={"backend_options": {"method": "statevector", "max_parallel_threads": 1}})
        sa = client.open_session("aer")
        ha = sa.upload(qc)
        direct_ev = est.run([(qc, H, params)]).result()[0].data.evs              # warm both sides
        via_ev = sa.run("estimate", ha, params, observables=H).evs[:, 0]
        assert np.allclose(direct_ev, via_ev, atol=1e-10), "qsched and aer disagree"
        direct, via = [], []
        for _ in range(args.aer_reps):
            t0 = time.perf_counter()
            est.run([(qc, H, params)]).result()
            direct.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            sa.run("estimate", ha, params, observables=H)
            via.append(time.perf_counter() - t0)
        sa.close()

    out = {"null_p50_ms": round(float(np.median(lat)), 3), "null_p99_ms": round(float(np.percentile(lat, 99)), 3),
           "per_binding_us": round(float(per_binding_us), 2),
           "aer_estimate_ratio": round(float(np.median(via) / np.median(direct)), 3)}
    print(f"null device, {args.requests} single-binding requests: p50 {out['null_p50_ms']} ms, "
          f"p99 {out['null_p99_ms']} ms (budget 1.5 / 5)")
    print(f"per binding (100 vs 1 binding on null): {out['per_binding_us']} us (budget 20)")
    print(f"aer 12 qubits x 120 bindings, 10 terms: direct {1e3 * np.median(direct):.1f} ms, through qsched "
          f"{1e3 * np.median(via):.1f} ms, ratio {out['aer_estimate_ratio']} (budget 1.3)")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
