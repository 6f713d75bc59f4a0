"""Many independent variational runs at once (seed 004: quantum hypernetworks).

A variational circuit with linear connectivity holds a distribution over binary neural networks
(here: a perceptron with weights w in {-1, +1}^n, one qubit per weight). The objective is the expected
training error of the sampled networks, estimated from bitstrings; gradients use the parameter-shift
rule (theta +- pi/2, 2P circuits per gradient) and go out as ONE SamplerV2 PUB of 1 + 2P bindings.
The seed's success probability needs >= 200 optimization runs; this example starts R runs
concurrently (threads, each with its own client and session), which is the case qsched's fair share
and interleaving exist for: while one run does its classical update, another's circuits fill the device.

    python examples/hypernetwork_vqa.py [--runs 24] [--steps 25] [--qubits 6]
    qsched submit --local --qpu aer examples/hypernetwork_vqa.sbatch
"""
from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from qiskit import QuantumCircuit
from qiskit.circuit import ParameterVector

from qsched.qiskit import SamplerV2


def ansatz(n: int, layers: int = 2) -> QuantumCircuit:
    theta = ParameterVector("t", n * layers)
    qc = QuantumCircuit(n)
    for layer in range(layers):
        for q in range(n):
            qc.ry(theta[layer * n + q], q)
        if layer < layers - 1:
            for q in range(n - 1):                     # linear connectivity
                qc.cz(q, q + 1)
    qc.measure_all()
    return qc


def error_table(n: int, examples: int, rng) -> np.ndarray:
    """Training error of every weight vector (bitstring int, bit q -> w_q = 1 - 2 b_q), teacher labels."""
    teacher = rng.choice([-1, 1], n)
    x = rng.choice([-1, 1], (examples, n))
    y = np.sign(x @ teacher + 0.5)
    ints = np.arange(2 ** n)
    w = 1 - 2 * ((ints[:, None] >> np.arange(n)) & 1)
    return (np.sign(x @ w.T + 0.5) != y[:, None]).mean(axis=0)


def one_run(seed: int, qc: QuantumCircuit, table: np.ndarray, steps: int, shots: int, lr: float, pool):
    rng = np.random.default_rng(seed)
    P = qc.num_parameters
    shifts = np.vstack([np.zeros(P), np.eye(P) * np.pi / 2, -np.eye(P) * np.pi / 2])
    sampler = SamplerV2(pool=pool, default_shots=shots)          # own client + session per run
    theta = rng.uniform(0, np.pi, P)
    try:
        for _ in range(steps):
            bits = sampler.run([(qc, theta + shifts)]).result()[0].data.meas
            ints = np.zeros(bits.array.shape[:-1], dtype=np.int64)   # big-endian bytes -> ints
            for k in range(bits.array.shape[-1]):
                ints = (ints << 8) | bits.array[..., k]
            loss = table[ints].mean(axis=-1)                      # [1 + 2P] expected errors
            grad = (loss[1:P + 1] - loss[P + 1:]) / 2
            theta -= lr * grad / (np.abs(grad).max() + 1e-9) * 0.5  # normalized step (shot noise)
        final = sampler.run([(qc, theta)], shots=4 * shots).result()[0].data.meas.get_int_counts()
        best = max(final, key=final.get)
        return table[best], loss[0]
    finally:
        sampler.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=24)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--qubits", type=int, default=6)
    ap.add_argument("--shots", type=int, default=256)
    ap.add_argument("--concurrency", type=int, default=8, help="runs in flight at once")
    ap.add_argument("--pool", default=None)
    args = ap.parse_args(argv)

    rng = np.random.default_rng(4)
    table = error_table(args.qubits, 12, rng)
    qc = ansatz(args.qubits)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as ex:
        outcomes = list(ex.map(lambda s: one_run(s, qc, table, args.steps, args.shots, 0.3, args.pool),
                               range(args.runs)))
    errors = np.array([o[0] for o in outcomes])
    success = float((errors == table.min()).mean())
    print(f"{args.runs} runs x {args.steps} steps ({args.qubits} qubits, {qc.num_parameters} parameters, "
          f"{2 * qc.num_parameters + 1} circuits per gradient): success probability {success:.2f}, "
          f"mean final error {errors.mean():.3f} (optimum {table.min():.3f}, random {table.mean():.3f}), "
          f"{time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
