"""VQE with a classical optimizer loop (seeds 003: `ScipyMinimizePlugin() | LinAlg()`).

The classical side (scipy L-BFGS-B) runs in the job; every iteration's quantum phase is ONE
EstimatorV2 call: the energy and its parameter-shift gradient as one PUB of 1 + 2P bindings, so the
daemon sees one task per iteration and the simulator one call.

    python examples/vqe.py [--qubits 4] [--reps 2] [--maxiter 40]          # against `qsched up`
    qsched submit --local --qpu aer examples/vqe.sbatch                     # as a local hybrid job
    sbatch examples/vqe.sbatch                                              # on a Slurm cluster
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from qiskit.circuit.library import efficient_su2
from qiskit.quantum_info import SparsePauliOp
from scipy.optimize import minimize

from qsched.qiskit import EstimatorV2


def tfim_hamiltonian(n: int, h: float = 1.0) -> SparsePauliOp:
    """Transverse-field Ising chain: -sum Z_i Z_{i+1} - h sum X_i (Pauli strings in Qiskit order)."""
    terms = []
    for i in range(n - 1):
        terms.append(("ZZ", [i, i + 1], -1.0))
    for i in range(n):
        terms.append(("X", [i], -h))
    return SparsePauliOp.from_sparse_list(terms, num_qubits=n)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--qubits", type=int, default=4)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--maxiter", type=int, default=40)
    ap.add_argument("--pool", default=None, help="device pool (default: the job's, else aer)")
    args = ap.parse_args(argv)

    H = tfim_hamiltonian(args.qubits)
    ansatz = efficient_su2(args.qubits, su2_gates=["ry"], reps=args.reps, entanglement="linear")
    P = ansatz.num_parameters
    estimator = EstimatorV2(pool=args.pool)
    shifts = np.vstack([np.zeros(P), np.eye(P) * np.pi / 2, -np.eye(P) * np.pi / 2])   # [1 + 2P, P]
    history = []

    def energy_and_grad(theta):
        # all RY gates: the two-term shift rule is exact; one PUB carries point and shifts
        evs = estimator.run([(ansatz, H, theta + shifts)]).result()[0].data.evs
        e, plus, minus = evs[0], evs[1:P + 1], evs[P + 1:]
        history.append(float(e))
        return float(e), (plus - minus) / 2

    t0 = time.perf_counter()
    theta0 = np.random.default_rng(7).uniform(-0.1, 0.1, P)
    res = minimize(energy_and_grad, theta0, jac=True, method="L-BFGS-B", options={"maxiter": args.maxiter})
    exact = float(np.linalg.eigvalsh(H.to_matrix()).min())
    print(f"VQE {args.qubits} qubits, {P} parameters: E = {res.fun:.6f} (exact {exact:.6f}), "
          f"{len(history)} quantum calls, {time.perf_counter() - t0:.1f} s, pool {estimator.session.pool}")
    estimator.close()
    if res.fun > exact + 0.05 * abs(exact):
        print(f"not within 5% of the ground state after {args.maxiter} iterations")


if __name__ == "__main__":
    main()
