"""A Qiskit circuit as a PyTorch layer, trained by parameter shift (seed 001: Qiskit + PyTorch).

`QiskitLayer` wraps a parameterized QuantumCircuit: its inputs come from a classical network and its
weights are torch Parameters. The forward pass sends ONE EstimatorV2 PUB whose bindings are the batch
times (1 + 2P) parameter-shifted copies, so the values and the exact parameter-shift jacobian (for
inputs and weights) come back in one request; backward is then a local matrix product. With
`--shots N` expectation values are sampled (precision 1/sqrt(N)), as on hardware.

    python examples/qiskit_torch_layer.py [--epochs 15] [--shots 1000]
    qsched submit --local --qpu aer examples/qiskit_torch_layer.sbatch
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from qiskit import QuantumCircuit
from qiskit.circuit import ParameterVector
from qiskit.quantum_info import SparsePauliOp

from qsched.qiskit import EstimatorV2

try:
    import torch
except ImportError:
    sys.exit("qiskit_torch_layer.py needs torch: pip install 'qsched[torch]' (or torch==2.13.0)")


def layer_circuit(n_qubits: int = 2, n_layers: int = 2):
    x = ParameterVector("x", n_qubits)
    w = ParameterVector("w", n_qubits * n_layers)
    qc = QuantumCircuit(n_qubits)
    for q in range(n_qubits):
        qc.ry(x[q], q)                       # inputs: angles from the classical network
    for layer in range(n_layers):
        for q in range(n_qubits):
            qc.ry(w[layer * n_qubits + q], q)
        for q in range(n_qubits - 1):
            qc.cx(q, q + 1)
    return qc, list(x), list(w)


class _ShiftFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs, weights, layer):
        theta = torch.cat([inputs, weights.expand(inputs.shape[0], -1)], dim=1).detach().numpy()
        evs, jac = layer.evaluate(theta)
        ctx.save_for_backward(torch.from_numpy(jac))
        ctx.n_in = inputs.shape[1]
        return torch.from_numpy(evs)

    @staticmethod
    def backward(ctx, grad_out):
        (jac,) = ctx.saved_tensors                    # [B, O, P]
        g = torch.einsum("bo,bop->bp", grad_out, jac)
        return g[:, :ctx.n_in], g[:, ctx.n_in:].sum(0), None


class QiskitLayer(torch.nn.Module):
    """<Z_q> for each qubit of a circuit whose first parameters are inputs, the rest weights."""

    def __init__(self, estimator: EstimatorV2, n_qubits: int = 2, precision: float = 0.0):
        super().__init__()
        qc, xs, ws = layer_circuit(n_qubits)
        order = {p: i for i, p in enumerate(xs + ws)}
        self.perm = [order[p] for p in qc.parameters]        # our column order -> circuit.parameters
        self.circuit, self.estimator, self.precision = qc, estimator, precision
        self.observables = [[SparsePauliOp.from_sparse_list([("Z", [q], 1.0)], n_qubits) for q in range(n_qubits)]]
        self.weights = torch.nn.Parameter(torch.rand(len(ws), dtype=torch.float64) * np.pi)

    def evaluate(self, theta: np.ndarray):
        B, P = theta.shape
        shifts = np.concatenate([np.zeros((1, P)), np.eye(P) * np.pi / 2, -np.eye(P) * np.pi / 2])
        binds = (theta[:, None, :] + shifts[None])[..., self.perm]     # [B, 1 + 2P, P]
        pub = (self.circuit, self.observables, binds[:, :, None, :])    # broadcast to [B, 1+2P, O]
        evs = self.estimator.run([pub], precision=self.precision).result()[0].data.evs
        jac = (evs[:, 1:P + 1] - evs[:, P + 1:]) / 2                   # [B, P, O]
        return evs[:, 0], np.ascontiguousarray(jac.transpose(0, 2, 1))

    def forward(self, inputs):
        return _ShiftFunction.apply(inputs, self.weights, self)


def make_data(n, rng):
    """Two interleaved half-moons."""
    t = rng.uniform(0, np.pi, n)
    label = rng.integers(0, 2, n)
    x = np.where(label[:, None] == 0, np.c_[np.cos(t), np.sin(t)], np.c_[1 - np.cos(t), 0.5 - np.sin(t)])
    x += 0.1 * rng.normal(size=x.shape)
    return torch.tensor(x), torch.tensor(label)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--shots", type=int, default=1000, help="0: exact expectation values")
    ap.add_argument("--pool", default=None)
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x, y = make_data(args.samples, rng)
    estimator = EstimatorV2(pool=args.pool)
    precision = 0.0 if args.shots == 0 else 1 / np.sqrt(args.shots)
    model = torch.nn.Sequential(torch.nn.Linear(2, 8).double(), torch.nn.Tanh(), torch.nn.Linear(8, 2).double(),
                                QiskitLayer(estimator, 2, precision), torch.nn.Linear(2, 2).double())
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        opt.zero_grad()
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        if epoch % 5 == 4 or epoch == args.epochs - 1:
            acc = (logits.argmax(1) == y).double().mean().item()
            print(f"epoch {epoch + 1}: loss {loss.item():.4f} accuracy {acc:.2f} "
                  f"({time.perf_counter() - t0:.1f} s)", flush=True)
    estimator.close()


if __name__ == "__main__":
    main()
