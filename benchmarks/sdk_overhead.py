"""SDK overhead: the same work through qsched and called directly, side by side in one run.

  pennylane_adjoint_ratio  12-qubit, 60-parameter adjoint gradient (qml.jacobian of a QNode):
                           qsched.qubit (lightning worker) / lightning.qubit in this process
  pennylane_qcnn_ratio     seed 002's QCNN (12 wires, AmplitudeEmbedding of 256 features, U3/CNOT/RY/RZ
                           convolutions, CRZ/CRX pooling, Toffolis, TorchLayer with 357 weights, adjoint,
                           Adam), one training batch of 32: qsched.qubit / lightning.qubit here
  qiskit_estimator_ratio   one EstimatorV2 PUB with 120 bindings of a 12-qubit, 60-parameter circuit:
                           qsched.qiskit.EstimatorV2 (aer worker) / qiskit_aer EstimatorV2 here
  lightning_worker_ms      the lightning worker's run of the adjoint task, in this process: lightning's
                           C++ layer driven directly / lightning.qubit's Python device

Repetitions are interleaved (direct, qsched, direct, ...) so drift hits both; medians are compared.
It starts its own embedded daemon (`qsched up`, embedded Redis, one aer and one lightning worker with
one thread each, as the direct side gets). Budgets (issue 8): <= 1.15, <= 1.05 and <= 1.3. The last
line is JSON.

  qiskit_zipped_ratio      one EstimatorV2 PUB of 256 parameter rows zipped with 256 Hamiltonians (shape
                           (256,), seed 004's one Hamiltonian per row): qsched (aer) / aer here (<= 1.1)
  pennylane_batch_ratio    qml.execute of 64 tapes, each its own parameters and Hamiltonian:
                           qsched.qubit / lightning.qubit here (<= 1.15); pennylane_batch_adjoint_ratio:
                           the same batch's values and adjoint derivatives
  qiskit_isa_ratio         a 4-qubit ansatz transpiled for a 20-qubit backend, 32 bindings: qsched
                           EstimatorV2 on pool lightning / aer's EstimatorV2 here (<= 1.2)
  qiskit_tiny_ratio        one 2-qubit, 1-binding EstimatorV2.run: qsched (aer) / aer here (<= 1.5)
  pennylane_tiny_ratio     one call of a 2-wire QNode: qsched.qubit / lightning.qubit here (<= 1.2)

    python benchmarks/sdk_overhead.py [--reps N] [--only zipped,batch,...] [--keep-state]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# notes/SIMULATORS.md: aer's OpenMP spin-waiting collapses on this VM; one thread, passive waits
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import yaml  # noqa: E402

N_QUBITS, N_PARAMS, N_BINDINGS = 12, 60, 120


def start_daemon(state_dir: Path) -> subprocess.Popen:
    cfg = {"state_dir": str(state_dir), "daemon": {"tcp": None},
           "devices": [
               {"name": "aer0", "type": "aer", "pool": "aer", "max_qubits": 16,
                "options": {"method": "statevector", "max_parallel_threads": 1}},
               # 24: the ISA shape transpiles onto a 20-qubit backend
               {"name": "lightning0", "type": "lightning", "pool": "lightning", "max_qubits": 24}],
           "policy": {"name": "fair-share"}}
    path = state_dir / "qsched.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "QSCHED_STATE_DIR": str(state_dir)}
    for k in ("QSCHED_URL", "QSCHED_SESSION", "QSCHED_POOL"):
        env.pop(k, None)
    log = open(state_dir / "daemon.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "qsched", "up", "--config", str(path)], stdout=log,
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
    import qsched
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"daemon exited: {(state_dir / 'daemon.log').read_text()[-3000:]}")
        try:
            with qsched.Client(f"unix://{state_dir / 'qsched.sock'}") as c:
                if all(d["up"] for d in c.devices()):
                    return proc
        except Exception:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("daemon not ready within 90 s")


def stop_daemon(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def hamiltonian_terms():
    """10 Z/ZZ terms, as in notes/SIMULATORS.md's VQE gradient measurement."""
    terms = [("Z", (i,)) for i in range(0, N_QUBITS, 3)]
    terms += [("ZZ", (i, i + 1)) for i in range(0, N_QUBITS - 1, 2)]
    return terms[:10]


