"""QCNN image classifier (seed 002: PennyLane + PyTorch, AmplitudeEmbedding, diff_method='adjoint').

A quantum convolutional network on `qml.device("qsched.qubit")`: images are amplitude-embedded
(16x16 pixels -> 8 wires), convolution and pooling layers share weights as in the seed, and a
`qml.qnn.TorchLayer` puts the circuit into a torch model trained with Adam. With adjoint
differentiation every training step is ONE gradient task: the batch's inputs are rows of one template,
and the worker returns values and the jacobian together. The dataset is generated (stripes and
diagonals with noise), so the example needs no download.

    python examples/qcnn_torch.py [--epochs 3] [--train 64] [--batch 16]
    qsched submit --local --qpu lightning examples/qcnn_torch.sbatch
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import pennylane as qml

try:
    import torch
except ImportError:                                   # torch is an optional extra
    sys.exit("qcnn_torch.py needs torch: pip install 'qsched[torch]' (or torch==2.13.0)")

N_WIRES = 8                                           # 2^8 = 256 amplitudes = 16x16 pixels
SIDE = 16
CLASSES = 3


def make_dataset(n: int, rng: np.random.Generator):
    """Horizontal stripes, vertical stripes, diagonals; random phase, width and pixel noise."""
    xs, ys = [], []
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    for i in range(n):
        label = i % CLASSES
        period = rng.integers(3, 6)
        phase = rng.integers(0, period)
        coord = [yy, xx, (xx + yy)][label]
        img = ((coord + phase) % period < period / 2).astype(float)
        img += 0.3 * rng.random(img.shape)
        xs.append(img.reshape(-1))
        ys.append(label)
    return torch.tensor(np.array(xs)), torch.tensor(ys)


def conv(w, wires):
    for a, b in zip(wires[0::2], wires[1::2]):        # shared weights over neighbouring pairs
        qml.RY(w[0], a)
        qml.RY(w[1], b)
        qml.CNOT([a, b])
        qml.RY(w[2], a)
        qml.RY(w[3], b)
    for a, b in zip(wires[1::2], wires[2::2]):
        qml.RY(w[0], a)
        qml.RY(w[1], b)
        qml.CNOT([a, b])


def pool(w, wires):
    """Measure-free pooling: controlled rotations from each discarded wire onto its kept partner."""
    kept = wires[1::2]
    for drop, keep in zip(wires[0::2], kept):
        qml.CRZ(w[0], [drop, keep])
        qml.PauliX(drop)
        qml.CRX(w[1], [drop, keep])
    return kept


def build_model(dev):
    @qml.qnode(dev, interface="torch", diff_method="adjoint")
    def qcnn(inputs, conv1, pool1, conv2, pool2, conv3):
        qml.AmplitudeEmbedding(inputs, wires=range(N_WIRES), normalize=True)
        wires = list(range(N_WIRES))
        conv(conv1, wires)
        wires = pool(pool1, wires)                    # 8 -> 4
        conv(conv2, wires)
        wires = pool(pool2, wires)                    # 4 -> 2
        conv(conv3, wires)
        return [qml.expval(qml.Z(w)) for w in wires]

    shapes = {"conv1": (4,), "pool1": (2,), "conv2": (4,), "pool2": (2,), "conv3": (4,)}
    qlayer = qml.qnn.TorchLayer(qcnn, shapes, init_method=lambda t: torch.nn.init.uniform_(t, -np.pi, np.pi))
    return torch.nn.Sequential(qlayer, torch.nn.Linear(2, CLASSES).double())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--train", type=int, default=48)
    ap.add_argument("--test", type=int, default=30)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--pool", default="lightning", help="device pool (lightning computes adjoint gradients)")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x_train, y_train = make_dataset(args.train, rng)
    x_test, y_test = make_dataset(args.test, rng)
    dev = qml.device("qsched.qubit", wires=N_WIRES, pool=args.pool)
    model = build_model(dev)
    opt = torch.optim.Adam(model.parameters(), lr=0.15)
    loss_fn = torch.nn.CrossEntropyLoss()

    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        perm = torch.randperm(args.train)
        total = 0.0
        for i in range(0, args.train, args.batch):
            idx = perm[i:i + args.batch]
            opt.zero_grad()
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            loss.backward()                           # jacobian came back with the forward pass
            opt.step()
            total += loss.item() * len(idx)
        with torch.no_grad():
            acc = (model(x_test).argmax(1) == y_test).double().mean().item()
        print(f"epoch {epoch + 1}: loss {total / args.train:.4f}  test accuracy {acc:.2f}  "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
    dev.close()


if __name__ == "__main__":
    main()
