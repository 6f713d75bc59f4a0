"""Similarity learning, quantum and classical side by side (seed 000: the Covalent workflow).

Pairs of 2x2-pixel images are "same" or "different". A classical Siamese network (torch MLP) and a
quantum similarity model (two trainable embeddings compared by a swap test: P(ancilla = 0) =
(1 + fidelity) / 2, the probabilities of one qubit) are trained in the same loop on the same batches.
The quantum half runs on `qml.device("qsched.qubit", pool="aer")` with parameter shift: each step's
shifted circuits for the whole batch go out as one request and stack into one task, so many tiny
circuits cost one round trip. The classical half runs here on the job's CPU.

    python examples/similarity_learning.py [--epochs 12] [--pairs 24]
    qsched submit --local --qpu aer examples/similarity_learning.sbatch
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import pennylane as qml

try:
    import torch
except ImportError:
    sys.exit("similarity_learning.py needs torch: pip install 'qsched[torch]' (or torch==2.13.0)")


def make_pairs(n: int, rng):
    """Images: bright diagonal (class 0) or bright anti-diagonal (class 1), with noise."""
    def image(c):
        base = np.array([1, 0, 0, 1.0]) if c == 0 else np.array([0, 1, 1, 0.0])
        return np.clip(base * 0.8 + 0.25 * rng.random(4), 0, 1)
    a, b, same = [], [], []
    for i in range(n):
        ca = rng.integers(2)
        cb = ca if i % 2 == 0 else 1 - ca
        a.append(image(ca))
        b.append(image(cb))
        same.append(float(ca == cb))
    return torch.tensor(np.array(a)), torch.tensor(np.array(b)), torch.tensor(same, dtype=torch.float64)


def embed(x, w, wires):
    """Trainable 2-qubit embedding of 4 pixels: data re-uploading with weights w [2, 2]."""
    for layer in range(2):
        qml.RY(np.pi * x[..., 2 * layer] * w[layer, 0], wires=wires[0])
        qml.RY(np.pi * x[..., 2 * layer + 1] * w[layer, 1], wires=wires[1])
        qml.CNOT(wires)


def quantum_model(dev):
    # split the batch of pairs into one tape per pair before parameter shift (it cannot shift
    # broadcast trainable angles); the device then stacks all shifted tapes into one task
    @qml.transforms.broadcast_expand
    @qml.qnode(dev, interface="torch", diff_method="parameter-shift")
    def swap_test(a, b, w):
        embed(a, w, [1, 2])
        embed(b, w, [3, 4])
        qml.Hadamard(0)
        qml.CSWAP([0, 1, 3])
        qml.CSWAP([0, 2, 4])
        qml.Hadamard(0)
        return qml.probs(wires=[0])

    def similarity(a, b, w):
        return 2 * swap_test(a, b, w)[..., 0] - 1     # fidelity from P(ancilla = 0)
    return similarity


class Siamese(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.f = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4)).double()

    def forward(self, a, b):
        return torch.exp(-((self.f(a) - self.f(b)) ** 2).sum(-1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--pairs", type=int, default=24)
    ap.add_argument("--pool", default="aer")
    args = ap.parse_args(argv)

    torch.manual_seed(1)
    rng = np.random.default_rng(1)
    a, b, same = make_pairs(args.pairs, rng)
    ta, tb, tsame = make_pairs(20, rng)
    dev = qml.device("qsched.qubit", wires=5, pool=args.pool)
    qsim = quantum_model(dev)
    w = torch.nn.Parameter(torch.full((2, 2), 0.5, dtype=torch.float64))
    siamese = Siamese()
    q_opt = torch.optim.Adam([w], lr=0.1)
    c_opt = torch.optim.Adam(siamese.parameters(), lr=0.05)

    def accuracy(sim):
        return ((sim > 0.5).double() == tsame).double().mean().item()

    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        q_opt.zero_grad()
        q_loss = ((qsim(a, b, w) - same) ** 2).mean()
        q_loss.backward()
        q_opt.step()
        c_opt.zero_grad()
        c_loss = ((siamese(a, b) - same) ** 2).mean()
        c_loss.backward()
        c_opt.step()
        if epoch % 3 == 2 or epoch == args.epochs - 1:
            with torch.no_grad():
                qa, ca = accuracy(qsim(ta, tb, w)), accuracy(siamese(ta, tb))
            print(f"epoch {epoch + 1}: quantum loss {q_loss.item():.4f} acc {qa:.2f} | "
                  f"classical loss {c_loss.item():.4f} acc {ca:.2f}  ({time.perf_counter() - t0:.1f} s)",
                  flush=True)
    dev.close()


if __name__ == "__main__":
    main()