def interleave(fns: dict, reps: int) -> dict:
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_pennylane(client, reps: int) -> dict:
    import pennylane as qml
    from qsched.pennylane import QschedDevice

    terms = hamiltonian_terms()
    H = qml.Hamiltonian([1.0 / (k + 1) for k in range(len(terms))],
                        [qml.Z(w[0]) if p == "Z" else qml.Z(w[0]) @ qml.Z(w[1]) for p, w in terms])
    layers = N_PARAMS // N_QUBITS

    def circuit(x):
        for layer in range(layers):
            for q in range(N_QUBITS):
                qml.RY(x[layer * N_QUBITS + q], wires=q)
            for q in range(N_QUBITS - 1):
                qml.CNOT([q, q + 1])
        return qml.expval(H)

    ours_dev = QschedDevice(wires=N_QUBITS, pool="lightning", client=client)
    direct = qml.QNode(circuit, qml.device("lightning.qubit", wires=N_QUBITS), diff_method="adjoint")
    ours = qml.QNode(circuit, ours_dev, diff_method="adjoint")
    x = qml.numpy.array(np.random.default_rng(0).uniform(-np.pi, np.pi, N_PARAMS), requires_grad=True)
    gd, go = qml.grad(direct), qml.grad(ours)
    a, b = gd(x), go(x)                               # warm up; the template is uploaded once here
    assert np.allclose(a, b, atol=1e-8), "qsched and lightning.qubit gradients differ"
    med = interleave({"direct": lambda: gd(x), "qsched": lambda: go(x)}, reps)
    ours_dev.close()
    return med


QCNN_WIRES, QCNN_DATA, QCNN_BATCH, QCNN_CLASSES = 12, 8, 32, 4


def qcnn_weight_shapes() -> dict:
    """357 weights: two 15-parameter convolution layers on the 8 data wires (7 neighbouring pairs
    each), pooling (CRZ, CRX per pair) 8 -> 4, two convolution layers on those 4 (3 pairs each),
    pooling 4 -> 2, and one convolution layer on the 4 ancillas after the Toffolis."""
    return {"conv1": (2, 7, 15), "pool1": (4, 2), "conv2": (2, 3, 15), "pool2": (2, 2), "conv3": (3, 15)}


def _conv2(w, a, b):
    """The 15-parameter two-qubit unitary (U3, CNOT, RY, RZ) of seed 002."""
    import pennylane as qml
    qml.U3(w[0], w[1], w[2], wires=a)
    qml.U3(w[3], w[4], w[5], wires=b)
    qml.CNOT([a, b])
    qml.RY(w[6], wires=a)
    qml.RZ(w[7], wires=b)
    qml.CNOT([b, a])
    qml.RY(w[8], wires=a)
    qml.CNOT([a, b])
    qml.U3(w[9], w[10], w[11], wires=a)
    qml.U3(w[12], w[13], w[14], wires=b)


def _conv_layer(w, wires):
    pairs = list(zip(wires[0::2], wires[1::2])) + list(zip(wires[1::2], wires[2::2]))
    for k, (a, b) in enumerate(pairs):
        _conv2(w[k], a, b)


def _pool(w, wires):
    import pennylane as qml
    kept = wires[1::2]
    for k, (drop, keep) in enumerate(zip(wires[0::2], kept)):
        qml.CRZ(w[k][0], [drop, keep])
        qml.PauliX(drop)
        qml.CRX(w[k][1], [drop, keep])
    return kept


def qcnn_circuit(inputs, conv1, pool1, conv2, pool2, conv3):
    """Seed 002's QCNN: 12 wires (8 data, 4 ancilla), AmplitudeEmbedding of 256 features."""
    import pennylane as qml
    data = list(range(QCNN_DATA))
    anc = list(range(QCNN_DATA, QCNN_WIRES))
    qml.AmplitudeEmbedding(inputs, wires=data, normalize=True)
    for layer in range(2):
        _conv_layer(conv1[layer], data)
    wires = _pool(pool1, data)                            # 8 -> 4
    for layer in range(2):
        _conv_layer(conv2[layer], wires)
    _pool(pool2, wires)                                   # 4 -> 2 (the rotations act on the kept wires)
    for i, a in enumerate(anc):                           # Toffolis onto the ancillas
        qml.Toffoli(wires=[wires[i % 4], wires[(i + 2) % 4], a])
    _conv_layer(conv3, anc)
    return [qml.expval(qml.Z(a)) for a in anc]


def qcnn_step_fn(dev, x, y):
    """One training batch (forward, backward, Adam step) of a TorchLayer model on `dev`."""
    import pennylane as qml
    import torch
    torch.manual_seed(0)
    qnode = qml.QNode(qcnn_circuit, dev, interface="torch", diff_method="adjoint")
    layer = qml.qnn.TorchLayer(qnode, qcnn_weight_shapes(),
                               init_method=lambda t: torch.nn.init.uniform_(t, -np.pi, np.pi))
    model = torch.nn.Sequential(layer, torch.nn.Linear(QCNN_CLASSES, QCNN_CLASSES).double())
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    loss_fn = torch.nn.CrossEntropyLoss()
    assert sum(int(np.prod(s)) for s in qcnn_weight_shapes().values()) == 357

    def step():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        grads = [p.grad.detach().clone() for p in layer.parameters()]
        opt.step()
        return loss.item(), grads
    return step, model


def qcnn_data():
    import torch
    rng = np.random.default_rng(2)
    x = torch.tensor(rng.random((QCNN_BATCH, 1 << QCNN_DATA)) + 0.1)
    y = torch.tensor(rng.integers(0, QCNN_CLASSES, QCNN_BATCH))
    return x, y


def bench_lightning_worker(reps: int) -> dict:
    """The lightning worker's run of the benchmark's gradient task, in this process: lightning's C++
    layer driven directly (qsched.devices.lightning_native) against lightning.qubit's Python device."""
    from qiskit import QuantumCircuit
    from qiskit.circuit import ParameterVector

    from qsched.devices import TaskPayload, load_device
    from qsched.models import DeviceSpec

    th = ParameterVector("x", N_PARAMS)
    qc = QuantumCircuit(N_QUBITS)
    for layer in range(N_PARAMS // N_QUBITS):
        for q in range(N_QUBITS):
            qc.ry(th[layer * N_QUBITS + q], q)
        for q in range(N_QUBITS - 1):
            qc.cx(q, q + 1)
    obs = []
    for k, (_, w) in enumerate(hamiltonian_terms()):
        chars = ["I"] * N_QUBITS
        for q in w:
            chars[N_QUBITS - 1 - q] = "Z"
        obs.append(["".join(chars), 1.0 / (k + 1)])
    params = np.random.default_rng(0).uniform(-np.pi, np.pi, (1, N_PARAMS))
    native, python = (load_device(DeviceSpec(name="l0", type="lightning", pool="lightning")) for _ in range(2))
    python._native = lambda *a, **k: None                  # type: ignore[method-assign]

    def run(dev):
        return dev.run([TaskPayload("t", "gradient", "k", qc, params, None, [obs], "adjoint")])[0]
    a, b = run(native), run(python)
    assert np.allclose(a["jacobian"], b["jacobian"], atol=1e-12), "the two lightning paths differ"
    return interleave({"python": lambda: run(python), "native": lambda: run(native)}, reps)


def bench_qcnn(client, reps: int) -> dict:
    import pennylane as qml
    from qsched.pennylane import QschedDevice
    x, y = qcnn_data()
    ours_dev = QschedDevice(wires=QCNN_WIRES, pool="lightning", client=client)
    direct, _ = qcnn_step_fn(qml.device("lightning.qubit", wires=QCNN_WIRES), x, y)
    ours, _ = qcnn_step_fn(ours_dev, x, y)
    (la, ga), (lb, gb) = direct(), ours()             # same start (seeded init): same loss and grads
    assert abs(la - lb) < 1e-8 and all(np.allclose(a, b, atol=1e-7) for a, b in zip(ga, gb)), \
        "qsched and lightning.qubit QCNN gradients differ"
    med = interleave({"direct": direct, "qsched": ours}, reps)
    ours_dev.close()
    return med


def bench_qiskit(client, reps: int) -> dict:
    from qiskit.circuit.library import real_amplitudes
    from qiskit.quantum_info import SparsePauliOp
    from qiskit_aer.primitives import EstimatorV2 as AerEstimatorV2
    from qsched.qiskit import EstimatorV2

    qc = real_amplitudes(N_QUBITS, reps=N_PARAMS // N_QUBITS - 1, entanglement="linear")
    assert qc.num_parameters == N_PARAMS
    labels = []
    for _, w in hamiltonian_terms():
        chars = ["I"] * N_QUBITS
        for q in w:
            chars[N_QUBITS - 1 - q] = "Z"
        labels.append(("".join(chars), 1.0))
    H = SparsePauliOp.from_list(labels)
    params = np.random.default_rng(1).uniform(-np.pi, np.pi, (N_BINDINGS, N_PARAMS))
    direct = AerEstimatorV2(options={"backend_options": {"method": "statevector", "max_parallel_threads": 1}})
    ours = EstimatorV2(pool="aer", client=client)
    pub = (qc, H, params)
    a = direct.run([pub]).result()[0].data.evs
    b = ours.run([pub]).result()[0].data.evs
    assert np.allclose(a, b, atol=1e-8), "qsched and aer EstimatorV2 values differ"
    med = interleave({"direct": lambda: direct.run([pub]).result(),
                      "qsched": lambda: ours.run([pub]).result()}, reps)
    ours.close()
    return med


ZIP_N = 256           # rows of the zipped PUB: one Hamiltonian per parameter row (seed 004)
BATCH_TAPES = 64      # tapes of the PennyLane batch, each its own Hamiltonian


def _row_hamiltonians(n: int, rng) -> np.ndarray:
    """n Hamiltonians over the benchmark's 10 Z/ZZ terms, each with coefficients of its own."""
    labels = []
    for _, w in hamiltonian_terms():
        chars = ["I"] * N_QUBITS
        for q in w:
            chars[N_QUBITS - 1 - q] = "Z"
        labels.append("".join(chars))
    return rng.uniform(-1, 1, (n, len(labels))), labels


def bench_zipped(client, reps: int) -> dict:
    """One EstimatorV2 PUB of ZIP_N parameter rows zipped with ZIP_N observables (shape (ZIP_N,))."""
    from qiskit.circuit.library import real_amplitudes
    from qiskit.quantum_info import SparsePauliOp
    from qiskit_aer.primitives import EstimatorV2 as AerEstimatorV2
    from qsched.qiskit import EstimatorV2

    rng = np.random.default_rng(4)
    qc = real_amplitudes(N_QUBITS, reps=N_PARAMS // N_QUBITS - 1, entanglement="linear")
    coeffs, labels = _row_hamiltonians(ZIP_N, rng)
    obs = [SparsePauliOp(labels, c) for c in coeffs]
    params = rng.uniform(-np.pi, np.pi, (ZIP_N, N_PARAMS))
    direct = AerEstimatorV2(options={"backend_options": {"method": "statevector", "max_parallel_threads": 1}})
    ours = EstimatorV2(pool="aer", client=client)
    pub = (qc, obs, params)
    a = direct.run([pub]).result()[0].data.evs
    b = ours.run([pub]).result()[0].data.evs
    assert a.shape == b.shape == (ZIP_N,) and np.allclose(a, b, atol=1e-8), "zipped PUB values differ"
    med = interleave({"direct": lambda: direct.run([pub]).result(),
                      "qsched": lambda: ours.run([pub]).result()}, reps)
    ours.close()
    return med


def bench_pennylane_batch(client, reps: int, gradient: bool = False) -> dict:
    """A batch of BATCH_TAPES tapes (qml.execute), each the same ansatz at its own parameters
    measuring its own Hamiltonian: qsched.qubit / lightning.qubit. `gradient`: values and adjoint
    derivatives of the batch (execute_and_compute_derivatives) instead."""
    import pennylane as qml
    from qsched.pennylane import QschedDevice

    rng = np.random.default_rng(5)
    coeffs, _ = _row_hamiltonians(BATCH_TAPES, rng)
    terms = [qml.Z(w[0]) if p == "Z" else qml.Z(w[0]) @ qml.Z(w[1]) for p, w in hamiltonian_terms()]
    layers = N_PARAMS // N_QUBITS
    tapes = []
    for c in coeffs:
        x = rng.uniform(-np.pi, np.pi, N_PARAMS)
        ops = []
        for layer in range(layers):
            ops += [qml.RY(x[layer * N_QUBITS + q], wires=q) for q in range(N_QUBITS)]
            ops += [qml.CNOT([q, q + 1]) for q in range(N_QUBITS - 1)]
        tapes.append(qml.tape.QuantumScript(ops, [qml.expval(qml.Hamiltonian(list(c), terms))],
                                            trainable_params=list(range(len(ops) - layers * (N_QUBITS - 1)))))
    direct = qml.device("lightning.qubit", wires=N_QUBITS)
    ours_dev = QschedDevice(wires=N_QUBITS, pool="lightning", client=client)
    config = qml.devices.ExecutionConfig(gradient_method="adjoint")
    ours_config = ours_dev.setup_execution_config(config)

    def run(dev, cfg):
        if gradient:
            return dev.execute_and_compute_derivatives(tapes, cfg)[1]
        return qml.execute(tapes, dev)
    a, b = run(direct, config), run(ours_dev, ours_config)
    assert np.allclose(np.array(a), np.array(b), atol=1e-8), "qsched and lightning.qubit batch results differ"
    med = interleave({"direct": lambda: run(direct, config), "qsched": lambda: run(ours_dev, ours_config)}, reps)
    ours_dev.close()
    return med


ISA_QUBITS, ISA_BACKEND_QUBITS, ISA_BINDINGS = 4, 20, 32


def bench_isa(client, reps: int) -> dict:
    """A 4-qubit ansatz transpiled for a 20-qubit backend (an ISA circuit, its observable laid out
    the same way), 32 bindings: qsched EstimatorV2 on pool lightning / aer's EstimatorV2 here."""
    from qiskit import transpile
    from qiskit.circuit.library import efficient_su2
    from qiskit.providers.fake_provider import GenericBackendV2
    from qiskit.quantum_info import SparsePauliOp
    from qiskit_aer.primitives import EstimatorV2 as AerEstimatorV2
    from qsched.qiskit import EstimatorV2

    backend = GenericBackendV2(ISA_BACKEND_QUBITS, seed=7)
    qc = transpile(efficient_su2(ISA_QUBITS, reps=2), backend, optimization_level=1, seed_transpiler=7)
    H = SparsePauliOp(["ZZII", "IZZI", "IIZZ", "XIII"], [1.0, 0.5, 0.25, 0.1]).apply_layout(qc.layout)
    params = np.random.default_rng(3).uniform(-np.pi, np.pi, (ISA_BINDINGS, qc.num_parameters))
    direct = AerEstimatorV2(options={"backend_options": {"method": "statevector", "max_parallel_threads": 1}})
    ours = EstimatorV2(pool="lightning", client=client)
    pub = (qc, H, params)
    a = direct.run([pub]).result()[0].data.evs
    b = ours.run([pub]).result()[0].data.evs
    assert np.allclose(a, b, atol=1e-8), "ISA circuit values differ"
    med = interleave({"direct": lambda: direct.run([pub]).result(),
                      "qsched": lambda: ours.run([pub]).result()}, reps)
    ours.close()
    return med


def bench_tiny(client, reps: int) -> dict:
    """One 2-qubit, 1-binding EstimatorV2.run (qsched on pool aer / aer here), and one call of a
    2-wire QNode (qsched.qubit on pool lightning / lightning.qubit)."""
    import pennylane as qml
    from qiskit import QuantumCircuit
    from qiskit.circuit import Parameter
    from qiskit.quantum_info import SparsePauliOp
    from qiskit_aer.primitives import EstimatorV2 as AerEstimatorV2
    from qsched.pennylane import QschedDevice
    from qsched.qiskit import EstimatorV2

    th = Parameter("t")
    qc = QuantumCircuit(2)
    qc.ry(th, 0)
    qc.cx(0, 1)
    pub = (qc, SparsePauliOp("ZZ"), [0.3])
    direct = AerEstimatorV2(options={"backend_options": {"method": "statevector", "max_parallel_threads": 1}})
    ours = EstimatorV2(pool="aer", client=client)

    def circuit(x):
        qml.RY(x, wires=0)
        qml.CNOT([0, 1])
        return qml.expval(qml.Z(0) @ qml.Z(1))
    ours_dev = QschedDevice(wires=2, pool="lightning", client=client)
    qd, qo = qml.QNode(circuit, qml.device("lightning.qubit", wires=2)), qml.QNode(circuit, ours_dev)
    assert np.isclose(direct.run([pub]).result()[0].data.evs, ours.run([pub]).result()[0].data.evs)
    assert np.isclose(qd(0.3), qo(0.3))
    med = interleave({"est_direct": lambda: direct.run([pub]).result(),
                      "est_qsched": lambda: ours.run([pub]).result(),
                      "qnode_direct": lambda: qd(0.3), "qnode_qsched": lambda: qo(0.3)}, reps)
    ours.close()
    ours_dev.close()
    return med


BENCHES = ("adjoint", "qcnn", "estimator", "zipped", "batch", "batchgrad", "isa", "tiny")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=15, help="interleaved repetitions per side (default 15)")
    ap.add_argument("--qcnn-reps", type=int, default=5, help="interleaved QCNN training batches per side")
    ap.add_argument("--only", default=",".join(BENCHES),
                    help=f"comma-separated subset of {','.join(BENCHES)} (default: all)")
    ap.add_argument("--keep-state", action="store_true", help="keep the daemon's state directory")
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    if only - set(BENCHES):
        ap.error(f"--only: unknown {sorted(only - set(BENCHES))}; choose from {','.join(BENCHES)}")

    import qsched
    out: dict = {}
    if "adjoint" in only:
        lw = bench_lightning_worker(max(50, args.reps))
        print(f"lightning worker run of that gradient, in one process: lightning.qubit's Python device "
              f"{lw['python'] * 1e3:.2f} ms, its C++ layer directly {lw['native'] * 1e3:.2f} ms")
        out["lightning_worker_ms"] = {"python": round(lw["python"] * 1e3, 3), "native": round(lw["native"] * 1e3, 3)}
    state_dir = Path(tempfile.mkdtemp(prefix="qsched-sdk-bench-"))
    proc = start_daemon(state_dir)

    def record(name: str, med: dict, what: str, direct: str = "direct", ours: str = "qsched") -> None:
        print(f"{what}: {med[direct] * 1e3:.2f} ms direct, qsched {med[ours] * 1e3:.2f} ms")
        out[f"{name}_ratio"] = round(med[ours] / med[direct], 3)
        out[f"{name}_ms"] = {"direct": round(med[direct] * 1e3, 3), "qsched": round(med[ours] * 1e3, 3)}

    try:
        with qsched.Client(f"unix://{state_dir / 'qsched.sock'}") as client:
            if "adjoint" in only:
                record("pennylane_adjoint", bench_pennylane(client, args.reps),
                       f"pennylane adjoint gradient ({N_QUBITS} qubits, {N_PARAMS} params), lightning.qubit")
            if "qcnn" in only:
                record("pennylane_qcnn", bench_qcnn(client, args.qcnn_reps),
                       f"pennylane QCNN training batch ({QCNN_WIRES} wires, batch {QCNN_BATCH}, 357 weights, "
                       "adjoint), lightning.qubit")
            if "estimator" in only:
                record("qiskit_estimator", bench_qiskit(client, max(5, args.reps)),
                       f"qiskit EstimatorV2 ({N_BINDINGS} bindings, {N_QUBITS} qubits, {N_PARAMS} params), aer")
            if "zipped" in only:
                record("qiskit_zipped", bench_zipped(client, max(5, args.reps)),
                       f"qiskit EstimatorV2, {ZIP_N} rows zipped with {ZIP_N} Hamiltonians, aer")
            if "batch" in only:
                record("pennylane_batch", bench_pennylane_batch(client, args.reps),
                       f"pennylane batch of {BATCH_TAPES} tapes, each its own Hamiltonian, lightning.qubit")
            if "batchgrad" in only:
                record("pennylane_batch_adjoint", bench_pennylane_batch(client, args.reps, gradient=True),
                       f"pennylane batch of {BATCH_TAPES} tapes, each its own Hamiltonian, values and adjoint "
                       "derivatives, lightning.qubit")
            if "isa" in only:
                record("qiskit_isa", bench_isa(client, args.reps),
                       f"qiskit EstimatorV2, {ISA_QUBITS}-qubit ansatz transpiled for {ISA_BACKEND_QUBITS} "
                       f"qubits, {ISA_BINDINGS} bindings, pool lightning vs aer")
            if "tiny" in only:
                med = bench_tiny(client, max(50, args.reps))
                record("qiskit_tiny", med, "one 2-qubit 1-binding EstimatorV2.run, aer",
                       "est_direct", "est_qsched")
                record("pennylane_tiny", med, "one call of a 2-wire QNode, lightning.qubit",
                       "qnode_direct", "qnode_qsched")
    finally:
        stop_daemon(proc)
        if not args.keep_state:
            shutil.rmtree(state_dir, ignore_errors=True)
    out["budgets"] = {"pennylane_adjoint_ratio": 1.15, "qiskit_estimator_ratio": 1.05, "pennylane_qcnn_ratio": 1.3,
                      "qiskit_zipped_ratio": 1.1, "pennylane_batch_ratio": 1.15, "qiskit_isa_ratio": 1.2,
                      "qiskit_tiny_ratio": 1.5, "pennylane_tiny_ratio": 1.2}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
